"""The tables do not depend on the worker count: the job-parallel steps, run in a fresh process once with
SSL_ADV_WORKERS=1 (every job in the notebook's own process) and once with 2 (a pool of worker processes), give the
same bits.

What it runs, in each of two subprocesses, on tiny inputs (about 30 s in all on the 2-core machine): notebook 04's
factor ablation (`utils.factors.run_factor_ablation`: its pretraining jobs train encoders under bfloat16 autocast
where the CPU has bf16 units, then one probe + PGD job per level) and notebook 05's dense tasks
(`utils.dense.run_dense_all`: one head-training + attack job per encoder). These are the steps that differed
between 1 and 2 workers in the smoke chain (`04_factors.csv`, `05_dense.csv`) while jobs ran with the parent's
thread count inline and one thread in a worker. The notebook chain itself is not run twice here: 04 needs 01 and 02
before it, which would add two smoke chains (about 8 minutes) to a suite that already runs three chains.

Compared: every value of both tables except the timing columns, and the sha256 of every encoder the ablation trained.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from utils import parallel

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["seconds", "wall_s", "pretrain_s", "from_cache"]


def job_state() -> dict:
    """What a job sees of its process: its thread count and a draw of each global RNG."""
    return {"threads": torch.get_num_threads(), "torch": torch.rand(3).tolist(), "numpy": float(np.random.rand()),
            "random": random.random()}


def test_a_job_sees_the_same_process_state_inline_and_in_a_worker(monkeypatch):
    """The root of the 1-vs-2-worker difference: inline jobs ran with this process's threads (2 here) and its RNG
    state, pooled ones with 1 thread and a fresh process's. Now both get `threads` and freshly seeded RNGs, and an
    inline job leaves this process's threads and RNG states as they were."""
    monkeypatch.delenv(parallel.JOB_THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    torch.manual_seed(123)
    np.random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    inline = parallel.map_jobs(job_state, [{}, {}], workers=1, threads=1)
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]
    pooled = parallel.map_jobs(job_state, [{}, {}, {}], workers=2, threads=1)
    assert inline[0]["threads"] == 1
    assert inline[0] == inline[1] == pooled[0] == pooled[1] == pooled[2]


def test_job_threads_depend_on_the_machine_only(monkeypatch):
    monkeypatch.delenv(parallel.JOB_THREADS_ENV, raising=False)
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    assert parallel.job_threads("cpu") == 1 and parallel.job_threads("cuda:0") == parallel.cores()
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    assert parallel.job_threads("cpu") == 1
    monkeypatch.setenv(parallel.JOB_THREADS_ENV, "3")
    assert parallel.job_threads("cpu") == 3


def run_steps(out: Path, data_root: str) -> None:
    """The factor ablation and the dense tasks on tiny inputs; tables and encoder hashes written under `out`."""
    import torch

    from utils import dense, factors, scenes
    from utils.data import classification_task, load_classification
    from utils.pretrain import task_encoder

    sources = {"data_root": data_root}
    augmentations = ["crop", "flip", "intensity"]
    base = {"arch": "resnet_micro", "n_pretrain": 128, "epochs": 1, "batch_size": 64, "lr": 1e-3,
            "augmentations": augmentations, "seed": 0, "task": "fashion_mnist", "sources": sources}
    levels = factors.factor_levels(archs=["resnet_micro"], epoch_checkpoints=[1, 2], augmentations=augmentations,
                                   batch_sizes=[32])
    probe = classification_task("fashion_mnist", n_train=128, n_test=64, seed=0, **sources)
    points = load_classification("fashion_mnist", "test", n=64, seed=0, **sources)
    ablation = factors.run_factor_ablation(["simclr"], levels, base, probe_data=probe, attack_points=points,
                                           ref_eps=2 / 255, steps=2, cache_dir=str(out / "cache"), probe_iters=20)
    ablation.drop(columns=[c for c in TIMING if c in ablation]).to_csv(out / "factors.csv", index=False)

    kw = dict(canvas=64, max_items=3, seed=0, data_root=data_root)
    train = scenes.load_dense_data("fashion_scenes", "train", n_scenes=32, **kw)
    test = scenes.load_dense_data("fashion_scenes", "test", n_scenes=8, **kw)
    encoders = {}
    for i, name in enumerate(["a", "b"]):
        torch.manual_seed(i)
        encoders[name] = task_encoder("resnet_micro").eval()
    _, rows = dense.run_dense_all(encoders, train, test, det_epochs=2, seg_epochs=1, eps_linf=[0, 8 / 255],
                                  steps=2, batch_size=8, head_lr=5e-3)
    dense.to_frame(rows).to_csv(out / "dense.csv", index=False)
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((out / "cache" / "encoders").glob("*.safetensors"))}
    (out / "encoders.json").write_text(json.dumps(hashes, indent=1))


def _run(out: Path, workers: int, data_root: str) -> None:
    env = {**os.environ, "SSL_ADV_WORKERS": str(workers)}
    env.pop("SSL_ADV_JOB_THREADS", None)
    proc = subprocess.run([sys.executable, __file__, str(out), data_root], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{workers} worker(s):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_tables_and_encoders_are_identical_with_one_and_two_workers(tmp_path, data_root):
    one, two = tmp_path / "w1", tmp_path / "w2"
    _run(one, 1, data_root)
    _run(two, 2, data_root)
    for name in ("factors.csv", "dense.csv"):
        a, b = (pd.read_csv(d / name, dtype=str, keep_default_na=False) for d in (one, two))
        assert len(a) > 5 and list(a.columns) == list(b.columns)
        differ = {c: int((a[c] != b[c]).sum()) for c in a if (a[c] != b[c]).any()}
        assert not differ, f"{name}: rows differing per column between 1 and 2 workers: {differ}"
        assert (one / name).read_bytes() == (two / name).read_bytes()
    hashes = [json.loads((d / "encoders.json").read_text()) for d in (one, two)]
    assert len(hashes[0]) >= 4 and hashes[0] == hashes[1]


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    run_steps(target, sys.argv[2])
