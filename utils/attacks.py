"""The attack kernel: FGSM, PGD (cross-entropy or CW margin loss), APGD-CE / APGD-DLR, and `robust_accuracy` over an
eps grid with sanity flags.

Conventions (every function here):
- images `x`: float [N, C, H, W] in [0, 1]; labels `y`: int64 [N]; a model maps [0, 1] images to logits [N, K]
  (normalization is a layer inside the model, see `utils.models.Normalize`).
- `eps` is in image units: linf eps=8/255 moves each pixel by at most 8/255; l2 eps bounds the Euclidean norm of the
  whole perturbation of one image.
- an attack returns `x_adv` [N, C, H, W] in the eps-ball around `x` and in [0, 1]. A point fooled at ANY iterate of ANY
  restart is returned as that fooled point; a point never fooled is returned at its highest-loss iterate.
- "fooled" is decided in float32, whatever precision the gradient steps used (`amp`).
- the model is attacked in eval mode with parameter gradients off (and, with `channels_last`, its 4-D weights in
  channels_last memory format); each module's train/eval mode, each parameter's `requires_grad` and each weight tensor
  are restored afterwards, so a model handed over in train mode comes back in train mode.
- speed levers, each measured by `bench/attacks.py --levers` (resnet_tiny, 1000 Fashion-MNIST points, linf grid
  {0,1,2,4,8,16}/255, 10 steps, one CPU thread; speed-up over torchattacks' PGD): the eps grid walked once with points
  leaving the batch as soon as they are fooled, no parameter gradients, float32: 2.2x; + bf16 autocast for the
  gradient steps (`amp`): 3.2x; + channels_last weights: 3.6-4.1x; BatchNorm folded into the convolutions of the
  gradient oracle (`fold_bn`; verdicts still from the model): a further 13 % (2 threads). torch.compile / CUDA graphs are not used: the
  batch shrinks as points are fooled, so shapes change at nearly every step.

Layout: losses -> ball geometry -> `_Target` (the model as the kernel sees it) -> one kernel function per attack
(`_fgsm`, `_pgd`, `_apgd`), registered by name in `ATTACKS` -> thin public wrappers (`fgsm`, `pgd`, `apgd`, ...) ->
`robust_accuracy` and its `RobustAccuracy` result.
"""
from __future__ import annotations

import functools
import math
import platform
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")
AMP_MODES = ("auto", "bf16", "off")


# ----------------------------------------------------------------------------------------------------------- losses
# Per-point losses, float32 [N]; larger means closer to (or further into) misclassification.

def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per point."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def _top_other(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than y, [N]."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(1)


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y: positive exactly when the point is misclassified."""
    logits = logits.float()
    return _top_other(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12).

    z_pi1 >= z_pi2 >= z_pi3 are the sorted logits; the ratio is invariant to shifting and rescaling the logits, which
    defeats the saturated softmax that masks cross-entropy gradients. Needs at least 3 classes.
    """
    logits = logits.float()
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {logits.shape[1]}; use loss='ce'")
    top = logits.topk(3, dim=1).values
    return cw_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)  # cw_loss = -(z_y - max_{j != y} z_j)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


# -------------------------------------------------------------------------------------------------- ball geometry

def _norms(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-point norm of v [N, ...] as [N, 1, ..., 1] (broadcastable against v)."""
    flat = v.flatten(1)
    n = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    return n.view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point to x_adv in the eps-ball around x (linf: clip; l2: rescale), then clipped to [0, 1].

    Clipping to [0, 1] after the ball keeps the point in the ball: x lies in [0, 1], so the clip only moves each
    coordinate towards x.
    """
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _norms(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for linf, g / ||g||_2 for l2 (0 where g is 0)."""
    if norm == "linf":
        return g.sign()
    return g / _norms(g, "l2").clamp_min(1e-12)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """linf: uniform in the box; l2: uniform direction on the sphere of radius eps (as AutoAttack); then projected."""
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        noise = noise * (eps / _norms(noise, "l2").clamp_min(1e-12))
    return project(x + noise, x, eps, norm)


def ball_violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """How far each point lies outside the eps-ball or [0, 1], float32 [N] (0 when inside), checked in float32."""
    x_adv, x = x_adv.float(), x.float()
    over = (_norms(x_adv - x, norm).flatten() - eps).clamp_min(0)
    out_of_range = torch.maximum((-x_adv).clamp_min(0), (x_adv - 1).clamp_min(0)).flatten(1).amax(1)
    return torch.maximum(over, out_of_range)


# ------------------------------------------------------------------------------------------ the model under attack

def _bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only where the hardware has bf16 arithmetic (measured: 2.5-3x on an AVX512-BF16 CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and platform.system() == "Linux":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


class _Eval(NamedTuple):
    """One evaluation of the model at a batch of iterates (see `_Target.evaluate`)."""
    loss: torch.Tensor  # float32 [N]
    grad: torch.Tensor | None  # float32 [N, ...], None when not asked for
    fooled: torch.Tensor  # bool [N], always a float32 verdict
    exact: bool  # every verdict (also "not fooled") came from an IEEE float32 forward


@contextmanager
def _no_tf32(device: torch.device):
    """PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default: not float32 enough for a verdict."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class _Target:
    """The model as the kernels see it: per-point loss and input gradient (under bf16 autocast when `amp` says so),
    float32 verdicts on "fooled", and the counters behind the gradient sanity flags."""

    def __init__(self, model: nn.Module, amp: str = "auto"):
        if amp not in AMP_MODES:
            raise ValueError(f"unknown amp {amp!r}; choose one of {AMP_MODES}")
        self.model = model  # float32 verdicts always come from this very model
        self.grad_model = model  # the gradient oracle: the model, or a BN-folded copy of it (`use_folded`)
        self.device = _model_device(model)
        use_bf16 = amp == "bf16" or (amp == "auto" and _bf16_supported(self.device))
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        # steps whose forward is not IEEE float32 of the model itself (bf16 autocast, TF32 convolutions on a GPU, or
        # a BN-folded copy) get their "fooled" verdicts confirmed by a float32 forward of the model
        self.inexact = use_bf16 or (self.device.type == "cuda" and torch.backends.cudnn.allow_tf32)
        self.n_grads = self.n_zero_grads = self.n_nan_grads = self.n_nonfinite_logits = 0

    def use_folded(self, x_probe: torch.Tensor, channels_last: bool) -> bool:
        """Take gradients from a copy of the model with its Conv-BatchNorm pairs folded into single convolutions
        (eval-mode BN is an affine map, so the function is the same; measured 13 % faster PGD on resnet_tiny here).
        The copy is used only when its float32 logits on `x_probe` match the model's; returns whether it is."""
        folded = fold_batchnorm(self.model)
        if folded is None:
            return False
        for p in folded.parameters():
            p.requires_grad_(False)
            if channels_last and p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False), _no_tf32(self.device):
                a, b = self.model(x_probe).float(), folded(x_probe).float()
        except Exception:  # noqa: BLE001 - a copy that cannot run is simply not used
            return False
        if a.shape != b.shape or not bool(((a - b).abs() <= 1e-3 * (1 + a.abs())).all()):
            return False
        self.grad_model, self.inexact = folded, True
        return True

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _count_nonfinite(self, logits: torch.Tensor) -> None:
        self.n_nonfinite_logits += int((~torch.isfinite(logits)).any(1).sum())

    def logits_fp32(self, x: torch.Tensor, count: bool = True) -> torch.Tensor:
        """Logits [N, K] in IEEE float32, also inside a caller's autocast region and without TF32 on a GPU."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False), _no_tf32(self.device):
            logits = self.model(x).float()
        if count:
            self._count_nonfinite(logits)
        return logits

    def wrong(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """bool [N]: the float32 model misclassifies x."""
        return self.logits_fp32(x).argmax(1) != y

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, loss_fn, need_grad: bool = True) -> "_Eval":
        """Loss, input gradient (when need_grad) and "fooled" verdicts at the points x [N, ...] with labels y [N].

        A gradient step runs under autocast when amp is on, and every "fooled" it reports is then confirmed by a
        float32 forward; an evaluation without gradient runs in float32 directly.
        """
        if not need_grad:
            logits = self.logits_fp32(x)
            return _Eval(loss_fn(logits, y), None, logits.argmax(1) != y, exact=True)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            logits = self.grad_model(xg)
        self._count_nonfinite(logits.detach())
        loss = loss_fn(logits.float(), y)
        fooled = logits.detach().argmax(1) != y
        if self.inexact and fooled.any():  # confirm low-precision verdicts in float32
            cand = fooled.clone()
            fooled[cand] = self.logits_fp32(x[cand], count=False).argmax(1) != y[cand]
        grad, = torch.autograd.grad(loss.sum(), xg)  # a sum: each point's gradient is its own loss's gradient
        size = torch.linalg.vector_norm(grad.flatten(1), float("inf"), dim=1)  # NaN/inf propagate: one pass
        finite = torch.isfinite(size)
        self.n_grads += len(size)
        self.n_nan_grads += int((~finite).sum())
        # zero gradients count only on points still classified right: a fooled point may sit where the loss is flat
        # (DLR is constant once y drops to third place), which is no sign of masking.
        self.n_zero_grads += int(((size == 0) & ~fooled).sum())
        if not bool(finite.all()):
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # a NaN step would leave the ball
        return _Eval(loss.detach(), grad, fooled, exact=not self.inexact)

    def flags(self) -> list[str]:
        out = []
        if self.n_nan_grads:
            out.append(f"nan_grad: {self.n_nan_grads}/{self.n_grads} input gradients had NaN/inf (set to 0)")
        if self.n_zero_grads:
            out.append(f"zero_grad: {self.n_zero_grads}/{self.n_grads} input gradients were all zero "
                       f"(gradient masking?)")
        if self.n_nonfinite_logits:
            out.append(f"nonfinite_logits: {self.n_nonfinite_logits} model outputs had NaN/inf logits")
        return out


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """A copy of `model` (eval mode) in which every Conv/Linear followed by an eval-mode BatchNorm is one layer
    (torch.fx's `fuse`); submodules that torch.fx cannot trace (e.g. a forward with Python checks on shapes) are
    searched for traceable children. None when there is no BatchNorm to fold. `model` itself is not changed."""
    import copy

    from torch.fx.experimental.optimization import fuse

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


@contextmanager
def _attack_mode(model: nn.Module, channels_last: bool = False):
    """Eval mode and no parameter gradients during the attack; with `channels_last`, 4-D weights in channels_last
    memory format (measured 20-40 % faster convolutions on the CPU here, fp32 and bf16; the usual advice on GPUs).
    Every module's mode, every `requires_grad` flag and every weight tensor itself are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.data) for p in model.parameters()]
    model.eval()
    for p, _, data in params:
        p.requires_grad_(False)  # the attack needs input gradients only
        if channels_last and data.dim() == 4:
            p.data = data.contiguous(memory_format=torch.channels_last)  # what Module.to(memory_format=) does
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, data in params:
            p.data = data  # the very tensor the model came with (weights are not changed by the attack)
            p.requires_grad_(flag)


# -------------------------------------------------------------------------------------------------------- kernels
# A kernel attacks one batch: kernel(target, x, y, *, eps, norm, steps, restarts, x_init, generator, **options)
# -> (x_adv [N, ...], fooled bool [N]). Points are dropped from the working batch as soon as they are fooled.

class _Record:
    """What a kernel returns, filled as it goes: the fooling point where one was found, else the highest-loss point."""

    def __init__(self, x_start: torch.Tensor):
        n, device = len(x_start), x_start.device
        self.x_adv = x_start.clone()
        self.best_loss = torch.full((n,), float("-inf"), device=device)
        self.fooled = torch.zeros(n, dtype=torch.bool, device=device)
        self.exact = torch.zeros(n, dtype=torch.bool, device=device)  # x_adv's verdict came from a float32 forward

    def update(self, ids: torch.Tensor, x: torch.Tensor, ev: _Eval) -> torch.Tensor:
        """Record the iterates x [len(ids), ...] of points ids; return the mask of points still to attack."""
        better = ev.loss > self.best_loss[ids]
        if bool(better.all()):  # the usual case: one copy
            self.best_loss[ids] = ev.loss
            self.x_adv.index_copy_(0, ids, x)
            self.exact[ids] = ev.exact
        elif bool(better.any()):
            self.best_loss[ids[better]] = ev.loss[better]
            self.x_adv[ids[better]] = x[better]
            self.exact[ids[better]] = ev.exact
        if bool(ev.fooled.any()):
            self.x_adv[ids[ev.fooled]] = x[ev.fooled]
            self.fooled[ids[ev.fooled]] = True
            self.exact[ids[ev.fooled]] = True
        return ~ev.fooled

    def result(self, target: "_Target", y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, fooled). A survivor whose best point was judged only in low precision (bf16 / TF32) is judged
        again in float32, so that every verdict returned is a float32 one (fooled <=> the float32 model
        misclassifies x_adv)."""
        ids = (~self.fooled & ~self.exact).nonzero().squeeze(1)
        if len(ids):
            self.fooled[ids] = target.wrong(self.x_adv[ids], y[ids])
        return self.x_adv, self.fooled


def _keep(state: dict, keep: torch.Tensor) -> dict:
    """Compact every per-point tensor of a kernel's state to the points in `keep` (leading dimension = points)."""
    if bool(keep.all()):
        return state
    return {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _begin(x, y, ids, eps, norm, restart, x_init, random_start, generator) -> dict:
    """Kernel state of a restart on points ids: labels, the feasible set, and the start point xa.

    The feasible set (eps-ball around x, inside [0, 1]) is kept as a box [lo, hi] for linf, so that projecting is a
    single clamp per step; as the centre x0 for l2. Restart 0 resumes from x_init when given; every other start is
    random (or x itself without random_start).
    """
    x0 = x[ids]
    s = {"ids": ids, "y": y[ids]}
    if norm == "linf":
        s.update(lo=(x0 - eps).clamp_(min=0.0), hi=(x0 + eps).clamp_(max=1.0))
    else:
        s["x0"] = x0
    if restart == 0 and x_init is not None:
        s["xa"] = x_init[ids].clone()
    else:
        s["xa"] = _random_start(x0, eps, norm, generator) if random_start else x0.clone()
    return s


def _into(xa: torch.Tensor, s: dict, eps: float, norm: str) -> torch.Tensor:
    """Project xa onto the feasible set held in the kernel state s (see `_begin`); same result as `project`."""
    if norm == "linf":
        return torch.clamp(xa, s["lo"], s["hi"])
    return project(xa, s["x0"], eps, norm)


def _pgd(target: _Target, x, y, *, eps: float, norm: str = "linf", steps: int = 10, rel_step: float | None = None,
         restarts: int = 1, random_start: bool = True, loss: str = "ce", x_init=None, generator=None):
    """Projected gradient ascent (Madry et al. 2018) with a fixed step rel_step * eps along sign(grad) (linf) or
    grad / ||grad|| (l2). Each restart evaluates `steps` gradients, then the last iterate without one."""
    loss_fn = LOSSES[loss]
    alpha = (2.5 / steps if rel_step is None else rel_step) * eps
    rec = _Record(x if x_init is None else x_init)
    for r in range(restarts):
        ids = (~rec.fooled).nonzero().squeeze(1)
        if len(ids) == 0:
            break
        s = _begin(x, y, ids, eps, norm, r, x_init, random_start, generator)
        for i in range(steps + 1):
            ev = target.evaluate(s["xa"], s["y"], loss_fn, need_grad=i < steps)
            s["grad"] = ev.grad
            s = _keep(s, rec.update(s["ids"], s["xa"], ev))
            if i == steps or len(s["ids"]) == 0:
                break
            s["xa"] = _into(torch.add(s["xa"], _unit(s["grad"], norm), alpha=alpha), s, eps, norm)
    return rec.result(target, y)


def _fgsm(target: _Target, x, y, *, eps: float, norm: str = "linf", x_init=None, generator=None):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x (or from x_init)."""
    return _pgd(target, x, y, eps=eps, norm=norm, steps=1, rel_step=1.0, restarts=1, random_start=False,
                x_init=x_init, generator=generator)


def _apgd_checkpoints(steps: int) -> tuple[int, int, int]:
    """AutoAttack's checkpoint schedule as interval lengths: first interval 0.22*steps, each next one 0.03*steps
    shorter, never below 0.06*steps (i.e. p_0=0, p_1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def _apgd(target: _Target, x, y, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
          loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, random_start: bool = True, x_init=None,
          generator=None):
    """Auto-PGD (Croce & Hein 2020, `autopgd_base.py` of fra31/auto-attack): step 2*eps, momentum 0.75, and at each
    checkpoint the step is halved and the iterate reset to the best point for every point where
    (a) the loss increased in at most rho (0.75) of the steps since the last checkpoint, or
    (b) the step was not halved at the last checkpoint and the best loss has not improved since.

    Each restart evaluates the start point plus `steps` iterates (the last one without a gradient).
    """
    loss_fn = LOSSES[loss]
    first, shrink, shortest = _apgd_checkpoints(steps)
    rec = _Record(x if x_init is None else x_init)
    view = (-1,) + (1,) * (x.dim() - 1)
    for r in range(restarts):
        ids = (~rec.fooled).nonzero().squeeze(1)
        if len(ids) == 0:
            break
        s = _begin(x, y, ids, eps, norm, r, x_init, random_start, generator)
        ev = target.evaluate(s["xa"], s["y"], loss_fn)
        n = len(ids)
        s.update(grad=ev.grad, x_prev=s["xa"].clone(), x_best=s["xa"].clone(), grad_best=ev.grad.clone(),
                 loss_best=ev.loss.clone(), step=torch.full((n,), 2.0 * eps, device=x.device),
                 hist=torch.zeros(n, steps + 1, device=x.device),  # hist[:, i] = loss at iterate i
                 best_at_check=ev.loss.clone(), halved_at_check=torch.ones(n, dtype=torch.bool, device=x.device))
        s["hist"][:, 0] = ev.loss
        s = _keep(s, rec.update(s["ids"], s["xa"], ev))
        interval, since_check = first, 0
        for i in range(steps):
            if len(s["ids"]) == 0:
                break
            a = momentum if i > 0 else 1.0
            xa = s["xa"]
            z = _into(xa + s["step"].view(view) * _unit(s["grad"], norm), s, eps, norm)
            s["x_prev"], s["xa"] = xa, _into(xa + a * (z - xa) + (1 - a) * (xa - s["x_prev"]), s, eps, norm)
            last = i == steps - 1
            ev = target.evaluate(s["xa"], s["y"], loss_fn, need_grad=not last)
            s["hist"][:, i + 1] = ev.loss
            improved = ev.loss > s["loss_best"]
            s["loss_best"] = torch.where(improved, ev.loss, s["loss_best"])
            s["x_best"][improved] = s["xa"][improved]
            if not last:
                s["grad"] = ev.grad
                s["grad_best"][improved] = ev.grad[improved]
            s = _keep(s, rec.update(s["ids"], s["xa"], ev))
            since_check += 1
            if since_check == interval and not last:
                h = s["hist"][:, i + 1 - interval: i + 2]
                increases = (h[:, 1:] > h[:, :-1]).sum(1)
                halve = (increases <= rho * interval) | (~s["halved_at_check"] & (s["best_at_check"] >= s["loss_best"]))
                s["step"] = torch.where(halve, s["step"] / 2, s["step"])
                s["xa"][halve] = s["x_best"][halve]
                s["grad"][halve] = s["grad_best"][halve]
                s["halved_at_check"], s["best_at_check"] = halve, s["loss_best"].clone()
                since_check, interval = 0, max(interval - shrink, shortest)
    return rec.result(target, y)


# Dispatch by name; each entry is a kernel (see above). `cw` is PGD on the CW margin loss.
ATTACKS: dict[str, Callable] = {
    "fgsm": _fgsm,
    "pgd": _pgd,
    "cw": functools.partial(_pgd, loss="cw"),
    "apgd-ce": functools.partial(_apgd, loss="ce"),
    "apgd-dlr": functools.partial(_apgd, loss="dlr"),
}


# ------------------------------------------------------------------------------------------------ input checking

def _choice(value, options, what: str):
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(options)}")
    return value


def _check_eps(eps) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite radius >= 0 in image units (e.g. 8/255 for linf), got {eps}")
    return eps


def _check_images(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of images [N, C, H, W] in [0, 1], got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf; clean the data (images must be finite and lie in [0, 1])")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"images must lie in [0, 1], got range [{float(x.min()):.3g}, {float(x.max()):.3g}]; pass "
                         f"unnormalized images and put the normalization inside the model (utils.models.Normalize)")
    if y is not None and (y.dim() != 1 or len(y) != len(x)):
        raise ValueError(f"y must be int64 labels [N] with N = len(x) = {len(x)}, got shape {tuple(y.shape)}")


def _check_options(norm: str, steps: int, restarts: int, rel_step: float | None = None, loss: str | None = None,
                   loss_options=LOSSES) -> None:
    _choice(norm, NORMS, "norm")
    if loss is not None:
        _choice(loss, loss_options, "loss")
    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if rel_step is not None and not rel_step > 0:
        raise ValueError(f"rel_step (step size as a fraction of eps) must be > 0, got {rel_step}")


def _warn_flags(target: _Target, x_adv, x, eps, norm) -> None:
    flags = target.flags() + _ball_flags(x_adv, x, eps, norm)
    if flags:
        warnings.warn("attack sanity flags: " + "; ".join(flags), RuntimeWarning, stacklevel=3)


def _ball_flags(x_adv, x, eps, norm, tol: float = 1e-5) -> list[str]:
    excess = ball_violation(x_adv, x, eps, norm)
    bad = excess > tol * max(eps, 1.0)
    if bad.any():
        return [f"outside_ball: {int(bad.sum())} points outside the {norm} ball eps={eps:.4g} or [0, 1] "
                f"(by up to {float(excess.max()):.2e})"]
    return []


def _run_public(kernel, model, x, y, *, eps, norm, amp, channels_last, seed, **options) -> torch.Tensor:
    """Shared body of the public attack functions: check inputs, freeze the model, run one kernel, warn on flags."""
    eps = _check_eps(eps)
    _check_images(x, y)
    target = _Target(model, amp)
    x, y = x.to(target.device), y.to(target.device)
    if eps == 0:
        return x.clone()
    generator = None if seed is None else torch.Generator(target.device).manual_seed(seed)
    with _attack_mode(model, channels_last):
        target.use_folded(x[:64], channels_last)
        x_adv, _ = kernel(target, x, y, eps=eps, norm=norm, generator=generator, **options)
    _warn_flags(target, x_adv, x, eps, norm)
    return x_adv


# ---------------------------------------------------------------------------------------------- public attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", amp: str = "auto",
         channels_last: bool = True, seed: int | None = None) -> torch.Tensor:
    """FGSM: one step of size eps along sign(grad) (linf) or grad/||grad|| (l2) of the cross-entropy. -> x_adv."""
    _check_options(norm, 1, 1)
    return _run_public(_fgsm, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 10,
        rel_step: float | None = None, restarts: int = 1, random_start: bool = True, loss: str = "ce",
        amp: str = "auto", channels_last: bool = True, seed: int | None = None) -> torch.Tensor:
    """PGD with `restarts` random starts of `steps` steps of size rel_step * eps (default rel_step = 2.5 / steps).

    x [N, C, H, W] in [0, 1], y int64 [N]; loss "ce" (cross-entropy) or "cw" (margin). Returns x_adv [N, C, H, W]:
    the first fooling iterate found, else the highest-loss iterate; inside the eps-ball and [0, 1].
    """
    _check_options(norm, steps, restarts, rel_step, loss, ("ce", "cw"))
    return _run_public(_pgd, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed,
                       steps=int(steps), rel_step=rel_step, restarts=int(restarts), random_start=random_start,
                       loss=loss)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 100,
         restarts: int = 1, loss: str = "ce", amp: str = "auto", channels_last: bool = True,
         seed: int | None = None) -> torch.Tensor:
    """APGD with AutoAttack's checkpoint step-size schedule and momentum; loss "ce" or "dlr". Same contract as `pgd`."""
    _check_options(norm, steps, restarts, None, loss, ("ce", "dlr"))
    return _run_public(_apgd, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed,
                       steps=int(steps), restarts=int(restarts), loss=loss)


def apgd_ce(model, x, y, **kwargs) -> torch.Tensor:
    """APGD on the cross-entropy loss; see `apgd`."""
    return apgd(model, x, y, loss="ce", **kwargs)


def apgd_dlr(model, x, y, **kwargs) -> torch.Tensor:
    """APGD on the DLR loss (needs >= 3 classes); see `apgd`."""
    return apgd(model, x, y, loss="dlr", **kwargs)


# ------------------------------------------------------------------------------------------ robust accuracy

class RobustAccuracy(dict):
    """{eps: robust accuracy in [0, 1]} (eps ascending) plus how it was measured.

    Attributes: `flags` list[str] (empty when every sanity check passed), `n` points, `attack`, `norm`, `steps`,
    `restarts`, `eps` (the grid, ascending), `robust_mask` bool [len(eps), n] (point i still correctly classified at
    eps j, input order), `x_adv` {eps: float32 [n, C, H, W] on the CPU} (only the eps asked for via `return_adv`).
    """

    def __init__(self, accuracies: dict, *, flags: list[str], n: int, attack: str, norm: str, steps: int,
                 restarts: int, robust_mask: torch.Tensor, x_adv: dict | None = None):
        super().__init__(accuracies)
        self.flags, self.n, self.attack, self.norm = list(flags), n, attack, norm
        self.steps, self.restarts, self.robust_mask = steps, restarts, robust_mask
        self.eps = list(accuracies)
        self.x_adv = x_adv or {}

    def to_rows(self, **extra) -> list[dict]:
        """Tidy rows, one per eps: attack, norm, eps, steps, restarts, accuracy, n, flags (joined by ';'), **extra."""
        flags = ";".join(self.flags)
        return [{"attack": self.attack, "norm": self.norm, "eps": eps, "steps": self.steps,
                 "restarts": self.restarts, "accuracy": acc, "n": self.n, "flags": flags, **extra}
                for eps, acc in self.items()]

    def __repr__(self) -> str:
        accs = ", ".join(f"{eps:.4g}: {acc:.4f}" for eps, acc in self.items())
        return (f"RobustAccuracy({self.attack}/{self.norm}, steps={self.steps}, restarts={self.restarts}, "
                f"n={self.n}, {{{accs}}}, flags={self.flags})")


def _chunks(x, y, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) tensors or an iterable of (x, y) batches (e.g. a DataLoader), regrouped into chunks of batch_size so
    the numbers do not depend on how the loader batches."""
    if isinstance(x, torch.Tensor):
        if y is None:
            raise ValueError("pass labels y with image tensors x (or pass a DataLoader of (x, y) batches as x)")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    if y is not None:
        raise ValueError("pass either tensors (x, y) or a DataLoader as x with y=None, not both")
    xs, ys, held = [], [], 0
    for batch in x:
        xb, yb = batch[0], batch[1]
        xs.append(xb)
        ys.append(yb)
        held += len(xb)
        while held >= batch_size:
            xa, ya = torch.cat(xs), torch.cat(ys)
            yield xa[:batch_size], ya[:batch_size]
            xs, ys, held = [xa[batch_size:]], [ya[batch_size:]], held - batch_size
    if held:
        yield torch.cat(xs), torch.cat(ys)


def _attack_chunk(target, kernel, x, y, eps_grid, norm, options, keep_adv, generator):
    """One chunk through the eps grid. Returns robust bool [len(eps_grid), n], {eps: x_adv}, flags."""
    robust = ~target.wrong(x, y)
    best = x.clone()  # per point: its fooling point once fooled, else its highest-loss point so far
    masks, advs, flags, prev = [], {}, [], 0.0
    for eps in eps_grid:
        if eps > 0:
            ids = robust.nonzero().squeeze(1)
            if len(ids):
                # the smaller ball lies inside this one: resume from the best point found there
                x_init = best[ids] if prev > 0 else None
                x_adv, fooled = kernel(target, x[ids], y[ids], eps=eps, norm=norm, x_init=x_init,
                                       generator=generator, **options)
                flags += _ball_flags(x_adv, x[ids], eps, norm)
                best[ids] = x_adv
                robust[ids[fooled]] = False
            prev = eps
        masks.append(robust.clone())
        if eps in keep_adv:
            advs[eps] = best.to("cpu", torch.float32, copy=True)  # `best` keeps changing at larger eps
    return torch.stack(masks), advs, flags


def robust_accuracy(model: nn.Module, x, y: torch.Tensor | None = None, *, eps_list: Sequence[float],
                    attack: str = "pgd", norm: str = "linf", steps: int = 10, restarts: int = 1,
                    batch_size: int = 256, amp: str = "auto", channels_last: bool = True,
                    return_adv: bool | str = False, seed: int | None = 0, progress: bool = False,
                    fold_bn: bool = True, **attack_kwargs) -> RobustAccuracy:
    """Robust accuracy of `model` on (x [N, C, H, W] in [0, 1], y int64 [N]) — or a DataLoader of such batches passed
    as `x` — under `attack` at each eps of `eps_list` (image units; 0 gives the clean accuracy).

    The grid is attacked in ascending order; at a larger eps only the points that survived the smaller one are
    attacked, resuming from their best point so far (a point fooled in a smaller ball is fooled in every larger one),
    so accuracy cannot rise with eps. Points leave the working batch the moment they are fooled; "fooled" is decided in
    float32 even when the steps run in bfloat16 (`amp`: "auto" = bf16 where the hardware supports it, "bf16", "off");
    `channels_last` puts 4-D weights in channels_last format during the attack (faster convolutions); `fold_bn`
    takes the gradients from a copy with BatchNorm folded into the convolutions (same function, faster; verdicts
    still come from the model itself in float32).
    `attack` is a key of `ATTACKS`; `steps`/`restarts` are ignored by "fgsm" (recorded as 1); further keyword options
    go to the attack (e.g. rel_step, random_start). `return_adv`: False, True (keep the adversarial images at the
    largest eps) or "all" (every eps) in `result.x_adv`. `seed` fixes the random starts (None: global RNG).
    The model is attacked in eval mode and returned in the mode it came in. Returns a `RobustAccuracy`.
    """
    kernel = ATTACKS[_choice(attack, ATTACKS, "attack")]
    if attack == "fgsm":
        steps, restarts = 1, 1
    _check_options(norm, steps, restarts, attack_kwargs.get("rel_step"), attack_kwargs.get("loss"))
    if isinstance(eps_list, (int, float)):
        eps_list = [eps_list]
    eps_grid = sorted({_check_eps(e) for e in eps_list})
    if not eps_grid:
        raise ValueError("eps_list is empty; pass radii such as [0, 2/255, 8/255]")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if return_adv not in (False, True, "all"):
        raise ValueError(f"return_adv must be False, True (largest eps) or 'all', got {return_adv!r}")
    keep_adv = set(eps_grid) if return_adv == "all" else ({eps_grid[-1]} if return_adv else set())
    options = dict(attack_kwargs)
    if attack != "fgsm":
        options.update(steps=int(steps), restarts=int(restarts))

    target = _Target(model, amp)
    generator = None if seed is None else torch.Generator(target.device).manual_seed(seed)
    masks, advs, flags = [], {e: [] for e in keep_adv}, []
    chunks = _chunks(x, y, int(batch_size))
    if progress:
        from tqdm.auto import tqdm
        total = math.ceil(len(x) / int(batch_size)) if isinstance(x, torch.Tensor) else None
        chunks = tqdm(chunks, desc=f"{attack} {norm}", unit="batch", total=total)
    folded = not fold_bn
    with _attack_mode(model, channels_last):
        for xb, yb in chunks:
            _check_images(xb, yb)
            xb, yb = xb.to(target.device, torch.float32), yb.to(target.device)
            if not folded:  # once, on the first chunk (the probe that checks the folded copy)
                folded = target.use_folded(xb[:64], channels_last) or True
            mask, adv, chunk_flags = _attack_chunk(target, kernel, xb, yb, eps_grid, norm, options, keep_adv,
                                                   generator)
            masks.append(mask.cpu())
            flags += chunk_flags
            for e, a in adv.items():
                advs[e].append(a)
    if not masks:
        raise ValueError("no images to attack: x is empty")
    robust_mask = torch.cat(masks, dim=1)
    accs = {eps: float(robust_mask[j].float().mean()) for j, eps in enumerate(eps_grid)}
    flags = target.flags() + sorted(set(flags)) + _monotonicity_flags(accs)
    result = RobustAccuracy(accs, flags=flags, n=robust_mask.shape[1], attack=attack, norm=norm, steps=int(steps),
                            restarts=int(restarts), robust_mask=robust_mask,
                            x_adv={e: torch.cat(a) for e, a in advs.items()})
    if flags:
        warnings.warn(f"robust_accuracy({attack}/{norm}) sanity flags: " + "; ".join(flags), RuntimeWarning,
                      stacklevel=2)
    return result


def _monotonicity_flags(accs: dict) -> list[str]:
    """Robust accuracy must not rise with eps (the smaller ball lies inside the larger one)."""
    eps = list(accs)
    return [f"accuracy_rises: {accs[b]:.4f} at eps={b:.4g} > {accs[a]:.4f} at eps={a:.4g}"
            for a, b in zip(eps, eps[1:]) if accs[b] > accs[a]]
