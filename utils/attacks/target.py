"""The model as the kernels see it: a loss and its input gradient per step, float32 verdicts, the gradient counters
behind the sanity flags, and the context that freezes a model for the attack.

Two kinds of target, one interface (`evaluate(x, y, loss, step, need_grad) -> Eval`):
- `ClassifierTarget`: a classifier ([0, 1] images -> logits [N, K]), attacked through a per-point loss of its
  logits (a name in `LOSSES` or any callable `loss(logits, y) -> [N]`); "fooled" = misclassified, in float32.
- `ObjectiveTarget`: any differentiable objective of the images, `objective(x, step) -> loss` ([N] or a scalar, e.g.
  a detector's summed training losses or SegPGD's per-pixel weighting); nothing is ever "fooled", so the kernel runs
  every step and returns the last iterate.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from utils.attacks.geometry import (AMP_MODES, LOSSES, NAN_GRAD, NO_GRADIENT, NONFINITE_LOGITS, PROBABILITY_OUTPUTS,
                                    RANDOMIZED, ZERO_GRAD, flag)
from utils.runtime import autocast, full_precision, model_device, tf32_active, use_bf16


class Eval(NamedTuple):
    """One evaluation of the target at a batch of iterates."""
    loss: torch.Tensor  # float32 [N] (or a scalar for an objective that is not per point)
    grad: torch.Tensor | None  # float32 [N, ...], None when not asked for
    fooled: torch.Tensor  # bool [N], always a float32 verdict
    exact: bool  # every verdict (also "not fooled") came from an IEEE float32 forward


def _with_targets(loss_fn, t, logits, y):
    return loss_fn(logits, y, t)


class GradientCounters:
    """Counts the input gradients seen, and those that were NaN/inf or all zero, for the sanity flags."""

    def __init__(self):
        self.n_grads = self.n_zero_grads = self.n_nan_grads = self.n_nonfinite_logits = self.n_no_path = 0
        # PGD's cycle detection: points retired on a repeated iterate, and the per-point gradients they did not need
        self.n_cycle_exits = self.n_grads_skipped = 0
        self.model_flags: list[str] = []

    def check(self, grad: torch.Tensor, fooled: torch.Tensor) -> torch.Tensor:
        """Count `grad` [N, ...]; return it with NaN/inf set to 0 (a NaN step would leave the ball)."""
        size = torch.linalg.vector_norm(grad.flatten(1), float("inf"), dim=1)  # NaN/inf propagate: one pass
        finite = torch.isfinite(size)
        self.n_grads += len(size)
        self.n_nan_grads += int((~finite).sum())
        # zero gradients count only on points still classified right: a fooled point may sit where the loss is flat
        # (DLR is constant once y drops to third place), which is no sign of masking.
        self.n_zero_grads += int(((size == 0) & ~fooled).sum())
        if not bool(finite.all()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return grad

    def flags(self) -> list[str]:
        out = []
        if self.n_nan_grads:
            out.append(flag(NAN_GRAD, f"{self.n_nan_grads}/{self.n_grads} input gradients had NaN/inf (set to 0)"))
        if self.n_zero_grads:
            out.append(flag(ZERO_GRAD, f"{self.n_zero_grads}/{self.n_grads} input gradients were all zero "
                                       f"(gradient masking?)"))
        if self.n_nonfinite_logits:
            out.append(flag(NONFINITE_LOGITS, f"{self.n_nonfinite_logits} model outputs had NaN/inf logits"))
        if self.n_no_path:
            out.append(flag(NO_GRADIENT, f"{self.n_no_path} outputs had no gradient path to the input (a detach, "
                                         f"argmax or no_grad in forward?): white-box attacks cannot work here"))
        return self.model_flags + out

    def flag_names(self) -> set[str]:
        return {name for name, n in ((NAN_GRAD, self.n_nan_grads), (ZERO_GRAD, self.n_zero_grads),
                                     (NONFINITE_LOGITS, self.n_nonfinite_logits), (NO_GRADIENT, self.n_no_path))
                if n}


class ClassifierTarget(GradientCounters):
    """A classifier under attack: per-point loss and input gradient (under bf16 autocast when the precision policy
    allows `amp`), float32 verdicts on "fooled"."""

    def __init__(self, model: nn.Module, amp: str = "auto"):
        super().__init__()
        if amp not in AMP_MODES:
            raise ValueError(f"unknown amp {amp!r}; choose one of {AMP_MODES}")
        self.model = model  # float32 verdicts always come from this very model
        self.grad_model = model  # the gradient oracle: the model, or a BN-folded copy of it (`use_folded`)
        self.device = model_device(model)
        self.amp = amp
        use = use_bf16(self.device, amp)
        # steps whose forward is not IEEE float32 of the model itself (bf16 autocast, TF32 convolutions on a GPU, or
        # a BN-folded copy) get their "fooled" verdicts confirmed by a float32 forward of the model
        self.inexact = use or tf32_active(self.device)

    def check_model(self, x_probe: torch.Tensor) -> list[str]:
        """AutoAttack's checks on a few points (its `checks.py`): a randomized forward (two float32 passes differ)
        and outputs that are probabilities instead of logits. Adds the flags it raises to `flags()`."""
        a, b = self.logits_fp32(x_probe, count=False), self.logits_fp32(x_probe, count=False)
        found = []
        if not torch.equal(a, b):
            found.append(flag(RANDOMIZED, f"two forward passes of the same input differ by up to "
                                          f"{float((a - b).abs().max()):.3g} (dropout or noise active in eval mode?); "
                                          f"verdicts are not repeatable and need EOT attacks"))
        if a.numel() and bool(((a >= 0) & (a <= 1)).all()) and bool(((a.sum(1) - 1).abs() < 1e-3).all()):
            found.append(flag(PROBABILITY_OUTPUTS, "the outputs are probabilities (in [0, 1], rows sum to 1): pass "
                                                   "logits (remove the softmax); CE and DLR on probabilities "
                                                   "saturate and mask gradients"))
        self.model_flags += [f for f in found if f not in self.model_flags]
        return found

    def use_folded(self, x_probe: torch.Tensor, channels_last: bool, folded: nn.Module | None = None) -> bool:
        """Take gradients from a copy of the model with its Conv-BatchNorm pairs folded into single convolutions
        (eval-mode BN is an affine map, so the function is the same; measured 13 % faster PGD on resnet_tiny here).
        `folded`: a copy the caller folded once for many calls (`fold_batchnorm(model)`; a sweep folds once, not per
        batch). The copy is used only when its float32 logits on `x_probe` match the model's; returns whether it is."""
        folded = fold_batchnorm(self.model) if folded is None else folded
        if folded is None:
            return False
        for p in folded.parameters():
            p.requires_grad_(False)
            if channels_last and p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        try:
            with torch.no_grad(), full_precision(self.device):
                a, b = self.model(x_probe).float(), folded(x_probe).float()
        except Exception:  # noqa: BLE001 - a copy that cannot run is simply not used
            return False
        if a.shape != b.shape or not bool(((a - b).abs() <= 1e-3 * (1 + a.abs())).all()):
            return False
        self.grad_model, self.inexact = folded, True
        return True

    def logits_fp32(self, x: torch.Tensor, count: bool = True) -> torch.Tensor:
        """Logits [N, K] in IEEE float32, also inside a caller's autocast region and without TF32 on a GPU."""
        with torch.no_grad(), full_precision(self.device):
            logits = self.model(x).float()
        if count:
            self.n_nonfinite_logits += int((~torch.isfinite(logits)).any(1).sum())
        return logits

    def wrong(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """bool [N]: the float32 model misclassifies x."""
        return self.logits_fp32(x).argmax(1) != y

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, loss: str | Callable = "ce", step: int = 0,
                 need_grad: bool = True, t: torch.Tensor | None = None) -> Eval:
        """Loss (a name in LOSSES or a callable (logits, y) -> [N]; with target classes t [N], a targeted loss
        (logits, y, t) -> [N]), input gradient (when need_grad) and "fooled" (= misclassified, whatever the target)
        verdicts at the points x [N, ...] with labels y [N].

        A gradient step runs under autocast when amp is on, and every "fooled" it reports is then confirmed by a
        float32 forward; an evaluation without gradient runs in float32 directly.
        """
        loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        if t is not None:
            loss_fn = functools.partial(_with_targets, loss_fn, t)
        if not need_grad:
            logits = self.logits_fp32(x)
            return Eval(loss_fn(logits, y), None, logits.argmax(1) != y, exact=True)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad(), autocast(self.device, self.amp):
            logits = self.grad_model(xg)
        self.n_nonfinite_logits += int((~torch.isfinite(logits.detach())).any(1).sum())
        value = loss_fn(logits.float(), y)
        fooled = logits.detach().argmax(1) != y
        if self.inexact and fooled.any():  # confirm low-precision verdicts in float32
            cand = fooled.clone()
            fooled[cand] = self.logits_fp32(x[cand], count=False).argmax(1) != y[cand]
        if not value.requires_grad:  # no gradient path from the input: a flag, and zero steps (no crash)
            self.n_no_path += len(x)
            return Eval(value.detach(), torch.zeros_like(x), fooled, exact=not self.inexact)
        grad, = torch.autograd.grad(value.sum(), xg)  # a sum: each point's gradient is its own loss's gradient
        return Eval(value.detach(), self.check(grad, fooled), fooled, exact=not self.inexact)


class ObjectiveTarget(GradientCounters):
    """Any differentiable objective of the images, `objective(x, step) -> loss` ([N] or scalar, float32), with its
    own precision handling (it calls `utils.runtime.autocast` where it wants bf16). Nothing is "fooled" here."""

    inexact = False

    def __init__(self, objective: Callable[[torch.Tensor, int], torch.Tensor], device: torch.device):
        super().__init__()
        self.objective, self.device = objective, torch.device(device)

    def evaluate(self, x: torch.Tensor, y=None, loss=None, step: int = 0, need_grad: bool = True, t=None) -> Eval:
        """The objective (and its input gradient when need_grad) at x; `y` and `loss` are not used."""
        none = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        xg = x.detach().requires_grad_(need_grad)
        with torch.enable_grad() if need_grad else torch.no_grad():
            loss = self.objective(xg, step)
        if not need_grad:
            return Eval(loss.detach().float(), None, none, exact=True)
        grad, = torch.autograd.grad(loss.sum(), xg)
        return Eval(loss.detach().float(), self.check(grad, none), none, exact=True)


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """A copy of `model` (eval mode) in which every Conv/Linear followed by an eval-mode BatchNorm is one layer
    (torch.fx's `fuse`); submodules that torch.fx cannot trace (e.g. a forward with Python checks on shapes) are
    searched for traceable children. None when there is no BatchNorm to fold. `model` itself is not changed."""

    def n_bn(m: nn.Module) -> int:
        return sum(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in m.modules())

    def fold(m: nn.Module) -> nn.Module:
        if not n_bn(m):
            return m
        try:
            return fuse(m, inplace=True)
        except Exception:  # noqa: BLE001 - untraceable: fold inside its children instead
            for name, child in m.named_children():
                setattr(m, name, fold(child))
            return m

    before = n_bn(model)
    if not before:
        return None
    folded = fold(copy.deepcopy(model).eval())
    return folded if n_bn(folded) < before else None


def attack_view(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """The model as an attack uses it: a view of `model` in eval mode whose parameters alias the model's weights
    (the same storage, detached: no parameter gradients), with `channels_last`, 4-D weights in channels_last memory
    format (measured 20-40 % faster convolutions on the CPU here, fp32 and bf16; the usual advice on GPUs).

    The view has module objects of its own (its own train/eval flags and parameter slots); buffers are shared and,
    in eval mode, only read. So the caller's model is never changed, not even for the time of the attack: another
    thread may attack, evaluate or train it meanwhile."""
    memo: dict[int, nn.Module] = {}

    def view(module: nn.Module) -> nn.Module:
        if id(module) in memo:  # a module reachable under two names stays one module
            return memo[id(module)]
        v = copy.copy(module)  # a new object; its parameter, buffer and child dicts are replaced below
        memo[id(module)] = v
        params = {}
        for name, p in module._parameters.items():
            if p is not None:
                data = p.detach()
                if channels_last and data.dim() == 4:
                    data = data.contiguous(memory_format=torch.channels_last)
                p = nn.Parameter(data, requires_grad=False)
            params[name] = p
        v._parameters, v._buffers = params, dict(module._buffers)
        v._modules = {name: None if c is None else view(c) for name, c in module._modules.items()}
        v.training = False
        return v

    return view(model)
