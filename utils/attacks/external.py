"""Attacks the kernel borrows from torchattacks, run on the points that survived the kernel's own attacks: FAB-T
(minimum-norm, targeted at the top classes) and Square (query-based black box). Both complete AutoAttack's
ensemble; each is a kernel with the usual contract, (target, x, y, ...) -> (x_adv, fooled).

Speed: the borrowed attack searches with the target's gradient oracle (BatchNorm folded) under the precision
policy's autocast; every returned point is projected into the eps-ball and judged by a float32 forward of the model.
A point the low-precision search believed fooled but float32 does not is searched again with the float32 model, so
a lower-precision search never weakens the attack.
"""
from __future__ import annotations

import torch
import torchattacks
from torch import nn

from utils.attacks.geometry import project
from utils.runtime import autocast

TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}


class OracleForward(nn.Module):
    """The target's gradient oracle (the model, or its BN-folded copy) under the policy's autocast; float32 logits."""

    def __init__(self, target):
        super().__init__()
        self.oracle = target.grad_model
        self.device, self.amp = target.device, target.amp
        # in eval mode like the oracle: torchattacks puts a wrapper it found in training mode (a new module's
        # default) back into training mode after attacking, oracle included, so that a BatchNorm left unfolded
        # (BYOL's SAME-padded layers; fold_bn=False) then normalized with batch statistics and rewrote its running
        # statistics in every later forward
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return self.oracle(x).float()


def _seed(generator: torch.Generator | None) -> int:
    return 0 if generator is None else int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator,
                                                         device=generator.device))


def _make(name: str, model: nn.Module, *, eps: float, norm: str, steps: int, n_queries: int, n_targets: int,
          n_classes: int, seed: int):
    if name == "square":
        return torchattacks.Square(model, norm=TORCHATTACKS_NORMS[norm], eps=eps, n_queries=int(n_queries),
                                   n_restarts=1, loss="margin", seed=seed)
    atk = torchattacks.FAB(model, norm=TORCHATTACKS_NORMS[norm], eps=eps, steps=int(steps), n_restarts=1,
                           multi_targeted=True, n_classes=n_classes, seed=seed)
    atk.n_target_classes = min(int(n_targets), n_classes - 1)
    return atk


def external_kernel(target, x, y, *, eps: float, norm: str = "linf", attack: str = "square", steps: int = 10,
                    n_queries: int = 5000, n_targets: int = 9, x_init=None, generator=None, restarts: int = 1):
    """Run torchattacks' `attack` ("square" or "fab-t") on (x, y); starts from x itself (x_init is not used:
    neither attack takes a starting point). Returns (x_adv inside the ball, float32 verdicts)."""
    n_classes = target.logits_fp32(x[:1], count=False).shape[1]
    seed = _seed(generator)
    kw = dict(eps=eps, norm=norm, steps=steps, n_queries=n_queries, n_targets=n_targets, n_classes=n_classes,
              seed=seed)
    oracle = OracleForward(target)
    with torch.enable_grad():  # FAB differentiates; the caller may hold no_grad
        x_adv = project(_make(attack, oracle, **kw)(x, y).float(), x, eps, norm)
    fooled = target.wrong(x_adv, y)
    if target.inexact:
        with torch.no_grad():
            believed = oracle(x_adv).argmax(1) != y
        redo = (believed & ~fooled).nonzero().squeeze(1)
        if len(redo):
            with torch.enable_grad():
                xr = project(_make(attack, target.model, **kw)(x[redo], y[redo]).float(), x[redo], eps, norm)
            f = target.wrong(xr, y[redo])
            x_adv[redo[f]] = xr[f]
            fooled[redo[f]] = True
    return x_adv, fooled


EXTERNAL = {"fab-t": "fab-t", "square": "square"}
