"""Tests of the attack kernel (utils/attacks.py) on a small CNN trained a few hundred steps on Fashion-MNIST.

Every test runs on the CPU in seconds; the session fixture trains the model once (~seconds).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from utils import attacks
from utils.attacks import ATTACKS, apgd, apgd_ce, apgd_dlr, cw_loss, dlr_loss, fgsm, pgd, robust_accuracy
from utils.data import load_fashion_mnist
from utils.runtime import SEED_STREAM_BATCH, derive_seed
from utils.models import FASHION_MEAN, FASHION_STD, Normalize

from cnn_models import fit_cnn, small_cnn


@pytest.fixture(scope="session")
def model(trained_cnn) -> nn.Module:
    """The small CNN trained 300 steps of 128 images (~83 % clean test accuracy), shared with test_ensemble."""
    return trained_cnn


@pytest.fixture(scope="session")
def data(data_root) -> tuple[torch.Tensor, torch.Tensor]:
    """400 test images [400, 1, 28, 28] in [0, 1] and their labels."""
    return load_fashion_mnist(data_root, "test", n=400, seed=0)


def clean_correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_model_is_trained(model, data):
    # the other tests mean little on an untrained model
    assert clean_correct(model, *data).float().mean() > 0.75


# ----------------------------------------------------------------------------------------------- constraints

ALL = {"fgsm": lambda m, x, y, **kw: fgsm(m, x, y, **kw),
       "pgd": lambda m, x, y, **kw: pgd(m, x, y, steps=5, **kw),
       "cw": lambda m, x, y, **kw: pgd(m, x, y, steps=5, loss="cw", **kw),
       "apgd-ce": lambda m, x, y, **kw: apgd_ce(m, x, y, steps=8, **kw),
       "apgd-dlr": lambda m, x, y, **kw: apgd_dlr(m, x, y, steps=8, **kw)}


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_attacks_stay_in_ball_and_range(model, data, name, norm, eps):
    x, y = data[0][:64], data[1][:64]
    x_adv = ALL[name](model, x, y, eps=eps, norm=norm, seed=0)
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-6)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # the attack must move the points and fool some of the clean-correct ones
    fooled = clean_correct(model, x, y) & ~clean_correct(model, x_adv, y)
    assert fooled.sum() >= 5
    assert float(size.max()) > 0.5 * eps


def test_registry_dispatch_covers_every_attack():
    assert set(ATTACKS) == {"fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"}


# --------------------------------------------------------------------------------------------- robust accuracy

def test_eps0_is_clean_accuracy(model, data):
    x, y = data
    res = robust_accuracy(model, x, y, eps_list=[0.0, 2 / 255], steps=3)
    assert res[0.0] == pytest.approx(float(clean_correct(model, x, y).float().mean()), abs=1e-9)
    assert torch.equal(res.robust_mask[0], clean_correct(model, x, y))


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_fooled_verdicts_are_true_in_float32(model, data, amp):
    """Accuracy never rises with eps, and each point's verdict is backed by an adversarial image checked here in
    float32: fooled points are misclassified, inside the ball; robust points' returned images are classified right."""
    x, y = data[0][:256], data[1][:256]
    grid = [0, 4 / 255, 8 / 255, 16 / 255]
    res = robust_accuracy(model, x, y, eps_list=grid, steps=5, amp=amp, return_adv="all")
    accs = [res[e] for e in grid]
    assert all(b <= a for a, b in zip(accs, accs[1:]))
    assert accs[0] - accs[-1] > 0.3  # the attack does something
    assert (res.robust_mask[1:] <= res.robust_mask[:-1]).all()
    for j, eps in enumerate(grid):
        x_adv = res.x_adv[eps]
        assert float((x_adv - x).abs().amax()) <= eps + 1e-6
        assert torch.equal(clean_correct(model, x_adv, y), res.robust_mask[j])
    assert res.flags == []


def test_large_eps_drives_accuracy_to_zero(model, data):
    res = robust_accuracy(model, *data, eps_list=[0.5], steps=10)
    assert res[0.5] <= 0.05


def test_at_most_torchattacks_plus_one_point(model, data):
    import torchattacks

    x, y = data
    steps, grid = 10, [2 / 255, 4 / 255, 8 / 255, 16 / 255]
    ours = robust_accuracy(model, x, y, eps_list=grid, steps=steps)
    torch.manual_seed(0)
    for eps in grid:
        adv = torchattacks.PGD(model, eps=eps, alpha=2.5 / steps * eps, steps=steps, random_start=True)(x, y)
        theirs = float(clean_correct(model, adv, y).float().mean())
        assert ours[eps] <= theirs + 0.01, (eps, ours[eps], theirs)


def test_apgd_ce_at_least_as_strong_as_pgd(model, data):
    x, y = data
    grid = [8 / 255, 16 / 255]
    p = robust_accuracy(model, x, y, eps_list=grid, attack="pgd", steps=10)
    a = robust_accuracy(model, x, y, eps_list=grid, attack="apgd-ce", steps=10)
    for eps in grid:
        assert a[eps] <= p[eps] + 0.01, (eps, a[eps], p[eps])


def test_apgd_dlr_and_cw_attack(model, data):
    x, y = data
    clean = float(clean_correct(model, x, y).float().mean())
    for attack in ("apgd-dlr", "cw", "fgsm"):
        res = robust_accuracy(model, x, y, eps_list=[8 / 255], attack=attack, steps=10)
        assert res[8 / 255] < clean - 0.1, attack


def test_dataloader_gives_same_numbers_as_tensors(model, data):
    x, y = data[0][:200], data[1][:200]
    grid = [0, 4 / 255, 8 / 255]
    a = robust_accuracy(model, x, y, eps_list=grid, steps=3, batch_size=64, seed=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=False)  # regrouped into chunks of 64
    b = robust_accuracy(model, loader, eps_list=grid, steps=3, batch_size=64, seed=3)
    assert a[0] > a[8 / 255] + 0.1
    assert dict(a) == dict(b)
    assert torch.equal(a.robust_mask, b.robust_mask)


def test_result_object_and_rows(model, data):
    x, y = data[0][:100], data[1][:100]
    res = robust_accuracy(model, x, y, eps_list=[2 / 255, 0], norm="linf", steps=3, restarts=2, return_adv=True)
    assert list(res) == [0, 2 / 255] and res.eps == [0, 2 / 255]
    assert res.n == 100 and res.robust_mask.shape == (2, 100) and res.robust_mask.dtype == torch.bool
    assert set(res.x_adv) == {2 / 255} and res.x_adv[2 / 255].shape == x.shape
    assert res[2 / 255] == pytest.approx(float(res.robust_mask[1].float().mean()))
    rows = res.to_rows(model="cnn", regime="linear")
    assert len(rows) == 2
    assert rows[1] == {"attack": "pgd", "norm": "linf", "eps": 2 / 255, "steps": 3, "restarts": 2,
                       "accuracy": res[2 / 255], "n": 100, "flags": "", "model": "cnn", "regime": "linear"}


def test_pgd_returns_the_fooling_point(model, data):
    """pgd's x_adv fools exactly the points robust_accuracy counts as fooled (same seed, same kernel). On points the
    model classifies right (robust_accuracy draws random starts only for those; pgd for every point)."""
    ok = clean_correct(model, *data)
    x, y = data[0][ok][:128], data[1][ok][:128]
    eps = 8 / 255
    x_adv = pgd(model, x, y, eps=eps, steps=5, seed=0)
    res = robust_accuracy(model, x, y, eps_list=[eps], steps=5, seed=0, batch_size=128)
    assert (~res.robust_mask[0]).sum() > 10  # the attack fooled some points
    assert torch.equal(clean_correct(model, x_adv, y), res.robust_mask[0])


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,words", [
    (dict(eps_list=[-0.1]), "eps must be"),
    (dict(eps_list=[0.1], norm="l3"), "unknown norm"),
    (dict(eps_list=[0.1], attack="deepfool"), "unknown attack"),
    (dict(eps_list=[0.1], loss="hinge"), "unknown loss"),
    (dict(eps_list=[0.1], amp="fp8"), "unknown amp"),
])
def test_bad_arguments_raise_clear_errors(model, data, kwargs, words):
    with pytest.raises(ValueError, match=words):
        robust_accuracy(model, data[0][:8], data[1][:8], **kwargs)


def test_bad_arguments_of_public_attacks(model, data):
    x, y = data[0][:8], data[1][:8]
    with pytest.raises(ValueError, match="eps must be"):
        pgd(model, x, y, eps=-1)
    with pytest.raises(ValueError, match="unknown loss"):
        pgd(model, x, y, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match="unknown loss"):
        apgd(model, x, y, eps=0.1, loss="cw")
    with pytest.raises(ValueError, match="unknown norm"):
        fgsm(model, x, y, eps=0.1, norm="l1")


def test_images_outside_unit_range_are_rejected(model, data):
    x, y = data[0][:8], data[1][:8]
    normalized = (x - 0.286) / 0.353
    with pytest.raises(ValueError, match=r"\[0, 1\].*Normalize"):
        robust_accuracy(model, normalized, y, eps_list=[0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(model, normalized, y, eps=0.1)


def test_train_mode_model_is_attacked_in_eval_mode_and_restored(data):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(8 * 14 * 14, 10))
    net[0].weight.requires_grad_(False)  # a frozen layer must stay frozen
    x, y = data[0][:64], data[1][:64]
    with torch.no_grad():  # give BN non-trivial running statistics
        net.train()(x)
    net[3].eval()  # a submodule in its own mode must come back in it
    stats = net[1].running_mean.clone()
    ptr = net[0].weight.data_ptr()
    res_train = robust_accuracy(net, x, y, eps_list=[0, 2 / 255], steps=3, channels_last=True)
    assert net.training and net[1].training and not net[3].training
    assert net[0].weight.data_ptr() == ptr and net[0].weight.is_contiguous()  # the very weights it came with
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True, True, True]
    assert torch.equal(net[1].running_mean, stats)  # BN statistics untouched by the attack
    res_eval = robust_accuracy(net.eval(), x, y, eps_list=[0, 2 / 255], steps=3)
    assert dict(res_train) == dict(res_eval)  # dropout off, BN frozen: the same numbers as an eval-mode model


# ------------------------------------------------------------------------------------------------ sanity flags

class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_nan_model_raises_flags(data):
    x, y = data[0][:32], data[1][:32]
    with pytest.warns(RuntimeWarning, match="nonfinite_logits"):
        res = robust_accuracy(NaNModel(), x, y, eps_list=[0, 2 / 255], steps=2)
    assert any(f.startswith("nonfinite_logits") for f in res.flags)
    assert any(f.startswith("nan_grad") for f in res.flags)
    assert "nan_grad" in res.to_rows()[0]["flags"]
    with pytest.warns(RuntimeWarning, match="nan_grad"):
        x_adv = pgd(NaNModel(), x, y, eps=2 / 255, steps=2)
    assert torch.isfinite(x_adv).all()  # NaN gradients must not push points out of the ball


def test_zero_gradient_model_raises_flag(data):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    nn.init.zeros_(net[1].weight)
    with torch.no_grad():
        net[1].bias.copy_(torch.arange(10.0))
    x, y = data[0][:32], torch.full((32,), 9)  # always right, and no gradient to follow
    with pytest.warns(RuntimeWarning, match="zero_grad"):
        res = robust_accuracy(net, x, y, eps_list=[0, 8 / 255], steps=2)
    assert res[8 / 255] == 1.0
    assert any(f.startswith("zero_grad: 64/64") for f in res.flags)


def test_clean_run_has_no_flags_and_no_warning(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = robust_accuracy(model, data[0][:64], data[1][:64], eps_list=[0, 4 / 255], steps=3)
    assert res.flags == []


# ------------------------------------------------------------------------------------------------ pure pieces

def test_losses_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(cw_loss(logits, y), torch.tensor([1.0 - 3.0, 5.0 - 2.0]))
    # DLR: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr_loss(logits, y), torch.tensor([-(3.0 - 1.0) / (3.0 - 0.0), -(2.0 - 5.0) / (5.0 - 1.0)]))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_ball_check_catches_points_outside():
    x = torch.full((3, 1, 4, 4), 0.5)
    inside = x + 0.05
    assert attacks.ball_flags(inside, x, 0.05, "linf") == []
    outside = inside.clone()
    outside[1, 0, 0, 0] = 0.5 + 0.06
    flags = attacks.ball_flags(outside, x, 0.05, "linf")
    assert len(flags) == 1 and flags[0].startswith("outside_ball: 1 points")
    assert attacks.ball_flags(x + 0.6, x, 3.0, "l2") != []  # inside the l2 ball (norm 2.4) but above 1


def test_apgd_checkpoint_schedule():
    assert attacks.apgd_checkpoints(100) == (22, 3, 6)
    assert attacks.apgd_checkpoints(10) == (2, 1, 1)


def test_projection_l2():
    torch.manual_seed(0)
    x = torch.full((2, 1, 4, 4), 0.5)
    far = x + torch.randn(2, 1, 4, 4)  # norm ~4: projected onto the sphere of radius 0.3 (no [0, 1] clipping here)
    p = attacks.project(far, x, 0.3, "l2")
    assert torch.allclose((p - x).flatten(1).norm(dim=1), torch.full((2,), 0.3), atol=1e-6)
    assert torch.allclose((p - x) / 0.3, (far - x) / (far - x).flatten(1).norm(dim=1).view(2, 1, 1, 1), atol=1e-6)
    near = x + 0.01
    assert torch.equal(attacks.project(near, x, 0.3, "l2"), near)


# ------------------------------------------------------------------------------------------ BatchNorm folding

class _ShapeChecked(nn.Module):
    """A wrapper torch.fx cannot trace (Python control flow on the input's shape), like utils.models.Encoder."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.shape[1] != 1:
            raise ValueError("one channel expected")
        return self.inner(x)


@pytest.fixture(scope="module")
def bn_model(data_root) -> nn.Module:
    """A conv-BN-ReLU CNN behind an untraceable wrapper, trained 150 steps (BN running stats are real)."""
    torch.manual_seed(0)
    net = _ShapeChecked(nn.Sequential(Normalize(FASHION_MEAN, FASHION_STD),
                                      nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(16 * 7 * 7, 10)))
    return fit_cnn(net, data_root, steps=150, seed=2)


def test_fold_batchnorm_is_the_same_function_without_batchnorm(bn_model, data):
    x = data[0][:128]
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    folded = attacks.fold_batchnorm(bn_model)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), bn_model(x), atol=1e-4, rtol=1e-4)
    # the model itself is untouched, BN included
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules()) == 2
    assert all(torch.equal(v, bn_model.state_dict()[k]) for k, v in before.items())
    assert attacks.fold_batchnorm(small_cnn()) is None  # nothing to fold


def test_a_sweep_folds_batchnorm_once_with_the_same_verdicts(bn_model, data, monkeypatch):
    """A sweep attacks one model batch after batch: BatchNorm is folded once (a ResNet-50 takes ~2 s to fold on a
    CPU), not per batch, and the verdicts are those of folding per batch."""
    from utils.attacks import target as T
    from utils.robustness import sharded_robust_accuracy

    x, y = data[0][:96], data[1][:96]
    calls = []
    real = T.fold_batchnorm
    monkeypatch.setattr(T, "fold_batchnorm", lambda m: calls.append(1) or real(m))
    monkeypatch.setattr(attacks, "fold_batchnorm", T.fold_batchnorm)
    once = sharded_robust_accuracy(bn_model, x, y, eps_list=[0, 2 / 255, 8 / 255], steps=3, batch_size=32, seed=1)
    assert len(calls) == 1
    calls.clear()
    per_batch = [robust_accuracy(bn_model, x[i:i + 32], y[i:i + 32], eps_list=[0, 2 / 255, 8 / 255], steps=3,
                                 batch_size=32, seed=derive_seed(1, i // 32, SEED_STREAM_BATCH), check_monotonic=False)
                 for i in range(0, 96, 32)]
    assert len(calls) == 3
    assert torch.equal(once.robust_mask, torch.cat([r.robust_mask for r in per_batch], 1))


def test_folded_gradients_keep_float32_verdicts_of_the_model(bn_model, data):
    x, y = data
    eps = [0, 2 / 255, 8 / 255]
    on = robust_accuracy(bn_model, x, y, eps_list=eps, attack="pgd", steps=5, fold_bn=True, return_adv="all",
                         amp="off")
    off = robust_accuracy(bn_model, x, y, eps_list=eps, attack="pgd", steps=5, fold_bn=False, amp="off")
    clean = clean_correct(bn_model, x, y)
    for j, e in enumerate(sorted(eps)):
        # "robust" <=> the float32 model itself classifies both x and x_adv right
        assert torch.equal(on.robust_mask[j], clean & clean_correct(bn_model, on.x_adv[e], y)), e
        assert abs(on[e] - off[e]) <= 0.02, (e, on[e], off[e])
    assert on[8 / 255] < on[0] - 0.2  # the folded gradients do attack


# ------------------------------------------------------------------------------------------- cycle detection

@pytest.mark.parametrize("amp", ["off", "auto"])
def test_cycle_detection_returns_the_same_points_and_verdicts(model, data, amp):
    """Fixed-step linf PGD with a large step (eps/4) over many steps makes surviving iterates repeat: retiring them
    early must give the very points and verdicts of the full run (float32 verdicts, and in bf16 too), with fewer
    gradients. The test fails if no cycle was found (it would then prove nothing)."""
    x, y = data[0][:160], data[1][:160]
    grid = [0, 1 / 255, 2 / 255, 4 / 255]
    runs = {cyc: robust_accuracy(model, x, y, eps_list=grid, steps=60, rel_step=0.25, amp=amp, cycles=cyc,
                                 return_adv="all", batch_size=80)
            for cyc in (False, True)}
    full, fast = runs[False], runs[True]
    assert torch.equal(full.robust_mask, fast.robust_mask)
    assert all(torch.equal(full.x_adv[e], fast.x_adv[e]) for e in grid)
    assert full.work["cycle_exits"] == 0 and full.work["grads_skipped"] == 0
    assert fast.work["cycle_exits"] > 20
    assert fast.work["grads"] + fast.work["grads_skipped"] == full.work["grads"]
    assert fast.work["grads"] < 0.8 * full.work["grads"]


def test_cycle_detection_with_restarts_and_public_pgd(model, data):
    x, y = data[0][:96], data[1][:96]
    a = pgd(model, x, y, eps=2 / 255, steps=40, rel_step=0.25, restarts=2, amp="off", seed=3, cycles=False)
    b = pgd(model, x, y, eps=2 / 255, steps=40, rel_step=0.25, restarts=2, amp="off", seed=3)
    assert torch.equal(a, b)


def test_cycle_jump_lands_on_the_last_iterate():
    """One pixel at 0.5, eps 0.25, step = eps, no random start: the loss rises towards 0.7, so the iterates alternate
    0.5, 0.75, 0.5, ... (period 2). The model is fooled at 0.75 only, and (as with bf16 steps) the gradient passes
    report nothing fooled: only the float32 judgement of the last iterate can find it. That iterate is 0.75 for odd
    `steps` and 0.5 for even ones; the cycle jump must judge the point there, with fewer gradients."""
    from utils.attacks.kernels import pgd_kernel
    from utils.attacks.target import ClassifierTarget

    class Bump(nn.Module):
        def forward(self, x):
            v = x.flatten(1)[:, :1]
            return torch.cat([torch.zeros_like(v), 1 - 64 * (v - 0.7) ** 2], 1)

    class BlindSteps(ClassifierTarget):  # gradient passes see nothing fooled, as a low-precision pass might
        def evaluate(self, x, y, loss="ce", step=0, need_grad=True, t=None):
            ev = super().evaluate(x, y, loss, step, need_grad, t)
            return ev._replace(fooled=torch.zeros_like(ev.fooled)) if need_grad else ev

    x, y = torch.full((1, 1, 1, 1), 0.5), torch.zeros(1, dtype=torch.long)
    for steps, fooled in ((9, True), (10, False)):
        out = {}
        for cyc in (False, True):
            t = BlindSteps(Bump(), amp="off")
            x_adv, f = pgd_kernel(t, x, y, eps=0.25, steps=steps, rel_step=1.0, random_start=False, cycles=cyc)
            out[cyc] = (x_adv.clone(), f.clone(), t.n_cycle_exits, t.n_grads)
        assert bool(out[False][1]) is fooled
        assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
        assert out[True][2] == 1 and out[False][2] == 0 and out[True][3] < out[False][3]
    # a walk shorter than CYCLE_MIN_WALK radii (4 steps of eps) is not watched: no exit, the same point and verdict
    t_on, t_off = BlindSteps(Bump(), amp="off"), BlindSteps(Bump(), amp="off")
    on = pgd_kernel(t_on, x, y, eps=0.25, steps=4, rel_step=1.0, random_start=False, cycles=True)
    off = pgd_kernel(t_off, x, y, eps=0.25, steps=4, rel_step=1.0, random_start=False, cycles=False)
    assert t_on.n_cycle_exits == 0 and t_on.n_grads == t_off.n_grads
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])


@pytest.mark.parametrize("attack", ["square", "fab-t"])
def test_borrowed_attacks_leave_batchnorm_in_eval_mode(attack):
    """torchattacks restores the training mode it found on the module it attacks: the wrapper around the gradient
    oracle must be in eval mode, or an unfolded BatchNorm (fold_bn=False; BYOL's SAME-padded layers) runs on batch
    statistics and rewrites its running statistics during the attack and in every forward after it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 13 * 13, 10)).eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []
    model[1].register_forward_pre_hook(lambda m, _: modes.append(m.training))
    robust_accuracy(model, x, y, eps_list=[0, 0.05], attack=attack, steps=2, fold_bn=False, seed=0, n_queries=5,
                    n_targets=2)
    assert modes and not any(modes)  # every forward of the attack saw eval-mode BatchNorm
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k
