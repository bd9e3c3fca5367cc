"""How code runs: one device and precision policy, one seed derivation, one batching helper, one LR schedule.

Base layer: imports nothing from `utils`.

Precision policy (the only place that decides on autocast): bfloat16 autocast is used only where the hardware has
bf16 arithmetic (a CUDA device that supports it; a CPU with AVX512-BF16 / AMX units, where it measured 2-3x faster
for the small ResNets here). Elsewhere, e.g. a workshop laptop without bf16 units, everything runs in float32
(emulated bf16 would be slower, not faster). The environment variable `SSL_ADV_PRECISION` (or `set_precision`)
overrides the hardware test: "auto" (default), "float32" (never autocast) or "bf16" (autocast wherever torch can).
Losses, metrics and every "is this point fooled" verdict are computed in float32 whatever the policy.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import torch
from torch import nn

PRECISION_ENV = "SSL_ADV_PRECISION"
PRECISIONS = ("auto", "float32", "bf16")
_precision_override: str | None = None


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN or infinite; the message names the run, the epoch and what was kept."""


# -------------------------------------------------------------------------------------------------------- precision

def set_precision(mode: str | None) -> None:
    """Force the precision policy for this process: "auto", "float32", "bf16", or None (back to the environment)."""
    global _precision_override
    if mode is not None and mode not in PRECISIONS:
        raise ValueError(f"unknown precision {mode!r}; choose one of {PRECISIONS}")
    _precision_override = mode


def precision() -> str:
    """The policy in force: `set_precision`'s value, else $SSL_ADV_PRECISION, else "auto"."""
    mode = _precision_override or os.environ.get(PRECISION_ENV, "auto") or "auto"
    if mode not in PRECISIONS:
        raise ValueError(f"${PRECISION_ENV}={mode!r} is not a precision; set it to one of {PRECISIONS}")
    return mode


@lru_cache(maxsize=None)
def _cpu_has_bf16() -> bool:
    try:  # what oneDNN itself checks before it uses bf16 kernels (AVX512-BF16 or AMX)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older or stripped build: no bf16 units assumed
        return False


def bf16_hardware(device: str | torch.device = "cpu") -> bool:
    """True when `device` computes in bfloat16 natively (CUDA with bf16 support; AVX512-BF16 / AMX CPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16()


def use_bf16(device: str | torch.device = "cpu", amp: bool | str = "auto") -> bool:
    """Whether a computation on `device` runs under bfloat16 autocast.

    `amp`: what the caller allows — True / "auto" (bf16 where the policy says so), "bf16" (bf16 wherever torch can,
    unless the policy is "float32"), False / "off" (never). The policy "float32" always wins.
    """
    if amp not in (True, False, "auto", "bf16", "off"):
        raise ValueError(f"amp must be True, False, 'auto', 'bf16' or 'off', got {amp!r}")
    mode = precision()
    device = torch.device(device)
    if amp in (False, "off") or mode == "float32" or device.type not in ("cpu", "cuda"):
        return False
    if amp == "bf16" or mode == "bf16":
        return True
    return bf16_hardware(device)


def autocast(device: str | torch.device = "cpu", amp: bool | str = "auto"):
    """bfloat16 autocast on `device` when `use_bf16(device, amp)`, else a no-op context."""
    device = torch.device(device)
    if not use_bf16(device, amp):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextmanager
def full_precision(device: str | torch.device = "cpu"):
    """IEEE float32 inside a caller's autocast region: autocast off, and on a GPU no TF32 (cuDNN convolutions and
    matmuls use TF32's 10-bit mantissa by default, not float32 enough for a verdict)."""
    device = torch.device(device)
    with torch.autocast(device.type if device.type in ("cpu", "cuda") else "cpu", enabled=False):
        if device.type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tf32_active(device: str | torch.device) -> bool:
    """True when float32 convolutions on `device` may silently run in TF32 (CUDA with cuDNN's TF32 on)."""
    return torch.device(device).type == "cuda" and bool(torch.backends.cudnn.allow_tf32)


# ----------------------------------------------------------------------------------------------------------- devices

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when a GPU is present, else cpu; "cuda" on a machine without CUDA is an error naming the fix."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} but this machine has no CUDA GPU: set device='cpu' or 'auto'")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); cpu for a module without either."""
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------------- seeds, batches

# Streams of derived seeds: one job's seeds never collide with another kind's for the same index.
SEED_STREAM_BATCH = 1  # a batch of attacked points (random starts), see utils.robustness
SEED_STREAM_EPOCH = 17  # an epoch of pretraining (shuffling and augmentations), see utils.pretrain


def derive_seed(seed: int, index: int, stream: int) -> int:
    """The seed of item `index` of a `stream` under master `seed`: a function of these three numbers only, so a
    resumed or sharded computation draws exactly what an uninterrupted single process draws."""
    return (int(seed) * 1_000_003 + int(index) * 7_919 + int(stream)) % (2 ** 62)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
    """Index tensors of consecutive batches over range(n) (a seeded permutation of it with `shuffle`)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


# ------------------------------------------------------------------------------------------------------ schedule

def lr_factor(step: int, total: int, *, warmup: float = 0.1, floor: float = 0.0) -> float:
    """The suite's one learning-rate schedule, as a factor of the peak rate at optimizer step `step` of `total`:
    linear warm-up over the first round(warmup * total) steps (at least one when warmup > 0), then cosine decay from
    1 to `floor`."""
    warm = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    q = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, *, warmup: float = 0.1,
                  floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler applying `lr_factor` (call `.step()` after each optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup=warmup, floor=floor))
