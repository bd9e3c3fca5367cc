"""Dense tasks under attack: detection and segmentation heads on frozen encoders, PGD and SegPGD, mAP and mIoU.

Data. `cpu`/`smoke`: "Fashion scenes", canvases of `canvas` x `canvas` pixels (64 to 96) holding one to `max_items`
Fashion-MNIST items at random places, with exact class-labelled boxes and per-pixel masks derived from the items'
pixels (`compose_scenes`); train scenes come from train items, test scenes from test items. `paper`: Pascal VOC through
torchvision's `VOCDetection` / `VOCSegmentation` from a local root (never downloaded), resized to `canvas` x `canvas`.

Models (one recipe for all encoders). The encoder is frozen: its weights get no gradient and it stays in eval mode
whatever mode the wrapping model is put in, so its BatchNorm statistics never change (not in head training, not under
attack). Only the heads are trained (AdamW, warm-up + cosine; bfloat16 autocast, losses in float32), on encoder
features computed once per scene.
- Detection: torchvision's FCOS on the encoder's last feature map (one level, `encoder.feature_map(x)` -> 1x1
  projection -> FCOS head). Its transform is an identity: image_mean=[0], image_std=[1] (the encoder keeps its own
  Normalize layer), min_size = max_size = canvas and size_divisible=1, so nothing is resized or padded and every
  attack works on the [0, 1] canvas. FCOS has no random proposal sampling, so its training loss is deterministic.
- Segmentation: an FCN head (3x3 conv-BN-ReLU twice, 1x1 conv to classes) on the same feature map, upsampled
  bilinearly to the canvas.

Attacks (L-inf, random start, step = 2.5 * eps / steps, last iterate; the forward/backward passes of the attack run
under bfloat16 autocast when `amp`, every reported metric is computed in float32):
- detection: PGD ascending FCOS's summed training losses (classification + box regression + centerness),
- segmentation: PGD on the summed per-pixel cross-entropy and SegPGD (Gu et al. 2022), which weights the loss of
  correctly classified pixels by (1 - lambda_t) and of wrong ones by lambda_t, lambda_t = t / (2T).

Metrics: mAP at IoU 0.5 (torchmetrics `MeanAveragePrecision(iou_thresholds=[0.5])`, pycocotools backend), mIoU
(`MulticlassJaccardIndex`, macro over the classes incl. background) and pixel accuracy (`MulticlassAccuracy`, micro).

Boxes are float [x1, y1, x2, y2] in pixel-edge coordinates: an item covering columns c0..c1 (inclusive) has
x1 = c0, x2 = c1 + 1. Labels are 1..K-1 (0 is the background class of the masks).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import FASHION_CLASSES, DataMissingError, load_fashion_mnist, subset_indices

FASHION_SCENE_CLASSES = ["background"] + FASHION_CLASSES
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
FASHION_SPLIT_SIZES = {"train": 60000, "test": 10000}

# Metric names written in the `metric` column of the tidy table.
METRIC_MAP = "map50"
METRIC_MIOU = "miou"
METRIC_PIXEL_ACC = "pixel_acc"
REGIME = "frozen_encoder"


# ----------------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scenes:
    """A set of dense-task scenes.

    images: [S, C, H, W], float32 in [0, 1] (or uint8 0..255 to save memory; `image_batch` converts).
    masks: [S, H, W] int64 class per pixel (0 = background, `ignore_index` = not scored), or None (detection only).
    boxes: S tensors [k_i, 4] float32 (x1, y1, x2, y2), pixel-edge coordinates; None for segmentation-only sets.
    labels: S tensors [k_i] int64 in 1..len(class_names)-1; None with `boxes`.
    source: where the items came from (Fashion scenes: split, item ids into that split, top-left offsets).
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    boxes: list[torch.Tensor] | None
    labels: list[torch.Tensor] | None
    class_names: list[str]
    ignore_index: int | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def canvas(self) -> int:
        return int(self.images.shape[-1])

    def image_batch(self, idx) -> torch.Tensor:
        """Float32 images [n, C, H, W] in [0, 1] for indices `idx` (slice, list or tensor)."""
        x = self.images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def targets(self, idx: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """torchvision detection targets [{"boxes": [k,4] float32, "labels": [k] int64}] for scenes `idx`."""
        if self.boxes is None:
            raise ValueError("these scenes carry no boxes (a segmentation-only set); load the detection scenes")
        return [{"boxes": self.boxes[i], "labels": self.labels[i]} for i in idx]


def _tight_box(fg: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1), inclusive, of the True pixels of a [h, w] bool map; None if there are none."""
    rows, cols = torch.nonzero(fg.any(1)).flatten(), torch.nonzero(fg.any(0)).flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def compose_scenes(x_items: torch.Tensor, y_items: torch.Tensor, n_scenes: int, *, canvas: int = 64, seed: int = 0,
                   max_items: int = 4, mask_threshold: float = 0.1, max_tries: int = 50,
                   item_ids: torch.Tensor | None = None, split: str = "") -> Scenes:
    """Compose `n_scenes` scenes from items x_items [N, C, h, w] in [0, 1] with labels y_items [N] in 0..9.

    Each scene draws k ~ U{1..max_items} items (each item is used at most once over all scenes, in a seeded order) and
    places each at a seeded random offset where its tight box (of its nonzero pixels) overlaps no box placed before;
    an item that finds no free place in `max_tries` offsets is left out, so a scene holds 1..k items (the first item
    always fits). Because boxes are disjoint, the items' nonzero pixels never overlap and the canvas is their exact sum.
    Box = tight box of the item's nonzero pixels after placement; mask = item pixels above `mask_threshold`, set to
    label + 1. `item_ids` (default arange(N)) names each item in its source; they are recorded in `source`.
    Deterministic in `seed`.
    """
    if x_items.dim() != 4 or len(x_items) != len(y_items):
        raise ValueError(f"expected items [N, C, h, w] with N labels, got {tuple(x_items.shape)} and {len(y_items)}")
    n, c, h, w = x_items.shape
    if not 1 <= max_items:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if canvas < max(h, w):
        raise ValueError(f"canvas {canvas} is smaller than an item ({h}x{w}); use canvas >= {max(h, w)}")
    if float(x_items.min()) < 0 or float(x_items.max()) > 1:
        raise ValueError("items must lie in [0, 1]")
    item_ids = torch.arange(n) if item_ids is None else torch.as_tensor(item_ids)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=g)
    images = torch.zeros(n_scenes, c, canvas, canvas)
    masks = torch.zeros(n_scenes, canvas, canvas, dtype=torch.int64)
    boxes, labels, ids, offsets = [], [], [], []
    ptr = 0
    for s in range(n_scenes):
        k = int(torch.randint(1, max_items + 1, (1,), generator=g))
        if ptr + k > n:
            raise ValueError(f"{n} items are too few for {n_scenes} scenes of up to {max_items} items: pass more "
                             f"items (about {n_scenes * max_items}) or fewer scenes")
        placed, lab, sid, off = [], [], [], []
        for i in order[ptr:ptr + k].tolist():
            item = x_items[i]
            tb = _tight_box(item.amax(0) > 0)
            if tb is None:
                continue  # an empty item has no box
            r0, r1, c0, c1 = tb
            for _ in range(max_tries):
                top = int(torch.randint(0, canvas - h + 1, (1,), generator=g))
                left = int(torch.randint(0, canvas - w + 1, (1,), generator=g))
                box = (left + c0, top + r0, left + c1 + 1, top + r1 + 1)
                if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in placed):
                    break
            else:
                continue  # no free place: leave this item out
            images[s, :, top:top + h, left:left + w] += item  # nonzero pixels are disjoint: the sum is exact
            region = masks[s, top:top + h, left:left + w]
            region[item.amax(0) > mask_threshold] = int(y_items[i]) + 1
            placed.append(box)
            lab.append(int(y_items[i]) + 1)
            sid.append(int(item_ids[i]))
            off.append((top, left))
        ptr += k
        boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(lab, dtype=torch.int64))
        ids.append(torch.tensor(sid, dtype=torch.int64))
        offsets.append(torch.tensor(off, dtype=torch.int64).reshape(-1, 2))
    images.clamp_(0, 1)
    return Scenes(images, masks, boxes, labels, list(FASHION_SCENE_CLASSES), None,
                  {"split": split, "item_ids": ids, "offsets": offsets, "mask_threshold": mask_threshold,
                   "seed": seed})


def fashion_scenes(split: str, n_scenes: int, *, canvas: int = 64, max_items: int = 4, seed: int = 0,
                   data_root: str = "data", mask_threshold: float = 0.1) -> Scenes:
    """Fashion scenes built from Fashion-MNIST items of `split` ("train" or "test" items only, so the two sets of
    scenes share no item). Loads n_scenes * max_items items (a seeded subset) and calls `compose_scenes`;
    `source["item_ids"]` are indices into the full split as `load_fashion_mnist(data_root, split)` orders it."""
    if split not in FASHION_SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n_items = min(n_scenes * max_items, FASHION_SPLIT_SIZES[split])
    # A split-dependent seed so train and test items and layouts are drawn independently.
    split_seed = seed if split == "train" else seed + 1
    x, y = load_fashion_mnist(data_root, split, n=n_items, seed=split_seed)
    ids = subset_indices(FASHION_SPLIT_SIZES[split], n_items, split_seed)
    return compose_scenes(x, y, n_scenes, canvas=canvas, seed=split_seed, max_items=max_items, item_ids=ids,
                          split=split, mask_threshold=mask_threshold)


def voc_scenes(root: str, split: str, task: str, *, canvas: int = 512, n: int | None = None, seed: int = 0,
               year: str = "2012") -> Scenes:
    """Pascal VOC from a local root (torchvision layout: <root>/VOCdevkit/VOC<year>/...), never downloaded.

    task "detection" uses `VOCDetection` (boxes from the XML annotations, "difficult" objects dropped, images with no
    box left out), task "segmentation" uses `VOCSegmentation` (masks with 255 = boundary, not scored). split "train"
    reads image set "train", "test" reads "val". Images are resized to canvas x canvas (bilinear, antialiased; boxes
    scaled alike, masks nearest) and kept as uint8 to save memory. `n` (None or 0 = all) picks a seeded subset.
    """
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor

    if task not in ("detection", "segmentation"):
        raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
    image_set = {"train": "train", "test": "val"}.get(split)
    if image_set is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cls = datasets.VOCDetection if task == "detection" else datasets.VOCSegmentation
    try:
        ds = cls(str(root), year=year, image_set=image_set, download=False)
    except RuntimeError as e:
        raise DataMissingError(f"Pascal VOC {year} not found under {root}: set the parameter `voc_root` to the folder "
                               f"that holds VOCdevkit/VOC{year} (nothing is downloaded at run time). ({e})") from e
    idx = subset_indices(len(ds), n, seed).tolist()
    images, masks, boxes, labels = [], [], [], []
    for i in idx:
        img, ann = ds[i]
        x = pil_to_tensor(img.convert("RGB"))
        h, w = x.shape[-2:]
        x = F.interpolate(x[None].float(), size=(canvas, canvas), mode="bilinear", antialias=True,
                          align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        if task == "segmentation":
            m = pil_to_tensor(ann)[None].float()
            masks.append(F.interpolate(m, size=(canvas, canvas), mode="nearest")[0, 0].long())
        else:
            objs = ann["annotation"].get("object", [])
            objs = objs if isinstance(objs, list) else [objs]
            bx, lb = [], []
            for o in objs:
                if str(o.get("difficult", "0")) == "1":
                    continue
                b = o["bndbox"]
                # VOC boxes are 1-based inclusive pixel indices: edges are (xmin - 1, xmax).
                x1, y1, x2, y2 = float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])
                bx.append([x1 * canvas / w, y1 * canvas / h, x2 * canvas / w, y2 * canvas / h])
                lb.append(VOC_CLASSES.index(o["name"]))
            if not bx:
                continue
            boxes.append(torch.tensor(bx, dtype=torch.float32))
            labels.append(torch.tensor(lb, dtype=torch.int64))
        images.append(x)
    if not images:
        raise DataMissingError(f"no usable VOC {task} images under {root} (image set {image_set!r})")
    return Scenes(torch.stack(images), torch.stack(masks) if masks else None, boxes or None, labels or None,
                  list(VOC_CLASSES), 255 if task == "segmentation" else None, {"split": split, "voc_index": idx})


def load_dense_data(dataset: str, split: str, *, n_scenes: int, canvas: int, max_items: int = 4, seed: int = 0,
                    data_root: str = "data", voc_root: str | None = None) -> tuple[Scenes, Scenes]:
    """(detection scenes, segmentation scenes) of `split` for `dataset` "fashion_scenes" (the same object twice) or
    "voc" (VOCDetection and VOCSegmentation, which hold different images)."""
    if dataset == "fashion_scenes":
        sc = fashion_scenes(split, n_scenes, canvas=canvas, max_items=max_items, seed=seed, data_root=data_root)
        return sc, sc
    if dataset == "voc":
        if not voc_root:
            raise DataMissingError("dataset 'voc' needs the parameter `voc_root` (the folder holding VOCdevkit/)")
        n = n_scenes or None
        return (voc_scenes(voc_root, split, "detection", canvas=canvas, n=n, seed=seed),
                voc_scenes(voc_root, split, "segmentation", canvas=canvas, n=n, seed=seed))
    raise ValueError(f"unknown dataset {dataset!r}; choose 'fashion_scenes' or 'voc'")


# ----------------------------------------------------------------------------------------------------------- encoders
def load_encoders(profile: str, methods: Sequence[str], *, progress: bool = False,
                  device: str = "cpu") -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder in eval mode on `device`, info)}: the encoders of notebook 01 for `profile`
    (`utils.models.pretrained_encoders`: a cache hit once notebook 01 ran; `paper`: the official checkpoints)."""
    from utils.models import pretrained_encoders

    return {m: (enc.to(device).eval(), dict(info or {}))
            for m, (enc, info) in pretrained_encoders(profile, list(methods), progress=progress).items()}


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
    p = next(encoder.parameters())
    with torch.no_grad():
        h = encoder.feature_map(torch.zeros(1, in_chans, canvas, canvas, device=p.device)).shape[-1]
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
def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _fcos_losses(model, feats: torch.Tensor, image_size: tuple[int, int], targets: list[dict[str, torch.Tensor]],
                 amp: bool = False) -> dict[str, torch.Tensor]:
    """FCOS training losses from backbone features [N, D', h, w] (what `FCOS.forward` computes in train mode after
    its identity transform and the backbone). The head runs under bfloat16 autocast when `amp`; the losses are
    computed in float32."""
    from torchvision.models.detection.image_list import ImageList

    with _autocast(feats.device, amp):
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
    with _autocast(images.device, amp):
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
def pgd_linf(loss_fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, eps: float, steps: int, *,
             step_size: float | None = None, random_start: bool = True, seed: int = 0,
             flags: set | None = None) -> torch.Tensor:
    """L-inf PGD ascent on `loss_fn(x_adv, t)` (a scalar to maximize; t = iteration 0..steps-1) from x [N, C, H, W]
    in [0, 1]; returns the last iterate, inside the eps-ball and [0, 1]. Step = 2.5 * eps / steps unless given;
    random start uniform in the ball (seeded). eps = 0 or steps = 0 returns x unchanged. NaN or all-zero input
    gradients add "nan_grad" / "zero_grad" to `flags` (signs of a broken or masked gradient)."""
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if random_start:
        g = torch.Generator(device=x.device).manual_seed(int(seed))
        delta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
        x_adv = (x + delta).clamp(0, 1)
    else:
        x_adv = x.clone()
    for t in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv, t), x_adv)
        if flags is not None:
            if not torch.isfinite(grad).all():
                flags.add("nan_grad")
            elif not grad.abs().amax(dim=(1, 2, 3)).gt(0).all():
                flags.add("zero_grad")
        grad = torch.nan_to_num(grad)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def attack_detection(model, x: torch.Tensor, targets, eps: float, steps: int, *, amp: bool = True, seed: int = 0,
                     flags: set | None = None) -> torch.Tensor:
    """PGD (L-inf) on FCOS's summed training losses; returns adversarial images [N, C, H, W] in [0, 1]."""
    return pgd_linf(lambda xa, t: sum(detection_losses(model, xa, targets, amp).values()), x, eps, steps, seed=seed,
                    flags=flags)


def attack_segmentation(model, x: torch.Tensor, masks: torch.Tensor, eps: float, steps: int, *, attack: str = "pgd",
                        ignore_index: int | None = None, amp: bool = True, seed: int = 0,
                        flags: set | None = None) -> torch.Tensor:
    """PGD on the summed per-pixel CE (attack="pgd") or SegPGD (attack="segpgd"); adversarial images in [0, 1]."""
    if attack not in ("pgd", "segpgd"):
        raise ValueError(f"attack must be 'pgd' or 'segpgd', got {attack!r}")

    def loss(xa, t):
        with _autocast(xa.device, amp):
            logits = model(xa)
        if attack == "pgd":
            return segmentation_ce(logits, masks, ignore_index)
        return segpgd_loss(logits, masks, t, steps, ignore_index)

    return pgd_linf(loss, x, eps, steps, seed=seed, flags=flags)


# ----------------------------------------------------------------------------------------------------------- training
def encode_features(encoder: nn.Module, scenes: Scenes, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Frozen encoder's feature maps [S, D, h, w] (float32, on CPU) for every scene, computed once."""
    encoder.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(scenes), batch_size):
            out.append(encoder.feature_map(scenes.image_batch(slice(i, i + batch_size)).to(device)).float().cpu())
    return torch.cat(out)


def _feature_source(encoder, scenes, batch_size, device, features, cache_limit_bytes=2 ** 31):
    """A function idx -> features [n, D, h, w] on `device`: from a given or freshly built cache when it fits in
    `cache_limit_bytes`, otherwise recomputed per batch (large sets, e.g. VOC at 512 px)."""
    if features is None:
        with torch.no_grad():
            f0 = encoder.feature_map(scenes.image_batch(slice(0, 1)).to(device))
        if f0.numel() * 4 * len(scenes) <= cache_limit_bytes:
            features = encode_features(encoder, scenes, batch_size, device)
    if features is not None:
        return lambda idx: features[idx].to(device)

    def compute(idx):
        with torch.no_grad():
            return encoder.feature_map(scenes.image_batch(idx).to(device)).float()
    return compute


def _optimizer(params, lr: float, total_steps: int):
    """AdamW; linear warm-up over the first 10 % of the steps (at least one), then cosine decay to zero."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warm = max(1, total_steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_detector(model, scenes: Scenes, *, epochs: int, batch_size: int, lr: float = 2e-3, seed: int = 0,
                   device: str = "cpu", features: torch.Tensor | None = None, amp: bool = False,
                   progress: bool = False) -> list[float]:
    """Train the detector's projection and FCOS head (encoder frozen) on `scenes` with FCOS's summed losses;
    AdamW, warm-up + cosine schedule. Returns the mean loss per epoch. The model is left in eval mode."""
    from tqdm.auto import tqdm

    feats_of = _feature_source(model.backbone.encoder, scenes, batch_size, device, features)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(scenes) / batch_size)
    opt, sched = _optimizer(params, lr, epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(int(seed))
    size = (scenes.canvas, scenes.canvas)
    history = []
    model.train()
    for _ in tqdm(range(epochs), desc="detector head", disable=not progress, leave=False):
        perm, total = torch.randperm(len(scenes), generator=g), 0.0
        for i in range(0, len(scenes), batch_size):
            idx = perm[i:i + batch_size]
            targets = [{k: v.to(device) for k, v in t.items()} for t in scenes.targets(idx.tolist())]
            f = feats_of(idx)
            with _autocast(f.device, amp):
                feats = model.backbone.project(f)
            loss = sum(_fcos_losses(model, feats, size, targets, amp).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(scenes))
    model.eval()
    return history


def train_segmenter(model: Segmenter, scenes: Scenes, *, epochs: int, batch_size: int, lr: float = 2e-3,
                    seed: int = 0, device: str = "cpu", features: torch.Tensor | None = None, amp: bool = False,
                    progress: bool = False) -> list[float]:
    """Train the FCN head (encoder frozen) with mean per-pixel cross-entropy; AdamW, warm-up + cosine schedule.
    Returns the mean loss per epoch. The model is left in eval mode."""
    from tqdm.auto import tqdm

    if scenes.masks is None:
        raise ValueError("these scenes carry no masks (a detection-only set); load the segmentation scenes")
    feats_of = _feature_source(model.encoder, scenes, batch_size, device, features)
    steps_per_epoch = math.ceil(len(scenes) / batch_size)
    opt, sched = _optimizer(model.head.parameters(), lr, epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(int(seed))
    ignore = -100 if scenes.ignore_index is None else scenes.ignore_index
    size = (scenes.canvas, scenes.canvas)
    history = []
    model.train()
    for _ in tqdm(range(epochs), desc="segmentation head", disable=not progress, leave=False):
        perm, total = torch.randperm(len(scenes), generator=g), 0.0
        for i in range(0, len(scenes), batch_size):
            idx = perm[i:i + batch_size]
            f = feats_of(idx)
            with _autocast(f.device, amp):
                logits = model.from_features(f, size)
            loss = F.cross_entropy(logits.float(), scenes.masks[idx].to(device), ignore_index=ignore)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(scenes))
    model.eval()
    return history


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


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield list(range(i, min(n, i + batch_size)))


def _row(task, attack, eps, steps, metric, value, n, flags):
    return {"task": task, "attack": attack, "norm": "linf", "eps": float(eps), "steps": int(steps), "restarts": 1,
            "accuracy": float(value), "n": int(n), "flags": ";".join(sorted(flags)),
            "metric": metric}


def evaluate_detection(model, scenes: Scenes, eps_list: Sequence[float], *, steps: int, batch_size: int = 32,
                       seed: int = 0, amp: bool = True, device: str = "cpu", progress: bool = False) -> list[dict]:
    """mAP@0.5 of `model` on `scenes` for every eps in `eps_list` (PGD on the detection loss; eps = 0 is the clean
    evaluation). Returns tidy rows (task "detection", attack "pgd", metric "map50")."""
    from tqdm.auto import tqdm

    rows = []
    for eps in tqdm(list(eps_list), desc="detection eps", disable=not progress, leave=False):
        metric, flags = _map_metric(), set()
        for b, idx in enumerate(_batches(len(scenes), batch_size)):
            x = scenes.image_batch(idx).to(device)
            targets = scenes.targets(idx)
            dev_t = [{k: v.to(device) for k, v in t.items()} for t in targets]
            x_adv = attack_detection(model, x, dev_t, eps, steps, amp=amp, seed=seed + b, flags=flags)
            metric.update(predict_boxes(model, x_adv), targets)
        rows.append(_row("detection", "pgd", eps, steps, METRIC_MAP, metric.compute()["map"], len(scenes), flags))
    return rows


def evaluate_segmentation(model: Segmenter, scenes: Scenes, eps_list: Sequence[float], *, steps: int,
                          attacks: Sequence[str] = ("pgd", "segpgd"), batch_size: int = 32, seed: int = 0,
                          amp: bool = True, device: str = "cpu", progress: bool = False) -> list[dict]:
    """mIoU and pixel accuracy of `model` on `scenes` for every attack and eps (eps = 0 is the clean evaluation).
    Returns tidy rows (task "segmentation", metric "miou" and "pixel_acc")."""
    from tqdm.auto import tqdm

    if scenes.masks is None:
        raise ValueError("these scenes carry no masks (a detection-only set); load the segmentation scenes")
    rows = []
    for attack in attacks:
        for eps in tqdm(list(eps_list), desc=f"segmentation {attack} eps", disable=not progress, leave=False):
            miou, pacc = _seg_metrics(scenes.num_classes, scenes.ignore_index)
            flags = set()
            for b, idx in enumerate(_batches(len(scenes), batch_size)):
                x, m = scenes.image_batch(idx).to(device), scenes.masks[idx].to(device)
                x_adv = attack_segmentation(model, x, m, eps, steps, attack=attack, ignore_index=scenes.ignore_index,
                                            amp=amp, seed=seed + b, flags=flags)
                pred = predict_masks(model, x_adv)
                miou.update(pred, scenes.masks[idx])
                pacc.update(pred, scenes.masks[idx])
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
    segmentation scenes) pairs as `load_dense_data` returns them. `seconds` holds the wall time of each part."""
    sec = {}
    (det_train, seg_train), (det_test, seg_test) = train, test
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    detector = build_detector(encoder, det_train.num_classes, det_train.canvas,
                              in_chans=det_train.images.shape[1]).to(device)
    segmenter = build_segmenter(encoder, seg_train.num_classes).to(device)
    feats = encode_features(encoder, det_train, batch_size, device) if det_train is seg_train else None
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
    return [{**r, "model": model, "regime": REGIME} for r in rows]


def to_frame(rows: list[dict], rise_tol: float = 0.01) -> pd.DataFrame:
    """Tidy DataFrame: utils.results.TIDY_COLUMNS + `metric`. A value more than `rise_tol` above the lowest value at
    a smaller eps (same model, task, attack, metric) gets the sanity flag "rises_with_eps": a larger ball contains
    the smaller one, so a sound attack never does worse there (last-iterate PGD may, by a little)."""
    from utils.results import TIDY_COLUMNS

    df = pd.DataFrame(rows)[TIDY_COLUMNS + ["metric"]].copy()
    for _, g in df.groupby(["model", "task", "attack", "metric"], sort=False):
        g = g.sort_values("eps")
        best = g["accuracy"].cummin().shift(1)
        for i in g.index[(g["accuracy"] > best + rise_tol).to_numpy()]:
            flags = [f for f in str(df.at[i, "flags"] or "").split(";") if f]
            df.at[i, "flags"] = ";".join(sorted(set(flags + ["rises_with_eps"])))
    return df


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per encoder: clean and strongest-attack (largest eps) mAP@0.5, mIoU (PGD, SegPGD) and pixel accuracy."""
    eps_max = df["eps"].max()
    cols = {}
    for (task, attack, metric), name in {("detection", "pgd", METRIC_MAP): "mAP50",
                                         ("segmentation", "pgd", METRIC_MIOU): "mIoU",
                                         ("segmentation", "segpgd", METRIC_MIOU): "mIoU",
                                         ("segmentation", "segpgd", METRIC_PIXEL_ACC): "pixel_acc"}.items():
        sub = df[(df["task"] == task) & (df["attack"] == attack) & (df["metric"] == metric)]
        piv = sub.pivot_table(index="model", columns="eps", values="accuracy", sort=False)
        if name + " clean" not in cols:
            cols[name + " clean"] = piv[0.0]
        cols[f"{name} {attack} {eps_max * 255:g}/255"] = piv[eps_max]
    return pd.DataFrame(cols).round(3)


# ----------------------------------------------------------------------------------------------------------- gaps
# Which curve stands for each task in the gap comparison: (attacks, metric). With several attacks the per-model,
# per-eps minimum counts (the worst case over the attacks run, as robust accuracy takes it).
GAP_CURVES = {"classification": (("pgd",), "accuracy"), "detection": (("pgd",), METRIC_MAP),
              "segmentation": (("pgd", "segpgd"), METRIC_MIOU)}


def classification_rows(path: str | Path) -> pd.DataFrame | None:
    """Notebook 03's linear-evaluation L-inf PGD rows on Fashion-MNIST as task "classification", metric "accuracy";
    None when the table does not exist (yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    sel = df[(df["attack"] == "pgd") & (df["norm"] == "linf") & (df["task"] == "fashion_mnist")
             & (df["regime"] == "linear")].copy()
    sel["task"], sel["metric"] = "classification", "accuracy"
    return sel


def ssl_gaps(df: pd.DataFrame, supervised: str = "supervised", ssl: Sequence[str] | None = None,
             min_clean: float = 0.05) -> pd.DataFrame:
    """SSL-minus-supervised gaps per task and eps for the curves in GAP_CURVES.

    Columns: task, attack, metric, eps, ssl_mean, supervised, gap (ssl_mean - supervised, in the metric's units) and
    rel_gap (the same for the retained fraction metric(eps) / metric(0), which puts tasks with different clean levels
    on one scale; NaN where a model's clean value is below `min_clean`, since a ratio of near-zero numbers is noise).
    `ssl`: the SSL models to average (default: every model but `supervised`). Tasks whose supervised or SSL rows
    are missing are left out."""
    out = []
    for task, (attacks, metric) in GAP_CURVES.items():
        sub = df[(df["task"] == task) & df["attack"].isin(attacks) & (df["metric"] == metric)]
        piv = sub.pivot_table(index="eps", columns="model", values="accuracy", aggfunc="min").sort_index()
        attack = "min(" + ", ".join(attacks) + ")" if len(attacks) > 1 else attacks[0]
        ssl_cols = [c for c in piv.columns if c != supervised and (ssl is None or c in ssl)]
        if supervised not in piv.columns or not ssl_cols:
            continue
        clean = piv.loc[piv.index.min()]
        rel = piv / clean.where(clean >= min_clean)
        for eps in piv.index:
            out.append({"task": task, "attack": attack, "metric": metric, "eps": float(eps),
                        "ssl_mean": piv.loc[eps, ssl_cols].mean(), "supervised": piv.loc[eps, supervised],
                        "gap": piv.loc[eps, ssl_cols].mean() - piv.loc[eps, supervised],
                        "rel_gap": rel.loc[eps, ssl_cols].mean(skipna=False) - rel.loc[eps, supervised]})
    return pd.DataFrame(out, columns=["task", "attack", "metric", "eps", "ssl_mean", "supervised", "gap",
                                      "rel_gap"])


def shared_eps(gaps: pd.DataFrame) -> list[float]:
    """The nonzero eps (in units of 1/255, rounded) at which every task in `gaps` was evaluated, ascending."""
    common = None
    for _, g in gaps.groupby("task"):
        e = {round(v * 255, 6) for v in g["eps"] if v > 0}
        common = e if common is None else common & e
    return sorted(common or [])


def gap_summary(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per task: the gap and the retained-fraction gap averaged over the shared nonzero eps (the area between the
    SSL-mean and supervised curves divided by the number of eps), plus the clean gap."""
    eps255 = shared_eps(gaps)
    rows = []
    for task, g in gaps.groupby("task", sort=False):
        at = g[np.isin(np.round(g["eps"] * 255, 6), eps255)]
        rows.append({"task": task, "metric": g["metric"].iloc[0], "attack": g["attack"].iloc[0],
                     "clean_gap": g.loc[g["eps"].idxmin(), "gap"], "mean_gap": at["gap"].mean(),
                     "mean_rel_gap": at["rel_gap"].mean(skipna=False), "n_eps": len(at)})
    return pd.DataFrame(rows)


def gap_verdict(gaps: pd.DataFrame) -> str:
    """Sentences, computed from `gaps`, on whether the SSL advantage under attack shrinks in the dense tasks compared
    with classification (retained-fraction gap averaged over the shared nonzero eps)."""
    eps255 = shared_eps(gaps)
    if not eps255:
        return "No nonzero eps is shared by the tasks: no comparison is possible."
    summ = gap_summary(gaps).set_index("task")
    eps_txt = ", ".join(f"{e:g}" for e in eps255)
    lines = [f"SSL mean minus supervised, averaged over eps = {eps_txt} (/255):"]
    for t, r in summ.iterrows():
        lines.append(f"  {t:14s} {r['mean_rel_gap']:+.3f} in retained fraction ({r['mean_gap']:+.3f} {r['metric']};"
                     f" clean gap {r['clean_gap']:+.3f})")
    dense_tasks = [t for t in ("detection", "segmentation") if t in summ.index]
    if "classification" not in summ.index:
        lines.append("Notebook 03's table is missing: the dense gaps cannot be set against classification here.")
        return "\n".join(lines)
    cls = summ.loc["classification", "mean_rel_gap"]
    if np.isnan(cls) or any(np.isnan(summ.loc[t, "mean_rel_gap"]) for t in dense_tasks):
        lines.append("A clean metric is too low (< 0.05) for a retained fraction: no verdict in this setting.")
    elif cls <= 0:
        lines.append(f"The SSL encoders show no robustness advantage in classification ({cls:+.3f}), so there is no "
                     f"advantage to shrink in this setting.")
    else:
        for t in dense_tasks:
            d = summ.loc[t, "mean_rel_gap"]
            word = "shrinks" if d < cls else "does not shrink"
            lines.append(f"In {t} the SSL advantage {word} ({d:+.3f} vs {cls:+.3f} in classification).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- figures
def plot_dense_vs_eps(df: pd.DataFrame, title: str | None = None):
    """mAP@0.5 (detection, PGD) and mIoU (segmentation, PGD and SegPGD) against eps, one line per encoder."""
    from utils.plots import curves_vs_eps

    panels = {("detection", "pgd", METRIC_MAP): "detection: mAP@0.5, PGD",
              ("segmentation", "pgd", METRIC_MIOU): "segmentation: mIoU, PGD",
              ("segmentation", "segpgd", METRIC_MIOU): "segmentation: mIoU, SegPGD"}
    parts = []
    for (task, attack, metric), name in panels.items():
        sub = df[(df["task"] == task) & (df["attack"] == attack) & (df["metric"] == metric)].copy()
        sub["panel"] = name
        parts.append(sub)
    data = pd.concat(parts)
    fig = curves_vs_eps(data, col="panel", ylabel="mAP@0.5 / mIoU", title=title)
    for ax in fig.axes:  # the metrics sit well below 1 here: use the room
        ax.set_ylim(0, min(1.0, 1.15 * float(data["accuracy"].max())) + 0.01)
    return fig


def plot_gap_dense_vs_cls(gaps: pd.DataFrame, have_classification: bool):
    """SSL-minus-supervised gap against eps per task: absolute (metric units) and relative (retained fraction)."""
    import matplotlib.pyplot as plt

    styles = {"classification": ("k", "o"), "detection": ("tab:blue", "s"), "segmentation": ("tab:orange", "^")}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for task, g in gaps.groupby("task", sort=False):
        g = g.sort_values("eps")
        color, marker = styles.get(task, ("grey", "x"))
        label = f"{task} ({g['metric'].iloc[0]}, {g['attack'].iloc[0]})"
        axes[0].plot(g["eps"] * 255, g["gap"], color=color, marker=marker, label=label)
        axes[1].plot(g["eps"] * 255, g["rel_gap"], color=color, marker=marker, label=label)
    dense_eps = gaps.loc[gaps["task"] != "classification", "eps"]
    for ax, yl in zip(axes, ["SSL mean - supervised (metric units)", "SSL - supervised (retained fraction)"]):
        ax.axhline(0, color="grey", lw=0.8)
        if len(dense_eps):  # notebook 03 may go to larger eps: show the range the dense tasks share
            ax.set_xlim(-0.3, 255 * float(dense_eps.max()) * 1.05 + 0.3)
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel(yl)
    axes[1].legend(fontsize=8)
    fig.suptitle("SSL advantage: dense tasks beside classification" if have_classification else
                 "SSL advantage in the dense tasks only (notebook 03's classification table is missing)")
    fig.tight_layout()
    return fig


def example_predictions(detector, segmenter: Segmenter, det_scenes: Scenes, seg_scenes: Scenes, index: int,
                        eps: float, steps: int, *, seed: int = 0, amp: bool = True, device: str = "cpu") -> dict:
    """One test scene, clean and attacked (detection PGD, segmentation SegPGD at `eps`): images, boxes, masks."""
    idx, seg_index = [index], index % len(seg_scenes)  # VOC: the segmentation set holds other images
    x = det_scenes.image_batch(idx).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in det_scenes.targets(idx)]
    x_det = attack_detection(detector, x, targets, eps, steps, amp=amp, seed=seed)
    xs, m = seg_scenes.image_batch([seg_index]).to(device), seg_scenes.masks[[seg_index]].to(device)
    x_seg = attack_segmentation(segmenter, xs, m, eps, steps, attack="segpgd", ignore_index=seg_scenes.ignore_index,
                                amp=amp, seed=seed)
    return {"eps": eps, "image": x[0].cpu(), "adv_det": x_det[0].cpu(), "adv_seg": x_seg[0].cpu(),
            "gt": det_scenes.targets(idx)[0], "gt_mask": seg_scenes.masks[seg_index],
            "det_clean": predict_boxes(detector, x)[0], "det_adv": predict_boxes(detector, x_det)[0],
            "seg_image": xs[0].cpu(), "seg_clean": predict_masks(segmenter, xs)[0],
            "seg_adv": predict_masks(segmenter, x_seg)[0]}


def plot_examples(ex: dict, class_names: list[str], score_min: float = 0.3, title: str | None = None):
    """Top row: ground-truth boxes, clean and adversarial detections (score >= score_min); bottom row: masks."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    k = len(class_names)
    colors = [(0, 0, 0, 0)] + [plt.get_cmap("tab20")(i % 20) for i in range(k - 1)]
    cmap = ListedColormap(colors)

    def show(ax, img):
        img = img.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")

    def boxes(ax, d, scored):
        for j in range(len(d["boxes"])):
            if scored and float(d["scores"][j]) < score_min:
                continue
            x1, y1, x2, y2 = d["boxes"][j].tolist()
            lab = int(d["labels"][j])
            c = colors[lab] if 0 < lab < k else (1, 1, 1, 1)
            # Boxes are pixel-edge coordinates; imshow centres pixel i at i, so shift by half a pixel.
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=c, lw=1.5))
            txt = class_names[lab] if 0 <= lab < k else str(lab)
            if scored:
                txt += f" {float(d['scores'][j]):.2f}"
            ax.text(x1 - 0.5, y1 - 1.5, txt, color=c, fontsize=6, va="bottom")

    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    eps_txt = f"{ex['eps'] * 255:g}/255"
    for ax, img, d, scored, t in [(axes[0, 0], ex["image"], ex["gt"], False, "ground truth"),
                                  (axes[0, 1], ex["image"], ex["det_clean"], True, "clean detections"),
                                  (axes[0, 2], ex["adv_det"], ex["det_adv"], True, f"PGD eps={eps_txt}")]:
        show(ax, img)
        boxes(ax, d, scored)
        ax.set_title(t, fontsize=9)
    for ax, img, m, t in [(axes[1, 0], ex["seg_image"], ex["gt_mask"], "ground-truth mask"),
                          (axes[1, 1], ex["seg_image"], ex["seg_clean"], "clean segmentation"),
                          (axes[1, 2], ex["adv_seg"], ex["seg_adv"], f"SegPGD eps={eps_txt}")]:
        show(ax, img)
        mm = m.clone()
        mm[(mm < 0) | (mm >= k)] = 0
        ax.imshow(mm.numpy(), cmap=cmap, vmin=0, vmax=k - 1, alpha=0.55, interpolation="nearest")
        ax.set_title(t, fontsize=9)
    present = sorted(set(ex["gt_mask"].unique().tolist()) | set(ex["seg_clean"].unique().tolist())
                     | set(ex["seg_adv"].unique().tolist()))
    handles = [Rectangle((0, 0), 1, 1, color=colors[c]) for c in present if 0 < c < k]
    fig.legend(handles, [class_names[c] for c in present if 0 < c < k], loc="lower center", ncol=6, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_scenes(scenes: Scenes, n: int = 6, title: str | None = None):
    """The first `n` scenes with their boxes and masks (a look at the data)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    k = scenes.num_classes
    colors = [(0, 0, 0, 0)] + [plt.get_cmap("tab20")(i % 20) for i in range(k - 1)]
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.0))
    for j in range(n):
        img = scenes.image_batch([j])[0].permute(1, 2, 0).numpy()
        for r in range(2):
            axes[r, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            axes[r, j].axis("off")
        if scenes.boxes is not None:
            for b, lab in zip(scenes.boxes[j].tolist(), scenes.labels[j].tolist()):
                axes[0, j].add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                               ec=colors[lab], lw=1.2))
                axes[0, j].text(b[0] - 0.5, b[1] - 1, scenes.class_names[lab], color=colors[lab], fontsize=6)
        if scenes.masks is not None:
            m = scenes.masks[j].clone()
            m[(m < 0) | (m >= k)] = 0
            axes[1, j].imshow(m.numpy(), cmap=ListedColormap(colors), vmin=0, vmax=k - 1, alpha=0.6,
                              interpolation="nearest")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
