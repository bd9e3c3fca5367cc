"""Results that survive: atomic writes, parameter-keyed caches, provenance, and errors that damage nothing."""
import json

import pandas as pd
import pytest
import torch

from utils import models, probe, robustness, runtime, store as results
from utils.models import Classifier, build_encoder


def test_param_hash_is_stable_and_sensitive():
    a = results.param_hash({"eps": [0, 8 / 255], "steps": 10})
    assert a == results.param_hash({"steps": 10, "eps": [0.0, 0.031372549019607843]})
    assert a != results.param_hash({"steps": 11, "eps": [0, 8 / 255]})


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.csv"
    results.write_table(pd.DataFrame({"accuracy": [0.5]}), path)
    before = path.read_bytes()

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a fi")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        results.atomic_save(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"], "no temporary file may be left behind"


def test_cached_json_computes_once_per_parameter_set(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.25 * len(calls)}

    assert results.cached_json(tmp_path, "sweep", {"eps": 1}, compute) == {"acc": 0.25}
    assert results.cached_json(tmp_path, "sweep", {"eps": 1}, compute) == {"acc": 0.25}
    assert len(calls) == 1
    assert results.cached_json(tmp_path, "sweep", {"eps": 2}, compute) == {"acc": 0.5}  # changed parameter reruns
    assert len(calls) == 2
    # a half-written (corrupt) cache file is recomputed, not trusted
    f = tmp_path / f"sweep-{results.param_hash({'eps': 1})}.json"
    f.write_text('{"result": ')
    results.cached_json(tmp_path, "sweep", {"eps": 1}, compute)
    assert len(calls) == 3


def test_provenance_names_what_a_reviewer_needs(tmp_path):
    prov = results.provenance("smoke", {"steps": 3}, seed=5)
    for key in ("profile", "param_hash", "seed", "git_commit", "versions", "device", "params"):
        assert key in prov
    for lib in ("torch", "torchvision", "timm", "torchattacks"):
        assert prov["versions"][lib] not in ("", None)
    path = results.write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", prov)
    assert json.loads((tmp_path / "t.csv.provenance.json").read_text())["seed"] == 5 and path.is_file()


def _tiny_classifier(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("resnet_micro")
    return Classifier(enc, torch.nn.Linear(enc.feat_dim, 10)).eval()


def test_nan_loss_in_finetuning_names_model_and_epoch_and_keeps_saved_classifier(tmp_path):
    clf = _tiny_classifier()
    path = models.save_classifier(clf, tmp_path / "clf.safetensors", {"arch": "resnet_micro", "n_classes": 10})
    before = path.read_bytes()
    x = torch.rand(32, 1, 28, 28)
    x[0, 0, 0, 0] = float("nan")
    y = torch.randint(0, 10, (32,))
    with pytest.raises(runtime.TrainingDivergedError, match=r"clf-under-test.*epoch 1"):
        probe.finetune(models.load_classifier(path), x, y, epochs=1, batch_size=32, name="clf-under-test")
    assert path.read_bytes() == before


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_finetuning_keeps_batchnorm_statistics_frozen_by_default(freeze_bn):
    clf = _tiny_classifier()
    stats = {k: v.clone() for k, v in clf.state_dict().items() if "running" in k}
    x, y = torch.rand(64, 1, 28, 28) * 0.3, torch.randint(0, 10, (64,))  # other statistics than the defaults
    probe.finetune(clf, x, y, epochs=1, batch_size=32, lr=1e-4, freeze_bn=freeze_bn)
    same = all(torch.equal(v, clf.state_dict()[k]) for k, v in stats.items())
    assert same == freeze_bn
    assert not clf.training  # returned in eval mode either way


def test_wrong_channel_count_and_tiny_images_are_named():
    enc = build_encoder("resnet_micro")
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\].*got shape \(2, 3, 28, 28\)"):
        enc(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        enc(torch.rand(2, 1, 4, 4))


def test_eps_out_of_range_fails_before_touching_the_cache(tmp_path):
    clf = _tiny_classifier()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    robustness.attack_sweep(clf, x, y, model="m", task="t", attack="pgd", norm="linf", eps_list=[0, 0.01], steps=1,
                            cache_dir=tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}
    with pytest.raises(ValueError, match="eps"):
        robustness.attack_sweep(clf, x, y, model="m", task="t", attack="pgd", norm="linf", eps_list=[0, -0.1],
                                steps=1, cache_dir=tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json")} == files


def test_same_seed_same_numbers():
    clf = _tiny_classifier()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = clf(x).argmax(1)
    a = robustness.sharded_robust_accuracy(clf, x, y, eps_list=[0, 0.05], steps=2, seed=1)
    b = robustness.sharded_robust_accuracy(clf, x, y, eps_list=[0, 0.05], steps=2, seed=1)
    assert torch.equal(a.robust_mask, b.robust_mask)


def test_git_commit_is_dirty_for_code_not_for_the_runs_own_outputs(tmp_path):
    """A chain rewrites the committed figures and README numbers itself: that must not mark its own provenance
    "-dirty"; a changed code file must."""
    import subprocess

    from utils.store import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.png").write_bytes(b"a")
    (tmp_path / "README.md").write_text("a")
    (tmp_path / "code.py").write_text("a")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = git_commit(tmp_path)
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "figures" / "f.png").write_bytes(b"b")
    (tmp_path / "README.md").write_text("b")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("b")
    assert git_commit(tmp_path) == clean + "-dirty"
