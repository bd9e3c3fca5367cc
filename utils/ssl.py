"""The seven self-supervised methods, the supervised baseline and the one pretraining loop they share.

Layout (solo-learn / lightly style: a method adds only its heads and its loss):

* Losses, pure functions of tensors, each tested by hand in tests/test_ssl.py:
  `nt_xent_loss` (SimCLR), `moco_loss` (MoCo v2), `byol_loss` (BYOL), `sinkhorn` + `swav_loss` (SwAV),
  `dino_loss` + `dino_center_update` (DINO), `barlow_twins_loss` (Barlow Twins), `vicreg_loss` / `vicreg_terms`
  (VICReg).
* Blocks: `MLPHead` (projector / predictor), `NormalizedLinear` (SwAV prototypes, DINO's last layer),
  `ema_update` and `momentum_schedule` (teacher / key / target networks), `MoCoQueue`.
* Methods: one small `nn.Module` each (`SimCLR`, `MoCoV2`, `BYOL`, `SwAV`, `DINO`, `BarlowTwins`, `VICReg`,
  `Supervised`); `forward(views, labels) -> scalar loss` and `momentum_update(progress)`. They are registered in
  `METHODS` (name -> `SSLMethod`: constructor, default hyper-parameters, number of views).
* The loop: `pretrain_or_load(method, ...) -> (encoder, info)` trains (or loads from the cache) an encoder with any
  method; it is resumable after a kill, deterministic given the seed, and stops on a NaN loss
  (`TrainingDivergedError`). `quick_linear_probe` is the fixed quick evaluation recipe used to tune it.

Every image is float [N, 1, 28, 28] in [0, 1]; normalization lives inside the encoder (utils.models.Encoder).
Mixed precision: the networks run under bfloat16 autocast where the CPU supports it; every loss is computed in float32.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.augment import make_augment
from utils.models import build_encoder
from utils.results import atomic_save, atomic_write_json, param_hash, provenance, read_json

# Bump when a change in this file changes the weights a given set of parameters trains (invalidates the cache).
SSL_CODE_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Losses: pure functions. Shapes: B = batch size, D = embedding size, K = number of prototypes / queue length.
# ----------------------------------------------------------------------------------------------------------------

def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy over the 2B embeddings of a batch of pairs.

    z1, z2: [B, D] projections of the two views (any scale; L2-normalized here). For each of the 2B embeddings the
    positive is its partner view and the 2B - 2 others are negatives. Returns the mean over the 2B anchors (scalar).
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, targets)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is its key, the negatives are the queue.

    q: [B, D] queries (online network), k: [B, D] keys (momentum network; no gradient flows into them),
    queue: [K, D] past keys. All are L2-normalized here. Returns the mean cross-entropy with the positive at index 0.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalized MSE, 2 - 2 cos(p, z), averaged over the batch: 0 when aligned, 2 orthogonal, 4 opposite.

    p: [B, D] online predictions, z: [B, D] target projections (no gradient flows into them).
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp soft assignments of B samples to K prototypes with equal shares (SwAV's codes).

    scores: [B, K] similarities. Returns Q [B, K] >= 0 whose rows sum to 1 (each sample's assignment) and whose
    columns sum to B / K once converged (equipartition; after `iters` alternations they are close to it).
    """
    q = (scores.float() / eps)
    q = torch.exp(q - q.max()).T  # [K, B]; subtracting the max changes nothing after normalization, avoids overflow
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * k  # each prototype gets 1/K of the mass
        q /= q.sum(dim=0, keepdim=True) * b  # each sample gets 1/B of the mass
    return (q * b).T


def swav_loss(scores1: torch.Tensor, scores2: torch.Tensor, temperature: float = 0.1, sinkhorn_iters: int = 3,
              eps: float = 0.05) -> torch.Tensor:
    """SwAV's swapped prediction: the codes of one view (Sinkhorn, no gradient) are predicted from the other view.

    scores1, scores2: [B, K] cosine similarities of the two views' embeddings to the prototypes. Returns
    -1/2 [ mean_b sum_k q1 log softmax(scores2 / T) + mean_b sum_k q2 log softmax(scores1 / T) ].
    """
    q1 = sinkhorn(scores1.detach(), eps, sinkhorn_iters)
    q2 = sinkhorn(scores2.detach(), eps, sinkhorn_iters)
    l12 = -(q1 * F.log_softmax(scores2 / temperature, dim=1)).sum(dim=1).mean()
    l21 = -(q2 * F.log_softmax(scores1 / temperature, dim=1)).sum(dim=1).mean()
    return (l12 + l21) / 2


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, t_student: float = 0.1,
              t_teacher: float = 0.04) -> torch.Tensor:
    """DINO's cross-entropy between the centered, sharpened teacher and the student, for one pair of views.

    student_out: [B, K] student logits of one view; teacher_out: [B, K] teacher logits of ANOTHER view (no gradient);
    center: [1, K] running mean of the teacher logits. Returns mean_b sum_k -softmax((t - c)/t_t) log softmax(s/t_s).
    Symmetrize over the views yourself (DINO skips pairs of the same view).
    """
    target = F.softmax((teacher_out.detach() - center) / t_teacher, dim=-1)
    return -(target * F.log_softmax(student_out / t_student, dim=-1)).sum(dim=-1).mean()


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The next center: momentum * center + (1 - momentum) * batch mean of the teacher logits ([B, K] -> [1, K])."""
    return center * momentum + teacher_out.float().mean(dim=0, keepdim=True) * (1 - momentum)


def _standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension standardization over the batch, as BatchNorm1d(affine=False) in training mode (biased var)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins: push the cross-correlation matrix of the standardized embeddings to the identity.

    z1, z2: [B, D]. C = z1n^T z2n / B ([D, D]). Returns sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2:
    0 for two identical views whose dimensions are decorrelated.
    """
    c = _standardize(z1).T @ _standardize(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """VICReg's three terms for z1, z2 [B, D] (as in facebookresearch/vicreg):

    invariance = mean squared difference; variance = mean over dims of relu(1 - sqrt(var + eps)), averaged over the
    two views (so constant embeddings give 1 - sqrt(eps) = 0.99); covariance = sum of squared off-diagonal covariances
    / D, summed over the two views.
    """
    d = z1.shape[1]
    invariance = F.mse_loss(z1, z2)
    z1 = z1 - z1.mean(dim=0)
    z2 = z2 - z2.mean(dim=0)
    std1 = torch.sqrt(z1.var(dim=0) + eps)
    std2 = torch.sqrt(z2.var(dim=0) + eps)
    variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
    n = z1.shape[0]
    cov1 = z1.T @ z1 / (n - 1)
    cov2 = z2.T @ z2 / (n - 1)
    covariance = _off_diagonal(cov1).pow(2).sum() / d + _off_diagonal(cov2).pow(2).sum() / d
    return invariance, variance, covariance


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_w: float = 25.0, var_w: float = 25.0,
                cov_w: float = 1.0) -> torch.Tensor:
    """VICReg = sim_w * invariance + var_w * variance + cov_w * covariance (see `vicreg_terms`); z1, z2 [B, D]."""
    inv, var, cov = vicreg_terms(z1, z2)
    return sim_w * inv + var_w * var + cov_w * cov


# ----------------------------------------------------------------------------------------------------------------
# Blocks: heads, momentum networks, queue.
# ----------------------------------------------------------------------------------------------------------------

class MLPHead(nn.Module):
    """Projector / predictor: (Linear -> BatchNorm1d -> ReLU) x (n_layers - 1) -> Linear. [B, in_dim] -> [B, out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NormalizedLinear(nn.Module):
    """Cosine scores to K unit-norm prototypes: normalize(x) @ normalize(W)^T, in [-1, 1]. [B, D] -> [B, K].

    SwAV's prototypes (it renormalizes them every step) and DINO's weight-normalized last layer with its norm fixed
    to 1 are both this layer.
    """

    def __init__(self, in_dim: int, n_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_prototypes, in_dim) / math.sqrt(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, parameter by parameter; buffers (BN statistics) are copied.

    The two modules must have the same structure (target is usually a deepcopy of online).
    """
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def momentum_schedule(tau0: float, progress: float) -> float:
    """BYOL's cosine increase of the EMA momentum from tau0 (progress 0) to 1 (progress 1)."""
    return 1 - (1 - tau0) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class MoCoQueue(nn.Module):
    """A FIFO of the last `size` keys ([size, dim], L2-normalized) kept as buffers so checkpoints include it."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        """Overwrite the oldest entries with the keys k [B, dim] (wrapping around)."""
        size = self.keys.shape[0]
        k = F.normalize(k.detach().float(), dim=1)[-size:]
        idx = (self.ptr + torch.arange(k.shape[0])) % size
        self.keys[idx] = k
        self.ptr.fill_(int((self.ptr + k.shape[0]) % size))


class _full_precision(torch.autocast):
    """Compute losses in float32 even inside the training loop's bfloat16 autocast region."""

    def __init__(self):
        super().__init__("cpu", enabled=False)


# ----------------------------------------------------------------------------------------------------------------
# Methods: each adds its heads and its loss to a shared encoder. forward(views, labels) -> scalar loss.
# ----------------------------------------------------------------------------------------------------------------

class _Method(nn.Module):
    """What the loop needs from a method: `.encoder`, `forward(views, labels) -> loss`, `momentum_update(progress)`."""

    def momentum_update(self, progress: float) -> None:  # methods without a momentum network do nothing
        pass


class Supervised(_Method):
    """The baseline: a linear head on the encoder, cross-entropy with the labels, one augmented view."""

    def __init__(self, encoder: nn.Module, n_classes: int = 10):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feat_dim, n_classes)

    def forward(self, views, labels):
        logits = self.head(self.encoder(views[0]))
        with _full_precision():
            return F.cross_entropy(logits.float(), labels)


class SimCLR(_Method):
    """SimCLR (Chen et al. 2020): projector + NT-Xent over the batch."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 64, temperature: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim)
        self.temperature = temperature

    def forward(self, views, labels=None):
        z1, z2 = (self.projector(self.encoder(v)) for v in views)
        with _full_precision():
            return nt_xent_loss(z1.float(), z2.float(), self.temperature)


class MoCoV2(_Method):
    """MoCo v2 (Chen et al. 2020): MLP projector, momentum key network, a queue of negatives (symmetrized loss)."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 64, temperature: float = 0.2,
                 queue_size: int = 4096, tau: float = 0.99):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim)
        self.key_encoder = _frozen_copy(encoder)
        self.key_projector = _frozen_copy(self.projector)
        self.queue = MoCoQueue(queue_size, proj_dim)
        self.temperature, self.tau = temperature, tau

    def forward(self, views, labels=None):
        q1, q2 = (self.projector(self.encoder(v)) for v in views)
        with torch.no_grad():
            k1, k2 = (self.key_projector(self.key_encoder(v)) for v in views)
        with _full_precision():
            loss = (moco_loss(q1.float(), k2.float(), self.queue.keys, self.temperature)
                    + moco_loss(q2.float(), k1.float(), self.queue.keys, self.temperature)) / 2
        self.queue.push(torch.cat([k1, k2]))
        return loss

    def momentum_update(self, progress):
        tau = momentum_schedule(self.tau, progress)
        ema_update(self.key_encoder, self.encoder, tau)
        ema_update(self.key_projector, self.projector, tau)


class BYOL(_Method):
    """BYOL (Grill et al. 2020): online projector + predictor regress the EMA target's projection of the other view."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 64, pred_hidden: int = 256,
                 tau: float = 0.99):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim)
        self.predictor = MLPHead(proj_dim, pred_hidden, proj_dim)
        self.target_encoder = _frozen_copy(encoder)
        self.target_projector = _frozen_copy(self.projector)
        self.tau = tau

    def forward(self, views, labels=None):
        p1, p2 = (self.predictor(self.projector(self.encoder(v))) for v in views)
        with torch.no_grad():
            z1, z2 = (self.target_projector(self.target_encoder(v)) for v in views)
        with _full_precision():
            return byol_loss(p1.float(), z2.float()) + byol_loss(p2.float(), z1.float())

    def momentum_update(self, progress):
        tau = momentum_schedule(self.tau, progress)
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)


class SwAV(_Method):
    """SwAV (Caron et al. 2020): projector, K normalized prototypes, swapped prediction of Sinkhorn codes."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 64, n_prototypes: int = 64,
                 temperature: float = 0.1, sinkhorn_iters: int = 3, sinkhorn_eps: float = 0.05):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim)
        self.prototypes = NormalizedLinear(proj_dim, n_prototypes)
        self.temperature, self.sinkhorn_iters, self.sinkhorn_eps = temperature, sinkhorn_iters, sinkhorn_eps

    def forward(self, views, labels=None):
        s1, s2 = (self.prototypes(self.projector(self.encoder(v))) for v in views)
        with _full_precision():
            return swav_loss(s1.float(), s2.float(), self.temperature, self.sinkhorn_iters, self.sinkhorn_eps)


class DINO(_Method):
    """DINO (Caron et al. 2021): student/EMA-teacher heads ending in K normalized prototypes, centered and
    sharpened teacher targets, cross-view cross-entropy (two global views)."""

    def __init__(self, encoder, proj_hidden: int = 256, bottleneck: int = 64, n_prototypes: int = 256,
                 t_student: float = 0.1, t_teacher: float = 0.04, center_momentum: float = 0.9, tau: float = 0.99):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(MLPHead(encoder.feat_dim, proj_hidden, bottleneck, n_layers=3),
                                  NormalizedLinear(bottleneck, n_prototypes))
        self.teacher_encoder = _frozen_copy(encoder)
        self.teacher_head = _frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, n_prototypes))
        self.t_student, self.t_teacher, self.center_momentum, self.tau = t_student, t_teacher, center_momentum, tau

    def forward(self, views, labels=None):
        s1, s2 = (self.head(self.encoder(v)) for v in views)
        with torch.no_grad():
            t1, t2 = (self.teacher_head(self.teacher_encoder(v)) for v in views)
        with _full_precision():
            s1, s2, t1, t2 = s1.float(), s2.float(), t1.float(), t2.float()
            loss = (dino_loss(s1, t2, self.center, self.t_student, self.t_teacher)
                    + dino_loss(s2, t1, self.center, self.t_student, self.t_teacher)) / 2
        self.center.copy_(dino_center_update(self.center, torch.cat([t1, t2]), self.center_momentum))
        return loss

    def momentum_update(self, progress):
        tau = momentum_schedule(self.tau, progress)
        ema_update(self.teacher_encoder, self.encoder, tau)
        ema_update(self.teacher_head, self.head, tau)


class BarlowTwins(_Method):
    """Barlow Twins (Zbontar et al. 2021): projector, cross-correlation of the two views pushed to the identity."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 256, lambd: float = 5e-3):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim, n_layers=3)
        self.lambd = lambd

    def forward(self, views, labels=None):
        z1, z2 = (self.projector(self.encoder(v)) for v in views)
        with _full_precision():
            return barlow_twins_loss(z1.float(), z2.float(), self.lambd)


class VICReg(_Method):
    """VICReg (Bardes et al. 2022): projector, invariance + variance + covariance regularization."""

    def __init__(self, encoder, proj_hidden: int = 256, proj_dim: int = 256, sim_w: float = 25.0,
                 var_w: float = 25.0, cov_w: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.feat_dim, proj_hidden, proj_dim, n_layers=3)
        self.sim_w, self.var_w, self.cov_w = sim_w, var_w, cov_w

    def forward(self, views, labels=None):
        z1, z2 = (self.projector(self.encoder(v)) for v in views)
        with _full_precision():
            return vicreg_loss(z1.float(), z2.float(), self.sim_w, self.var_w, self.cov_w)


@dataclass(frozen=True)
class SSLMethod:
    """A registry entry: how to build a method's training module around an encoder, and its defaults.

    `build(encoder, **overrides)` returns the module (it owns the encoder, the heads and any momentum networks,
    queues and centers as parameters/buffers, so one state_dict checkpoints it all). `n_views` views per image.
    `augment_families`: the families this method keeps from the requested list (None: all of them);
    `augment_kwargs`: its settings for `make_augment` (e.g. a milder crop).
    """
    name: str
    module: type
    defaults: dict = field(default_factory=dict)
    n_views: int = 2
    uses_labels: bool = False
    augment_families: tuple[str, ...] | None = None
    augment_kwargs: dict = field(default_factory=dict)
    reference: str = ""

    def view_families(self, augmentations: Sequence[str]) -> list[str]:
        """The augmentation families this method's views use, out of the requested ones (order kept)."""
        return [f for f in augmentations if self.augment_families is None or f in self.augment_families]

    def hparams(self, overrides: dict | None = None) -> dict:
        unknown = set(overrides or {}) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {sorted(unknown)} for {self.name}; "
                             f"it takes {sorted(self.defaults)}")
        return {**self.defaults, **(overrides or {})}

    def build(self, encoder: nn.Module, **overrides) -> _Method:
        return self.module(encoder, **self.hparams(overrides))


def _defaults(cls) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


METHODS: dict[str, SSLMethod] = {
    # The supervised baseline keeps only the geometric families (torchvision's supervised recipe: crop + flip); the
    # photometric ones are part of the self-supervised recipes and only slow down supervised training here.
    "supervised": SSLMethod("supervised", Supervised, _defaults(Supervised), n_views=1, uses_labels=True,
                            augment_families=("crop", "flip"), augment_kwargs={"crop_scale": (0.5, 1.0)},
                            reference="cross-entropy with labels, linear head"),
    "simclr": SSLMethod("simclr", SimCLR, _defaults(SimCLR), reference="arXiv 2002.05709"),
    "mocov2": SSLMethod("mocov2", MoCoV2, _defaults(MoCoV2), reference="arXiv 2003.04297"),
    "byol": SSLMethod("byol", BYOL, _defaults(BYOL), reference="arXiv 2006.07733"),
    "swav": SSLMethod("swav", SwAV, _defaults(SwAV), reference="arXiv 2006.09882"),
    "dino": SSLMethod("dino", DINO, _defaults(DINO), reference="arXiv 2104.14294"),
    "barlowtwins": SSLMethod("barlowtwins", BarlowTwins, _defaults(BarlowTwins), reference="arXiv 2103.03230"),
    "vicreg": SSLMethod("vicreg", VICReg, _defaults(VICReg), reference="arXiv 2105.04906"),
}


def get_method(name: str) -> SSLMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


# ----------------------------------------------------------------------------------------------------------------
# The shared pretraining loop, with a cache, resumable checkpoints and divergence detection.
# ----------------------------------------------------------------------------------------------------------------

class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the message names the method, the epoch and the kept checkpoint."""


def bf16_supported() -> bool:
    """True when this CPU runs bfloat16 natively (AVX512-BF16 / AMX): then autocast to bfloat16 is 2-3x faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s shuffling and augmentations, a function of (seed, epoch) only, so a resumed run
    replays exactly the stream an uninterrupted run would have seen."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2 ** 63 - 1)


def _lr_at(step: int, total: int, base_lr: float, warmup_frac: float = 0.1) -> float:
    """Linear warm-up over the first `warmup_frac` of the steps, then cosine decay to 1 % of `base_lr`."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return base_lr * (step + 1) / warm
    q = (step - warm) / max(1, total - warm)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * q)))


def training_params(method: str, *, arch: str, n_pretrain: int, epochs: int, batch_size: int, lr: float,
                    augmentations: Sequence[str], seed: int, weight_decay: float = 1e-5,
                    hparams: dict | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Everything that determines the trained weights (the cache key): the hash of this dict names the files.

    With explicit `data` (instead of Fashion-MNIST's first `n_pretrain` images) a fingerprint of its bytes joins it.
    """
    spec = get_method(method)
    extra = {}
    if data is not None:
        import hashlib

        h = hashlib.sha256(data[0].float().contiguous().numpy().tobytes())
        h.update(data[1].contiguous().numpy().tobytes())
        extra["data_sha256"] = h.hexdigest()[:16]
    return {**extra, "method": method, "arch": arch, "n_pretrain": int(n_pretrain), "epochs": int(epochs),
            "batch_size": int(batch_size), "lr": float(lr), "augmentations": list(augmentations), "seed": int(seed),
            "weight_decay": float(weight_decay), "hparams": spec.hparams(hparams),
            "view_families": spec.view_families(augmentations), "augment_kwargs": spec.augment_kwargs,
            "code_version": SSL_CODE_VERSION}


def encoder_paths(cache_dir: str | Path, params: dict) -> dict[str, Path]:
    """Where a run's files live: final encoder (safetensors), JSON sidecar, resumable checkpoint, epoch snapshots."""
    stem = f"{params['method']}-{param_hash(params)}"
    d = Path(cache_dir) / "encoders"
    return {"encoder": d / f"{stem}.safetensors", "sidecar": d / f"{stem}.json", "checkpoint": d / f"{stem}.ckpt.pt",
            "snapshot": d / f"{stem}-epoch{{epoch}}.safetensors"}


def _save_encoder(encoder: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in encoder.state_dict().items()}
    atomic_save(lambda tmp: save_file(state, tmp), path)


def _load_encoder(arch: str, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    encoder = build_encoder(arch)
    encoder.load_state_dict(load_file(str(path)))
    return encoder.float().eval()


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_save(lambda tmp: torch.save(state, tmp), path)


def load_epoch_checkpoint(method: str, epoch: int, *, arch: str, n_pretrain: int, epochs: int, batch_size: int,
                          lr: float, augmentations: Sequence[str], seed: int, cache_dir: str | Path,
                          weight_decay: float = 1e-5, hparams: dict | None = None,
                          data: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """The encoder snapshot kept at `epoch` of the run `pretrain_or_load(method, ..., keep_epochs=[epoch])` made.

    A snapshot is the `epochs`-long run stopped after `epoch` epochs (same learning-rate schedule), not a separate
    `epoch`-long run. Returns an encoder in eval mode, on CPU, float32.
    """
    params = training_params(method, arch=arch, n_pretrain=n_pretrain, epochs=epochs, batch_size=batch_size, lr=lr,
                             augmentations=augmentations, seed=seed, weight_decay=weight_decay, hparams=hparams,
                             data=data)
    path = Path(str(encoder_paths(cache_dir, params)["snapshot"]).format(epoch=epoch))
    if not path.is_file():
        raise FileNotFoundError(f"no epoch-{epoch} snapshot of {method} at {path}: run pretrain_or_load(..., "
                                f"keep_epochs=[{epoch}]) with the same parameters first (it retrains if needed).")
    return _load_encoder(arch, path)


def pretrain_or_load(method: str, *, arch: str, n_pretrain: int, epochs: int, batch_size: int, lr: float,
                     augmentations: Sequence[str], seed: int, cache_dir: str | Path, data_root: str | Path = "data",
                     progress: bool = True,
                     save_every_epoch_checkpoints: bool = False, keep_epochs: Sequence[int] = (),
                     hparams: dict | None = None, weight_decay: float = 1e-5, profile: str = "custom",
                     data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     on_epoch_end: Callable[[int, float], None] | None = None) -> tuple[nn.Module, dict]:
    """Train an encoder with `method` (a key of METHODS) on Fashion-MNIST, or load it from the cache.

    Data: the first `n_pretrain` images of a seeded permutation of the train split (labels used only by
    "supervised"), or `data=(x [N,1,28,28] in [0,1], y [N])` if given. Training: AdamW (`lr`, `weight_decay`),
    10 % linear warm-up then cosine decay, `batch_size` images per step (last partial batch dropped), views from
    `make_augment(augmentations)`; bfloat16 autocast + channels_last where the CPU supports bfloat16.
    `hparams` overrides the method's defaults (`METHODS[method].defaults`: temperatures, head sizes, momentum).

    Cache: `<cache_dir>/encoders/<method>-<param_hash>.safetensors` + `.json` sidecar (provenance, parameters, loss
    per epoch, wall time); reused while every parameter that changes the weights is unchanged (`training_params`).
    Resumability: after every epoch a checkpoint (`.ckpt.pt`: model with heads, momentum networks, queue/center,
    optimizer, RNG state, epoch, loss history, wall time) is written atomically; a rerun after a kill resumes after
    the last finished epoch and ends with the weights an uninterrupted run gives (the shuffling and augmentation of
    epoch e are seeded by (seed, e) alone). The checkpoint is deleted once the encoder is in the cache.
    `keep_epochs` (or `save_every_epoch_checkpoints=True` for all epochs): also save the encoder at those epochs
    (read them with `load_epoch_checkpoint`); a cached run without the requested snapshots is retrained (same
    weights, deterministic). `on_epoch_end(epoch, mean_loss)` is called after each epoch's checkpoint is written.

    Raises TrainingDivergedError on a NaN/inf loss (the last good checkpoint is kept).
    Returns (encoder in eval mode on CPU, float32; info dict: method, params, param_hash, path, from_cache,
    loss_history (mean loss per epoch), wall_time_s (training time over all resumed segments), resumed_from_epoch,
    epochs_run_now, sidecar).
    """
    spec = get_method(method)
    if epochs < 1 or n_pretrain < 0:
        raise ValueError(f"epochs must be >= 1 and n_pretrain >= 0 (got epochs={epochs}, n_pretrain={n_pretrain}); "
                         f"the `paper` profile loads official checkpoints with utils.models.load_backbone instead")
    make_augment(augmentations)  # validates the family names before any work
    augment = make_augment(spec.view_families(augmentations), **spec.augment_kwargs)
    params = training_params(method, arch=arch, n_pretrain=n_pretrain, epochs=epochs, batch_size=batch_size, lr=lr,
                             augmentations=augmentations, seed=seed, weight_decay=weight_decay, hparams=hparams,
                             data=data)
    paths = encoder_paths(cache_dir, params)
    keep = sorted(set(range(1, epochs + 1)) if save_every_epoch_checkpoints else {int(e) for e in keep_epochs})
    bad = [e for e in keep if not 1 <= e <= epochs]
    if bad:
        raise ValueError(f"keep_epochs {bad} outside 1..{epochs}")
    snap = {e: Path(str(paths["snapshot"]).format(epoch=e)) for e in keep}

    if paths["encoder"].is_file() and paths["sidecar"].is_file() and all(p.is_file() for p in snap.values()):
        side = read_json(paths["sidecar"])
        info = {"method": method, "params": params, "param_hash": param_hash(params), "path": str(paths["encoder"]),
                "from_cache": True, "loss_history": side["loss_history"], "wall_time_s": side["wall_time_s"],
                "resumed_from_epoch": None, "epochs_run_now": 0, "sidecar": side}
        return _load_encoder(arch, paths["encoder"]), info

    if data is None:
        from utils.data import load_fashion_mnist

        x, y = load_fashion_mnist(data_root, "train", n_pretrain, seed)
    else:
        x, y = data
    n = len(x)
    if n == 0:
        raise ValueError("no training images: n_pretrain is 0 or `data` is empty")
    bs = min(batch_size, n)
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * epochs
    use_bf16 = bf16_supported()
    fmt = torch.channels_last if use_bf16 else torch.contiguous_format

    ckpt = None
    if paths["checkpoint"].is_file():
        ckpt = torch.load(paths["checkpoint"], map_location="cpu", weights_only=True)
        # snapshots are written before their epoch's checkpoint; if a requested one of a finished epoch is missing
        # (keep_epochs grew since the run started), start over: training is deterministic, the weights are the same
        if ckpt.get("param_hash") != param_hash(params) or any(
                e <= int(ckpt["epoch"]) and not p.is_file() for e, p in snap.items()):
            ckpt = None
    with torch.random.fork_rng(devices=[]):  # seeded initialization without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = spec.build(build_encoder(arch), **(hparams or {}))
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
        from tqdm.auto import tqdm

        epoch_bar = tqdm(epoch_bar, desc=f"pretrain {method}", initial=start_epoch, total=epochs, leave=False)
    for epoch in epoch_bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        if ckpt is not None and epoch == start_epoch + 1:
            g.set_state(ckpt["next_generator_state"])  # equal to the line above by construction; kept explicit
        perm = torch.randperm(n, generator=g)
        model.train()
        total, count = 0.0, 0
        for b in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, lr)
            idx = perm[b * bs:(b + 1) * bs]
            xb = x[idx]
            views = [augment(xb, g).contiguous(memory_format=fmt) for _ in range(spec.n_views)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
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
            _save_encoder(model.encoder, snap[epoch])
        _save_checkpoint(paths["checkpoint"], {
            "param_hash": param_hash(params), "epoch": epoch, "loss_history": losses, "wall_time_s": wall,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "next_generator_state": torch.Generator().manual_seed(_epoch_seed(seed, epoch + 1)).get_state()})
        if progress:
            epoch_bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, losses[-1])

    _save_encoder(model.encoder, paths["encoder"])
    side = {**provenance(profile, params, seed), "method": method, "arch": arch, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "augmentations": list(augmentations), "n_pretrain": n_pretrain,
            "n_images": n, "steps": total_steps, "bf16": use_bf16, "wall_time_s": wall, "loss_history": losses,
            "kept_epochs": keep, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(paths["sidecar"], side)
    paths["checkpoint"].unlink(missing_ok=True)
    info = {"method": method, "params": params, "param_hash": param_hash(params), "path": str(paths["encoder"]),
            "from_cache": False, "loss_history": losses, "wall_time_s": wall, "resumed_from_epoch": resumed_from,
            "epochs_run_now": epochs - start_epoch, "sidecar": side}
    return _load_encoder(arch, paths["encoder"]), info


# ----------------------------------------------------------------------------------------------------------------
# The quick linear probe used to tune the pretraining (the notebooks' full evaluation lives in utils.evaluation).
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def extract_features(encoder: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Encoder features [N, feat_dim] (float32, eval mode, no augmentation) of images x [N, C, H, W] in [0, 1]."""
    was_training = encoder.training
    encoder.eval()
    try:
        return torch.cat([encoder(x[i:i + batch_size].float()).float() for i in range(0, len(x), batch_size)])
    finally:
        encoder.train(was_training)


def quick_linear_probe(encoder: nn.Module, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor,
                       y_te: torch.Tensor, *, l2: float = 1e-4, max_iter: int = 200) -> float:
    """Test accuracy (fraction in [0, 1]) of a logistic regression on frozen, standardized encoder features.

    Fixed recipe: features of x_tr / x_te (eval mode), standardized with the train mean/std, multinomial logistic
    regression with L2 penalty `l2` fitted full-batch by L-BFGS (`max_iter` iterations, strong-Wolfe line search).
    Deterministic.
    """
    f_tr, f_te = extract_features(encoder, x_tr), extract_features(encoder, x_te)
    mean, std = f_tr.mean(0), f_tr.std(0).clamp_min(1e-6)
    f_tr, f_te = (f_tr - mean) / std, (f_te - mean) / std
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    w = torch.zeros(f_tr.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f_tr @ w + b, y_tr) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((f_te @ w + b).argmax(1) == y_te).float().mean())
