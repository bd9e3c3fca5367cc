"""torchrun with 2 CPU processes (gloo) gives exactly the single-process robust accuracies, with batches of
`batch_size` and with the balanced layout (`batch_multiple`); the layout covers every point once and balances ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.parallel import map_jobs
from utils.robustness import attack_batches, rank_batches, run_attack_grid, sharded_robust_accuracy

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
out = {}
for multiple in (1, 4):  # batches of 16 (7 batches: 4 + 3 per rank); 8 batches of 12-13 (4 + 4)
    res = sharded_robust_accuracy(model, x, y, eps_list=[0, 0.02, 0.1], attack="pgd", steps=3, batch_size=16,
                                  batch_multiple=multiple, seed=7)
    out[multiple] = {"acc": {str(k): v for k, v in res.items()}, "mask": res.robust_mask.int().tolist(),
                     "world": size, "n": res.n}
if rank == 0:
    json.dump(out, open(sys.argv[1], "w"))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
'''


def _single_process(multiple):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 13 * 13, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(101, 1, 28, 28, generator=g)
    y = model(x).argmax(1)
    return sharded_robust_accuracy(model, x, y, eps_list=[0, 0.02, 0.1], attack="pgd", steps=3, batch_size=16,
                                   batch_multiple=multiple, seed=7)


def test_torchrun_two_processes_match_one(tmp_path):
    script, out = tmp_path / "dist_eval.py", tmp_path / "out.json"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(script), str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == ["1", "4"] and attack_batches(101, 16, 1) != attack_batches(101, 16, 4)
    for multiple, dist in results.items():
        single = _single_process(int(multiple))
        assert dist["world"] == 2 and dist["n"] == 101 == single.n  # 101 points: not divisible by the world size
        assert dist["mask"] == single.robust_mask.int().tolist()
        assert {float(k): v for k, v in dist["acc"].items()} == dict(single)
        # the attack did something, so equality is not trivial
        assert single[0.0] == 1.0 and single[0.1] < single[0.02] < single[0.0]


def _loads(n, batch_size, multiple, world_size):
    """Points per rank, after checking that the ranks' batches cover every point exactly once."""
    layout = attack_batches(n, batch_size, multiple)
    assert all(0 < b.stop - b.start <= batch_size for b in layout)
    covered = sorted(i for r in range(world_size) for b in rank_batches(len(layout), r, world_size)
                     for i in range(layout[b].start, layout[b].stop))
    assert covered == list(range(n)), (n, batch_size, multiple, world_size)
    return [sum(layout[b].stop - layout[b].start for b in rank_batches(len(layout), r, world_size))
            for r in range(world_size)], layout


@pytest.mark.parametrize("multiple", [1, 2, 4, 16])
def test_every_point_once_and_ranks_within_one_batch(multiple):
    for n in (1, 7, 24, 101, 256, 1000, 5000):
        for batch_size in (1, 8, 16, 256):
            for world_size in (1, 2, 3, 5, 8, 16):
                loads, layout = _loads(n, batch_size, multiple, world_size)
                biggest = max(b.stop - b.start for b in layout)
                assert max(loads) - min(loads) <= biggest, (n, batch_size, multiple, world_size, loads)
                if multiple > 1 and multiple % world_size == 0 and len(layout) >= world_size:
                    # a world size dividing the multiple: the same number of batches per rank, sizes within 1 point
                    assert max(loads) - min(loads) <= len(layout) // world_size, (n, batch_size, multiple, loads)
                if multiple > 1:
                    assert max(b.stop - b.start for b in layout) - min(b.stop - b.start for b in layout) <= 1
    # the layout is the world size's business not at all, and multiple = 1 keeps the batches of before
    assert attack_batches(1000, 256) == [slice(0, 256), slice(256, 512), slice(512, 768), slice(768, 1000)]


def test_5000_points_on_16_ranks_leave_none_idle():
    """The case of issue 14: batches of 256 give 20 batches, so 4 ranks attack 2 (512 points, one 392) while 12
    attack 256 and then wait; a multiple of 16 gives 32 batches of 156-157 points, 2 per rank: none waits."""
    before, _ = _loads(5000, 256, 1, 16)
    assert sorted(before) == [256] * 12 + [392, 512, 512, 512]
    after, layout = _loads(5000, 256, 16, 16)
    assert len(layout) == 32 and max(after) - min(after) <= 1 and max(after) == 313
    for world_size in (1, 2, 4, 8):  # the same batches on any divisor of 16
        assert _loads(5000, 256, 16, world_size)[1] == layout


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
