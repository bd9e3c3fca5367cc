"""The runtime policy: one autocast decision (bf16 only where the hardware has it, never when forced to float32),
seeds, batches and the learning-rate schedule."""
import ast
import math
from pathlib import Path

import pytest
import torch

from utils import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def policy():
    """Set the precision policy for one test; restored afterwards."""
    yield runtime.set_precision
    runtime.set_precision(None)


def test_float32_policy_never_autocasts(policy):
    policy("float32")
    for amp in (True, "auto", "bf16"):
        assert not runtime.use_bf16("cpu", amp)
        with runtime.autocast("cpu", amp):
            assert not torch.is_autocast_enabled("cpu")


def test_auto_follows_the_hardware(policy, monkeypatch):
    policy("auto")
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: False)
    assert not runtime.use_bf16("cpu")  # a laptop without bf16 units: float32, not slow emulated bf16
    with runtime.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    assert runtime.use_bf16("cpu")
    with runtime.autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
    assert not runtime.use_bf16("cpu", False) and not runtime.use_bf16("cpu", "off")


def test_environment_sets_the_policy(monkeypatch):
    monkeypatch.setenv(runtime.PRECISION_ENV, "float32")
    assert runtime.precision() == "float32" and not runtime.use_bf16("cpu", "bf16")
    monkeypatch.setenv(runtime.PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="SSL_ADV_PRECISION"):
        runtime.precision()


def test_full_precision_turns_autocast_off():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with runtime.full_precision("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_autocast_is_entered_only_by_the_runtime():
    """One autocast decision: no module but utils/runtime.py calls torch.autocast to switch bf16 on."""
    offenders = []
    for path in (ROOT / "utils").rglob("*.py"):
        if path.name == "runtime.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "autocast":
                disabled = any(k.arg == "enabled" and isinstance(k.value, ast.Constant) and k.value.value is False
                               for k in node.keywords)
                if not disabled:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"use utils.runtime.autocast instead: {offenders}"


def test_derived_seeds_and_schedule_keep_their_values():
    # the values the suite's caches were made with (formulas of the previous batch and epoch seeds)
    assert runtime.derive_seed(0, 3, runtime.SEED_STREAM_BATCH) == 3 * 7_919 + 1
    assert runtime.derive_seed(5, 2, runtime.SEED_STREAM_EPOCH) == 5 * 1_000_003 + 2 * 7_919 + 17
    assert runtime.derive_seed(1, 0, 1) != runtime.derive_seed(0, 1, 1)
    # warm-up, then cosine to the floor
    total = 100
    f = [runtime.lr_factor(s, total, warmup=0.1, floor=0.01) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] > 0.01
    no_warm = [runtime.lr_factor(s, 10, warmup=0.0) for s in range(10)]
    assert no_warm[0] == 1.0 and no_warm[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_batches_cover_every_index_once():
    g = torch.Generator().manual_seed(0)
    got = torch.cat(list(runtime.batches(10, 3, g, shuffle=True)))
    assert sorted(got.tolist()) == list(range(10)) and got.tolist() != list(range(10))
    assert [len(b) for b in runtime.batches(10, 4)] == [4, 4, 2]
    with pytest.raises(ValueError):
        list(runtime.batches(10, 0))


def test_resolve_device():
    assert runtime.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            runtime.resolve_device("cuda")


@pytest.mark.parametrize("mode, expect_bf16", [("float32", False), ("bf16", True)])
def test_every_training_and_attack_path_obeys_the_policy(policy, tmp_path, mode, expect_bf16):
    """Pretraining, the probe, adversarial fine-tuning, the attack grid and the dense tasks, each on a tiny set: with
    the policy forced to float32 no forward pass of any module runs under autocast; with bf16 forced, some do (so the
    float32 run is a real check, not a blind one)."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from utils import attacks, dense, pretrain, probe, scenes
    from utils.data import load_fashion_mnist

    policy(mode)
    seen = []
    handle = register_module_forward_pre_hook(lambda m, args: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        x, y = load_fashion_mnist("data", "train", n=96, seed=0)
        enc, _ = pretrain.pretrain_or_load("simclr", arch="resnet_micro", n_pretrain=64, epochs=1, batch_size=32,
                                           lr=1e-3, augmentations=["crop", "flip"], seed=0, cache_dir=tmp_path,
                                           progress=False, data=(x[:64], y[:64]))
        clf = probe.linear_probe(enc, x, y, 10, iters=5)
        probe.finetune(clf, x, y, epochs=1, batch_size=48, adversarial={"eps": 2 / 255, "steps": 1})
        attacks.robust_accuracy(clf, x[:32], y[:32], eps_list=[0, 4 / 255], attack="apgd-ce", steps=2)
        sc = scenes.compose_scenes(x, y, 8, canvas=32, max_items=2, seed=0)
        dense.run_dense(enc, (sc, sc), (sc, sc), det_epochs=1, seg_epochs=1, eps_linf=[0, 4 / 255], steps=1,
                        batch_size=8)
    finally:
        handle.remove()
    assert len(seen) > 100
    assert any(seen) == expect_bf16
