"""An evaluation a robustness researcher accepts: APGD-CE / APGD-T / PGD-L2 as strong as torchattacks' at equal steps,
the AutoAttack-style ensemble never weaker than its members, restarts that never help the model, the eps cascade as
strong as an independent attack, AutoAttack's sanity checks, and bootstrap intervals that cover."""
from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from utils import attacks, stats
from utils.attacks import robust_accuracy
from utils.data import load_fashion_mnist


@pytest.fixture(scope="module")
def model(trained_cnn) -> nn.Module:
    """A small CNN, 300 Adam steps on Fashion-MNIST (~83 % clean accuracy), shared with test_attacks."""
    return trained_cnn


@pytest.fixture(scope="module")
def points(model, data_root):
    """200 test points the model classifies right (so every attack has the same work)."""
    x, y = load_fashion_mnist(data_root, "test", n=400, seed=0)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    return x[right][:200], y[right][:200]


def _acc(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name, ours_kw, theirs", [
    ("apgd-ce", {}, lambda m, eps: torchattacks.APGD(m, eps=eps, steps=10, n_restarts=1, loss="ce", seed=0)),
    ("apgd-t", {"n_targets": 9}, lambda m, eps: torchattacks.APGDT(m, eps=eps, steps=10, n_restarts=1, n_classes=10,
                                                                  seed=0)),
])
def test_apgd_as_strong_as_torchattacks(model, points, name, ours_kw, theirs):
    x, y = points
    for eps in (2 / 255, 4 / 255):
        ours = robust_accuracy(model, x, y, eps_list=[eps], attack=name, steps=10, seed=0, **ours_kw)[eps]
        ref = _acc(model, theirs(model, eps)(x, y), y)
        assert ours <= ref + 0.01, (name, eps, ours, ref)
        assert ours < 0.95  # the attack works, so the comparison means something


def test_pgd_l2_as_strong_as_torchattacks(model, points):
    x, y = points
    for eps in (0.5, 1.0):
        ours = robust_accuracy(model, x, y, eps_list=[eps], attack="pgd", norm="l2", steps=10, seed=0)[eps]
        torch.manual_seed(0)
        ref = _acc(model, torchattacks.PGDL2(model, eps=eps, alpha=0.25 * eps, steps=10, random_start=True)(x, y), y)
        assert ours <= ref + 0.01, (eps, ours, ref)
        assert ours < 0.95


def test_the_cascade_is_as_strong_as_an_independent_attack(model, points):
    """The eps grid walked once (survivors of a smaller ball resume from their best point plus a random offset in the
    larger ball) is not weaker than torchattacks' PGD run on every point at each eps, over three seeds."""
    x, y = points
    grid = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
    for seed in range(3):
        ours = robust_accuracy(model, x, y, eps_list=grid, attack="pgd", steps=10, seed=seed)
        torch.manual_seed(seed)
        for eps in grid[1:]:
            ref = _acc(model, torchattacks.PGD(model, eps=eps, alpha=0.25 * eps, steps=10, random_start=True)(x, y), y)
            assert ours[eps] <= ref + 0.01, (seed, eps, ours[eps], ref)


def test_more_restarts_never_help_the_model(model, points):
    x, y = points
    one = robust_accuracy(model, x, y, eps_list=[0, 2 / 255, 4 / 255], attack="apgd-ce", steps=5, restarts=1, seed=3)
    three = robust_accuracy(model, x, y, eps_list=[0, 2 / 255, 4 / 255], attack="apgd-ce", steps=5, restarts=3,
                            seed=3)
    # same seed: the first restart is the same run, so every point three restarts leave robust, one left robust too
    assert bool((three.robust_mask <= one.robust_mask).all())
    assert three[4 / 255] <= one[4 / 255]


def test_the_ensemble_is_never_above_a_member(model, points):
    x, y = points[0][:120], points[1][:120]
    grid = [0, 2 / 255, 4 / 255]
    ens = robust_accuracy(model, x, y, eps_list=grid, attack="autoattack", steps=5, n_queries=100, n_targets=3,
                          seed=0)
    assert ens.members == ["apgd-ce", "apgd-t", "fab-t", "square"]
    first = robust_accuracy(model, x, y, eps_list=grid, attack="apgd-ce", steps=5, seed=0)
    assert bool((ens.robust_mask <= first.robust_mask).all())  # same seed: the first member's run is the same
    for name, kw in (("apgd-t", {"n_targets": 3}), ("fab-t", {"n_targets": 3}), ("square", {"n_queries": 100})):
        solo = robust_accuracy(model, x, y, eps_list=grid, attack=name, steps=5, seed=0, **kw)
        for eps in grid:
            assert ens[eps] <= solo[eps] + 0.01, (name, eps)
    # fooled_by: -1 exactly on the robust points, a member index on the fooled ones, and a fooled point stays fooled
    assert torch.equal(ens.fooled_by == attacks.NOT_FOOLED, ens.robust_mask)
    fooled = ens.fooled_by >= 0
    assert bool((fooled[1:] >= fooled[:-1]).all())
    counts = ens.fooled_by_counts()
    assert sum(counts[4 / 255].values()) == int((~ens.robust_mask[2]).sum())


def test_a_custom_ensemble_is_a_tuple_of_names(model, points):
    x, y = points[0][:60], points[1][:60]
    res = robust_accuracy(model, x, y, eps_list=[0, 4 / 255], attack=("fgsm", "pgd"), steps=3, seed=0)
    assert res.attack == "fgsm+pgd" and res.members == ["fgsm", "pgd"]
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(model, x, y, eps_list=[0, 4 / 255], attack=("pgd", "nonsense"))


# ------------------------------------------------------------------------------------------------- sanity flags

class _Noisy(nn.Module):
    """Input noise that stays on in eval mode: a randomized defence."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class _Softmax(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class _Detached(nn.Module):
    """No gradient path from the input to the output."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.detach())


@pytest.mark.parametrize("wrap, name", [(_Noisy, attacks.RANDOMIZED), (_Softmax, attacks.PROBABILITY_OUTPUTS),
                                        (_Detached, attacks.NO_GRADIENT)])
def test_each_sanity_check_fires_on_a_model_built_to_trigger_it(model, points, wrap, name):
    x, y = points[0][:64], points[1][:64]
    with pytest.warns(RuntimeWarning, match=name):
        res = robust_accuracy(wrap(model), x, y, eps_list=[0, 4 / 255], attack="pgd", steps=3, seed=0)
    assert name in {attacks.flag_name(f) for f in res.flags}
    # and the honest model raises none of them
    clean = robust_accuracy(model, x, y, eps_list=[0, 4 / 255], attack="pgd", steps=3, seed=0)
    assert name not in {attacks.flag_name(f) for f in clean.flags}


def test_bootstrap_interval_covers_a_known_gap():
    """Paired points, known accuracies 0.70 vs 0.60: the 95 % interval covers the true gap in about 95 % of
    simulated test sets."""
    g = torch.Generator().manual_seed(0)
    hits, trials, n = 0, 200, 400
    for t in range(trials):
        u = torch.rand(n, generator=g)
        ssl = (u < 0.70).to(torch.uint8)  # correlated pair: the supervised model is right on a subset of ssl's
        sup = (u < 0.60).to(torch.uint8)
        _, lo, hi = stats.bootstrap_gap(ssl, sup, n_boot=400, seed=t)
        hits += lo <= 0.10 <= hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials
