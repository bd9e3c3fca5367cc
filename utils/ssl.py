"""The seven self-supervised methods and the supervised baseline: losses, heads and one module per method.

Layout (solo-learn / lightly style: a method adds only its heads and its loss; the loop that trains any of them, with
its cache, is `utils.pretrain`):

* Losses, pure functions of tensors, each tested by hand in tests/test_ssl.py:
  `nt_xent_loss` (SimCLR), `moco_loss` (MoCo v2), `byol_loss` (BYOL), `sinkhorn` + `swav_loss` (SwAV),
  `dino_loss` + `dino_center_update` (DINO), `barlow_twins_loss` (Barlow Twins), `vicreg_loss` / `vicreg_terms`
  (VICReg).
* Blocks: `MLPHead` (projector / predictor), `NormalizedLinear` (SwAV prototypes, DINO's last layer),
  `ema_update` and `momentum_schedule` (teacher / key / target networks), `MoCoQueue`.
* Methods: one small `nn.Module` each (`SimCLR`, `MoCoV2`, `BYOL`, `SwAV`, `DINO`, `BarlowTwins`, `VICReg`,
  `Supervised`); `forward(views, labels) -> scalar loss` and `momentum_update(progress)`. They are registered in
  `METHODS` (name -> `SSLMethod`: constructor, default hyper-parameters, number of views); `get_method(name)`.

Every image is float [N, 1, 28, 28] in [0, 1]; normalization lives inside the encoder (utils.models.Encoder).
Mixed precision: the networks may run under the loop's bfloat16 autocast; every loss is computed in float32
(`utils.runtime.full_precision`).
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.runtime import full_precision

# A change here that changes the weights a given set of parameters trains must bump `utils.pretrain.SSL_CODE_VERSION`.


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
        with full_precision(logits.device):
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
        with full_precision(z1.device):
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
        with full_precision(k1.device):
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
        with full_precision(z1.device):
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
        with full_precision(s1.device):
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
        with full_precision(t1.device):
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
        with full_precision(z1.device):
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
        with full_precision(z1.device):
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
    """The registry entry of `name` (a key of METHODS); a ValueError listing the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]
