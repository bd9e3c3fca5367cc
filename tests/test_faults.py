"""Results that cannot lie: each fault a new user met (kill -9, damaged files, edited parameters, two runs) is
reproduced here, and what happens now is checked: a correct result, or an error naming the file or key and the fix,
with no earlier result lost. (kill -9 of the whole smoke chain at two points: tests/test_chain.py.)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from utils import attacks, checkpoints, data, encoders, models, parallel, pipeline, pretrain, probe, stats, store
from utils.config import AUGMENTATIONS, REPO_ROOT, notebook_parameters, output_dirs
from utils.store import CorruptCacheWarning, CorruptFileError

ROOT = Path(__file__).resolve().parents[1]


def _corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


# ----------------------------------------------------------------------------------- 1. parameters are the truth

def test_profile_alone_applies_its_values_to_every_key_left_at_the_default_and_says_which():
    """Fault: `profile = "smoke"` alone in a parameters cell kept the cpu value of every other knob."""
    ns = {"profile": "smoke", **notebook_parameters("cpu", "01"), "progress": True}
    ns["profile"] = "smoke"
    ns["epochs"] = 3  # set by hand: kept
    lines = []
    params = pipeline.resolve_parameters("smoke", "01", ns, log=lines.append)
    smoke = notebook_parameters("smoke", "01")
    assert params == {**smoke, "epochs": 3}
    assert {k: ns[k] for k in smoke} == params  # written back: the notebook's own code uses these values
    text = "\n".join(lines)
    assert "n_pretrain" in text and "arch" in text and "epochs=3 (profile smoke: 1)" in text
    # the runner injects every value of the profile: nothing to take, nothing to report
    quiet = []
    ns = {**notebook_parameters("smoke", "01"), "progress": False}
    assert pipeline.resolve_parameters("smoke", "01", ns, log=quiet.append) == notebook_parameters("smoke", "01")
    assert quiet == []


def test_later_notebooks_use_the_encoders_notebook_01_made(tmp_path, data_root):
    """Fault: 01 trained with its own epochs/lr but 02-05 loaded the encoders of the profile's 01 values."""
    p01 = {**notebook_parameters("smoke", "01"), "arch": "resnet_micro", "n_pretrain": 64, "batch_size": 32,
           "data_root": data_root}
    cache = tmp_path / "cache"
    # the profile's own encoder (1 epoch) is in the cache as well: it must not be the one read
    encoders.pretrained_encoders("smoke", ["simclr"], params01=p01, cache_dir=cache)
    edited = {**p01, "epochs": 2, "lr": 0.05}
    made = encoders.pretrained_encoders("smoke", ["simclr"], params01=edited, cache_dir=cache, record=True)
    assert len(made["simclr"][1]["loss_history"]) == 2
    read = encoders.load_encoders("smoke", ["simclr"], cache_dir=cache)
    assert read["simclr"][1]["params"]["epochs"] == 2 and read["simclr"][1]["params"]["lr"] == 0.05
    assert store.weights_digest(read["simclr"][0]) == store.weights_digest(made["simclr"][0])
    assert encoders.notebook01_parameters("smoke", cache)["lr"] == 0.05
    with pytest.raises(LookupError, match="'byol'.*01's `methods`"):
        encoders.load_encoders("smoke", ["byol"], cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        encoders.load_encoders("smoke", ["simclr"], cache_dir=tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------- 2. gap table

def test_gap_table_takes_the_eps_list_in_any_order_and_with_duplicates():
    """Fault: [8/255, 0, 2/255] gave gaps under the wrong eps; a duplicated eps raised IndexError."""
    n = 50
    grid = [0.0, 2 / 255, 8 / 255]  # what a sweep attacks: ascending, each eps once
    sup = torch.ones(3, n, dtype=torch.uint8)
    ssl = torch.stack([torch.ones(n), (torch.arange(n) < 25).float(), torch.zeros(n)]).to(torch.uint8)
    masks = {("supervised", "t", "pgd", "linf"): sup, ("simclr", "t", "pgd", "linf"): ssl}
    for order in ([8 / 255, 0, 2 / 255], [0, 2 / 255, 2 / 255, 8 / 255], grid):
        gaps = stats.gap_table(masks, {"linf": order}, n_boot=50).set_index("eps")["gap"]
        assert list(gaps.index) == grid
        assert gaps[0.0] == 0 and gaps[2 / 255] == pytest.approx(-0.5) and gaps[8 / 255] == -1


# ------------------------------------------------------------------------------------------------- 3. the runner

@pytest.fixture
def repo01(tiny_repo, monkeypatch):
    """A repository with one notebook 01 that writes its declared output, or fails while `fail.flag` exists."""
    monkeypatch.setattr(pipeline, "NOTEBOOK_OUTPUTS", {"01": {"results_dir": ["01_t.txt"]}})
    return tiny_repo("01_tiny.ipynb", "from pathlib import Path\n"
                                      "if Path('fail.flag').exists():\n    raise RuntimeError('failing on purpose')\n"
                                      "Path('results/smoke').mkdir(parents=True, exist_ok=True)\n"
                                      "Path('results/smoke/01_t.txt').write_text('a result')\n")


def _run(repo, **kw):
    return [r["status"] for r in pipeline.run_chain("smoke", root=repo, log=lambda *_: None, **kw)]


def _state(repo):
    return json.loads((repo / "runs" / "smoke" / "state.json").read_text())["01_tiny.ipynb"]


def test_a_failed_run_is_recorded_as_failed_and_rerun(repo01):
    """Fault: after a failed `--force` run, a plain run said "unchanged, skipped" over a notebook holding a
    traceback."""
    assert _run(repo01) == ["ran"] and _state(repo01)["status"] == "done"
    (repo01 / "fail.flag").write_text("")
    with pytest.raises(pipeline.NotebookFailed, match="failing on purpose"):
        _run(repo01, force=True)
    assert _state(repo01)["status"] == "failed"
    (repo01 / "fail.flag").unlink()
    assert _run(repo01) == ["ran"] and _state(repo01)["status"] == "done"
    assert _run(repo01) == ["skipped"]


def test_missing_or_changed_outputs_are_regenerated(repo01):
    """Fault: after deleting results/, every notebook was skipped and nothing regenerated."""
    assert _run(repo01) == ["ran"]
    shutil.rmtree(repo01 / "results")
    assert _run(repo01) == ["ran"] and (repo01 / "results" / "smoke" / "01_t.txt").is_file()
    (repo01 / "results" / "smoke" / "01_t.txt").write_text("edited by hand")
    assert _run(repo01) == ["ran"]
    assert (repo01 / "results" / "smoke" / "01_t.txt").read_text() == "a result"
    assert _run(repo01) == ["skipped"]


def test_a_notebook_that_does_not_write_its_outputs_fails(repo01, monkeypatch):
    monkeypatch.setattr(pipeline, "NOTEBOOK_OUTPUTS", {"01": {"results_dir": ["01_t.txt", "01_never.csv"]}})
    with pytest.raises(pipeline.NotebookFailed, match="did not write .*01_never.csv"):
        _run(repo01)
    assert _state(repo01)["status"] == "failed"


def test_a_killed_run_is_not_taken_for_a_finished_one(repo01):
    """A run killed mid-notebook leaves the state "running": the next run reruns it."""
    assert _run(repo01) == ["ran"]
    state_path = repo01 / "runs" / "smoke" / "state.json"
    state = json.loads(state_path.read_text())
    state["01_tiny.ipynb"] = {"fingerprint": state["01_tiny.ipynb"]["fingerprint"], "status": "running", "pid": 1}
    state_path.write_text(json.dumps(state))
    assert _run(repo01) == ["ran"]


def test_a_damaged_state_file_is_moved_aside_and_rebuilt(repo01):
    """Fault: a truncated runs/<profile>/state.json crashed the runner."""
    assert _run(repo01) == ["ran"]
    state_path = repo01 / "runs" / "smoke" / "state.json"
    state_path.write_text(state_path.read_text()[:25])
    with pytest.warns(CorruptCacheWarning, match="state.json"):
        assert _run(repo01) == ["ran"]
    assert _corrupt_copies(state_path) and _state(repo01)["status"] == "done"
    state_path.write_text("[1, 2]")
    with pytest.warns(CorruptCacheWarning, match="holds a JSON list"):
        assert _run(repo01) == ["ran"]


@pytest.mark.parametrize("argv", [["--only", "07"], ["--only", "3x"], ["--from", "abc"]])
def test_an_unknown_notebook_is_an_error(argv, capsys):
    """Fault: `--only 07`, `--only 3x`, `--from abc` said "finished" with rc 0 and ran nothing."""
    assert pipeline.main(["--profile", "smoke", *argv]) == 2
    err = capsys.readouterr().err
    assert "no notebook" in err and "01, 02, 03, 04, 05" in err


def test_a_second_run_of_a_profile_waits_or_refuses_naming_the_holder(repo01):
    runs = repo01 / "runs" / "smoke"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"runs = {str(runs)!r}\nos.makedirs(runs, exist_ok=True)\n"
         "f = open(os.path.join(runs, '.lock'), 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.seek(0); f.truncate(); f.write(f'pid {os.getpid()} on test'); f.flush()\n"
         "print('locked', flush=True); time.sleep(float(sys.argv[1]))", "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(pipeline.ChainLocked, match=f"pid {holder.pid} on test"):
            _run(repo01, lock_timeout=0)
        said = []
        records = pipeline.run_chain("smoke", root=repo01, log=said.append, lock_timeout=60)  # waits, then runs
        assert [r["status"] for r in records] == ["ran"] and f"pid {holder.pid}" in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_interrupt_prints_one_line(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_chain", interrupted)
    assert pipeline.main(["--profile", "smoke"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == parallel.INTERRUPTED


_ORPHAN_SCRIPT = """
import time
from utils.parallel import map_jobs


def nap(secs):
    time.sleep(secs)
    print("a worker finished its job for nobody", flush=True)


if __name__ == "__main__":
    print("start", flush=True)
    map_jobs(nap, [{{"secs": {secs}}}, {{"secs": {secs}}}], workers=2)
"""


def test_workers_die_quietly_with_their_parent(tmp_path):
    """Fault: Ctrl-C in 03 printed ~260 lines of worker tracebacks: the kernel died and its orphaned workers
    finished their jobs for nobody, then wrote tracebacks about their broken pipes."""
    script = tmp_path / "orphans.py"
    script.write_text(_ORPHAN_SCRIPT.format(secs=20))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO_ROOT, start_new_session=True)
    assert proc.stdout.readline().strip() == "start"
    time.sleep(8)  # the workers started their jobs
    proc.send_signal(signal.SIGKILL)  # the kernel killed after Ctrl-C
    try:
        out, err = proc.communicate(timeout=8)  # returns once every holder of the pipes (the workers too) is gone
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the orphans still hold the group: end them
        pytest.fail("the orphaned workers kept running their jobs")
    assert "Traceback" not in err and "for nobody" not in out, err


# ------------------------------------------------------------------------------------------------- 4. caches

def _pretrain_kwargs(cache, **over):
    g = torch.Generator().manual_seed(0)
    data_ = (torch.rand(64, 1, 28, 28, generator=g), torch.arange(64) % 10)
    kw = dict(arch="resnet_micro", n_pretrain=64, epochs=1, batch_size=32, lr=2e-3, augmentations=AUGMENTATIONS,
              seed=0, cache_dir=cache, progress=False, data=data_)
    return {**kw, **over}


@pytest.mark.parametrize("damage", ["truncate encoder", "zero last 4 kB of encoder", "truncate sidecar",
                                    "sidecar holds a list", "truncate checkpoint"])
def test_a_damaged_encoder_cache_is_reported_moved_aside_and_retrained(tmp_path, damage):
    """Faults: a truncated encoder or sidecar raised a raw SafetensorError / JSONDecodeError without a path and was
    never repaired; an encoder with its last 4 kB zeroed loaded silently with other weights."""
    torch.set_num_threads(1)
    kw = _pretrain_kwargs(tmp_path)
    first, info = pretrain.pretrain_or_load("simclr", **kw)
    paths = pretrain.encoder_paths(tmp_path, info["params"])
    target = paths["sidecar"] if "sidecar" in damage else paths["encoder"]
    if damage == "truncate checkpoint":  # a kill during the checkpoint's own write cannot happen (atomic), but a
        target = paths["checkpoint"]     # copy or a disk can damage it: the run starts over instead of crashing
        target.write_bytes(b"PK\x03\x04 truncated")
        paths["encoder"].unlink()
    elif damage.startswith("truncate"):
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "sidecar holds a list":
        target.write_text("[1, 2, 3]")
    else:
        blob = bytearray(target.read_bytes())
        blob[-4096:] = bytes(4096)
        target.write_bytes(bytes(blob))
    with pytest.warns(CorruptCacheWarning, match=str(target.name)):
        again, info2 = pretrain.pretrain_or_load("simclr", **kw)
    assert not info2["from_cache"] and _corrupt_copies(target), "moved aside, not deleted"
    assert store.weights_digest(again) == store.weights_digest(first)  # retrained: the same weights
    assert pretrain.pretrain_or_load("simclr", **kw)[1]["from_cache"]


def test_a_damaged_snapshot_names_its_file_and_the_fix(tmp_path):
    kw = _pretrain_kwargs(tmp_path, epochs=2)
    _, info = pretrain.pretrain_or_load("simclr", **kw, keep_epochs=[1])
    snap = Path(str(pretrain.encoder_paths(tmp_path, info["params"])["snapshot"]).format(epoch=1))
    good = snap.read_bytes()
    snap.write_bytes(good[:64])
    with pytest.warns(CorruptCacheWarning, match=snap.name):  # the sidecar's sha256 no longer matches: retrained
        assert not pretrain.pretrain_or_load("simclr", **kw, keep_epochs=[1])[1]["from_cache"]
    assert snap.read_bytes() == good
    snap.write_bytes(good[:64])
    with pytest.raises(CorruptFileError, match=f"{snap.name}.*keep_epochs=\\[1\\]"):
        pretrain.load_epoch_checkpoint("simclr", 1, **{k: v for k, v in kw.items() if k != "progress"})
    assert _corrupt_copies(snap) and not snap.exists()


@pytest.mark.parametrize("content", [b"\xff\xfe\x00 bytes", b"[1, 2]", b'{"result": ', b'"just a string"',
                                     b'{"no": "result"}'])
def test_a_damaged_json_cache_entry_is_reported_moved_aside_and_recomputed(tmp_path, content):
    """Fault: a cache JSON holding bytes or a list crashed `store.cached_result`."""
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5}

    assert store.cached_json(tmp_path, "sweep", {"eps": 1}, compute) == {"acc": 0.5}
    path = next(tmp_path.glob("sweep-*.json"))
    path.write_bytes(content)
    with pytest.warns(CorruptCacheWarning, match=path.name):
        assert store.cached_result(tmp_path, "sweep", {"eps": 1}) is None
    assert _corrupt_copies(path)
    assert store.cached_json(tmp_path, "sweep", {"eps": 1}, compute) == {"acc": 0.5} and len(calls) == 2


def test_a_json_cache_entry_changed_in_place_fails_its_sha256(tmp_path):
    store.cached_json(tmp_path, "sweep", {"eps": 1}, lambda: {"acc": 0.5})
    path = next(tmp_path.glob("sweep-*.json"))
    path.write_text(path.read_text().replace("0.5", "0.9"))
    with pytest.warns(CorruptCacheWarning, match="sha256"):
        assert store.cached_json(tmp_path, "sweep", {"eps": 1}, lambda: {"acc": 0.5}) == {"acc": 0.5}


def _tiny_task(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10
    return {"task": "t", "x_train": x, "y_train": y, "x_test": x[:16], "y_test": y[:16], "n_classes": 10}


def test_classifiers_of_two_parameter_sets_never_mix_and_are_checked_when_read(tmp_path):
    """Faults: classifiers were named <method>-<task>-<regime> and written as two files, so two runs with different
    parameters could pair one's weights with the other's sidecar; 03 loaded them without checking."""
    torch.manual_seed(0)
    enc = models.build_encoder("resnet_micro").eval()
    encs = {"simclr": (enc, {})}
    a = probe.run_linear_eval(encs, [_tiny_task()], cache_dir=tmp_path, iters=5)
    b = probe.run_linear_eval(encs, [_tiny_task()], cache_dir=tmp_path, iters=7)  # other parameters
    files = sorted((tmp_path / "classifiers").glob("*.safetensors"))
    assert len(files) == 2 and not list((tmp_path / "classifiers").glob("simclr*.json")), "one file each"
    latest = probe.linear_classifier_paths(tmp_path, ["simclr"], ["t"])[("simclr", "t")]
    clf, meta = models.read_classifier(latest)
    assert meta["key"]["iters"] == 7  # the manifest names the classifier of the last linear evaluation
    assert float(b.accuracy[0]) == probe.accuracy(clf, _tiny_task()["x_test"], _tiny_task()["y_test"])
    # a damaged classifier: a clear error naming it and the fix, then notebook 02 fits it again
    latest.write_bytes(latest.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=f"{latest.name}.*rerun notebook 02"):
        probe.linear_classifiers(tmp_path, ["simclr"], ["t"])
    assert _corrupt_copies(latest)
    probe.run_linear_eval(encs, [_tiny_task()], cache_dir=tmp_path, iters=7)
    assert probe.linear_classifiers(tmp_path, ["simclr"], ["t"])[("simclr", "t")] is not None
    with pytest.raises(LookupError, match="'byol' on task 't'"):
        probe.linear_classifiers(tmp_path, ["byol"], ["t"])
    assert a.accuracy.notna().all()


def test_a_damaged_classifier_or_feature_file_is_refitted(tmp_path):
    torch.manual_seed(0)
    encs = {"simclr": (models.build_encoder("resnet_micro").eval(), {})}
    first = probe.run_linear_eval(encs, [_tiny_task()], cache_dir=tmp_path, iters=5)
    clf_file = next((tmp_path / "classifiers").glob("*.safetensors"))
    feat_file = next((tmp_path / "features").glob("*.safetensors"))
    clf_file.write_bytes(clf_file.read_bytes()[:-8] + bytes(8))  # same size, other weights
    feat_file.write_bytes(feat_file.read_bytes()[:50])
    with pytest.warns(CorruptCacheWarning) as seen:
        again = probe.run_linear_eval(encs, [_tiny_task()], cache_dir=tmp_path, iters=5)
    named = " ".join(str(w.message) for w in seen)
    assert clf_file.name in named and feat_file.name in named
    assert again.accuracy.tolist() == first.accuracy.tolist()


# ------------------------------------------------------------------------------------------------------ 5. data

@pytest.fixture
def fresh_data(tmp_path):
    if not (data.DEBIAN_DIR / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("the Debian package is not installed on this machine")
    data.prepare_fashion_mnist(tmp_path / "d", allow_apt=False, allow_download=False)
    return tmp_path / "d"


@pytest.mark.parametrize("damage", ["truncate", "zero-fill", "zero the pixels"])
def test_a_damaged_fashion_mnist_file_is_named_and_repaired_by_utils_data(fresh_data, damage, capsys):
    """Faults: a truncated file gave "cannot reshape array of size ..." without a file name and `python -m
    utils.data` said "ready" over it; a zero-filled file gave black images silently."""
    path = data._raw_dir(fresh_data) / "t10k-images-idx3-ubyte"
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:100_000], "zero-fill": bytes(len(blob)),
                      "zero the pixels": blob[:16] + bytes(len(blob) - 16)}[damage])
    with pytest.raises(data.DataCorruptError, match=f"{path}.*python -m utils.data --root"):
        data.load_fashion_mnist(fresh_data, "test", n=10)
    with pytest.warns(CorruptCacheWarning, match=path.name):
        assert data.main(["--root", str(fresh_data)]) == 0
    assert "ready" in capsys.readouterr().out and path.read_bytes() == blob and _corrupt_copies(path)
    x, _ = data.load_fashion_mnist(fresh_data, "test", n=10)
    assert float(x.max()) > 0.9


@pytest.mark.parametrize("n", [0, -5])
def test_asking_for_no_points_is_an_error(n, data_root):
    """Fault: n=0 or n=-5 returned the whole split."""
    with pytest.raises(ValueError, match=f"n={n}"):
        data.load_fashion_mnist(data_root, "test", n=n)
    with pytest.raises(ValueError, match=f"n={n}"):
        data.load_digits_28("test", n=n)


def test_empty_or_text_checkpoint_names_the_file(tmp_path):
    """Faults: an empty .pth raised a bare EOFError with no path; a text file raised `KeyError: 101`."""
    empty, text = tmp_path / "empty.pth", tmp_path / "page.pth"
    empty.write_bytes(b"")
    text.write_text("<html>404 not found</html>\n")
    with pytest.raises(checkpoints.CheckpointError, match=f"{empty}.*empty"):
        checkpoints.load_backbone("mocov2", empty)
    with pytest.raises(checkpoints.CheckpointError, match=f"{text}.*not be read"):
        checkpoints.load_backbone("mocov2", text)


# ----------------------------------------------------------------------------------- 6. the kernel's boundary

def _clf(seed=0):
    torch.manual_seed(seed)
    enc = models.build_encoder("resnet_micro")
    return models.Classifier(enc, nn.Linear(enc.feat_dim, 10))


def test_kernel_boundary_casts_or_refuses_with_a_clear_error():
    """Faults: pgd() crashed on float64 or bf16 input; a bf16 model, a model on another device, or one returning a
    tuple failed with unclear torch messages; linf eps=8 was accepted silently."""
    clf = _clf().eval()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    ref = attacks.pgd(clf, x, y, eps=8 / 255, steps=2, seed=0)
    for dtype in (torch.float64, torch.bfloat16):
        out = attacks.pgd(clf, x.to(dtype), y, eps=8 / 255, steps=2, seed=0)
        assert out.dtype == torch.float32
        if dtype == torch.float64:
            assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="eps/255"):
        attacks.pgd(clf, x, y, eps=8, steps=2)
    with pytest.raises(ValueError, match="eps/255"):
        attacks.robust_accuracy(clf, x, y, eps_list=[0, 4])
    attacks.pgd(clf, x, y, eps=2.0, norm="l2", steps=1)  # an L2 radius may exceed 0.5
    with pytest.raises(ValueError, match="int64 class indices"):
        attacks.pgd(clf, x, y.float(), eps=0.01, steps=1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\).*got label 12"):
        attacks.pgd(clf, x, y + 5, eps=0.01, steps=1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        attacks.robust_accuracy(clf, x, y + 5, eps_list=[0, 0.01], steps=1)
    with pytest.raises(ValueError, match=">= 0"):
        attacks.pgd(clf, x, y - 1, eps=0.01, steps=1)
    with pytest.raises(TypeError, match="bfloat16.*model.float()"):
        attacks.pgd(_clf().bfloat16(), x, y, eps=0.01, steps=1)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.clf = clf

        def forward(self, x):
            return self.clf(x), "aux"

    with pytest.raises(TypeError, match="returned a tuple"):
        attacks.robust_accuracy(Pair(), x, y, eps_list=[0, 0.01], steps=1)
    elsewhere = _clf()
    elsewhere.head.to("meta")  # a part of the model on another device
    with pytest.raises(ValueError, match="one device"):
        attacks.pgd(elsewhere, x, y, eps=0.01, steps=1)
    def on_a_gpu(z, step):  # what torch says when the objective's model sits on a GPU (no GPU on the CI machine)
        raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cuda:0 "
                           "and cpu!")

    with pytest.raises(ValueError, match="different devices.*x.to"):
        attacks.pgd_objective(on_a_gpu, x, eps=0.01, steps=1)
    with pytest.raises(TypeError, match="objective returned a tuple"):
        attacks.pgd_objective(lambda z, step: (clf(z).sum(), 0), x, eps=0.01, steps=1)


def test_the_kernel_never_changes_the_model_it_attacks_even_from_two_threads():
    """Fault: two threads attacking one model left it in eval mode, with requires_grad=False and channels_last
    weights."""
    clf = _clf().train()
    seen = []

    class Watch(nn.Module):  # sees the caller's model while the attack runs
        def __init__(self):
            super().__init__()
            self.clf = clf

        def forward(self, x):
            seen.append((clf.training, all(p.requires_grad for p in clf.parameters())))
            time.sleep(0.01)  # the two attacks overlap
            return self.clf(x)

    model = Watch().train()
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    errors = []

    def attack():
        try:
            attacks.pgd(model, x, y, eps=8 / 255, steps=3, seed=0, fold_bn=False)
            attacks.robust_accuracy(model, x, y, eps_list=[0, 8 / 255], steps=2, fold_bn=False)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=attack) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert model.training and clf.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].stride() == s for k, (v, s) in before.items())
    assert seen and all(training and grads for training, grads in seen), "the model was changed during the attack"


# -------------------------------------------------------------------------------------- 7. files and paths

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, umask, mode):
    """Fault: files were created with mode 0600 (a temporary file's), whatever the umask."""
    old = os.umask(umask)
    try:
        store.atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
        store.save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
        assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)


def test_paths_are_resolved_against_the_repository_not_the_current_directory(tmp_path, monkeypatch, data_root):
    """Fault: the command-line entries resolved `cache/` and `data/` against the current directory."""
    monkeypatch.chdir(tmp_path)
    assert output_dirs("smoke")["cache_dir"] == REPO_ROOT / "cache" / "smoke"
    x, _ = data.load_fashion_mnist("data", "test", n=4)  # the repository's data/, from anywhere
    assert len(x) == 4
    r = subprocess.run([sys.executable, "-m", "utils.data", "--root", "data"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and str(REPO_ROOT / "data") in r.stdout, r.stderr
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv("SSL_ADV_OUTPUT_ROOT", str(tmp_path / "elsewhere"))
    assert output_dirs("smoke")["results_dir"] == tmp_path / "elsewhere" / "results" / "smoke"
