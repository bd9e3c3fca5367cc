"""The attack kernels: FGSM, PGD (any per-point loss, or any objective through a loss hook) and APGD.

A kernel attacks one batch: kernel(target, x, y, *, eps, norm, steps, restarts, x_init, generator, **options)
-> (x_adv [N, ...], fooled bool [N]). `target` is a `ClassifierTarget` or an `ObjectiveTarget` (utils.attacks
.target). With keep="first-fooling" (the verdict mode) points leave the working batch as soon as they are fooled.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from utils.attacks.geometry import dlr_targeted_loss, project, random_start as draw_random_start, unit_direction
from utils.attacks.target import Eval

# What a PGD run returns per point: the first iterate that fools the model (verdicts; early stopping), the last
# iterate (adversarial training, dense tasks: hard examples, no verdict), or the highest-loss iterate (transfer).
KEEP_MODES = ("first-fooling", "last", "best-loss")

class Record:
    """What a kernel returns, filled as it goes: the fooling point where one was found, else the highest-loss point."""

    def __init__(self, x_start: torch.Tensor, stop_when_fooled: bool = True):
        n, device = len(x_start), x_start.device
        self.stop_when_fooled = stop_when_fooled
        self.x_adv = x_start.clone()
        self.best_loss = torch.full((n,), float("-inf"), device=device)
        self.fooled = torch.zeros(n, dtype=torch.bool, device=device)
        self.exact = torch.zeros(n, dtype=torch.bool, device=device)  # x_adv's verdict came from a float32 forward

    def update(self, ids: torch.Tensor, x: torch.Tensor, ev: Eval) -> torch.Tensor:
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
        if not self.stop_when_fooled:  # best-loss mode: every point runs every step, no verdict on the way
            return torch.ones_like(ev.fooled)
        if bool(ev.fooled.any()):
            self.x_adv[ids[ev.fooled]] = x[ev.fooled]
            self.fooled[ids[ev.fooled]] = True
            self.exact[ids[ev.fooled]] = True
        return ~ev.fooled

    def result(self, target, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, fooled). A survivor whose best point was judged only in low precision (bf16 / TF32) is judged
        again in float32, so that every verdict returned is a float32 one (fooled <=> the float32 model
        misclassifies x_adv)."""
        if not self.stop_when_fooled:  # best-loss mode: one float32 verdict on every returned point
            return self.x_adv, target.wrong(self.x_adv, y)
        ids = (~self.fooled & ~self.exact).nonzero().squeeze(1)
        if len(ids):
            self.fooled[ids] = target.wrong(self.x_adv[ids], y[ids])
        return self.x_adv, self.fooled


def compact(state: dict, keep: torch.Tensor) -> dict:
    """Compact every per-point tensor of a kernel's state to the points in `keep` (leading dimension = points)."""
    if bool(keep.all()):
        return state
    return {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def begin(x, y, ids, eps, norm, restart, x_init, random_start, generator, sphere: bool = False) -> dict:
    """Kernel state of a restart on points ids: labels, the feasible set, and the start point xa.

    The feasible set (eps-ball around x, inside [0, 1]) is kept as a box [lo, hi] for linf, so that projecting is a
    single clamp per step; as the centre x0 for l2. Restart 0 resumes from x_init when given; every other start is
    random (or x itself without random_start).
    """
    x0 = x[ids]
    s = {"ids": ids, "y": None if y is None else y[ids]}
    if norm == "linf":
        s.update(lo=(x0 - eps).clamp_(min=0.0), hi=(x0 + eps).clamp_(max=1.0))
    else:
        s["x0"] = x0
    if restart == 0 and x_init is not None:
        s["xa"] = x_init[ids].clone()
    else:
        s["xa"] = draw_random_start(x0, eps, norm, generator, sphere) if random_start else x0.clone()
    return s


def into(xa: torch.Tensor, s: dict, eps: float, norm: str) -> torch.Tensor:
    """Project xa onto the feasible set held in the kernel state s (see `begin`); same result as `project`."""
    if norm == "linf":
        return torch.clamp(xa, s["lo"], s["hi"])
    return project(xa, s["x0"], eps, norm)


# Cycle detection (Doldo et al., CVPR 2025, "Stop walking in circles"): under fixed-step linf PGD a surviving point's
# iterate often returns exactly to an earlier one (the sign steps pin most pixels to the ball's faces, and the rest
# oscillate). The iteration x -> into(x + alpha * sign(grad(x))) is a function of x, so from a repeat on the point walks
# the same cycle until the last step: no later iterate can fool it, except that the last iterate is judged in float32.
# A point whose iterate i equals its saved iterate s therefore jumps to the iterate the last step would reach, the one
# (steps - i) mod (i - s) steps ahead, runs just those steps and is judged there as at the end. The saved iterate is
# renewed at steps 1, 2, 4, ..., then every CYCLE_SAVE_GAP steps: cycles up to that period are caught once the saved
# iterate lies on them. Exact as long as the gradient of a point does not depend on the other points in its batch.
CYCLE_SAVE_GAP = 32
# Watching costs a comparison per step; it pays only when the walk is long against the ball. With the suite's own
# step rule (2.5/steps of eps, a walk of 2.5 radii) no iterate repeated in 9,277-101,293 gradients of the cpu
# classifiers (bench/cycles.py), 2-3 points did among 385k-769k gradients (bench/attacks.py --table), and watching
# made the CPU bench 1.5-5 % slower; with eps/4 over 100 steps (a walk of 25 radii) it saved 37 % of the gradients.
# So points are watched when rel_step * steps >= CYCLE_MIN_WALK (results are the same either way).
CYCLE_MIN_WALK = 5.0


def _save_step(i: int) -> bool:
    """Steps after which the saved iterate is renewed: 1, 2, 4, ..., CYCLE_SAVE_GAP, then every CYCLE_SAVE_GAP."""
    return i > 0 and (i % CYCLE_SAVE_GAP == 0 or (i < CYCLE_SAVE_GAP and i & (i - 1) == 0))


def _evaluate_split(target, s: dict, loss, i: int, last: torch.Tensor) -> Eval:
    """Evaluate the working batch at step i: points in `last` (bool [n]) as final iterates (float32, no gradient),
    the rest with a gradient. One call when all points are alike."""
    if not bool(last.any()):
        return target.evaluate(s["xa"], s["y"], loss, i)
    if bool(last.all()):
        return target.evaluate(s["xa"], s["y"], loss, i, need_grad=False)
    fin, run = last.nonzero().squeeze(1), (~last).nonzero().squeeze(1)
    a = target.evaluate(s["xa"][run], s["y"][run], loss, i)
    b = target.evaluate(s["xa"][fin], s["y"][fin], loss, i, need_grad=False)
    lossv = torch.empty(len(last), device=a.loss.device, dtype=a.loss.dtype)
    grad = torch.zeros_like(s["xa"])
    fooled = torch.empty(len(last), dtype=torch.bool, device=a.fooled.device)
    lossv[run], lossv[fin] = a.loss, b.loss
    grad[run] = a.grad
    fooled[run], fooled[fin] = a.fooled, b.fooled
    return Eval(lossv, grad, fooled, a.exact)  # the float32 part is exact; the record re-judges inexact survivors


def pgd_kernel(target, x, y, *, eps: float, norm: str = "linf", steps: int = 10, rel_step: float | None = None,
               restarts: int = 1, random_start: bool = True, loss="ce", keep: str = "first-fooling", x_init=None,
               generator=None, cycles: bool = True):
    """Projected gradient ascent (Madry et al. 2018) with a fixed step rel_step * eps along sign(grad) (linf) or
    grad / ||grad|| (l2); `loss` is a name in LOSSES or a callable (logits, y) -> [N] (ignored by an objective).

    keep="first-fooling": each restart evaluates `steps` gradients, then the last iterate without one; a point leaves
    the batch when fooled. keep="best-loss": every point runs every step; its highest-loss iterate is returned.
    keep="last": one restart of `steps` gradient steps, the last iterate returned, no verdict (fooled is None).
    `cycles` (linf, keep="first-fooling", a walk rel_step * steps of at least CYCLE_MIN_WALK radii): a surviving
    point whose iterate repeats skips the rest of its cycle (see CYCLE_SAVE_GAP above); the returned points and
    verdicts are the same as without it.
    """
    rel = 2.5 / steps if rel_step is None else rel_step
    alpha = rel * eps
    every = torch.arange(len(x), device=x.device)
    if keep == "last":
        s = begin(x, y, every, eps, norm, 0, x_init, random_start, generator)
        for i in range(steps):
            ev = target.evaluate(s["xa"], s["y"], loss, i)
            s["xa"] = into(torch.add(s["xa"], unit_direction(ev.grad, norm), alpha=alpha), s, eps, norm)
        return s["xa"], None
    rec = Record(x if x_init is None else x_init, stop_when_fooled=keep == "first-fooling")
    watch = cycles and norm == "linf" and rec.stop_when_fooled and steps >= 3 and rel * steps >= CYCLE_MIN_WALK
    for r in range(restarts):
        ids = (~rec.fooled).nonzero().squeeze(1) if rec.stop_when_fooled else every
        if len(ids) == 0:
            break
        s = begin(x, y, ids, eps, norm, r, x_init, random_start, generator)
        if watch:  # end: the step at which a point is judged as a last iterate; saved: its iterate at step saved_at
            s.update(end=torch.full((len(ids),), steps, device=x.device), saved=s["xa"].clone())
            saved_at = 0
        for i in range(steps + 1):
            if watch:
                if 0 < i < steps:
                    again = (s["xa"] == s["saved"]).flatten(1).all(1) & (s["end"] == steps)
                    if bool(again.any()):
                        s["end"][again] = i + (steps - i) % (i - saved_at)
                        target.n_cycle_exits += int(again.sum())
                        target.n_grads_skipped += int((steps - s["end"][again]).sum())
                last = s["end"] == i  # all points at i == steps
                ev = _evaluate_split(target, s, loss, i, last)
            else:
                last = None
                ev = target.evaluate(s["xa"], s["y"], loss, i, need_grad=i < steps)
            s["grad"] = ev.grad
            keep_going = rec.update(s["ids"], s["xa"], ev)
            if last is not None:
                keep_going = keep_going & ~last
            s = compact(s, keep_going)
            if i == steps or len(s["ids"]) == 0:
                break
            if watch and _save_step(i):
                s["saved"], saved_at = s["xa"].clone(), i
            s["xa"] = into(torch.add(s["xa"], unit_direction(s["grad"], norm), alpha=alpha), s, eps, norm)
    return rec.result(target, y)


def fgsm_kernel(target, x, y, *, eps: float, norm: str = "linf", x_init=None, generator=None):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x (or from x_init)."""
    return pgd_kernel(target, x, y, eps=eps, norm=norm, steps=1, rel_step=1.0, restarts=1, random_start=False,
                x_init=x_init, generator=generator)


def apgd_checkpoints(steps: int) -> tuple[int, int, int]:
    """AutoAttack's checkpoint schedule as interval lengths: first interval 0.22*steps, each next one 0.03*steps
    shorter, never below 0.06*steps (i.e. p_0=0, p_1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def apgd_kernel(target, x, y, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                loss="ce", rho: float = 0.75, momentum: float = 0.75, random_start: bool = True, x_init=None,
                generator=None, targets: torch.Tensor | None = None):
    """Auto-PGD (Croce & Hein 2020, `autopgd_base.py` of fra31/auto-attack): step 2*eps, momentum 0.75, and at each
    checkpoint the step is halved and the iterate reset to the best point for every point where
    (a) the loss increased in at most rho (0.75) of the steps since the last checkpoint, or
    (b) the step was not halved at the last checkpoint and the best loss has not improved since.

    Each restart evaluates the start point plus `steps` iterates (the last one without a gradient). With `targets`
    [N] (target classes), `loss` is a targeted loss (logits, y, t) -> [N] (APGD-T).
    """
    first, shrink, shortest = apgd_checkpoints(steps)
    rec = Record(x if x_init is None else x_init)
    view = (-1,) + (1,) * (x.dim() - 1)
    for r in range(restarts):
        ids = (~rec.fooled).nonzero().squeeze(1)
        if len(ids) == 0:
            break
        s = begin(x, y, ids, eps, norm, r, x_init, random_start, generator, sphere=True)
        if targets is not None:
            s["t"] = targets[ids]
        ev = target.evaluate(s["xa"], s["y"], loss, 0, t=s.get("t"))
        n = len(ids)
        s.update(grad=ev.grad, x_prev=s["xa"].clone(), x_best=s["xa"].clone(), grad_best=ev.grad.clone(),
                 loss_best=ev.loss.clone(), step=torch.full((n,), 2.0 * eps, device=x.device),
                 hist=torch.zeros(n, steps + 1, device=x.device),  # hist[:, i] = loss at iterate i
                 best_at_check=ev.loss.clone(), halved_at_check=torch.ones(n, dtype=torch.bool, device=x.device))
        s["hist"][:, 0] = ev.loss
        s = compact(s, rec.update(s["ids"], s["xa"], ev))
        interval, since_check = first, 0
        for i in range(steps):
            if len(s["ids"]) == 0:
                break
            a = momentum if i > 0 else 1.0
            xa = s["xa"]
            z = into(xa + s["step"].view(view) * unit_direction(s["grad"], norm), s, eps, norm)
            s["x_prev"], s["xa"] = xa, into(xa + a * (z - xa) + (1 - a) * (xa - s["x_prev"]), s, eps, norm)
            last = i == steps - 1
            ev = target.evaluate(s["xa"], s["y"], loss, i + 1, need_grad=not last, t=s.get("t"))
            s["hist"][:, i + 1] = ev.loss
            improved = ev.loss > s["loss_best"]
            s["loss_best"] = torch.where(improved, ev.loss, s["loss_best"])
            s["x_best"][improved] = s["xa"][improved]
            if not last:
                s["grad"] = ev.grad
                s["grad_best"][improved] = ev.grad[improved]
            s = compact(s, rec.update(s["ids"], s["xa"], ev))
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




def apgd_t_kernel(target, x, y, *, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1,
                  n_targets: int = 9, rho: float = 0.75, momentum: float = 0.75, x_init=None, generator=None):
    """APGD-T (AutoAttack's targeted APGD): APGD on the targeted DLR loss towards each of the `n_targets` classes
    the float32 model ranks highest after the true one at the clean point, one target after another on the points
    not fooled yet (`restarts` runs per target). The first target resumes from x_init; the others start at random.
    A point counts as fooled when misclassified, whichever class wins."""
    order = target.logits_fp32(x, count=False).argsort(1, descending=True)
    n_t = min(int(n_targets), order.shape[1] - 1)
    x_adv = (x if x_init is None else x_init).clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for j in range(1, n_t + 1):
        ids = (~fooled).nonzero().squeeze(1)
        if len(ids) == 0:
            break
        start = x_init[ids] if (j == 1 and x_init is not None) else None
        xa, f = apgd_kernel(target, x[ids], y[ids], eps=eps, norm=norm, steps=steps, restarts=restarts,
                            loss=dlr_targeted_loss, rho=rho, momentum=momentum, x_init=start, generator=generator,
                            targets=order[ids, j])
        keep = torch.ones_like(f) if j == 1 else f  # survivors keep the first target's best point
        x_adv[ids[keep]] = xa[keep]
        fooled[ids[f]] = True
    return x_adv, fooled


# The kernel's own attacks by name; `cw` is PGD on the CW margin loss, `apgd-t` the targeted APGD of AutoAttack.
KERNELS: dict[str, Callable] = {
    "fgsm": fgsm_kernel,
    "pgd": pgd_kernel,
    "cw": functools.partial(pgd_kernel, loss="cw"),
    "apgd-ce": functools.partial(apgd_kernel, loss="ce"),
    "apgd-dlr": functools.partial(apgd_kernel, loss="dlr"),
    "apgd-t": apgd_t_kernel,
}
