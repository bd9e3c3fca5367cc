"""The public attacks and `robust_accuracy`: checked inputs, a frozen model, one kernel, sanity flags."""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from utils.attacks.geometry import (ball_flags, check_eps, check_images, check_options, choice,
                                    monotonicity_flags, project, random_start as draw_random_start)
from utils.attacks.external import external_kernel
from utils.attacks.kernels import KEEP_MODES, KERNELS, apgd_kernel, fgsm_kernel, pgd_kernel
from utils.attacks.target import ClassifierTarget, ObjectiveTarget, attack_view
from utils.runtime import batches

# Every attack by name: the kernel's own, and the two borrowed from torchattacks for AutoAttack's ensemble.
ATTACKS: dict[str, Callable] = {**KERNELS, "fab-t": functools.partial(external_kernel, attack="fab-t"),
                                "square": functools.partial(external_kernel, attack="square")}


def _warn_flags(flags: list[str], what: str = "attack") -> None:
    if flags:
        warnings.warn(f"{what} sanity flags: " + "; ".join(flags), RuntimeWarning, stacklevel=3)


def _device_error(e: Exception) -> bool:
    """True for torch's messages about tensors on two devices (they name neither the model nor the fix)."""
    text = str(e)
    return "device" in text or ("should be the same" in text and "cuda" in text)


def _check_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> int:
    """The public boundary of a classifier: float32 weights on one real device, and a forward of one point that
    returns logits [1, K] as a tensor with every label < K. Returns K. `model` is the attack's view (eval mode), so
    the probe forward changes nothing. Each failure is a clear error naming the fix, before any attack work."""
    tensors = list(model.parameters()) + list(model.buffers())
    dtypes = sorted({str(t.dtype) for t in tensors if t.is_floating_point()} - {"torch.float32"})
    if dtypes:
        raise TypeError(f"the model's weights are {', '.join(dtypes)}: the kernel takes its verdicts in float32, so "
                        f"pass a float32 model (model.float()); bf16 speed comes from amp='auto' or 'bf16', which "
                        f"runs the gradient steps under autocast")
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1 or devices == ["meta"]:
        raise ValueError(f"the model's weights are on {', '.join(devices)}: load them and move the whole model to one "
                         f"device (model.to(device)); the images follow it")
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as e:
        if _device_error(e):
            raise ValueError(f"the model cannot run on images on {x.device} (its weights are on {devices}): a part "
                             f"of it lives on another device; move the whole model there (model.to(device)) "
                             f"[{str(e)[:120]}]") from e
        raise
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned a {type(out).__name__}, not a logits tensor [N, K]: wrap it so that "
                        f"forward returns the logits alone (e.g. output[0] or output['logits'])")
    if out.dim() != 2 or len(out) != 1:
        raise ValueError(f"the model must return logits [N, K], got shape {tuple(out.shape)} for one image")
    k = out.shape[1]
    if y is not None and len(y) and int(y.max()) >= k:
        raise ValueError(f"labels must be class indices in [0, {k}) for this model with {k} outputs, got label "
                         f"{int(y.max())}: pass labels of the model's task")
    return k


def _run_public(kernel, model, x, y, *, eps, norm, amp, channels_last, seed, generator=None, fold_bn=True,
                **options) -> torch.Tensor:
    """Shared body of the public attack functions: check inputs, attack a view of the model (the model itself is
    never changed), run one kernel, warn on flags."""
    eps = check_eps(eps, norm)
    x, y = check_images(x, y)
    model = attack_view(model, channels_last)
    target = ClassifierTarget(model, amp)
    x, y = x.to(target.device), y.to(target.device)
    _check_classifier(model, x, y)
    if eps == 0:
        return x.clone()
    if generator is None and seed is not None:
        generator = torch.Generator(target.device).manual_seed(seed)
    if fold_bn:
        target.use_folded(x[:64], channels_last)
    x_adv, _ = kernel(target, x, y, eps=eps, norm=norm, generator=generator, **options)
    _warn_flags(target.flags() + ball_flags(x_adv, x, eps, norm))
    return x_adv


# ---------------------------------------------------------------------------------------------- public attacks

def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", amp: str = "auto",
         channels_last: bool = True, seed: int | None = None) -> torch.Tensor:
    """FGSM: one step of size eps along sign(grad) (linf) or grad/||grad|| (l2) of the cross-entropy. -> x_adv."""
    check_options(norm, 1, 1)
    return _run_public(fgsm_kernel, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 10,
        rel_step: float | None = None, restarts: int = 1, random_start: bool = True, loss: str | Callable = "ce",
        keep: str = "first-fooling", amp: str = "auto", channels_last: bool = True, fold_bn: bool = True,
        seed: int | None = None, generator: torch.Generator | None = None, cycles: bool = True) -> torch.Tensor:
    """PGD with `restarts` random starts of `steps` steps of size rel_step * eps (default rel_step = 2.5 / steps).

    x [N, C, H, W] in [0, 1], y int64 [N]; loss "ce" (cross-entropy), "cw" (margin) or a callable
    (logits, y) -> per-point loss [N]. Returns x_adv [N, C, H, W] inside the eps-ball and [0, 1]: with
    keep="first-fooling" the first fooling iterate found, else the highest-loss one; keep="best-loss" the
    highest-loss iterate; keep="last" the last iterate of one restart (hard examples for adversarial training).
    Random starts come from `generator`, else from a generator seeded with `seed`, else from torch's global RNG.
    `cycles`: linf first-fooling PGD retires a surviving point whose iterate repeats (same result, fewer gradients;
    watched when rel_step * steps >= `utils.attacks.kernels.CYCLE_MIN_WALK`; see CYCLE_SAVE_GAP there).
    """
    check_options(norm, steps, restarts, rel_step, loss, ("ce", "cw"))
    choice(keep, KEEP_MODES, "keep")
    if keep == "last" and int(restarts) != 1:
        raise ValueError("keep='last' returns the last iterate of one restart: pass restarts=1")
    return _run_public(pgd_kernel, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed,
                       generator=generator, fold_bn=fold_bn, steps=int(steps), rel_step=rel_step,
                       restarts=int(restarts), random_start=random_start, loss=loss, keep=keep,
                       cycles=bool(cycles))


def pgd_objective(objective: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, *, eps: float,
                  steps: int, norm: str = "linf", rel_step: float | None = None, random_start: bool = True,
                  seed: int = 0, flags: set | None = None) -> torch.Tensor:
    """PGD ascent on any objective of the images (the loss hook of the dense tasks): `objective(x_adv, step)`
    returns a loss to maximize ([N] or a scalar, float32), step = 0..steps-1. One restart, fixed step
    rel_step * eps (default 2.5 / steps), random start seeded by `seed`; returns the last iterate, inside the eps-ball
    and [0, 1]. eps = 0 returns x. NaN or all-zero input gradients add their flag names (NAN_GRAD, ZERO_GRAD) to
    `flags`. The objective handles its own precision (utils.runtime.autocast) and model modes. An objective that
    returns no tensor, or whose model lives on another device than x, is a clear error."""
    eps = check_eps(eps, norm)
    check_options(norm, steps, 1, rel_step)
    x, _ = check_images(x)
    x = x.detach()
    if eps == 0:
        return x.clone()

    def checked(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        out = objective(x_adv, step)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the objective returned a {type(out).__name__}, not a loss tensor ([N] or a scalar): "
                            f"return the loss to maximize (e.g. sum a detector's loss dict)")
        if out.device != x_adv.device:
            raise RuntimeError(f"the loss is on {out.device}, the images on {x_adv.device}: different devices")
        return out

    target = ObjectiveTarget(checked, x.device)
    generator = torch.Generator(x.device).manual_seed(int(seed))
    try:
        x_adv, _ = pgd_kernel(target, x, None, eps=eps, norm=norm, steps=int(steps), rel_step=rel_step,
                              random_start=random_start, keep="last", generator=generator)
    except RuntimeError as e:
        if not _device_error(e):
            raise
        raise ValueError(f"the objective's model and the images are on different devices (x on {x.device}): move x "
                         f"to the model's device (x.to(device)) [{str(e)[:120]}]") from e
    if flags is not None:
        flags.update(target.flag_names())
    return x_adv.detach()


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", steps: int = 100,
         restarts: int = 1, loss: str = "ce", amp: str = "auto", channels_last: bool = True,
         seed: int | None = None) -> torch.Tensor:
    """APGD with AutoAttack's checkpoint step-size schedule and momentum; loss "ce" or "dlr". Same contract as `pgd`."""
    check_options(norm, steps, restarts, None, loss, ("ce", "dlr"))
    return _run_public(apgd_kernel, model, x, y, eps=eps, norm=norm, amp=amp, channels_last=channels_last, seed=seed,
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
    eps j, input order), `x_adv` {eps: float32 [n, C, H, W] on the CPU} (only the eps asked for via `return_adv`),
    `members` (the attacks run, in order) and `fooled_by` int8 [len(eps), n]: the index in `members` of the attack
    that first fooled point i at eps j or a smaller eps, NOT_FOOLED (-1) for a robust point, WRONG_CLEAN (-2) for a
    point misclassified without attack. `work`: {"grads": per-point input gradients computed, "cycle_exits": points
    that PGD's cycle detection retired early, "grads_skipped": the gradients they did not need}.
    """

    def __init__(self, accuracies: dict, *, flags: list[str], n: int, attack: str, norm: str, steps: int,
                 restarts: int, robust_mask: torch.Tensor, x_adv: dict | None = None,
                 fooled_by: torch.Tensor | None = None, members: list[str] | None = None,
                 work: dict | None = None):
        super().__init__(accuracies)
        self.flags, self.n, self.attack, self.norm = list(flags), n, attack, norm
        self.steps, self.restarts, self.robust_mask = steps, restarts, robust_mask
        self.eps = list(accuracies)
        self.x_adv = x_adv or {}
        self.fooled_by, self.members = fooled_by, list(members or [attack])
        self.work = dict(work or {})

    def fooled_by_counts(self) -> dict[float, dict[str, int]]:
        """{eps: {member: points it fooled first (at this eps or a smaller one)}} from `fooled_by`."""
        if self.fooled_by is None:
            return {}
        return {eps: {m: int((self.fooled_by[j] == k).sum()) for k, m in enumerate(self.members)}
                for j, eps in enumerate(self.eps)}

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
        for idx in batches(len(x), batch_size):
            yield x[idx], y[idx]
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


# Members of an ensemble and the options each takes; kernels in CARRY resume from the best point of the smaller ball.
MEMBER_OPTIONS = {"fgsm": (), "pgd": ("steps", "restarts", "rel_step", "random_start", "cycles"),
                  "cw": ("steps", "restarts", "rel_step", "random_start", "cycles"), "apgd-ce": ("steps", "restarts"),
                  "apgd-dlr": ("steps", "restarts"), "apgd-t": ("steps", "restarts", "n_targets"),
                  "fab-t": ("steps", "n_targets"), "square": ("n_queries",)}
CARRY = {"fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t"}
# AutoAttack's standard ensemble (Croce & Hein 2020; RobustBench): each member attacks what the previous left.
ENSEMBLES = {"autoattack": ("apgd-ce", "apgd-t", "fab-t", "square")}
NOT_FOOLED, WRONG_CLEAN = -1, -2  # codes of `fooled_by` besides the index of the member that fooled a point


def _members(attack, options: dict) -> list[tuple[str, Callable, dict]]:
    """[(name, kernel, its options)] of an attack name, an ensemble name or a tuple of attack names."""
    names = ENSEMBLES.get(attack, (attack,)) if isinstance(attack, str) else tuple(attack)
    if not names:
        raise ValueError("an ensemble needs at least one attack")
    out = []
    for n in names:
        choice(n, ATTACKS, "attack")
        out.append((n, ATTACKS[n], {k: v for k, v in options.items() if k in MEMBER_OPTIONS.get(n, ())}))
    return out


def _carried_start(best: torch.Tensor, x: torch.Tensor, eps: float, prev: float, norm: str,
                   generator) -> torch.Tensor:
    """Where a survivor of the smaller ball (radius prev) starts in the larger one: its best point so far plus a
    random offset of radius eps - prev (uniform in the box for linf, as the kernels' random starts for l2), so the
    start lies in the eps-ball, keeps what the smaller ball found and still explores the larger ball."""
    return project(draw_random_start(best, eps - prev, norm, generator), x, eps, norm)


def _attack_chunk(target, members, x, y, eps_grid, norm, keep_adv, generator):
    """One chunk through the eps grid, each member in turn on the points the previous ones left. Returns robust bool
    [len(eps_grid), n], fooled_by int8 [len(eps_grid), n], {eps: x_adv}, flags.

    At a larger eps a member that takes a starting point resumes from the best point found in the smaller ball
    plus a random offset of radius eps - prev (`_carried_start`; with several restarts, restart 0 resumes from the
    best point itself and the others start at random). One run per eps: until 2026-11 a second run from a fresh
    random start followed, which cost 1.6x the gradients (resnet_tiny, 6-eps grid) and, measured on 3 small ResNets
    x 3 seeds against torchattacks' PGD, made the cascade no stronger (bench/attacks.py --archs)."""
    robust = ~target.wrong(x, y)
    by = torch.full((len(x),), NOT_FOOLED, dtype=torch.int8, device=x.device)
    by[~robust] = WRONG_CLEAN
    best = x.clone()  # per point: its fooling point once fooled, else its highest-loss point so far
    masks, bys, advs, flags, prev = [], [], {}, [], 0.0
    for eps in eps_grid:
        if eps > 0:
            for k, (name, kernel, opts) in enumerate(members):
                ids = robust.nonzero().squeeze(1)
                if len(ids) == 0:
                    break
                start = None
                if prev > 0 and name in CARRY:
                    start = best[ids] if opts.get("restarts", 1) > 1 else _carried_start(
                        best[ids], x[ids], eps, prev, norm, generator)
                x_adv, fooled = kernel(target, x[ids], y[ids], eps=eps, norm=norm, x_init=start,
                                       generator=generator, **opts)
                flags += ball_flags(x_adv, x[ids], eps, norm)
                if start is not None or k == 0:
                    best[ids] = x_adv
                else:
                    best[ids[fooled]] = x_adv[fooled]
                robust[ids[fooled]] = False
                by[ids[fooled]] = k
            prev = eps
        masks.append(robust.clone())
        bys.append(by.clone())
        if eps in keep_adv:
            advs[eps] = best.to("cpu", torch.float32, copy=True)  # `best` keeps changing at larger eps
    return torch.stack(masks), torch.stack(bys), advs, flags


def robust_accuracy(model: nn.Module, x, y: torch.Tensor | None = None, *, eps_list: Sequence[float],
                    attack: str = "pgd", norm: str = "linf", steps: int = 10, restarts: int = 1,
                    batch_size: int = 256, amp: str = "auto", channels_last: bool = True,
                    return_adv: bool | str = False, seed: int | None = 0, progress: bool = False,
                    fold_bn: bool | nn.Module = True, check_monotonic: bool = True,
                    **attack_kwargs) -> RobustAccuracy:
    """Robust accuracy of `model` on (x [N, C, H, W] in [0, 1], y int64 [N]) — or a DataLoader of such batches passed
    as `x` — under `attack` at each eps of `eps_list` (image units; 0 gives the clean accuracy).

    The grid is attacked in ascending order; at a larger eps only the points that survived the smaller one are
    attacked, resuming from their best point so far plus a random offset that keeps them in the larger ball (a point
    fooled in a smaller ball is fooled in every larger one),
    so accuracy cannot rise with eps. Points leave the working batch the moment they are fooled; "fooled" is decided in
    float32 even when the steps run in bfloat16 (`amp`: "auto" = bf16 where the hardware supports it, "bf16", "off");
    `channels_last` puts 4-D weights in channels_last format during the attack (faster convolutions); `fold_bn`
    takes the gradients from a copy with BatchNorm folded into the convolutions (same function, faster; verdicts
    still come from the model itself in float32; pass `fold_batchnorm(model)` to fold once for many calls).
    `attack` is a key of `ATTACKS`, an ensemble ("autoattack": APGD-CE, APGD-T, FAB-T, Square) or a tuple of attack
    names; an ensemble's members run in turn, each on the points the previous ones left, and `result.fooled_by`
    says which member first fooled each point. `steps`/`restarts` go to the members that take them ("fgsm" is
    recorded as 1 step); further keyword options go to the members that take them (rel_step, random_start,
    n_targets for APGD-T/FAB-T, n_queries for Square). `return_adv`: False, True (keep the adversarial images at the
    largest eps) or "all" (every eps) in `result.x_adv`. `seed` fixes the random starts (None: global RNG).
    The model is attacked in eval mode and returned in the mode it came in. `check_monotonic=False` leaves out the
    accuracy-rises check (for one shard of a larger set, whose check belongs to the whole). Returns a
    `RobustAccuracy`.
    """
    options = dict(attack_kwargs, steps=int(steps), restarts=int(restarts))
    members = _members(attack, options)
    name = attack if isinstance(attack, str) else "+".join(attack)
    if [m for m, _, _ in members] == ["fgsm"]:
        steps, restarts = 1, 1
    check_options(norm, steps, restarts, attack_kwargs.get("rel_step"), attack_kwargs.get("loss"))
    if isinstance(eps_list, (int, float)):
        eps_list = [eps_list]
    eps_grid = sorted({check_eps(e, norm) for e in eps_list})
    if not eps_grid:
        raise ValueError("eps_list is empty; pass radii such as [0, 2/255, 8/255]")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if return_adv not in (False, True, "all"):
        raise ValueError(f"return_adv must be False, True (largest eps) or 'all', got {return_adv!r}")
    keep_adv = set(eps_grid) if return_adv == "all" else ({eps_grid[-1]} if return_adv else set())

    model = attack_view(model, channels_last)  # the caller's model is never changed: other threads may use it
    target = ClassifierTarget(model, amp)
    generator = None if seed is None else torch.Generator(target.device).manual_seed(seed)
    masks, bys, advs, flags = [], [], {e: [] for e in keep_adv}, []
    chunks = _chunks(x, y, int(batch_size))
    if progress:
        total = math.ceil(len(x) / int(batch_size)) if isinstance(x, torch.Tensor) else None
        chunks = tqdm(chunks, desc=f"{name} {norm}", unit="batch", total=total)
    n_classes = None
    for xb, yb in chunks:
        xb, yb = check_images(xb, yb)
        xb, yb = xb.to(target.device), yb.to(target.device)
        if n_classes is None:  # once, on the first chunk's first points
            n_classes = _check_classifier(model, xb, yb)
            target.check_model(xb[:64])
            if fold_bn is not False:  # True: fold here; a module: the caller's folded copy
                target.use_folded(xb[:64], channels_last, None if fold_bn is True else fold_bn)
        elif len(yb) and int(yb.max()) >= n_classes:
            raise ValueError(f"labels must be class indices in [0, {n_classes}) for this model with {n_classes} "
                             f"outputs, got label {int(yb.max())}: pass labels of the model's task")
        mask, by, adv, chunk_flags = _attack_chunk(target, members, xb, yb, eps_grid, norm, keep_adv, generator)
        masks.append(mask.cpu())
        bys.append(by.cpu())
        flags += chunk_flags
        for e, a in adv.items():
            advs[e].append(a)
    if not masks:
        raise ValueError("no images to attack: x is empty")
    robust_mask = torch.cat(masks, dim=1)
    accs = {eps: float(robust_mask[j].float().mean()) for j, eps in enumerate(eps_grid)}
    flags = target.flags() + sorted(set(flags)) + (monotonicity_flags(accs) if check_monotonic else [])
    result = RobustAccuracy(accs, flags=flags, n=robust_mask.shape[1], attack=name, norm=norm, steps=int(steps),
                            restarts=int(restarts), robust_mask=robust_mask,
                            x_adv={e: torch.cat(a) for e, a in advs.items()}, fooled_by=torch.cat(bys, dim=1),
                            members=[m for m, _, _ in members],
                            work={"grads": target.n_grads, "cycle_exits": target.n_cycle_exits,
                                  "grads_skipped": target.n_grads_skipped})
    _warn_flags(flags, f"robust_accuracy({name}/{norm})")
    return result
