"""torchrun with 2 CPU processes (gloo) gives exactly the single-process robust accuracies."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.parallel import map_jobs
from utils.robustness import run_attack_grid, sharded_robust_accuracy

SCRIPT = r'''
import json, sys, torch
from utils.parallel import init_distributed
from utils.robustness import sharded_robust_accuracy
torch.set_num_threads(1)
rank, size = init_distributed()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 13 * 13, 10)).eval()
g = torch.Generator().manual_seed(1)
x = torch.rand(101, 1, 28, 28, generator=g)
y = model(x).argmax(1)  # every point starts correctly classified, so the attack has work to do
res = sharded_robust_accuracy(model, x, y, eps_list=[0, 0.02, 0.1], attack="pgd", steps=3, batch_size=16, seed=7)
if rank == 0:
    json.dump({"acc": {str(k): v for k, v in res.items()}, "mask": res.robust_mask.int().tolist(), "world": size,
               "n": res.n}, open(sys.argv[1], "w"))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


def _single_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 13 * 13, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(101, 1, 28, 28, generator=g)
    y = model(x).argmax(1)
    return sharded_robust_accuracy(model, x, y, eps_list=[0, 0.02, 0.1], attack="pgd", steps=3, batch_size=16,
                                   seed=7)


def test_torchrun_two_processes_match_one(tmp_path):
    script, out = tmp_path / "dist_eval.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(script), str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    dist = json.loads(out.read_text())
    single = _single_process()
    assert dist["world"] == 2 and dist["n"] == 101 == single.n  # 101 points: not divisible by the world size
    assert dist["mask"] == single.robust_mask.int().tolist()
    assert {float(k): v for k, v in dist["acc"].items()} == dict(single)
    # the attack did something, so equality is not trivial
    assert single[0.0] == 1.0 and single[0.1] < single[0.02] < single[0.0]


def test_worker_processes_give_the_numbers_of_one_process(tmp_path, monkeypatch):
    """run_attack_grid spread over 2 spawned worker processes = the same per-point verdicts as in-process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 13 * 13, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(60, 1, 28, 28, generator=g)
    y = model(x).argmax(1)
    clfs = {("a", "t"): model, ("b", "t"): torch.nn.Sequential(*model)}
    settings = [{"attack": "pgd", "norm": "linf", "eps_list": [0, 0.02, 0.1]},
                {"attack": "fgsm", "norm": "linf", "eps_list": [0, 0.02, 0.1]}]
    out = {}
    for w in ("1", "2"):
        monkeypatch.setenv("SSL_ADV_WORKERS", w)
        table, masks = run_attack_grid(clfs, {"t": (x, y)}, settings, steps=3, restarts=1, seed=3,
                                       cache_dir=tmp_path / w)
        out[w] = (table, masks)
        assert len(list((tmp_path / w / "attacks").glob("*.json"))) == 4
    assert out["1"][0].equals(out["2"][0])
    for k, m in out["1"][1].items():
        assert torch.equal(m, out["2"][1][k]), k
    assert out["1"][0].accuracy.min() < 0.5  # the attack fools points, so equality is not trivial


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch):
    from utils.attacks import check_eps

    with pytest.raises(ValueError, match="eps"):
        map_jobs(check_eps, [{"eps": 0.1}, {"eps": -1.0}], workers=2)
