"""Dense tasks under attack: detection and segmentation heads on frozen encoders, PGD and SegPGD, mAP and mIoU.

Dense layer: imports scenes, probe, attacks, runtime, parallel, store, config (scenes: `utils.scenes`; gaps and
verdicts: `utils.stats`; figures: `utils.plots`).

Models (one recipe for all encoders). The encoder is frozen: its weights get no gradient and it stays in eval mode
whatever mode the wrapping model is put in, so its BatchNorm statistics never change (not in head training, not under
attack). Only the heads are trained (AdamW, `runtime.warmup_cosine`; bfloat16 autocast where the precision policy
allows, losses in float32), on encoder features computed once per scene (`utils.probe.extract_features`).
- Detection: torchvision's FCOS on the encoder's last feature map (one level, `encoder.feature_map(x)` -> 1x1
  projection -> FCOS head). Its transform is an identity: image_mean=[0], image_std=[1] (the encoder keeps its own
  Normalize layer), min_size = max_size = canvas and size_divisible=1, so nothing is resized or padded and every
  attack works on the [0, 1] canvas. FCOS has no random proposal sampling, so its training loss is deterministic.
- Segmentation: an FCN head (3x3 conv-BN-ReLU twice, 1x1 conv to classes) on the same feature map, upsampled
  bilinearly to the canvas.

Attacks: `utils.attacks.pgd_objective` (L-inf, random start, step = 2.5 * eps / steps, last iterate) on the task's
loss; its forward/backward passes run under `runtime.autocast(device, amp)`, every reported metric in float32:
- detection: PGD ascending FCOS's summed training losses (classification + box regression + centerness),
- segmentation: PGD on the summed per-pixel cross-entropy and SegPGD (Gu et al. 2022), which weights the loss of
  correctly classified pixels by (1 - lambda_t) and of wrong ones by lambda_t, lambda_t = t / (2T).

Metrics: mAP at IoU 0.5 (torchmetrics `MeanAveragePrecision(iou_thresholds=[0.5])`, pycocotools backend), mIoU
(`MulticlassJaccardIndex`, macro over the classes incl. background) and pixel accuracy (`MulticlassAccuracy`, micro).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from utils.attacks import RISES_WITH_EPS, pgd_objective
from utils.config import DENSE_REGIME, METRIC_MAP, METRIC_MIOU, METRIC_PIXEL_ACC
from utils.parallel import job_threads, local_workers, map_jobs
from utils.probe import extract_features
from utils.runtime import SEED_STREAM_BATCH, autocast, batches, derive_seed, model_device, warmup_cosine
from utils.scenes import Scenes
from utils.store import TIDY_COLUMNS


# ----------------------------------------------------------------------------------------------------------- models
class _FrozenEncoderMixin:
    """Keeps `self.encoder` in eval mode (BatchNorm statistics frozen) whatever mode the model is set to."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self


class EncoderBackbone(_FrozenEncoderMixin, nn.Module):
    """Frozen encoder's last feature map -> 1x1 projection: [N, C, H, W] in [0,1] -> [N, out_channels, h, w].

    The single-level backbone torchvision's FCOS expects (attribute `out_channels`)."""

    def __init__(self, encoder: nn.Module, out_channels: int = 64):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.project = nn.Conv2d(encoder.feat_dim, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder.feature_map(x))


def build_detector(encoder: nn.Module, num_classes: int, canvas: int, *, channels: int = 64, num_convs: int = 2,
                   anchor_size: int | None = None, score_thresh: float = 0.05, in_chans: int | None = None):
    """FCOS on a frozen encoder: [0,1] images of canvas x canvas -> boxes (eval) or losses (train mode).

    One feature level at the encoder's output stride s; anchor size = s (as FCOS sets it per level), so positives are
    feature locations inside a box within 1.5 s of its centre. `num_classes` includes background (label 0, unused).
    `score_thresh` 0.05 keeps low-confidence boxes, as mAP evaluation needs. The transform is an identity (see the
    module docstring). `channels` must be a multiple of 32 (the head's GroupNorm).
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    if channels % 32:
        raise ValueError(f"channels={channels} must be a multiple of 32 (FCOS head uses GroupNorm(32))")
    if anchor_size is None:
        anchor_size = feature_stride(encoder, canvas, in_chans)
    backbone = EncoderBackbone(encoder, channels)
    anchors = AnchorGenerator(sizes=((anchor_size,),), aspect_ratios=((1.0,),))
    head = FCOSHead(channels, 1, num_classes, num_convs=num_convs)
    model = FCOS(backbone, num_classes, min_size=canvas, max_size=canvas, image_mean=[0.0], image_std=[1.0],
                 anchor_generator=anchors, head=head, score_thresh=score_thresh, size_divisible=1)
    return model.eval()


def feature_stride(encoder: nn.Module, canvas: int, in_chans: int | None = None) -> int:
    """Output stride of `encoder.feature_map` on a canvas x canvas input (measured with one zero image)."""
    if in_chans is None:
        norm = getattr(encoder, "normalize", None)
        in_chans = int(norm.mean.numel()) if hasattr(norm, "mean") else 1
    with torch.no_grad():
        h = encoder.feature_map(torch.zeros(1, in_chans, canvas, canvas, device=model_device(encoder))).shape[-1]
    return max(1, canvas // h)


class FCNHead(nn.Sequential):
    """[N, D, h, w] features -> [N, K, h, w] logits: two 3x3 conv-BN-ReLU blocks and a 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64):
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                         nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1))


class Segmenter(_FrozenEncoderMixin, nn.Module):
    """Frozen encoder + FCN head: [0,1] images [N, C, H, W] -> per-pixel logits [N, K, H, W] (bilinear upsampling)."""

    def __init__(self, encoder: nn.Module, num_classes: int, hidden: int = 64):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.head = FCNHead(encoder.feat_dim, num_classes, hidden)

    def from_features(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.head(feats), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.encoder.feature_map(x), tuple(x.shape[-2:]))


def build_segmenter(encoder: nn.Module, num_classes: int, hidden: int = 64) -> Segmenter:
    return Segmenter(encoder, num_classes, hidden).eval()



# ----------------------------------------------------------------------------------------------------------- losses
def _fcos_losses(model, feats: torch.Tensor, image_size: tuple[int, int], targets: list[dict[str, torch.Tensor]],
                 amp: bool = False) -> dict[str, torch.Tensor]:
    """FCOS training losses from backbone features [N, D', h, w] (what `FCOS.forward` computes in train mode after
    its identity transform and the backbone). The head runs under `autocast(device, amp)`; the losses are
    computed in float32."""
    from torchvision.models.detection.image_list import ImageList

    with autocast(feats.device, amp):
        head_out = model.head([feats])
    head_out = {k: v.float() for k, v in head_out.items()}
    f32 = feats.float()
    dummy = torch.empty(len(feats), 1, *image_size, device=feats.device)  # the anchor generator reads only its shape
    anchors = model.anchor_generator(ImageList(dummy, [tuple(image_size)] * len(feats)), [f32])
    return model.compute_loss(targets, head_out, anchors, [f32.shape[-2] * f32.shape[-1]])


def detection_losses(model, images: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                     amp: bool = False) -> dict[str, torch.Tensor]:
    """FCOS's training losses {classification, bbox_regression, bbox_ctrness} for [0,1] images [N, C, H, W].

    The same `compute_loss` FCOS.forward calls in train mode, computed without switching the model to train mode
    (FCOS's only train-mode difference is returning losses; the encoder's BN stays frozen either way). Skips the
    transform, which is checked to be an identity for this image size."""
    _check_identity_transform(model, images)
    with autocast(images.device, amp):
        feats = model.backbone(images)
    return _fcos_losses(model, feats, tuple(images.shape[-2:]), targets, amp)


def _check_identity_transform(model, images: torch.Tensor) -> None:
    t = model.transform
    h, w = images.shape[-2:]
    if not (h == w == t.min_size[-1] == t.max_size and list(t.image_mean) == [0.0] and list(t.image_std) == [1.0]
            and t.size_divisible == 1):
        raise ValueError(f"the detector's transform is not an identity for {h}x{w} images (min_size={t.min_size}, "
                         f"max_size={t.max_size}): build it with build_detector(..., canvas={h})")


def segmentation_ce(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Summed per-pixel cross-entropy (float32) of logits [N, K, H, W] against masks [N, H, W]."""
    return F.cross_entropy(logits.float(), masks, ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction="sum")


def segpgd_loss(logits: torch.Tensor, masks: torch.Tensor, t: int, steps: int,
                ignore_index: int | None) -> torch.Tensor:
    """SegPGD's loss at iteration t of `steps` (0-based): (1 - lam) * CE of correctly classified pixels + lam * CE of
    misclassified ones, lam = t / (2 * steps), summed over the scored pixels (float32)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, masks, ignore_index=-100 if ignore_index is None else ignore_index, reduction="none")
    correct = logits.argmax(1) == masks
    lam = t / (2 * steps)
    return torch.where(correct, (1 - lam) * ce, lam * ce).sum()  # ignored pixels have ce = 0


# ----------------------------------------------------------------------------------------------------------- attacks
def attack_detection(model, x: torch.Tensor, targets, eps: float, steps: int, *, amp: bool = True, seed: int = 0,
                     flags: set | None = None) -> torch.Tensor:
    """PGD (L-inf, `pgd_objective`) on FCOS's summed training losses; adversarial images in [0, 1]."""
    return pgd_objective(lambda xa, t: sum(detection_losses(model, xa, targets, amp).values()), x, eps=eps,
                         steps=steps, seed=seed, flags=flags)


def attack_segmentation(model, x: torch.Tensor, masks: torch.Tensor, eps: float, steps: int, *, attack: str = "pgd",
                        ignore_index: int | None = None, amp: bool = True, seed: int = 0,
                        flags: set | None = None) -> torch.Tensor:
    """PGD on the summed per-pixel CE (attack="pgd") or SegPGD (attack="segpgd"), through `pgd_objective`;
    adversarial images in [0, 1]."""
    if attack not in ("pgd", "segpgd"):
        raise ValueError(f"attack must be 'pgd' or 'segpgd', got {attack!r}")

    def objective(xa, t):
        with autocast(xa.device, amp):
            logits = model(xa)
        if attack == "pgd":
            return segmentation_ce(logits, masks, ignore_index)
        return segpgd_loss(logits, masks, t, steps, ignore_index)

    return pgd_objective(objective, x, eps=eps, steps=steps, seed=seed, flags=flags)


# ----------------------------------------------------------------------------------------------------------- training
def _feature_source(encoder, scenes, batch_size, device, features, cache_limit_bytes=2 ** 31):
    """A function idx -> features [n, D, h, w] on `device`: from a given or freshly built cache when it fits in
    `cache_limit_bytes`, otherwise recomputed per batch (large sets, e.g. VOC at 512 px)."""
    def compute(idx):
        return extract_features(encoder, scenes.image_batch(idx), batch_size=len(idx), device=device,
                                spatial=True).to(device)

    if features is None and compute([0]).numel() * 4 * len(scenes) <= cache_limit_bytes:
        features = extract_features(encoder, scenes.image_batches(batch_size), device=device, spatial=True)
    if features is None:
        return compute
    return lambda idx: features[idx].to(device)


def _train_head(model: nn.Module, params, encoder: nn.Module, scenes: Scenes, batch_loss: Callable, *, epochs: int,
                batch_size: int, lr: float, seed: int, device: str, features: torch.Tensor | None, desc: str,
                progress: bool) -> list[float]:
    """The one head-training loop: AdamW (weight decay 1e-4) on `params`, linear warm-up over 10 % of the steps then
    cosine decay to 0, seeded shuffles. `batch_loss(idx, feats)` is a batch's float32 loss from its scene indices and
    the frozen encoder's features of those scenes. Returns the mean loss per epoch; the model is left in eval mode."""
    feats_of = _feature_source(encoder, scenes, batch_size, device, features)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, epochs * math.ceil(len(scenes) / batch_size), warmup=0.1, floor=0.0)
    g = torch.Generator().manual_seed(int(seed))
    history = []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        total = 0.0
        for idx in batches(len(scenes), batch_size, generator=g, shuffle=True):
            loss = batch_loss(idx, feats_of(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(scenes))
    model.eval()
    return history


def train_detector(model, scenes: Scenes, *, epochs: int, batch_size: int, lr: float = 2e-3, seed: int = 0,
                   device: str = "cpu", features: torch.Tensor | None = None, amp: bool = False,
                   progress: bool = False) -> list[float]:
    """Train the detector's projection and FCOS head (encoder frozen) on `scenes` with FCOS's summed losses
    (`_train_head`). Returns the mean loss per epoch. The model is left in eval mode."""
    size = (scenes.canvas, scenes.canvas)

    def batch_loss(idx, f):
        targets = [{k: v.to(device) for k, v in t.items()} for t in scenes.targets(idx.tolist())]
        with autocast(f.device, amp):
            feats = model.backbone.project(f)
        return sum(_fcos_losses(model, feats, size, targets, amp).values())

    return _train_head(model, [p for p in model.parameters() if p.requires_grad], model.backbone.encoder, scenes,
                       batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                       features=features, desc="detector head", progress=progress)


def train_segmenter(model: Segmenter, scenes: Scenes, *, epochs: int, batch_size: int, lr: float = 2e-3,
                    seed: int = 0, device: str = "cpu", features: torch.Tensor | None = None, amp: bool = False,
                    progress: bool = False) -> list[float]:
    """Train the FCN head (encoder frozen) with mean per-pixel cross-entropy (`_train_head`). Returns the mean loss
    per epoch. The model is left in eval mode."""
    if scenes.masks is None:
        raise ValueError("these scenes carry no masks (a detection-only set); load the segmentation scenes")
    ignore = -100 if scenes.ignore_index is None else scenes.ignore_index
    size = (scenes.canvas, scenes.canvas)

    def batch_loss(idx, f):
        with autocast(f.device, amp):
            logits = model.from_features(f, size)
        return F.cross_entropy(logits.float(), scenes.mask_batch(idx).to(device), ignore_index=ignore)

    return _train_head(model, model.head.parameters(), model.encoder, scenes, batch_loss, epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed, device=device, features=features,
                       desc="segmentation head", progress=progress)


# ----------------------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def predict_boxes(model, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """FCOS detections (float32, eval mode, through torchvision's own forward) for [0,1] images [N, C, H, W]:
    [{"boxes": [m, 4], "scores": [m], "labels": [m]}] on CPU."""
    model.eval()
    return [{k: v.cpu() for k, v in d.items()} for d in model(list(images.float()))]


@torch.no_grad()
def predict_masks(model: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """Predicted class per pixel [N, H, W] int64 on CPU (float32, eval mode)."""
    model.eval()
    return model(images.float()).argmax(1).cpu()


def _map_metric():
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(iou_thresholds=[0.5], backend="pycocotools")


def _seg_metrics(num_classes: int, ignore_index: int | None):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    return (MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index))


def _row(task, attack, eps, steps, metric, value, n, flags):
    return {"task": task, "attack": attack, "norm": "linf", "eps": float(eps), "steps": int(steps), "restarts": 1,
            "accuracy": float(value), "n": int(n), "flags": ";".join(sorted(flags)), "metric": metric}


def evaluate_detection(model, scenes: Scenes, eps_list: Sequence[float], *, steps: int, batch_size: int = 32,
                       seed: int = 0, amp: bool = True, device: str = "cpu", progress: bool = False) -> list[dict]:
    """mAP@0.5 of `model` on `scenes` for every eps in `eps_list` (PGD on the detection loss; eps = 0 is the clean
    evaluation). Returns tidy rows (task "detection", attack "pgd", metric "map50")."""
    rows = []
    for eps in tqdm(list(eps_list), desc="detection eps", disable=not progress, leave=False):
        metric, flags = _map_metric(), set()
        for b, idx in enumerate(batches(len(scenes), batch_size)):
            x = scenes.image_batch(idx).to(device)
            targets = scenes.targets(idx.tolist())
            dev_t = [{k: v.to(device) for k, v in t.items()} for t in targets]
            x_adv = attack_detection(model, x, dev_t, eps, steps, amp=amp,
                                     seed=derive_seed(seed, b, SEED_STREAM_BATCH), flags=flags)
            metric.update(predict_boxes(model, x_adv), targets)
        rows.append(_row("detection", "pgd", eps, steps, METRIC_MAP, metric.compute()["map"], len(scenes), flags))
    return rows


def evaluate_segmentation(model: Segmenter, scenes: Scenes, eps_list: Sequence[float], *, steps: int,
                          attacks: Sequence[str] = ("pgd", "segpgd"), batch_size: int = 32, seed: int = 0,
                          amp: bool = True, device: str = "cpu", progress: bool = False) -> list[dict]:
    """mIoU and pixel accuracy of `model` on `scenes` for every attack and eps (eps = 0 is the clean evaluation).
    Returns tidy rows (task "segmentation", metric "miou" and "pixel_acc")."""
    if scenes.masks is None:
        raise ValueError("these scenes carry no masks (a detection-only set); load the segmentation scenes")
    rows = []
    for attack in attacks:
        for eps in tqdm(list(eps_list), desc=f"segmentation {attack} eps", disable=not progress, leave=False):
            miou, pacc = _seg_metrics(scenes.num_classes, scenes.ignore_index)
            flags = set()
            for b, idx in enumerate(batches(len(scenes), batch_size)):
                x, m = scenes.image_batch(idx).to(device), scenes.mask_batch(idx).to(device)
                x_adv = attack_segmentation(model, x, m, eps, steps, attack=attack, ignore_index=scenes.ignore_index,
                                            amp=amp, seed=derive_seed(seed, b, SEED_STREAM_BATCH), flags=flags)
                pred = predict_masks(model, x_adv)
                miou.update(pred, m.cpu())
                pacc.update(pred, m.cpu())
            rows.append(_row("segmentation", attack, eps, steps, METRIC_MIOU, miou.compute(), len(scenes), flags))
            rows.append(_row("segmentation", attack, eps, steps, METRIC_PIXEL_ACC, pacc.compute(), len(scenes),
                             flags))
    return rows


# ----------------------------------------------------------------------------------------------------------- runner
@dataclass
class DenseRun:
    """One encoder's dense results: tidy rows, the trained models, training losses and seconds per part."""

    rows: list[dict]
    detector: nn.Module
    segmenter: Segmenter
    history: dict
    seconds: dict


def run_dense(encoder: nn.Module, train: tuple[Scenes, Scenes], test: tuple[Scenes, Scenes], *, det_epochs: int,
              seg_epochs: int, eps_linf: Sequence[float], steps: int, batch_size: int, head_lr: float = 2e-3,
              seed: int = 0, device: str = "cpu", amp: bool = True, progress: bool = False) -> DenseRun:
    """The one recipe for every encoder: train an FCOS head and an FCN head on the frozen encoder (features computed
    once in float32; heads trained under bfloat16 autocast when `amp`, losses in float32), then evaluate both over
    the eps grid (detection: PGD; segmentation: PGD and SegPGD). `train`/`test` are (detection scenes,
    segmentation scenes) pairs as `load_dense_data` returns them. `seconds` holds the wall time of each part.
    Random numbers: the heads' initialization and shuffles from `seed`, the random start of test batch b from
    `derive_seed(seed, b, SEED_STREAM_BATCH)`; the same for every encoder (encoders compared on the same draws)."""
    sec = {}
    (det_train, seg_train), (det_test, seg_test) = train, test
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    detector = build_detector(encoder, det_train.num_classes, det_train.canvas,
                              in_chans=det_train.images.shape[1]).to(device)
    segmenter = build_segmenter(encoder, seg_train.num_classes).to(device)
    feats = (extract_features(encoder, det_train.image_batches(batch_size), device=device, spatial=True)
             if det_train is seg_train else None)
    sec["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h_det = train_detector(detector, det_train, epochs=det_epochs, batch_size=batch_size, lr=head_lr, seed=seed,
                           device=device, features=feats, amp=amp, progress=progress)
    sec["train_detector"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h_seg = train_segmenter(segmenter, seg_train, epochs=seg_epochs, batch_size=batch_size, lr=head_lr, seed=seed,
                            device=device, features=feats, amp=amp, progress=progress)
    sec["train_segmenter"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = evaluate_detection(detector, det_test, eps_linf, steps=steps, batch_size=batch_size, seed=seed, amp=amp,
                              device=device, progress=progress)
    sec["attack_detection"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows += evaluate_segmentation(segmenter, seg_test, eps_linf, steps=steps, batch_size=batch_size, seed=seed,
                                  amp=amp, device=device, progress=progress)
    sec["attack_segmentation"] = time.perf_counter() - t0
    return DenseRun(rows, detector, segmenter, {"detection": h_det, "segmentation": h_seg}, sec)


def tidy_rows(rows: list[dict], model: str) -> list[dict]:
    """Rows of one encoder with `model` and `regime` (frozen encoder, trained head) added."""
    return [{**r, "model": model, "regime": DENSE_REGIME} for r in rows]


def to_frame(rows: list[dict], rise_tol: float = 0.01) -> pd.DataFrame:
    """Tidy DataFrame: utils.store.TIDY_COLUMNS + `metric`. A value more than `rise_tol` above the lowest value at
    a smaller eps (same model, task, attack, metric) gets the sanity flag RISES_WITH_EPS: a larger ball contains the
    smaller one, so a sound attack never does worse there (last-iterate PGD may, by a little)."""
    df = pd.DataFrame(rows)[TIDY_COLUMNS + ["metric"]].copy()
    for _, g in df.groupby(["model", "task", "attack", "metric"], sort=False):
        g = g.sort_values("eps")
        best = g["accuracy"].cummin().shift(1)
        for i in g.index[(g["accuracy"] > best + rise_tol).to_numpy()]:
            flags = [f for f in str(df.at[i, "flags"] or "").split(";") if f]
            df.at[i, "flags"] = ";".join(sorted(set(flags + [RISES_WITH_EPS])))
    return df


def run_dense_all(encoders: dict[str, nn.Module], train: tuple[Scenes, Scenes], test: tuple[Scenes, Scenes], *,
                  det_epochs: int, seg_epochs: int, eps_linf: Sequence[float], steps: int, batch_size: int,
                  head_lr: float = 2e-3, seed: int = 0, device: str = "cpu", amp: bool = True,
                  progress: bool = False) -> tuple[dict[str, DenseRun], list[dict]]:
    """`run_dense` for every encoder {method: encoder}, one job per encoder spread over worker processes on a CPU
    (`utils.parallel`; each job seeds itself and runs with `job_threads(device)` threads in any process, so the
    numbers do not depend on the worker count). Returns
    ({method: DenseRun}, tidy rows of all encoders)."""
    jobs = [dict(encoder=encoder, train=train, test=test, det_epochs=det_epochs, seg_epochs=seg_epochs,
                 eps_linf=eps_linf, steps=steps, batch_size=batch_size, head_lr=head_lr, seed=seed, device=device,
                 amp=amp) for encoder in encoders.values()]
    done = map_jobs(run_dense, jobs, workers=local_workers(device, len(jobs)), threads=job_threads(device),
                    desc="dense tasks", progress=progress)
    runs = dict(zip(encoders, done))
    return runs, [row for method, run in runs.items() for row in tidy_rows(run.rows, method)]


def example_predictions(detector, segmenter: Segmenter, det_scenes: Scenes, seg_scenes: Scenes, index: int,
                        eps: float, steps: int, *, seed: int = 0, amp: bool = True, device: str = "cpu") -> dict:
    """One test scene, clean and attacked (detection PGD, segmentation SegPGD at `eps`): images, boxes, masks."""
    idx, seg_index = [index], index % len(seg_scenes)  # VOC: the segmentation set holds other images
    x = det_scenes.image_batch(idx).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in det_scenes.targets(idx)]
    x_det = attack_detection(detector, x, targets, eps, steps, amp=amp, seed=seed)
    xs, m = seg_scenes.image_batch([seg_index]).to(device), seg_scenes.mask_batch([seg_index]).to(device)
    x_seg = attack_segmentation(segmenter, xs, m, eps, steps, attack="segpgd", ignore_index=seg_scenes.ignore_index,
                                amp=amp, seed=seed)
    return {"eps": eps, "image": x[0].cpu(), "adv_det": x_det[0].cpu(), "adv_seg": x_seg[0].cpu(),
            "gt": det_scenes.targets(idx)[0], "gt_mask": seg_scenes.mask_batch([seg_index])[0],
            "det_clean": predict_boxes(detector, x)[0], "det_adv": predict_boxes(detector, x_det)[0],
            "seg_image": xs[0].cpu(), "seg_clean": predict_masks(segmenter, xs)[0],
            "seg_adv": predict_masks(segmenter, x_seg)[0]}
