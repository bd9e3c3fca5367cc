"""The one pretraining loop shared by the seven SSL methods and the supervised baseline, with its cache.

`pretrain_or_load(method, ...) -> (encoder, info)` trains an encoder with any method of `utils.ssl.METHODS` (or loads
it from the cache); it is resumable after a kill, deterministic given the seed, and stops on a NaN loss
(`utils.runtime.TrainingDivergedError`). `training_params` is the cache key, `encoder_paths` where a run's files
live, `load_epoch_checkpoint` reads the snapshots a run kept.

Cache key: everything that determines the trained weights (`training_params`), hashed by `utils.store.param_hash`;
`SSL_CODE_VERSION` joins it so that a code change that changes the weights invalidates old files. Precision: bfloat16
autocast + channels_last where `utils.runtime.use_bf16("cpu")` says so (CPUs with bf16 units), float32 elsewhere.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from utils.augment import make_augment
from utils.data import load_classification, task_info
from utils.imageset import image_batches
from utils.models import build_encoder
from utils.runtime import SEED_STREAM_EPOCH, TrainingDivergedError, autocast, derive_seed, lr_factor, use_bf16
from utils.ssl import get_method
from utils.store import (CorruptFileError, atomic_save, atomic_write_json, file_sha256, load_tensors, param_hash,
                         provenance, quarantine, read_json_checked, save_tensors, tensors_digest)

# Bump when a change in this module or in utils.ssl changes the weights a given set of parameters trains
# (invalidates the cache).
SSL_CODE_VERSION = 1
# The learning-rate schedule of pretraining (`utils.runtime.lr_factor`): 10 % linear warm-up, cosine decay to 1 %.
WARMUP, LR_FLOOR = 0.1, 0.01


def training_params(method: str, *, arch: str, n_pretrain: int, epochs: int, batch_size: int, lr: float,
                    augmentations: Sequence[str], seed: int, weight_decay: float = 1e-5,
                    hparams: dict | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
                    task: str = "fashion_mnist", image_size: int | None = None) -> dict:
    """Everything that determines the trained weights (the cache key): the hash of this dict names the files.

    The images are the first `n_pretrain` of the train split of `task` (at `image_size`); the task and size join the
    key for any task but Fashion-MNIST (whose keys predate them, so its caches stay valid). With explicit `data` a
    fingerprint of its bytes joins it (`data_sha256`: images as float32, then labels).
    """
    spec = get_method(method)
    extra = {} if data is None else {"data_sha256": tensors_digest(data[0].float(), data[1])}
    if task != "fashion_mnist":
        extra.update(task=task, image_size=image_size)
    return {**extra, "method": method, "arch": arch, "n_pretrain": int(n_pretrain), "epochs": int(epochs),
            "batch_size": int(batch_size), "lr": float(lr), "augmentations": list(augmentations), "seed": int(seed),
            "weight_decay": float(weight_decay), "hparams": spec.hparams(hparams),
            "view_families": spec.view_families(augmentations), "augment_kwargs": spec.augment_kwargs,
            "code_version": SSL_CODE_VERSION}


def encoder_paths(cache_dir: str | Path, params: dict) -> dict[str, Path]:
    """Where a run's files live: final encoder (safetensors), JSON sidecar, resumable checkpoint, epoch snapshots
    (`snapshot` is a template: `.format(epoch=e)`)."""
    stem = f"{params['method']}-{param_hash(params)}"
    d = Path(cache_dir) / "encoders"
    return {"encoder": d / f"{stem}.safetensors", "sidecar": d / f"{stem}.json", "checkpoint": d / f"{stem}.ckpt.pt",
            "snapshot": d / f"{stem}-epoch{{epoch}}.safetensors"}


def save_encoder(encoder: nn.Module, path: str | Path) -> Path:
    """An encoder's weights as float32 safetensors on CPU, written atomically, with their sha256 in the header."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
             for k, v in encoder.state_dict().items()}
    return save_tensors(path, state)


def task_encoder(arch: str, task: str = "fashion_mnist") -> nn.Module:
    """A fresh `arch` encoder for the images of `task`: its channels, and its pixel statistics as the normalization
    layer inside."""
    info = task_info(task)
    return build_encoder(arch, info.channels, info.mean, info.std)


def load_encoder(arch: str, path: str | Path, task: str = "fashion_mnist") -> nn.Module:
    """A `task_encoder(arch, task)` with the weights of `path` (written by `save_encoder`): eval mode, float32.
    `utils.store.CorruptFileError` naming the file when it is damaged."""
    state, _ = load_tensors(path)
    encoder = task_encoder(arch, task)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as e:
        raise CorruptFileError(path, f"its weights do not fit arch {arch!r} ({str(e)[:160]})") from None
    return encoder.float().eval()


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_save(lambda tmp: torch.save(state, tmp), path)


def _load_checkpoint(path: Path, run_hash: str) -> dict | None:
    """The resumable checkpoint at `path` when it is readable and of this run; a damaged one is moved aside."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not {"epoch", "model", "optimizer", "loss_history"} <= set(ckpt):
            raise ValueError(f"a {type(ckpt).__name__} without the checkpoint's keys")
    except Exception as e:  # noqa: BLE001 - truncated zip, empty file, foreign pickle: all mean "start over"
        quarantine(path, f"unreadable pretraining checkpoint ({type(e).__name__}: {str(e)[:120]})")
        return None
    return ckpt if ckpt.get("param_hash") == run_hash else None


def _cached_encoder(arch: str, paths: dict, snap: dict[int, Path], task: str) -> tuple[nn.Module, dict] | None:
    """(encoder, sidecar) of a finished run when its files pass their checks: the sidecar (written last) records the
    sha256 of the weights and of every snapshot. A damaged or unpaired file is moved aside (None: retrain; training
    is deterministic, so the weights come back the same)."""
    try:
        side = read_json_checked(paths["sidecar"], dict)
        want = side.get("weights_sha256")
        if want is None:
            raise CorruptFileError(paths["sidecar"], "no weights_sha256 (written before digests were kept)")
        if file_sha256(paths["encoder"]) != want:
            raise CorruptFileError(paths["encoder"], "sha256 differs from the one its sidecar recorded (damaged, or "
                                                     "not the file the run wrote)")
        for e, p in snap.items():
            if file_sha256(p) != side.get("snapshots_sha256", {}).get(str(e)):
                quarantine(p, f"snapshot sha256 differs from the one {paths['sidecar'].name} recorded")
                return None
        return load_encoder(arch, paths["encoder"], task), side
    except CorruptFileError as e:
        for p in (paths["encoder"], paths["sidecar"]):
            quarantine(p, f"{e} (the run's files are kept aside together)")
        return None


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch`'s shuffling and augmentations, a function of (seed, epoch) only, so a resumed
    run replays exactly the stream an uninterrupted run would have seen."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, SEED_STREAM_EPOCH))


def load_epoch_checkpoint(method: str, epoch: int, *, arch: str, n_pretrain: int, epochs: int, batch_size: int,
                          lr: float, augmentations: Sequence[str], seed: int, cache_dir: str | Path,
                          weight_decay: float = 1e-5, hparams: dict | None = None,
                          data: tuple[torch.Tensor, torch.Tensor] | None = None, task: str = "fashion_mnist",
                          sources: dict | None = None) -> nn.Module:
    """The encoder snapshot kept at `epoch` of the run `pretrain_or_load(method, ..., keep_epochs=[epoch])` made.

    A snapshot is the `epochs`-long run stopped after `epoch` epochs (same learning-rate schedule), not a separate
    `epoch`-long run. Returns an encoder in eval mode, on CPU, float32.
    """
    params = training_params(method, arch=arch, n_pretrain=n_pretrain, epochs=epochs, batch_size=batch_size, lr=lr,
                             augmentations=augmentations, seed=seed, weight_decay=weight_decay, hparams=hparams,
                             data=data, task=task, image_size=(sources or {}).get("image_size"))
    path = Path(str(encoder_paths(cache_dir, params)["snapshot"]).format(epoch=epoch))
    fix = (f"run pretrain_or_load(..., keep_epochs=[{epoch}]) with the same parameters first (it retrains if "
           f"needed)")
    if not path.is_file():
        raise FileNotFoundError(f"no epoch-{epoch} snapshot of {method} at {path}: {fix}.")
    try:
        return load_encoder(arch, path, task)
    except CorruptFileError as e:
        quarantine(path, e.reason)
        raise CorruptFileError(path, f"{e.reason}; moved aside: {fix}") from None


def pretrain_or_load(method: str, *, arch: str, n_pretrain: int, epochs: int, batch_size: int, lr: float,
                     augmentations: Sequence[str], seed: int, cache_dir: str | Path, task: str = "fashion_mnist",
                     sources: dict | None = None, progress: bool = True,
                     save_every_epoch_checkpoints: bool = False, keep_epochs: Sequence[int] = (),
                     hparams: dict | None = None, weight_decay: float = 1e-5, profile: str = "custom",
                     data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     on_epoch_end: Callable[[int, float], None] | None = None,
                     cached_only: bool = False) -> tuple[nn.Module, dict] | None:
    """Train an encoder with `method` (a key of `utils.ssl.METHODS`) on the images of `task`, or load it from the cache.

    Data: the first `n_pretrain` images of a seeded permutation of `task`'s train split, found through `sources`
    (the path parameters and `image_size`, `utils.data.sources(params)`; labels used only by "supervised"), or
    `data=(x [N,C,H,W] in [0,1], y [N])` if given. Training: AdamW (`lr`, `weight_decay`),
    10 % linear warm-up then cosine decay to 1 % (`utils.runtime.lr_factor`), `batch_size` images per step (last
    partial batch dropped), views from `make_augment(augmentations)`; bfloat16 autocast + channels_last where
    `utils.runtime.use_bf16("cpu")`. `hparams` overrides the method's defaults (`METHODS[method].defaults`).

    Cache: `<cache_dir>/encoders/<method>-<param_hash>.safetensors` + `.json` sidecar (provenance, parameters, loss
    per epoch, wall time, the sha256 of the weights and snapshots; written last); reused while every parameter that
    changes the weights is unchanged (`training_params`) and the files match the sidecar's sha256. A damaged or
    unpaired file (or checkpoint) is reported, moved aside (`<name>.corrupt-<time>`) and trained again.
    Resumability: after every epoch a checkpoint (`.ckpt.pt`: model with heads, momentum networks, queue/center,
    optimizer, RNG state, epoch, loss history, wall time) is written atomically; a rerun after a kill resumes after
    the last finished epoch and ends with the weights an uninterrupted run gives (the shuffling and augmentation of
    epoch e are seeded by (seed, e) alone). The checkpoint is deleted once the encoder is in the cache.
    `keep_epochs` (or `save_every_epoch_checkpoints=True` for all epochs): also save the encoder at those epochs
    (read them with `load_epoch_checkpoint`); a cached run without the requested snapshots is retrained (same
    weights, deterministic). `on_epoch_end(epoch, mean_loss)` is called after each epoch's checkpoint is written.

    cached_only: return None instead of training when the encoder is not in the cache.
    Raises TrainingDivergedError on a NaN/inf loss (the last good checkpoint is kept).
    Returns (encoder in eval mode on CPU, float32; info dict: method, params, param_hash, path, from_cache,
    loss_history (mean loss per epoch), wall_time_s (training time over all resumed segments), resumed_from_epoch,
    epochs_run_now, sidecar).
    """
    spec = get_method(method)
    if epochs < 1 or n_pretrain < 0:
        raise ValueError(f"epochs must be >= 1 and n_pretrain >= 0 (got epochs={epochs}, n_pretrain={n_pretrain}); "
                         f"official checkpoints (nothing trained here) are read by utils.encoders.pretrained_encoders")
    make_augment(augmentations)  # validates the family names before any work
    augment = make_augment(spec.view_families(augmentations), **spec.augment_kwargs)
    params = training_params(method, arch=arch, n_pretrain=n_pretrain, epochs=epochs, batch_size=batch_size, lr=lr,
                             augmentations=augmentations, seed=seed, weight_decay=weight_decay, hparams=hparams,
                             data=data, task=task, image_size=(sources or {}).get("image_size"))
    run_hash = param_hash(params)
    paths = encoder_paths(cache_dir, params)
    keep = sorted(set(range(1, epochs + 1)) if save_every_epoch_checkpoints else {int(e) for e in keep_epochs})
    bad = [e for e in keep if not 1 <= e <= epochs]
    if bad:
        raise ValueError(f"keep_epochs {bad} outside 1..{epochs}")
    snap = {e: Path(str(paths["snapshot"]).format(epoch=e)) for e in keep}

    hit = None
    if paths["encoder"].is_file() and paths["sidecar"].is_file() and all(p.is_file() for p in snap.values()):
        hit = _cached_encoder(arch, paths, snap, task)
    if hit is not None:
        encoder, side = hit
        info = {"method": method, "params": params, "param_hash": run_hash, "path": str(paths["encoder"]),
                "from_cache": True, "loss_history": side["loss_history"], "wall_time_s": side["wall_time_s"],
                "resumed_from_epoch": None, "epochs_run_now": 0, "sidecar": side}
        return encoder, info
    if cached_only:
        return None

    x, y = load_classification(task, "train", n=n_pretrain, seed=seed, **(sources or {})) if data is None else data
    n = len(x)
    if n == 0:
        raise ValueError("no training images: n_pretrain is 0 or `data` is empty")
    bs = min(batch_size, n)
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * epochs
    bf16 = use_bf16("cpu")
    fmt = torch.channels_last if bf16 else torch.contiguous_format

    ckpt = _load_checkpoint(paths["checkpoint"], run_hash)
    # snapshots are written before their epoch's checkpoint; if a requested one of a finished epoch is missing
    # (keep_epochs grew since the run started), start over: training is deterministic, the weights are the same
    if ckpt is not None and any(e <= int(ckpt["epoch"]) and not p.is_file() for e, p in snap.items()):
        ckpt = None
    with torch.random.fork_rng(devices=[]):  # seeded initialization without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = spec.build(task_encoder(arch, task), **(hparams or {}))
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    start_epoch, losses, wall, resumed_from = 0, [], 0.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, losses, wall = int(ckpt["epoch"]), list(ckpt["loss_history"]), float(ckpt["wall_time_s"])
        resumed_from = start_epoch

    epoch_bar = range(start_epoch + 1, epochs + 1)
    if progress:
        epoch_bar = tqdm(epoch_bar, desc=f"pretrain {method}", initial=start_epoch, total=epochs, leave=False)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        g = _epoch_generator(seed, epoch)
        if ckpt is not None and epoch == start_epoch + 1:
            g.set_state(ckpt["next_generator_state"])  # equal to the line above by construction; kept explicit
        perm = torch.randperm(n, generator=g)
        model.train()
        total, count = 0.0, 0
        images = image_batches(x, bs, order=perm[:steps_per_epoch * bs])  # an ImageSet: decoded ahead by workers
        for b, xb in enumerate(images):
            step = (epoch - 1) * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, total_steps, warmup=WARMUP, floor=LR_FLOOR)
            idx = perm[b * bs:(b + 1) * bs]
            views = [augment(xb, g).contiguous(memory_format=fmt) for _ in range(spec.n_views)]
            with autocast("cpu", amp=bf16):
                loss = model(views, y[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept at {paths['checkpoint']}"
                        if paths["checkpoint"].is_file() else "no checkpoint was written yet")
                raise TrainingDivergedError(
                    f"{method} diverged at epoch {epoch} (step {b + 1}/{steps_per_epoch}): loss = {value}; {kept}. "
                    f"Lower lr (now {lr}) or change the method's hparams; a rerun with the same parameters resumes "
                    f"from that checkpoint and diverges again.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.momentum_update((step + 1) / total_steps)
            total, count = total + value, count + 1
        losses.append(total / count)
        wall += time.perf_counter() - t0
        if epoch in snap:
            save_encoder(model.encoder, snap[epoch])
        _save_checkpoint(paths["checkpoint"], {
            "param_hash": run_hash, "epoch": epoch, "loss_history": losses, "wall_time_s": wall,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "next_generator_state": _epoch_generator(seed, epoch + 1).get_state()})
        if progress:
            epoch_bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, losses[-1])

    save_encoder(model.encoder, paths["encoder"])
    # the sidecar is written last and records the sha256 of the weights and snapshots: a reader pairs them safely
    side = {**provenance(profile, params, seed), "weights_sha256": file_sha256(paths["encoder"]),
            "snapshots_sha256": {str(e): file_sha256(p) for e, p in snap.items()}, "method": method, "arch": arch,
            "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "augmentations": list(augmentations), "n_pretrain": n_pretrain,
            "n_images": n, "steps": total_steps, "bf16": bf16, "wall_time_s": wall, "loss_history": losses,
            "kept_epochs": keep, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(paths["sidecar"], side)
    paths["checkpoint"].unlink(missing_ok=True)
    info = {"method": method, "params": params, "param_hash": run_hash, "path": str(paths["encoder"]),
            "from_cache": False, "loss_history": losses, "wall_time_s": wall, "resumed_from_epoch": resumed_from,
            "epochs_run_now": epochs - start_epoch, "sidecar": side}
    return load_encoder(arch, paths["encoder"], task), info
