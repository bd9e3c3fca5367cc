"""Robustness studies of classifiers: eps sweeps (cached, sharded across torchrun ranks), the attack grid of
notebooks 03-04, transfer attacks and the black-box Square check. Also a command:

    # one process (what the notebooks call):
    python -m utils.robustness --profile cpu --notebook 03
    # 8 GPUs on one node:
    torchrun --nproc_per_node 8 -m utils.robustness --profile paper --notebook 03
    # 2 nodes x 8 GPUs (run on each node; NODE_RANK 0 and 1, MASTER = host name of node 0):
    torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 --rdzv_backend c10d \
             --rdzv_endpoint $MASTER:29500 -m utils.robustness --profile paper --notebook 03

How points are shared: the N points are cut into batches of `batch_size` in input order; rank r attacks batches
r, r + W, r + 2W, ... (W = world size), each with its own random-start seed derived from (seed, batch index). So
every point is attacked exactly once (no padding duplicates), and by the same computation whatever W is: the
per-point verdicts are all-reduced (summed; the shards are disjoint) and equal those of a single process.

The command writes its results into the same cache the notebook reads (`cache/<profile>/attacks/*.json`, rank 0
writes): run it first, then the notebook (`python -m utils.pipeline --only 03`) finds every sweep done and draws the
figures from it.

Studies layer: imports attacks, data, models, probe, parallel, runtime, store, config.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torchattacks
from torch import nn

from utils import attacks, data
from utils.config import PROFILES, SUPERVISED, notebook_parameters, output_dirs
from utils.models import load_classifier
from utils.parallel import close_distributed, init_distributed, run_cached, world
from utils.probe import accuracy, classifier_path
from utils.runtime import SEED_STREAM_BATCH, derive_seed, model_device
from utils.store import cached_json, points_digest, weights_digest

# Bump when a change of the kernel changes what a cached sweep would hold (invalidates attack caches).
KERNEL_VERSION = 2


# -------------------------------------------------------------------------------------------------- sharded sweeps

def sharded_robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list, attack: str = "pgd",
                            norm: str = "linf", steps: int = 10, restarts: int = 1, batch_size: int = 256,
                            seed: int = 0, **attack_kwargs) -> attacks.RobustAccuracy:
    """`utils.attacks.robust_accuracy` over (x [N,C,H,W] in [0,1], y [N]) split into batches shared across ranks.

    Returns a `RobustAccuracy` holding the verdicts of ALL N points on every rank (identical to a single process).
    """
    rank, size = world()
    n = len(y)
    device = model_device(model)
    eps_grid = sorted({float(e) for e in ([eps_list] if isinstance(eps_list, (int, float)) else eps_list)})
    mask = torch.zeros(len(eps_grid), n, dtype=torch.int32)
    flags: set[str] = set()
    n_batches = (n + batch_size - 1) // batch_size
    for b in range(rank, n_batches, size):
        sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
        res = attacks.robust_accuracy(model, x[sl].to(device), y[sl].to(device), eps_list=eps_grid, attack=attack,
                                      norm=norm, steps=steps, restarts=restarts, batch_size=batch_size,
                                      seed=derive_seed(seed, b, SEED_STREAM_BATCH), check_monotonic=False,
                                      **attack_kwargs)
        mask[:, sl] = res.robust_mask.to(torch.int32)
        flags.update(res.flags)
    if size > 1:
        # gloo reduces CPU tensors; nccl needs them on the GPU
        m = mask.to(device) if dist.get_backend() == "nccl" else mask
        dist.all_reduce(m, op=dist.ReduceOp.SUM)
        mask = m.cpu()
        gathered = [None] * size
        dist.all_gather_object(gathered, sorted(flags))
        flags = set().union(*map(set, gathered))
    if int(mask.max()) > 1:
        raise RuntimeError("a point was attacked by two ranks: the shards overlap (this is a bug)")
    robust = mask.bool()
    accs = {eps: float(robust[j].float().mean()) for j, eps in enumerate(eps_grid)}
    steps_rec, restarts_rec = (1, 1) if attack == "fgsm" else (int(steps), int(restarts))
    return attacks.RobustAccuracy(accs, flags=sorted(flags) + attacks.monotonicity_flags(accs), n=n, attack=attack,
                                  norm=norm, steps=steps_rec, restarts=restarts_rec, robust_mask=robust)


def sweep_cache(clf, x, y, *, model, task, attack, norm, eps_list, steps, restarts, seed, regime, cache_dir):
    """(folder, name, key) of one sweep's cache entry (see `attack_sweep`)."""
    key = {"weights": weights_digest(clf), "points": points_digest(x, y), "attack": attack, "norm": norm,
           "eps": list(eps_list), "steps": steps, "restarts": restarts, "seed": seed, "model": model, "task": task,
           "regime": regime, "kernel": KERNEL_VERSION}
    return Path(cache_dir) / "attacks", f"{model}-{task}-{regime}-{attack}-{norm}", key


def attack_sweep(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, attack: str, norm: str,
                 eps_list: list[float], steps: int, restarts: int = 1, regime: str = "linear", seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 256) -> dict:
    """Robust accuracy of `clf` over `eps_list` for one attack, as {"rows": tidy rows, "mask": [[0/1]*n]*len(eps)}.

    Cached as JSON under `<cache_dir>/attacks/` keyed by the classifier's weights, the points and the attack settings,
    so an interrupted sweep over many models resumes at the first unfinished one.
    """
    def compute():
        # sharded across torch.distributed ranks when launched by torchrun; the same numbers in one process
        res = sharded_robust_accuracy(clf.to(device), x, y, eps_list=eps_list, attack=attack, norm=norm,
                                      steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
        rows = res.to_rows(model=model, regime=regime, task=task)
        return {"rows": rows, "mask": res.robust_mask.to(torch.uint8).tolist()}

    if cache_dir is None:
        return compute()
    return cached_json(*sweep_cache(clf, x, y, model=model, task=task, attack=attack, norm=norm, eps_list=eps_list,
                                    steps=steps, restarts=restarts, seed=seed, regime=regime, cache_dir=cache_dir),
                       compute)


def run_attack_grid(classifiers: dict[tuple[str, str], nn.Module], points: dict[str, tuple], settings: list[dict],
                    *, steps: int, restarts: int, seed: int = 0, regime: str = "linear",
                    cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False):
    """Every classifier x every attack setting. `classifiers[(model, task)]`, `points[task] = (x, y)`,
    `settings = [{"attack": "pgd", "norm": "linf", "eps_list": [...]}, ...]` (FGSM always runs 1 step, 1 restart).

    Returns (tidy DataFrame, masks) with `masks[(model, task, attack, norm)]` a 0/1 tensor [len(eps), n].
    """
    jobs, entries = [], []
    for model, task in classifiers:
        x, y = points[task]
        for s in settings:
            one_step = s["attack"] == "fgsm"
            job = dict(clf=classifiers[(model, task)], x=x, y=y, model=model, task=task, attack=s["attack"],
                       norm=s["norm"], eps_list=s["eps_list"], steps=1 if one_step else steps,
                       restarts=1 if one_step else restarts, regime=regime, seed=seed)
            folder, name, key = sweep_cache(**job, cache_dir=cache_dir) if cache_dir is not None else (None,) * 3
            jobs.append(job)
            entries.append((folder, name, key, dict(job, device=device)))
    outs = run_cached(attack_sweep, entries, desc=f"attacks ({regime})", device=device, progress=progress)
    rows, masks = [], {}
    for j, out in zip(jobs, outs):
        rows.extend(out["rows"])
        masks[(j["model"], j["task"], j["attack"], j["norm"])] = torch.tensor(out["mask"], dtype=torch.uint8)
    return pd.DataFrame(rows), masks


def grid_accuracy(masks: dict, key: tuple, eps_list: list[float], eps: float, n: int | None = None) -> float:
    """Robust accuracy at `eps` on the first `n` points, read from the masks of `run_attack_grid` (key = (model,
    task, attack, norm); `eps_list` = the sweep's eps grid)."""
    grid = sorted({float(e) for e in eps_list})
    hits = [i for i, e in enumerate(grid) if abs(e - eps) < 1e-9]
    if not hits:
        raise ValueError(f"eps={eps:.6g} is not on the attacked grid {grid}: add it to the eps list of the sweep")
    return float(masks[key][hits[0], :n].float().mean())


def attack_inputs(params: dict, cache_dir: str | os.PathLike, tasks: list[str] | None = None):
    """What notebook 03 attacks, built from its parameters: (classifiers {(model, task)}, points {task: (x, y)},
    settings). Shared by the notebook and the torchrun command, so both run the same grid."""
    tasks = tasks or [params.get("task", "fashion_mnist"), params["transfer_task"]]
    points = {t: data.load_classification(t, "test", data_root=params["data_root"], n=params["n_attack"],
                                          seed=params["seed"]) for t in tasks}
    classifiers = {(m, t): load_classifier(classifier_path(cache_dir, m, t)) for m in params["methods"] for t in tasks}
    settings = [{"attack": a, "norm": "linf", "eps_list": params["eps_linf"]} for a in params["linf_attacks"]] + \
               [{"attack": a, "norm": "l2", "eps_list": params["eps_l2"]} for a in params["l2_attacks"]]
    return classifiers, points, settings


# -------------------------------------------------------------------------------------- transfer and black box

def transfer_sweep(source: nn.Module, targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                   source_name: str, task: str, eps_list: list[float], steps: int, seed: int = 0,
                   regime: str = "linear", device: str = "cpu") -> list[dict]:
    """Transfer attack: L-inf PGD adversarials crafted on `source`, scored (float32 verdict) on each target.

    A target point counts as robust when the target classifies the transferred adversarial correctly.
    """
    rows = []
    for eps in eps_list:
        torch.manual_seed(seed)
        x_adv = x if eps == 0 else attacks.pgd(source, x, y, eps=eps, norm="linf", steps=steps)
        for name, target in targets.items():
            acc = accuracy(target, x_adv, y, device=device)
            rows.append({"model": name, "regime": regime, "task": task, "attack": f"transfer-pgd<{source_name}",
                         "norm": "linf", "eps": eps, "steps": steps, "restarts": 1, "accuracy": acc, "n": len(y),
                         "flags": ""})
    return rows


def run_transfer(classifiers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, task: str,
                 eps_list: list[float], steps: int, supervised: str = SUPERVISED, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False) -> list[dict]:
    """Transfer attacks in both directions: PGD L-inf crafted on the supervised classifier and scored on every SSL
    one, and crafted on each SSL classifier and scored on the supervised one. One job per source (in worker
    processes on a CPU), each cached under `<cache_dir>/transfer/`. Returns tidy rows."""
    sup = classifiers[supervised]
    plan = [(supervised, {m: c for m, c in classifiers.items() if m != supervised})] + \
           [(m, {supervised: sup}) for m in classifiers if m != supervised]
    entries = []
    for source, targets in plan:
        key = {"source": weights_digest(classifiers[source]),
               "targets": {t: weights_digest(c) for t, c in targets.items()}, "points": points_digest(x, y),
               "eps": list(eps_list), "steps": steps, "seed": seed, "task": task, "kernel": KERNEL_VERSION}
        entries.append((None if cache_dir is None else Path(cache_dir) / "transfer", f"{source}-{task}", key,
                        dict(source=classifiers[source], targets=targets, x=x, y=y, source_name=source, task=task,
                             eps_list=eps_list, steps=steps, seed=seed, device=device)))
    out = run_cached(transfer_sweep, entries, desc="transfer", device=device, progress=progress)
    return [r for rows in out for r in rows]


def square_check(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, eps: float,
                 n_queries: int, whitebox_accuracy: float, seed: int = 0, tolerance: float = 0.01) -> dict:
    """Black-box Square attack (torchattacks, L-inf, margin loss, 1 restart) as a gradient-masking check.

    Returns one tidy row; its flags hold BLACKBOX_BEATS_WHITEBOX when Square's robust accuracy is lower than the
    white-box attack's on the same points by more than `tolerance` (a sign that gradients are masked).
    """
    clf.eval()
    atk = torchattacks.Square(clf, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1, loss="margin", seed=seed)
    x_adv = atk(x, y)
    with torch.no_grad():
        robust = (clf(x_adv.float()).float().argmax(1) == y) & (clf(x).float().argmax(1) == y)
    acc = robust.float().mean().item()
    flags = attacks.BLACKBOX_BEATS_WHITEBOX if acc < whitebox_accuracy - tolerance else ""
    return {"model": model, "regime": "linear", "task": task, "attack": "square", "norm": "linf", "eps": eps,
            "steps": n_queries, "restarts": 1, "accuracy": acc, "n": len(y), "flags": flags}


def run_square(classifiers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, task: str, eps: float,
               n_queries: int, whitebox_accuracy: dict[str, float], seed: int = 0,
               cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False) -> list[dict]:
    """`square_check` for every classifier (one job each, in worker processes on a CPU), cached under
    `<cache_dir>/square/`. `whitebox_accuracy[model]`: the white-box robust accuracy on the same points and eps."""
    entries = []
    for m, clf in classifiers.items():
        key = {"weights": weights_digest(clf), "points": points_digest(x, y), "eps": eps, "queries": n_queries,
               "seed": seed, "task": task, "whitebox": whitebox_accuracy[m]}
        entries.append((None if cache_dir is None else Path(cache_dir) / "square", f"{m}-{task}", key,
                        dict(clf=clf, x=x, y=y, model=m, task=task, eps=eps, n_queries=n_queries,
                             whitebox_accuracy=whitebox_accuracy[m], seed=seed)))
    return run_cached(square_check, entries, desc="square", device=device, progress=progress)


# ------------------------------------------------------------------------------------------------------- command

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--notebook", default="03", choices=["03"], help="whose attack grid to run (03: linear regime)")
    args = ap.parse_args(argv)
    rank, size = init_distributed()
    params = notebook_parameters(args.profile, args.notebook)
    cache_dir = output_dirs(args.profile)["cache_dir"]
    device = params["device"]
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    classifiers, points, settings = attack_inputs(params, cache_dir)
    table, _ = run_attack_grid(classifiers, points, settings, steps=params["steps"], restarts=params["restarts"],
                               seed=params["seed"], cache_dir=cache_dir, device=device, progress=rank == 0)
    if rank == 0:
        print(f"{len(table)} rows over {len(classifiers)} classifiers on {size} rank(s); cached under "
              f"{cache_dir}/attacks/")
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
