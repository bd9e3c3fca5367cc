"""The SSL losses checked by hand, the augmentation families, one step of every method, the pretraining loop's
cache, resume and divergence behaviour (tiny synthetic data, resnet_micro: seconds), its seed and learning-rate
schedule against the formulas its cached weights were trained with, and how notebook 01's encoders are chosen."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import encoders, pretrain, runtime, ssl
from utils.augment import make_augment
from utils.checkpoints import CheckpointNotFoundError
from utils.config import AUGMENTATIONS, METHODS as PROFILE_METHODS, notebook_parameters, output_dirs
from utils.data import sources
from utils.models import build_encoder
from utils.store import param_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny networks gain nothing from two, and on a shared 2-core machine two threads
    that wait on each other at every op can be 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eye_rows(*idx, d=4):
    return torch.eye(d)[list(idx)]


# ------------------------------------------------------------------------------------------------ losses by hand

def test_nt_xent_by_hand():
    t = 0.5
    # one pair: the only other embedding is the positive -> cross-entropy 0
    assert ssl.nt_xent_loss(eye_rows(0), eye_rows(0), t).item() == pytest.approx(0.0, abs=1e-6)
    # two pairs of orthonormal embeddings: positive at cos 1, two negatives at cos 0
    expected = -1 / t + math.log(math.exp(1 / t) + 2)
    assert ssl.nt_xent_loss(eye_rows(0, 1), eye_rows(0, 1), t).item() == pytest.approx(expected, rel=1e-5)
    # scale does not matter (embeddings are normalized)
    assert ssl.nt_xent_loss(3 * eye_rows(0, 1), eye_rows(0, 1), t).item() == pytest.approx(expected, rel=1e-5)


def test_moco_by_hand():
    t = 0.2
    q, k, queue = eye_rows(0), eye_rows(0), eye_rows(1, 2, 3)
    expected = -1 / t + math.log(math.exp(1 / t) + 3)
    assert ssl.moco_loss(q, k, queue, t).item() == pytest.approx(expected, rel=1e-5)
    # a queue holding the query itself: the positive no longer wins alone
    expected_tie = -1 / t + math.log(2 * math.exp(1 / t) + 2)
    assert ssl.moco_loss(q, k, eye_rows(0, 1, 2), t).item() == pytest.approx(expected_tie, rel=1e-5)
    k = eye_rows(0).requires_grad_()
    ssl.moco_loss(eye_rows(1).requires_grad_(), k, queue, t).backward()
    assert k.grad is None  # keys come from the momentum network: no gradient


def test_byol_by_hand():
    p = eye_rows(0, 1)
    assert ssl.byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert ssl.byol_loss(p, eye_rows(2, 3)).item() == pytest.approx(2.0, abs=1e-6)
    assert ssl.byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    z = eye_rows(2, 3).requires_grad_()
    ssl.byol_loss(p.clone().requires_grad_(), z).backward()
    assert z.grad is None


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(32, 8, generator=g), dim=1)
    q = ssl.sinkhorn(scores, eps=0.05, iters=3)
    assert q.shape == (32, 8) and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(32))  # every sample fully assigned (last step normalizes rows)
    q = ssl.sinkhorn(scores, eps=0.05, iters=200)
    torch.testing.assert_close(q.sum(0), torch.full((8,), 32 / 8), atol=1e-3, rtol=1e-3)  # equipartition
    # equal scores: the uniform assignment
    torch.testing.assert_close(ssl.sinkhorn(torch.zeros(6, 3)), torch.full((6, 3), 1 / 3))


def test_swav_by_hand():
    k = 5
    assert ssl.swav_loss(torch.zeros(4, k), torch.zeros(4, k)).item() == pytest.approx(math.log(k), rel=1e-6)
    # 2 samples, 2 prototypes. View 1 picks a prototype sharply (one-hot codes); view 2's scores are symmetric so
    # Sinkhorn leaves its codes as the plain softmax: q2 = [[a, 1-a], [1-a, a]], a = 1 / (1 + e^4) (eps = 0.05).
    s1 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    s2 = torch.tensor([[0.0, 0.2], [0.2, 0.0]])
    t, a = 0.1, 1 / (1 + math.exp(4))
    l12 = math.log(1 + math.exp(2))  # -log softmax(s2 / t) at view 1's prototype
    l21 = 20 * (1 - a)  # -sum q2 log softmax(s1 / t) = (1 - a) * 20 (up to e^-20)
    assert ssl.swav_loss(s1, s2, temperature=t, sinkhorn_iters=3).item() == pytest.approx((l12 + l21) / 2, abs=1e-4)


def test_dino_by_hand():
    k, ts, tt = 4, 0.1, 0.04
    zeros = torch.zeros(3, k)
    assert ssl.dino_loss(zeros, zeros, torch.zeros(1, k), ts, tt).item() == pytest.approx(math.log(k), rel=1e-6)
    # teacher sharply on prototype 0, student logit a on prototype 0 -> -log softmax(a / ts)[0]
    teacher = torch.tensor([[1.0, 0, 0, 0]])
    a = 0.3
    student = torch.tensor([[a, 0, 0, 0]])
    expected = -(a / ts) + math.log(math.exp(a / ts) + k - 1)
    assert ssl.dino_loss(student, teacher, torch.zeros(1, k), ts, tt).item() == pytest.approx(expected, abs=1e-6)
    # the center is subtracted from the teacher: centering on the teacher's own output flattens the target
    assert ssl.dino_loss(student, teacher, teacher, ts, tt).item() == pytest.approx(
        math.log(math.exp(a / ts) + k - 1) - (a / ts) / k, rel=1e-5)
    c = ssl.dino_center_update(torch.zeros(1, k), torch.tensor([[1.0, 2, 3, 4], [3.0, 2, 1, 0]]), momentum=0.9)
    torch.testing.assert_close(c, torch.tensor([[0.2, 0.2, 0.2, 0.2]]))


def test_barlow_twins_by_hand():
    # 4 samples, 2 dims: zero mean, unit variance, uncorrelated columns
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert ssl.barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-8)
    assert ssl.barlow_twins_loss(z, -z).item() == pytest.approx(2 * 4.0, rel=1e-4)  # diagonal -1: (1-(-1))^2 per dim
    same = z[:, :1].repeat(1, 2)  # two perfectly correlated dims: C = all ones -> lambda * 2 off-diagonal ones
    assert ssl.barlow_twins_loss(same, same, lambd=0.1).item() == pytest.approx(0.2, rel=1e-4)


def test_vicreg_by_hand():
    const = torch.ones(8, 3)
    inv, var, cov = ssl.vicreg_terms(const, const)
    assert inv.item() == 0.0 and cov.item() == 0.0
    assert var.item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)  # 0.99: collapse is penalized
    assert ssl.vicreg_loss(const, const).item() == pytest.approx(25 * 0.99, rel=1e-6)
    inv, _, _ = ssl.vicreg_terms(const, const + 1)
    assert inv.item() == pytest.approx(1.0)
    # large, decorrelated embeddings: no variance penalty, no covariance
    z = 3 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    _, var, cov = ssl.vicreg_terms(z, z)
    assert var.item() == 0.0 and cov.item() == pytest.approx(0.0, abs=1e-10)


def test_ema_update_and_schedule():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
        online.running_mean.fill_(5.0)
    ssl.ema_update(target, online, tau=0.9)
    torch.testing.assert_close(target.weight, torch.full((3,), 0.1))
    torch.testing.assert_close(target.running_mean, torch.full((3,), 5.0))
    assert ssl.momentum_schedule(0.99, 0.0) == pytest.approx(0.99)
    assert ssl.momentum_schedule(0.99, 0.5) == pytest.approx(0.995)
    assert ssl.momentum_schedule(0.99, 1.0) == pytest.approx(1.0)


def test_moco_queue_wraps_around():
    q = ssl.MoCoQueue(size=5, dim=2)
    q.push(torch.tensor([[1.0, 0.0]] * 3))
    q.push(torch.tensor([[0.0, 2.0]] * 3))
    assert int(q.ptr) == 1
    torch.testing.assert_close(q.keys, torch.tensor([[0.0, 1.0]] + [[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2))


# ------------------------------------------------------------------------------------------------ augmentations

def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 8:20] = 0.3 + 0.6 * torch.rand(n, 1, 16, 12, generator=g)  # an off-centre object on black
    return x


def test_augment_families_shapes_range_and_effect():
    x = _images()
    for fam in AUGMENTATIONS:
        out = make_augment([fam])(x, torch.Generator().manual_seed(1))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x), fam
    full = make_augment(AUGMENTATIONS)(x, torch.Generator().manual_seed(1))
    for fam in AUGMENTATIONS:
        rest = [f for f in AUGMENTATIONS if f != fam]
        assert not torch.equal(make_augment(rest)(x, torch.Generator().manual_seed(1)), full), fam
    torch.testing.assert_close(make_augment(AUGMENTATIONS)(x, torch.Generator().manual_seed(1)), full)
    assert torch.equal(make_augment([])(x, torch.Generator()), x)


def test_augment_ablation_is_paired():
    # switching noise off leaves the crops as they were: images that drew no noise (p=0.5) are identical
    x = _images(32)
    a = make_augment(["crop"])(x, torch.Generator().manual_seed(3))
    b = make_augment(["crop", "noise"])(x, torch.Generator().manual_seed(3))
    same = (a == b).flatten(1).all(1)
    assert 0 < int(same.sum()) < 32


def test_augment_rejects_unknown_family():
    with pytest.raises(ValueError, match="unknown augmentation.*'colour'.*crop"):
        make_augment(["crop", "colour"])
    with pytest.raises(TypeError):
        make_augment("crop")


# ------------------------------------------------------------------------------------------------ methods

def test_registry_matches_profiles():
    assert list(ssl.METHODS) == PROFILE_METHODS
    with pytest.raises(ValueError, match="unknown method"):
        ssl.get_method("simsiam2")
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        ssl.METHODS["simclr"].build(build_encoder("resnet_micro"), temprature=0.1)


@pytest.mark.parametrize("name", list(ssl.METHODS))
def test_one_step_of_each_method(name):
    torch.manual_seed(0)
    spec = ssl.METHODS[name]
    model = spec.build(build_encoder("resnet_micro"))
    x = _images(16)
    aug = make_augment(spec.view_families(AUGMENTATIONS))
    g = torch.Generator().manual_seed(0)
    views = [aug(x, g) for _ in range(spec.n_views)]
    y = torch.arange(16) % 10
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(views, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    opt.step()
    model.momentum_update(0.5)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.backbone") and k.endswith("weight") for k in changed)
    momentum_prefix = {"mocov2": "key_encoder.", "byol": "target_encoder.", "dino": "teacher_encoder."}
    if name in momentum_prefix:  # EMA moved the momentum network's weights
        assert any(k.startswith(momentum_prefix[name]) and k.endswith("conv1.weight") for k in changed)
    if name == "mocov2":
        assert {"queue.keys", "queue.ptr"} <= changed
    if name == "dino":
        assert "center" in changed


# ------------------------------------------------------------------------------------------------ the loop

def _data(n=64, seed=0):
    return _images(n, seed), torch.arange(n) % 10


def _kwargs(tmp_path, **over):
    kw = dict(arch="resnet_micro", n_pretrain=64, epochs=3, batch_size=32, lr=2e-3, augmentations=AUGMENTATIONS,
              seed=0, cache_dir=tmp_path, progress=False, data=_data())
    kw.update(over)
    return kw


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_is_reused(tmp_path):
    calls = []
    enc, info = pretrain.pretrain_or_load("barlowtwins", **_kwargs(tmp_path, epochs=1),
                                          on_epoch_end=lambda e, l: calls.append(e))
    assert not info["from_cache"] and calls == [1] and len(info["loss_history"]) == 1
    assert not enc.training and next(enc.parameters()).dtype == torch.float32
    files = sorted(p.name for p in (tmp_path / "encoders").iterdir())
    assert files == [f"barlowtwins-{info['param_hash']}.json", f"barlowtwins-{info['param_hash']}.safetensors"]
    enc2, info2 = pretrain.pretrain_or_load("barlowtwins", **_kwargs(tmp_path, epochs=1),
                                            on_epoch_end=lambda e, l: calls.append(e))
    assert info2["from_cache"] and calls == [1] and info2["epochs_run_now"] == 0
    assert info2["loss_history"] == info["loss_history"] and _same_weights(enc, enc2)
    side = info2["sidecar"]
    assert side["method"] == "barlowtwins" and side["param_hash"] == info["param_hash"] and side["epochs"] == 1
    # another seed is another run
    _, info3 = pretrain.pretrain_or_load("barlowtwins", **_kwargs(tmp_path, epochs=1, seed=1))
    assert not info3["from_cache"] and info3["param_hash"] != info["param_hash"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["mocov2", "dino"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, name):
    full, full_info = pretrain.pretrain_or_load(name, **_kwargs(tmp_path / "a"))

    def stop_after_1(epoch, loss):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        pretrain.pretrain_or_load(name, **_kwargs(tmp_path / "b"), on_epoch_end=stop_after_1)
    ran = []
    resumed, info = pretrain.pretrain_or_load(name, **_kwargs(tmp_path / "b"),
                                              on_epoch_end=lambda e, l: ran.append(e))
    assert ran == [2, 3] and info["resumed_from_epoch"] == 1 and info["epochs_run_now"] == 2
    assert info["loss_history"] == full_info["loss_history"]
    assert _same_weights(full, resumed)
    assert not list((tmp_path / "b" / "encoders").glob("*.ckpt.pt"))  # resume checkpoint removed once cached


def test_keep_epochs_snapshots(tmp_path):
    seen = {}

    def grab(epoch, loss):
        ckpt = next((tmp_path / "encoders").glob("*.ckpt.pt"))
        state = torch.load(ckpt, weights_only=True)["model"]
        seen[epoch] = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}

    kw = _kwargs(tmp_path, epochs=2)
    enc, info = pretrain.pretrain_or_load("simclr", **kw, keep_epochs=[1], on_epoch_end=grab)
    snap = pretrain.load_epoch_checkpoint("simclr", 1, **{k: v for k, v in kw.items() if k != "progress"})
    assert all(torch.equal(snap.state_dict()[k], seen[1][k].float()) for k in seen[1])
    assert not _same_weights(snap, enc)
    with pytest.raises(FileNotFoundError, match="keep_epochs=\\[2\\]"):
        pretrain.load_epoch_checkpoint("simclr", 2, **{k: v for k, v in kw.items() if k != "progress"})


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    state = {"poison": False}
    real = ssl.nt_xent_loss

    def maybe_nan(z1, z2, temperature):
        loss = real(z1, z2, temperature)
        return loss * float("nan") if state["poison"] else loss

    monkeypatch.setattr(ssl, "nt_xent_loss", maybe_nan)
    good = {}

    def after(epoch, loss):
        ckpt = next((tmp_path / "encoders").glob("simclr-*.ckpt.pt"))
        good.update(path=ckpt, bytes=ckpt.read_bytes())
        state["poison"] = True  # epoch 2 diverges

    with pytest.raises(runtime.TrainingDivergedError,
                       match=r"simclr diverged at epoch 2.*last good checkpoint \(epoch 1\)"):
        pretrain.pretrain_or_load("simclr", **_kwargs(tmp_path), on_epoch_end=after)
    assert good["path"].read_bytes() == good["bytes"]
    assert torch.load(good["path"], weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "encoders").glob("*.safetensors"))


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation"):
        pretrain.pretrain_or_load("simclr", **_kwargs(tmp_path, augmentations=["crop", "cutout"]))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        pretrain.pretrain_or_load("simclr", **_kwargs(tmp_path, epochs=0))
    with pytest.raises(ValueError, match="unknown method"):
        pretrain.pretrain_or_load("mocov9", **_kwargs(tmp_path))


# ------------------------------------------------------------------------------------------------ cache key, schedule

def _epoch_seed_before(seed, epoch):  # the formula the cached encoders were trained with (utils/ssl.py, v1)
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2 ** 63 - 1)


def _lr_before(step, total, base_lr, warmup_frac=0.1):  # idem
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return base_lr * (step + 1) / warm
    q = (step - warm) / max(1, total - warm)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * q)))


def test_seed_and_lr_schedule_reproduce_the_formulas_the_cached_weights_were_trained_with():
    for seed in [*range(50), 1234, 2 ** 31 - 1, 10 ** 9]:
        for epoch in range(0, 202):
            assert runtime.derive_seed(seed, epoch, runtime.SEED_STREAM_EPOCH) == _epoch_seed_before(seed, epoch)
    wd = 1e-5
    for total in [*range(1, 120), 312, 936]:
        for step in range(total):
            factor = runtime.lr_factor(step, total, warmup=pretrain.WARMUP, floor=pretrain.LR_FLOOR)
            assert factor == _lr_before(step, total, 1.0)  # exactly the old schedule's factor
            for lr in (1e-3, 2e-3, 5e-3):
                new, old = lr * factor, _lr_before(step, total, lr)
                # the rate itself may differ in the last bits of a double during warm-up (the peak rate multiplies
                # last), but AdamW on the CPU applies it as float32 scalars, and those are equal: same weights
                assert new == pytest.approx(old, rel=1e-15, abs=0)
                bc1 = 1 - 0.9 ** (step + 1)
                assert np.float32(new / bc1) == np.float32(old / bc1)
                assert np.float32(1 - new * wd) == np.float32(1 - old * wd)


def test_cache_key_is_unchanged():
    """The hashes the cache files already carry: a change here would orphan every trained encoder."""
    kw = dict(arch="resnet_micro", augmentations=AUGMENTATIONS)
    params = pretrain.training_params("simclr", n_pretrain=256, epochs=1, batch_size=64, lr=1e-3, seed=0, **kw)
    assert param_hash(params) == "1ffaf2b1a41e" and params["code_version"] == pretrain.SSL_CODE_VERSION == 1
    g = torch.Generator().manual_seed(1)
    data = (torch.rand(208, 1, 28, 28, generator=g), torch.arange(208) % 10)
    params = pretrain.training_params("mocov2", n_pretrain=208, epochs=2, batch_size=16, lr=5e-3, seed=3, data=data,
                                      **kw)
    assert params["data_sha256"] == "6b4fc627b4d2e957"
    assert param_hash(params) == "ee9b4f781e03"
    assert pretrain.encoder_paths("c", params)["encoder"] == Path("c/encoders/mocov2-ee9b4f781e03.safetensors")


# ------------------------------------------------------------------------------------------------ notebook 01's encoders

def test_pretrained_encoders_trains_with_the_01_parameters_or_reads_official_files(monkeypatch, tmp_path):
    calls, trained = [], set()

    def fake_pretrain(method, cached_only=False, **kw):
        calls.append((method, {**kw, "cached_only": cached_only}))
        if method == "dino" and method not in trained:  # dino is not in the cache: trained by a job, then read
            if cached_only:
                return None
            trained.add(method)
        return nn.Identity(), {"method": method, "from_cache": method != "dino", "wall_time_s": 1.0,
                               "loss_history": [0.5]}

    monkeypatch.setattr(encoders, "pretrain_or_load", fake_pretrain)
    p01 = {**notebook_parameters("smoke", "01"), "epochs": 3, "lr": 0.5}  # a knob changed in notebook 01
    out = encoders.pretrained_encoders("smoke", ["simclr", "dino"], params01=p01, cache_dir=tmp_path)
    assert list(out) == ["simclr", "dino"] and out["dino"][1]["method"] == "dino"
    assert out["dino"][1]["from_cache"] is False and out["simclr"][1]["from_cache"] is True
    recipe = dict(arch=p01["arch"], n_pretrain=p01["n_pretrain"], epochs=3, batch_size=p01["batch_size"], lr=0.5,
                  augmentations=p01["augmentations"], seed=p01["seed"], task=p01["task"], sources=sources(p01))
    assert calls[0] == ("simclr", dict(recipe, cache_dir=tmp_path, profile="smoke", cached_only=True))
    # dino: looked up, trained by a job (the recipe, no progress bar of its own), then read from the cache
    assert [(m, c["cached_only"]) for m, c in calls[1:]] == [("dino", True), ("dino", False), ("dino", True)]
    assert calls[2][1] == dict(recipe, cache_dir=str(tmp_path), profile="smoke", progress=False, cached_only=False)
    calls.clear()  # defaults: the profile's own 01 parameters and cache
    encoders.pretrained_encoders("smoke", ["byol"], progress=True)
    assert calls[0][1]["epochs"] == notebook_parameters("smoke", "01")["epochs"]
    assert calls[0][1]["cache_dir"] == output_dirs("smoke")["cache_dir"]
    calls.clear()  # nothing trained here (epochs == 0 or n_pretrain == 0): the official files, under checkpoint_root
    p01["seeds"] = 1  # one official file per method (more seeds: an error, tests/test_profiles.py)
    for nothing in ({"epochs": 0}, {"n_pretrain": 0}):
        with pytest.raises(CheckpointNotFoundError, match="checkpoint_root='[^']*official'"):
            encoders.pretrained_encoders("smoke", ["dino"], params01={**p01, **nothing},
                                         checkpoint_root=tmp_path / "official")
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_root='elsewhere'"):
        encoders.pretrained_encoders("smoke", ["dino"], params01={**p01, "epochs": 0, "checkpoint_root": "elsewhere"})
    assert not calls


_KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
from utils import pretrain
from utils.config import AUGMENTATIONS
g = torch.Generator().manual_seed(0)
x = torch.rand(1024, 1, 28, 28, generator=g); y = torch.arange(1024) % 10
pretrain.pretrain_or_load("byol", arch="resnet_micro", n_pretrain=1024, epochs=4, batch_size=128, lr=2e-3,
                          augmentations=AUGMENTATIONS, seed=0, cache_dir={cache!r}, progress=False, data=(x, y),
                          on_epoch_end=lambda e, l: print("EPOCH", e, flush=True))
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """A real SIGKILL in the middle of epoch 2; the rerun resumes after epoch 1 and ends on the uninterrupted weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "train.py"
    script.write_text(_KILL_SCRIPT.format(root=str(ROOT), cache=str(tmp_path / "killed")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # blocks until epoch 1's checkpoint is written
    assert line.startswith("EPOCH 1"), line
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = next((tmp_path / "killed" / "encoders").glob("*.ckpt.pt"))
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert done in (1, 2, 3)
    rerun = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split() == sum((["EPOCH", str(e)] for e in range(done + 1, 5)), [])  # no epoch redone
    script_full = tmp_path / "full.py"
    script_full.write_text(_KILL_SCRIPT.format(root=str(ROOT), cache=str(tmp_path / "full")))
    full = subprocess.run([sys.executable, str(script_full)], capture_output=True, text=True, env=env, timeout=120)
    assert full.returncode == 0, full.stderr
    from safetensors.torch import load_file

    a = load_file(str(next((tmp_path / "killed" / "encoders").glob("*.safetensors"))))
    b = load_file(str(next((tmp_path / "full" / "encoders").glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
