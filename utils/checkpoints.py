"""Official ResNet-50 checkpoints (supervised and self-supervised), read safely into one module shape.

`load_backbone(method, path)` turns any of the official files listed in `REGISTRY` into the same thing: a module that
takes images in [0, 1] of shape [N, 3, H, W], applies the method's own input normalization inside (none for SimCLR v1),
and returns pooled features [N, 2048] (`feat_dim`); `feature_map(x)` gives the layer4 map [N, 2048, H/32, W/32] for
dense heads. The returned module is in eval mode, on the CPU, with gradients enabled. `load_official_classifier` keeps
the file's own ImageNet classifier `fc` as well (the supervised checkpoint: notebook 02 sets its top-1 beside the
published one, `CheckpointSpec.fc_top1`); `imagenet_fc_labels` maps class folder names (WordNet ids) to its outputs.

Safety: pickled checkpoints are read with `torch.load(..., weights_only=True)`, which refuses any file that would run
code while loading (`UnsafeCheckpointError`); `.safetensors` files hold tensors only. `convert_to_safetensors` turns a
file you trust into a safetensors file once, so later loads need no pickle at all.

Layouts are data, not code: each `REGISTRY` row lists the layouts its official files use (container key, prefix to
strip, prefixes to drop); the loader tries them in turn and loads strictly: every backbone key must be present and no
key may be left over, apart from the classifier/projector `fc.*` (dropped by `load_backbone`: the module returns
features; kept by `load_official_classifier`) and the
training counters `*.num_batches_tracked` (absent from converted files; they do not affect eval-mode outputs).
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from utils.models import (IMAGENET_MEAN, IMAGENET_STD, Classifier, Encoder, ResNetTrunk, torchvision_resnet,
                          use_tf_same_padding)
from utils.store import atomic_save, file_sha256

__all__ = [
    "CheckpointError", "CheckpointKeyError", "UnsafeCheckpointError", "ChecksumMismatchError",
    "CheckpointNotFoundError", "CheckpointLayout", "CheckpointSpec", "REGISTRY", "registry_table",
    "checkpoint_path", "load_backbone", "load_official_classifier", "imagenet_fc_labels", "convert_to_safetensors",
    "ResNetTrunk",
]


# --------------------------------------------------------------------------------------------------------------------
# Errors: each names the file, the problem and the fix.
# --------------------------------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """Base class: a checkpoint file could not be turned into a backbone."""


class CheckpointKeyError(CheckpointError):
    """The file's keys do not fit the requested method's layouts. Attributes: missing, unexpected, mismatched."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


class UnsafeCheckpointError(CheckpointError):
    """The pickle would run code (or uses constructs `weights_only=True` refuses) while loading; nothing was run."""


class ChecksumMismatchError(CheckpointError):
    """The file's sha256 differs from the expected one. Attributes: path, expected, actual."""

    def __init__(self, message: str, path: Path, expected: str, actual: str):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file is not where it was looked for."""


# --------------------------------------------------------------------------------------------------------------------
# The registry: one row per method.
# --------------------------------------------------------------------------------------------------------------------
# Every layout drops these after the prefix is stripped: the torchvision classifier, SimCLR/BYOL's linear head and the
# MoCo/SimSiam projector all live in `fc`; the returned module has fc = Identity and returns features.
HEAD_PREFIX = "fc."
# Keys the file may lack: BatchNorm's step counters (BYOL's converted file has none); unused in eval mode.
OPTIONAL_SUFFIX = ".num_batches_tracked"


@dataclass(frozen=True)
class CheckpointLayout:
    """How one kind of file stores a ResNet's weights.

    container: keys to descend from the loaded object to the state dict, e.g. ("state_dict",); () = the file is the
        state dict. A flat tensor dict with no such key (e.g. a safetensors conversion) is taken as the state dict.
    strip: the prefix every backbone key carries in the file, removed ("" = plain torchvision names); alternatives are
        tried in order. A key carrying none of them (and not dropped) is unexpected.
    drop: prefixes (as in the file) of heads, momentum encoders, queues and prototypes, discarded.
    """

    name: str
    container: tuple[str, ...] = ()
    strip: tuple[str, ...] = ("",)
    drop: tuple[str, ...] = ()

    def describe(self) -> str:
        where = "".join(f"[{k!r}]" for k in self.container) or "flat dict"
        keys = " | ".join(f"{p}*" if p else "plain torchvision keys" for p in self.strip)
        drops = ", ".join(f"{d}*" for d in (*self.drop, HEAD_PREFIX))
        return f"{self.name}: {where}, {keys}; drops {drops}"


PLAIN = CheckpointLayout("backbone", (), ("",), ())


@dataclass(frozen=True)
class CheckpointSpec:
    """One official ResNet-50 checkpoint: where it comes from, how it is laid out, how its inputs are normalized.

    file_name: the expected local file name under `checkpoint_root` (renamed where official names collide).
    sha256: full hex digest, or a prefix of >= 8 hex digits (torchvision's file-name convention); None if unknown.
    mean, std: per-channel input normalization for images in [0, 1]; None = the model takes [0, 1] images as they are.
    linear_top1: published ImageNet linear-evaluation top-1 (%) as listed in BRIEF.md; None if not listed there.
    fc_top1: published ImageNet top-1 (%) of the file's own 1000-class classifier `fc`, the one shipped with the
        weights (the supervised model's); None when the file holds no published classifier.
    tf_same_padding: the weights were trained with TensorFlow/Haiku "SAME" padding (asymmetric on stride-2 layers).
    conversion: how to obtain a PyTorch file when the official one is not (empty for native PyTorch files).
    """

    method: str
    display_name: str
    file_name: str
    url: str
    layouts: tuple[CheckpointLayout, ...]
    sha256: str | None = None
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    linear_top1: float | None = None
    fc_top1: float | None = None
    tf_same_padding: bool = False
    conversion: str = ""
    notes: str = ""
    extra_urls: tuple[str, ...] = field(default_factory=tuple)


_FB = "https://dl.fbaipublicfiles.com"

_ROWS = [
    CheckpointSpec(
        "supervised", "Supervised", "resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        (PLAIN,), sha256="0676ba61", linear_top1=76.1, fc_top1=76.13,
        notes="torchvision IMAGENET1K_V1; flat dict incl. fc (its ImageNet classifier: dropped by load_backbone, "
              "kept by load_official_classifier; 76.13 % top-1 as torchvision documents the weights). sha256 is the "
              "prefix torchvision puts in the file name."),
    CheckpointSpec(
        "simclr", "SimCLR v1", "resnet50-1x.pth", "https://github.com/tonylins/simclr-converter",
        (CheckpointLayout("converted", ("state_dict",)),), mean=None, std=None, linear_top1=69.1,
        conversion="the official weights are a TensorFlow checkpoint (ResNet50_1x from "
                   "https://github.com/google-research/simclr, v1): convert them with "
                   "https://github.com/tonylins/simclr-converter (`python convert.py "
                   "ResNet50_1x/model.ckpt-225206 resnet50-1x.pth`)",
        notes="converted file {'state_dict'} with torchvision names incl. fc; inputs must NOT be normalized. TF used "
              "'SAME' max-pool padding (the converter's evaluation ignores it)."),
    CheckpointSpec(
        "mocov2", "MoCo v2", "moco_v2_800ep_pretrain.pth.tar",
        f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
        (CheckpointLayout("full", ("state_dict",), ("module.encoder_q.",),
                          ("module.encoder_k.", "module.queue")),),
        linear_top1=71.1, notes="800 epochs; keeps encoder_q minus its MLP head encoder_q.fc"),
    CheckpointSpec(
        "mocov3", "MoCo v3", "r-50-1000ep.pth.tar", f"{_FB}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
        (CheckpointLayout("full", ("state_dict",), ("module.base_encoder.",),
                          ("module.momentum_encoder.", "module.predictor.")),),
        linear_top1=74.6, notes="1000 epochs; keeps base_encoder minus its projector base_encoder.fc"),
    CheckpointSpec(
        "simsiam", "SimSiam", "simsiam_checkpoint_0099.pth.tar",
        f"{_FB}/simsiam/models/100ep/pretrain/checkpoint_0099.pth.tar",
        (CheckpointLayout("full", ("state_dict",), ("module.encoder.",), ("module.predictor.",)),),
        notes="100 epochs; downloaded as checkpoint_0099.pth.tar, save it as simsiam_checkpoint_0099.pth.tar; keeps "
              "encoder minus its projector encoder.fc",
        extra_urls=(f"{_FB}/simsiam/models/100ep-256bs/pretrain/checkpoint_0099.pth.tar",)),
    CheckpointSpec(
        "byol", "BYOL", "pretrain_res50x1.pth.tar", "https://github.com/chigur/byol-convert",
        (PLAIN, CheckpointLayout("converted", ("state_dict",))), linear_top1=74.4, tf_same_padding=True,
        conversion="the official weights are a JAX/Haiku pickle "
                   "(https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl) that cannot be "
                   "read safely: convert them with https://github.com/chigur/byol-convert (`python convert.py "
                   "pretrain_res50x1.pkl pretrain_res50x1.pth.tar`) in an environment you trust",
        notes="converted file: flat torchvision names incl. fc (classifier, dropped), no num_batches_tracked; trained "
              "with TF 'SAME' padding (~4 points of top-1 if ignored)"),
    CheckpointSpec(
        "swav", "SwAV", "swav_800ep_pretrain.pth.tar", f"{_FB}/deepcluster/swav_800ep_pretrain.pth.tar",
        (CheckpointLayout("full", (), ("module.",), ("module.projection_head.", "module.prototypes")),
         CheckpointLayout("training", ("state_dict",), ("module.",), ("module.projection_head.", "module.prototypes"))),
        linear_top1=75.3, notes="800 epochs, multi-crop; flat dict with module.* incl. projection head and prototypes"),
    CheckpointSpec(
        "dino", "DINO", "dino_resnet50_pretrain.pth",
        f"{_FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        (PLAIN, CheckpointLayout("full", ("teacher",), ("module.backbone.", "backbone."), ("module.head.", "head."))),
        linear_top1=75.3, notes="backbone file: plain keys, no fc; full file: teacher weights (its 'args' entry is an "
                                "argparse.Namespace, allowed)",
        extra_urls=(f"{_FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",)),
    CheckpointSpec(
        "barlowtwins", "Barlow Twins", "barlowtwins_resnet50.pth", f"{_FB}/barlowtwins/ljng/resnet50.pth",
        (PLAIN, CheckpointLayout("full", ("model",), ("module.backbone.",), ("module.projector.", "module.bn."))),
        linear_top1=73.5, notes="downloaded as resnet50.pth, save it as barlowtwins_resnet50.pth; backbone file: "
                                "plain keys; full file (ljng/checkpoint.pth): ['model'] module.backbone.*",
        extra_urls=(f"{_FB}/barlowtwins/ljng/checkpoint.pth",)),
    CheckpointSpec(
        "vicreg", "VICReg", "vicreg_resnet50.pth", f"{_FB}/vicreg/resnet50.pth",
        (PLAIN, CheckpointLayout("full", ("model",), ("module.backbone.",), ("module.projector.",))),
        linear_top1=73.2, notes="downloaded as resnet50.pth, save it as vicreg_resnet50.pth; backbone file: plain "
                                "keys; full file (resnet50_fullckpt.pth): ['model'] module.backbone.*",
        extra_urls=(f"{_FB}/vicreg/resnet50_fullckpt.pth",)),
]

REGISTRY: dict[str, CheckpointSpec] = {row.method: row for row in _ROWS}
# The task the registry's `linear_top1` values were measured on (ImageNet val, linear evaluation, top-1 %).
PUBLISHED_TASK = "imagenet"


def _spec(method: str) -> CheckpointSpec:
    key = str(method).lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; choose one of {list(REGISTRY)}")
    return REGISTRY[key]


def registry_table() -> pd.DataFrame:
    """The registry as a table, one row per method (for notebook 01)."""
    rows = []
    for s in REGISTRY.values():
        norm = "none: [0, 1] inputs" if s.mean is None else (
            "ImageNet mean/std" if (s.mean, s.std) == (IMAGENET_MEAN, IMAGENET_STD) else f"mean={s.mean}, std={s.std}")
        rows.append({"method": s.method, "name": s.display_name, "file_name": s.file_name, "url": s.url,
                     "sha256": s.sha256, "normalization": norm, "linear_top1": s.linear_top1, "fc_top1": s.fc_top1,
                     "layouts": "; ".join(layout.describe() for layout in s.layouts),
                     "tf_same_padding": s.tf_same_padding, "conversion": s.conversion or None, "notes": s.notes})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Files: where they are, whether they are intact, reading them safely.
# --------------------------------------------------------------------------------------------------------------------
_PICKLE_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")


def _stem(name: str) -> str:
    for suffix in _PICKLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def checkpoint_path(method: str, root: str | os.PathLike | None) -> Path:
    """Path of `method`'s checkpoint under the local folder `root` (the notebooks' `checkpoint_root` parameter).

    A safetensors conversion beside the official file (same stem, `.safetensors`) is preferred when present.
    Raises CheckpointNotFoundError naming `checkpoint_root`, the expected file and its source URL when missing.
    """
    spec = _spec(method)
    safe_name = _stem(spec.file_name) + ".safetensors"
    if root is None or str(root) == "":
        raise CheckpointNotFoundError(
            f"checkpoint_root is not set, so the {spec.display_name} checkpoint cannot be found: set the "
            f"`checkpoint_root` parameter to the folder holding {spec.file_name} ({_how_to_get(spec)}).")
    root = Path(root).expanduser()
    for candidate in (root / safe_name, root / spec.file_name):
        if candidate.is_file():
            return candidate
    where = "does not exist" if not root.is_dir() else "does not contain it"
    how = _how_to_get(spec)
    raise CheckpointNotFoundError(
        f"no {spec.display_name} checkpoint under checkpoint_root={str(root)!r} (the folder {where}): expected "
        f"{root / spec.file_name} or {safe_name}. {how[0].upper() + how[1:]}, or point the `checkpoint_root` "
        f"parameter at the folder that holds it.")


def _how_to_get(spec: CheckpointSpec) -> str:
    if spec.conversion:
        return spec.conversion
    published = spec.url.rsplit("/", 1)[-1]
    rename = f" and save it as {spec.file_name}" if published != spec.file_name else ""
    return f"download it from {spec.url}{rename}"


def _check_sha256(path: Path, expected: str, origin: str, url: str) -> str:
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise ValueError(f"sha256={expected!r} is not a hex digest (8 to 64 hex digits); pass the file's full sha256")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise ChecksumMismatchError(
            f"sha256 mismatch for {path}: expected {expected} ({origin}), actual {actual}. The file is corrupt, "
            f"truncated or not the published one: download it again from {url}, or pass sha256=False to skip the check "
            f"for a file you made yourself.", path, expected, actual)
    return actual


# Globals that official checkpoints pickle besides tensors and containers. argparse.Namespace (DINO's 'args') is
# rebuilt attribute by attribute, without calling any constructor, so allowing it runs no code.
_SAFE_GLOBALS = [argparse.Namespace]


def _read(path: Path, spec: CheckpointSpec) -> object:
    """Load a .safetensors or pickled checkpoint without running code from it (see the module docstring)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for bad headers
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated: "
                                  f"convert or download it again") from e
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a reference to code: a broken file, or pickle opcodes weights_only does not take
            reason = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e).splitlines()[0])
            raise CheckpointError(
                f"{path} could not be read safely ({reason}): it is corrupt or truncated (compare its sha256 with "
                f"the source) or not a plain PyTorch checkpoint; treat it as untrusted. Nothing was run.") from None
        what = f"it references {found.group(1)}"
        how = (f"If it is the original published file: {spec.conversion}. " if spec.conversion else "") + (
            "If, and only if, you trust where the file came from (e.g. it is the published file from "
            f"{spec.url} and its sha256 matches), convert it once to safetensors:\n"
            f"    from utils.checkpoints import convert_to_safetensors\n"
            f"    convert_to_safetensors({str(path)!r}, method={spec.method!r}, trusted=True)\n"
            "and load the .safetensors file it writes. Otherwise delete the file.")
        raise UnsafeCheckpointError(
            f"refused to load {path}: {what}, which weights_only=True does not allow, so loading it would run code "
            f"from the file (nothing was run). Treat it as untrusted. {how}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError) as e:
        # torch's zip reader (truncated), or the legacy pickle reader on a file that is no checkpoint at all (a text
        # or HTML page saved under a .pth name raises a bare KeyError of its first byte)
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {first}): it is "
                              f"corrupt or truncated, or no checkpoint at all (an error page saved by a download?); "
                              f"compare its sha256 with the source, or download it again") from None


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike | None = None, *, method: str | None = None,
                           trusted: bool = False) -> Path:
    """Convert a pickled checkpoint you trust into a `.safetensors` file holding its state dict; returns its path.

    This runs `torch.load(weights_only=False)`, i.e. any code in the file: pass `trusted=True` only for files from a
    source you trust. With `method`, the state dict is taken from that method's container (e.g. ['state_dict'],
    ['teacher']); non-tensor entries (epoch, args, optimizer) are dropped. `dst` defaults to `<stem>.safetensors`
    beside `src`, the name `checkpoint_path` looks for first.
    """
    src = Path(src)
    if not trusted:
        raise UnsafeCheckpointError(
            f"convert_to_safetensors would run any code embedded in {src}; pass trusted=True only if you trust its "
            f"origin (and its sha256 matches the published one)")
    obj = torch.load(src, map_location="cpu", weights_only=False)
    state = obj
    if method is not None and isinstance(obj, Mapping):
        for layout in _spec(method).layouts:
            inner = _descend(obj, layout.container, fallback=False)
            if inner is not None and layout.container:
                state = inner
                break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{src} holds a {type(state).__name__}, not a state dict; pass method= to pick its "
                              f"container")
    tensors = {str(k): v.detach().cpu().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{src} has no tensors at its top level (keys: {_preview(list(state))}); pass method= "
                              f"to pick the container that holds the weights")
    dst = Path(dst) if dst is not None else src.with_name(_stem(src.name) + ".safetensors")
    meta = {"converted_from": src.name, "method": str(method)}
    return atomic_save(lambda tmp: save_file(tensors, tmp, metadata=meta), dst)


# --------------------------------------------------------------------------------------------------------------------
# Key mapping: file layout -> torchvision names, with a report of what did not fit.
# --------------------------------------------------------------------------------------------------------------------
def _preview(keys, limit: int = 8) -> str:
    keys = [str(k) for k in keys]
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _is_flat(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _descend(obj, container: tuple[str, ...], fallback: bool = True):
    """The state dict inside `obj` at `container`; a flat tensor dict without the key is taken as already inside."""
    for key in container:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
        elif fallback and isinstance(obj, Mapping) and _is_flat(obj):
            return obj
        else:
            return None
    return obj


@dataclass
class _Match:
    layout: CheckpointLayout
    state: dict[str, torch.Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    dropped: list[str]
    no_container: bool = False
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # the file's `fc.*` tensors, torchvision names

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.no_container)

    @property
    def score(self) -> tuple:
        return (self.no_container, len(self.missing) + len(self.unexpected) + len(self.mismatched))


def _match(obj, layout: CheckpointLayout, target: Mapping[str, torch.Tensor]) -> _Match:
    """Map `obj` through `layout` onto the model's state dict `target` (only names and shapes are compared)."""
    inner = _descend(obj, layout.container)
    if not isinstance(inner, Mapping):
        top = [str(k) for k in obj] if isinstance(obj, Mapping) else [type(obj).__name__]
        return _Match(layout, {}, [k for k in target if not k.endswith(OPTIONAL_SUFFIX)], top, [], [], True)
    state, unexpected, dropped, head = {}, [], [], {}
    for raw, value in inner.items():
        raw = str(raw)
        if raw.startswith(layout.drop):
            dropped.append(raw)
            continue
        prefix = next((p for p in layout.strip if raw.startswith(p)), None)
        if prefix is None or not isinstance(value, torch.Tensor):
            unexpected.append(raw)
            continue
        key = raw[len(prefix):]
        if key.startswith(HEAD_PREFIX):
            dropped.append(raw)
            head[key] = value
        elif key in target:
            state[key] = value
        else:
            unexpected.append(raw)
    missing = [k for k in target if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if tuple(v.shape) != tuple(target[k].shape)]
    return _Match(layout, state, missing, unexpected, mismatched, dropped, head=head)


def _best_match(obj, spec: CheckpointSpec, target) -> tuple[_Match, list[_Match]]:
    matches = [_match(obj, layout, target) for layout in spec.layouts]
    good = [m for m in matches if m.ok]
    return (good[0] if good else min(matches, key=lambda m: m.score)), matches


def _key_error(path: Path, spec: CheckpointSpec, arch: str, obj, target, best: _Match,
               tried: list[_Match]) -> CheckpointKeyError:
    fits = [f"{s.method} ({m.layout.name})" for s in REGISTRY.values() if s.method != spec.method
            for m in [_best_match(obj, s, target)[0]] if m.ok]
    lines = [f"{path} does not hold a {spec.display_name} {arch} in any layout known for method={spec.method!r}.",
             f"Closest layout {best.layout.describe()}"]
    if best.no_container and not best.layout.container:
        lines.append(f"  the file holds a {best.unexpected[0]}, not a dict of tensors")
    elif best.no_container:
        lines.append(f"  the file has no {'/'.join(best.layout.container)!r} entry; its top-level keys: "
                     f"{_preview(best.unexpected)}")
    else:
        if best.missing:
            lines.append(f"  {len(best.missing)} missing keys: {_preview(best.missing)}")
        if best.unexpected:
            lines.append(f"  {len(best.unexpected)} unexpected keys (as named in the file): "
                         f"{_preview(best.unexpected)}")
        if best.mismatched:
            lines.append(f"  {len(best.mismatched)} keys with the wrong shape: {_preview(best.mismatched, 4)}")
    for other in tried:
        if other is not best:
            problem = (f"no {'/'.join(other.layout.container)!r} entry in the file" if other.no_container else
                       f"{len(other.missing)} missing, {len(other.unexpected)} unexpected, "
                       f"{len(other.mismatched)} wrong-shape keys")
            lines.append(f"Also tried layout {other.layout.name!r}: {problem}.")
    if fits:
        lines.append(f"The file does fit the layout of: {', '.join(fits)}: wrong method? Pass that method instead "
                     f"(each method also sets its own input normalization).")
    else:
        lines.append("It fits no known method's layout.")
    lines.append(f"Wrong file? The {spec.display_name} checkpoint is {spec.file_name}: {_how_to_get(spec)}; a "
                 f"truncated download fails its sha256.")
    if best.mismatched:
        lines.append(f"Keys with the wrong shape usually mean the wrong arch (got arch={arch!r}).")
    return CheckpointKeyError("\n".join(lines), best.missing, best.unexpected, best.mismatched)


# --------------------------------------------------------------------------------------------------------------------
# The module returned.
# --------------------------------------------------------------------------------------------------------------------
def _build_resnet(arch: str):
    return torchvision_resnet(arch, meta=True)  # shapes only: every tensor is assigned from the file


def load_backbone(method: str, path: str | os.PathLike, arch: str = "resnet50", *, sha256: str | bool | None = None,
                  tf_same_padding: bool | None = None) -> Encoder:
    """Load an official supervised/SSL checkpoint into a feature extractor for images in [0, 1].

    method: a `REGISTRY` key (supervised, simclr, mocov2, mocov3, simsiam, byol, swav, dino, barlowtwins, vicreg).
    path: the checkpoint (.pth/.pth.tar/.safetensors), or a folder (the `checkpoint_root`) holding it under the
        registry's file name (see `checkpoint_path`).
    arch: torchvision ResNet name; the official files are 'resnet50'.
    sha256: expected hex digest (or a >= 8-digit prefix) to verify before reading; None = the registry's digest, when
        it has one and the file carries the registry's file name; False = no check.
    tf_same_padding: use TensorFlow "SAME" padding on stride-2 layers; None = the registry's choice (True for BYOL,
        whose converted file was trained in Haiku with SAME padding: symmetric padding costs ~4 points of top-1).

    Returns a module in eval mode: x [N, 3, H, W] in [0, 1] -> features [N, feat_dim] (2048 for resnet50), with the
    method's normalization inside (ImageNet mean/std; none for SimCLR v1); `feature_map(x)` -> [N, 2048, h, w];
    `checkpoint_info` records the file, layout, checked sha256 and what was dropped.
    Raises CheckpointNotFoundError, ChecksumMismatchError, UnsafeCheckpointError (a pickle that would run code; nothing
    is run), CheckpointKeyError (keys do not fit: lists missing/unexpected keys and what to do).
    """
    return _load(method, path, arch, sha256=sha256, tf_same_padding=tf_same_padding)[0]


def load_official_classifier(method: str, path: str | os.PathLike, arch: str = "resnet50", *,
                             sha256: str | bool | None = None, tf_same_padding: bool | None = None) -> Classifier:
    """The checkpoint's own ImageNet classifier: `load_backbone`'s encoder with the file's `fc` kept as the head.

    Only for a method whose registry row lists a published top-1 of that classifier (`fc_top1`: the supervised
    torchvision weights); the file is read as safely as by `load_backbone` (weights_only / safetensors) and the same
    arguments apply. Returns a `Classifier` in eval mode: x [N, 3, H, W] in [0, 1] -> logits [N, 1000] over the
    ILSVRC-2012 classes in their standard order (`imagenet_fc_labels` maps class folders onto it), normalization
    inside. Raises CheckpointKeyError when the registry lists no such classifier or the file holds no `fc` of the
    backbone's width.
    """
    spec = _spec(method)
    if spec.fc_top1 is None:
        with_fc = [s.method for s in REGISTRY.values() if s.fc_top1 is not None]
        raise CheckpointKeyError(f"the registry lists no published classifier of the {spec.display_name} checkpoint "
                                 f"(its fc, if any, is a projector or an unpublished head); methods with one: "
                                 f"{with_fc}")
    encoder, best = _load(method, path, arch, sha256=sha256, tf_same_padding=tf_same_padding)
    weight, bias = best.head.get(HEAD_PREFIX + "weight"), best.head.get(HEAD_PREFIX + "bias")
    if weight is None or bias is None or weight.dim() != 2 or weight.shape[1] != encoder.feat_dim \
            or tuple(bias.shape) != (weight.shape[0],):
        found = {k: tuple(v.shape) for k, v in best.head.items()} or "none"
        raise CheckpointKeyError(f"{encoder.checkpoint_info['path']} holds no classifier fc.weight [K, "
                                 f"{encoder.feat_dim}] + fc.bias [K] (fc tensors found: {found}): it is a backbone-only "
                                 f"file; the {spec.display_name} classifier is in {spec.file_name} ({_how_to_get(spec)})",
                                 missing=[k for k in ("fc.weight", "fc.bias") if k not in best.head])
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight.float(), "bias": bias.float()}, assign=True)
    clf = Classifier(encoder, head).eval()
    clf.method, clf.arch = spec.method, arch
    return clf


def imagenet_fc_labels(classes: list[str]) -> list[int] | None:
    """The output index of an ImageNet-1k classifier (ILSVRC-2012 order: sorted WordNet ids, as torchvision's
    weights) for each class folder name in `classes` (a task's class names, label order); None when a name is no
    ILSVRC-2012 WordNet id (then a 1000-class `fc` cannot be scored on the folder's labels). The id list is timm's."""
    from timm.data import ImageNetInfo  # lazily: timm loads its class tables on import

    index = {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
    out = [index.get(name) for name in classes]
    return None if any(i is None for i in out) else out


def _load(method: str, path: str | os.PathLike, arch: str, *, sha256: str | bool | None,
          tf_same_padding: bool | None) -> tuple[Encoder, _Match]:
    """`load_backbone`'s work: (the encoder, the layout match that built it, with the file's `fc` tensors)."""
    spec = _spec(method)
    path = Path(path).expanduser()
    if path.is_dir():
        path = checkpoint_path(spec.method, path)
    if not path.is_file():
        how = _how_to_get(spec)
        raise CheckpointNotFoundError(
            f"{spec.display_name} checkpoint {path} does not exist: {how}, or pass the folder holding "
            f"{spec.file_name} as `checkpoint_root`.")

    checked = None
    if sha256 is None and spec.sha256 and path.name == spec.file_name:
        checked = _check_sha256(path, spec.sha256, f"registry entry for {spec.method!r}", spec.url)
    elif isinstance(sha256, str):
        checked = _check_sha256(path, sha256, "passed as sha256=", spec.url)
    elif sha256 not in (None, False):
        raise ValueError(f"sha256 must be a hex string, None or False, got {sha256!r}")

    obj = _read(path, spec)
    net = _build_resnet(arch)
    trunk = ResNetTrunk(net)
    target = net.state_dict()
    best, tried = _best_match(obj, spec, target)
    if not best.ok:
        raise _key_error(path, spec, arch, obj, target, best, tried)

    same = spec.tf_same_padding if tf_same_padding is None else bool(tf_same_padding)
    if same:
        use_tf_same_padding(net)
    state = {k: v.to(target[k].dtype).contiguous() for k, v in best.state.items()}  # e.g. from a half-precision file
    for key in target.keys() - state.keys():  # only optional counters can be absent (checked by _match)
        state[key] = torch.zeros_like(target[key], device="cpu")
    result = net.load_state_dict(state, strict=True, assign=True)
    assert not result.unexpected_keys and not result.missing_keys, result

    model = Encoder(trunk, mean=spec.mean, std=spec.std, normalize=spec.mean is not None)
    model.method = spec.method
    model.arch = arch
    model.spec = {"arch": arch, "in_chans": 3, "mean": list(spec.mean or IMAGENET_MEAN),
                  "std": list(spec.std or IMAGENET_STD), "normalize": spec.mean is not None, "tf_same_padding": same}
    model.checkpoint_info = {
        "method": spec.method, "path": str(path), "layout": best.layout.name, "sha256_checked": checked,
        "n_loaded": len(best.state), "n_dropped": len(best.dropped), "dropped": _preview(best.dropped, 5),
        "tf_same_padding": same, "normalization": None if spec.mean is None else {"mean": spec.mean, "std": spec.std},
    }
    return model.eval(), best
