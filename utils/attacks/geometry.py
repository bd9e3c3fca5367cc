"""Losses, the eps-ball, input checks and the sanity flags: the vocabulary every attack kernel speaks.

Images are float [N, C, H, W] in [0, 1]; labels int64 [N]; eps in image units (linf 8/255 moves each pixel by at
most 8/255; l2 bounds the Euclidean norm of one image's whole perturbation).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

NORMS = ("linf", "l2")
AMP_MODES = ("auto", "bf16", "off")

# Sanity flags: a flag is the string "<name>: <details>"; these are the names (`flag_name` reads one back).
NAN_GRAD = "nan_grad"  # input gradients with NaN/inf (set to 0 for the step)
ZERO_GRAD = "zero_grad"  # all-zero input gradients on points still classified right (gradient masking?)
NONFINITE_LOGITS = "nonfinite_logits"  # the model produced NaN/inf outputs
OUTSIDE_BALL = "outside_ball"  # an adversarial point left the eps-ball or [0, 1]
ACCURACY_RISES = "accuracy_rises"  # robust accuracy higher at a larger eps (impossible for a sound attack)
BLACKBOX_BEATS_WHITEBOX = "blackbox-beats-whitebox"  # a query-only attack fooled more points (gradient masking?)
RISES_WITH_EPS = "rises_with_eps"  # a dense metric higher at a larger eps than at a smaller one
RANDOMIZED = "randomized"  # two forward passes of one input differ (dropout on, input noise): use EOT attacks
PROBABILITY_OUTPUTS = "probability_outputs"  # outputs are probabilities, not logits: losses saturate, mask gradients
NO_GRADIENT = "no_gradient"  # the output has no gradient path to the input (detach, argmax, no_grad in forward)
NOT_CONVERGED = "not_converged"  # more steps or restarts lowered robust accuracy by more than a point


def flag(name: str, details: str = "") -> str:
    """A sanity flag: its name, then what was seen."""
    return f"{name}: {details}" if details else name


def flag_name(text: str) -> str:
    """The name of a flag made by `flag`."""
    return text.split(":", 1)[0].strip()


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


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, APGD-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) for target
    classes t [N]; rises as the target's logit overtakes the true one. Needs at least 4 classes."""
    logits = logits.float()
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    z_y, z_t = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, t[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


# -------------------------------------------------------------------------------------------------- ball geometry

def norms(v: torch.Tensor, norm: str) -> torch.Tensor:
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
        delta = delta * (eps / norms(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def unit_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for linf, g / ||g||_2 for l2 (0 where g is 0)."""
    if norm == "linf":
        return g.sign()
    return g / norms(g, "l2").clamp_min(1e-12)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None,
                 sphere: bool = False) -> torch.Tensor:
    """linf: uniform in the box. l2: a uniform direction at radius r * eps, r ~ U(0, 1) (Madry-style PGD, as
    torchattacks' PGDL2), or on the sphere of radius eps with `sphere` (AutoAttack's APGD). Then projected.
    (Measured on a small CNN, L2 eps = 1, 10 steps: starting on the sphere left PGD 1-1.5 points weaker.)"""
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        radius = eps if sphere else eps * torch.rand(norms(noise, "l2").shape, generator=generator, device=x.device)
        noise = noise * (radius / norms(noise, "l2").clamp_min(1e-12))
    return project(x + noise, x, eps, norm)


def ball_violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """How far each point lies outside the eps-ball or [0, 1], float32 [N] (0 when inside), checked in float32."""
    x_adv, x = x_adv.float(), x.float()
    over = (norms(x_adv - x, norm).flatten() - eps).clamp_min(0)
    out_of_range = torch.maximum((-x_adv).clamp_min(0), (x_adv - 1).clamp_min(0)).flatten(1).amax(1)
    return torch.maximum(over, out_of_range)


def ball_flags(x_adv, x, eps, norm, tol: float = 1e-5) -> list[str]:
    """[OUTSIDE_BALL flag] when a point of x_adv lies outside the eps-ball around x or [0, 1] (beyond `tol`)."""
    excess = ball_violation(x_adv, x, eps, norm)
    bad = excess > tol * max(eps, 1.0)
    if bad.any():
        return [flag(OUTSIDE_BALL, f"{int(bad.sum())} points outside the {norm} ball eps={eps:.4g} or [0, 1] "
                                   f"(by up to {float(excess.max()):.2e})")]
    return []


def monotonicity_flags(accs: dict) -> list[str]:
    """[ACCURACY_RISES flags]: robust accuracy {eps: acc} (eps ascending) must not rise with eps (the smaller ball
    lies inside the larger one)."""
    eps = list(accs)
    return [flag(ACCURACY_RISES, f"{accs[b]:.4f} at eps={b:.4g} > {accs[a]:.4f} at eps={a:.4g}")
            for a, b in zip(eps, eps[1:]) if accs[b] > accs[a]]


# ------------------------------------------------------------------------------------------------ input checking

def choice(value, options, what: str):
    """`value` if it is one of `options`, else a ValueError listing them."""
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(options)}")
    return value


def check_eps(eps, norm: str | None = None) -> float:
    """eps as a float radius >= 0, or a ValueError. With norm="linf", eps above 0.5 is refused too: a ball wider than
    half the [0, 1] range is eps given in grey levels (8 meant as 8/255); L2 radii can legitimately exceed 0.5."""
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite radius >= 0 in image units (e.g. 8/255 for linf), got {eps}")
    if norm == "linf" and eps > 0.5:
        raise ValueError(f"linf eps={eps:g} is more than half the [0, 1] pixel range; eps is in image units: did you "
                         f"mean eps/255 = {eps:g}/255 = {eps / 255:.4g}?")
    return eps


def check_images(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images must be a finite float tensor in [0, 1]; labels, when given, integer class indices [N] >= 0 beside
    them. Returns (x, y) as the kernel takes them: x float32 (float64, bfloat16 and float16 images are cast), y int64.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of images [N, C, H, W] in [0, 1], got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf; clean the data (images must be finite and lie in [0, 1])")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"images must lie in [0, 1], got range [{float(x.min()):.3g}, {float(x.max()):.3g}]; pass "
                         f"unnormalized images and put the normalization inside the model (utils.models.Normalize)")
    if y is None:
        return x.float(), None
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be int64 class indices [N], got {type(y).__name__} {getattr(y, 'dtype', '')}: pass "
                         f"the labels as a tensor of class numbers (y.long()), not one-hot rows or probabilities")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must be int64 labels [N] with N = len(x) = {len(x)}, got shape {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
    return x.float(), y.long()


def check_options(norm: str, steps: int, restarts: int, rel_step: float | None = None, loss=None,
                  loss_options=None) -> None:
    """Norm, steps, restarts, step size and loss of an attack call, or a ValueError naming the bad one."""
    choice(norm, NORMS, "norm")
    if loss is not None and not callable(loss):
        choice(loss, loss_options if loss_options is not None else LOSSES, "loss")
    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    if rel_step is not None and not rel_step > 0:
        raise ValueError(f"rel_step (step size as a fraction of eps) must be > 0, got {rel_step}")
