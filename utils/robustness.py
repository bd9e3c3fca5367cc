"""Robustness studies of classifiers: eps sweeps (cached, sharded across torchrun ranks), the attack grid of
notebooks 03-04 with the AutoAttack-style ensemble and the per-point worst case over every attack, the convergence
check, and transfer attacks. Also a command:

    # one process (what the notebooks call):
    python -m utils.robustness --profile cpu --notebook 03
    # 8 GPUs on one node:
    torchrun --nproc_per_node 8 -m utils.robustness --profile paper --notebook 03
    # 2 nodes x 8 GPUs (run on each node; NODE_RANK 0 and 1, MASTER = host name of node 0):
    torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 --rdzv_backend c10d \
             --rdzv_endpoint $MASTER:29500 -m utils.robustness --profile paper --notebook 03

How points are shared: the N points are cut into batches in input order (`attack_batches`: a function of N,
`batch_size` and `batch_multiple`, never of the world size W); rank r attacks batches r, r + W, r + 2W, ..., each
with its own random-start seed derived from (seed, batch index). So every point is attacked exactly once (no padding
duplicates), and by the same computation whatever W is: the per-point verdicts are all-reduced (summed; the shards
are disjoint) and equal those of a single process. Balance: with `batch_multiple` m > 1 the points are cut into a
multiple of m batches of near-equal size (at most `batch_size` each), so on any W dividing m every rank gets the same
number of batches and the same load within one point per batch (5,000 points, batch 256, m = 16: 32 batches of
156-157, two per rank on 16 GPUs, where batches of 256 leave 12 of 16 ranks idle for half the sweep); on other W the
loads differ by at most one batch.

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
from torch import nn

from utils import attacks, data
from utils.config import (PROFILES, SUPERVISED, check_overrides, notebook_parameters, output_dirs, overrides_from_env,
                          parse_set)
from utils.parallel import close_distributed, init_distributed, run_cached, world
from utils.encoders import replicate_runs
from utils.probe import linear_classifiers
from utils.runtime import SEED_STREAM_BATCH, derive_seed, model_device, resolve_device
from utils.store import cached_json, points_digest, weights_digest

# Bump when a change of the kernel changes what a cached sweep would hold (invalidates attack caches).
KERNEL_VERSION = 4  # 4: one run per eps in the cascade (carried point + random offset)


# -------------------------------------------------------------------------------------------------- sharded sweeps

def attack_batches(n: int, batch_size: int, multiple: int = 1) -> list[slice]:
    """The batches N = `n` points are attacked in (input order, contiguous, each the unit of its random starts).

    multiple = 1: consecutive batches of `batch_size` points, the last one shorter (the layout of every sweep cached
    before `multiple` existed). multiple = m > 1: the smallest multiple of m batches (or N, if fewer) of at most
    `batch_size` points, sizes as equal as can be (they differ by at most one point), so that torchrun on any
    world size dividing m gives every rank the same load. Never a function of the world size: the batches, and so
    the numbers, are the same on any number of ranks.
    """
    n, batch_size, multiple = int(n), int(batch_size), int(multiple)
    if batch_size < 1 or multiple < 1:
        raise ValueError(f"batch_size and multiple must be >= 1, got {batch_size} and {multiple}")
    if multiple == 1:
        return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    fewest = -(-n // batch_size)  # ceil(n / batch_size): the fewest batches that hold n points
    count = min(n, -(-fewest // multiple) * multiple)  # rounded up to a multiple of m
    bounds = [i * (n // count) + min(i, n % count) for i in range(count + 1)] if count else [0]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def rank_batches(n_batches: int, rank: int, world_size: int) -> list[int]:
    """The batch indices rank `rank` of `world_size` attacks: rank, rank + W, ... (counts differ by at most one)."""
    return list(range(rank, n_batches, world_size))


def sharded_robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list, attack: str = "pgd",
                            norm: str = "linf", steps: int = 10, restarts: int = 1, batch_size: int = 256,
                            batch_multiple: int = 1, seed: int = 0, **attack_kwargs) -> attacks.RobustAccuracy:
    """`utils.attacks.robust_accuracy` over (x [N,C,H,W] in [0,1], y [N]) split into batches shared across ranks
    (`attack_batches(N, batch_size, batch_multiple)`; see the module docstring).

    Returns a `RobustAccuracy` holding the verdicts of ALL N points on every rank (identical to a single process).
    """
    rank, size = world()
    n = len(y)
    device = model_device(model)
    eps_grid = sorted({float(e) for e in ([eps_list] if isinstance(eps_list, (int, float)) else eps_list)})
    mask = torch.zeros(len(eps_grid), n, dtype=torch.int32)
    by = torch.zeros(len(eps_grid), n, dtype=torch.int32)  # fooled_by + 3 on the points this rank attacked, else 0
    members = None
    flags: set[str] = set()
    layout = attack_batches(n, batch_size, batch_multiple)
    if attack_kwargs.get("fold_bn", True) is True and len(layout) > 1:
        # folded once per sweep, not per batch (a ResNet-50 takes ~2 s to fold on a CPU); None: nothing to fold
        attack_kwargs["fold_bn"] = attacks.fold_batchnorm(model) or False
    for b in rank_batches(len(layout), rank, size):
        sl = layout[b]
        res = attacks.robust_accuracy(model, x[sl].to(device), y[sl].to(device), eps_list=eps_grid, attack=attack,
                                      norm=norm, steps=steps, restarts=restarts, batch_size=batch_size,
                                      seed=derive_seed(seed, b, SEED_STREAM_BATCH), check_monotonic=False,
                                      **attack_kwargs)
        mask[:, sl] = res.robust_mask.to(torch.int32)
        by[:, sl] = res.fooled_by.to(torch.int32) + 3
        members = res.members
        flags.update(res.flags)
    if size > 1:
        # gloo reduces CPU tensors; nccl needs them on the GPU
        for t in (mask, by):
            m = t.to(device) if dist.get_backend() == "nccl" else t
            dist.all_reduce(m, op=dist.ReduceOp.SUM)
            t.copy_(m.cpu())
        gathered_members = [None] * size
        dist.all_gather_object(gathered_members, members)
        members = next(m for m in gathered_members if m is not None)
        gathered = [None] * size
        dist.all_gather_object(gathered, sorted(flags))
        flags = set().union(*map(set, gathered))
    if int(mask.max()) > 1:
        raise RuntimeError("a point was attacked by two ranks: the shards overlap (this is a bug)")
    robust = mask.bool()
    accs = {eps: float(robust[j].float().mean()) for j, eps in enumerate(eps_grid)}
    steps_rec, restarts_rec = (1, 1) if attack == "fgsm" else (int(steps), int(restarts))
    name = attack if isinstance(attack, str) else "+".join(attack)
    return attacks.RobustAccuracy(accs, flags=sorted(flags) + attacks.monotonicity_flags(accs), n=n, attack=name,
                                  norm=norm, steps=steps_rec, restarts=restarts_rec, robust_mask=robust,
                                  fooled_by=(by - 3).to(torch.int8), members=members)


DEFAULT_BATCH = 256


def sweep_cache(clf, x, y, *, model, task, attack, norm, eps_list, steps, restarts, seed, regime, cache_dir,
                ensemble_options=None, batch_size=DEFAULT_BATCH, batch_multiple=1):
    """(folder, name, key) of one sweep's cache entry (see `attack_sweep`). The batch size and multiple join the key
    when they are not the defaults (each batch draws its own random starts, so they change the numbers; keys made
    before they were knobs stay valid)."""
    key = {"weights": weights_digest(clf), "points": points_digest(x, y), "attack": attack, "norm": norm,
           "eps": list(eps_list), "steps": steps, "restarts": restarts, "seed": seed, "model": model, "task": task,
           "regime": regime, "kernel": KERNEL_VERSION, **({"ensemble": ensemble_options} if ensemble_options else {}),
           **({"batch": int(batch_size)} if int(batch_size) != DEFAULT_BATCH else {}),
           **({"batch_multiple": int(batch_multiple)} if int(batch_multiple) != 1 else {})}
    return Path(cache_dir) / "attacks", f"{model}-{task}-{regime}-{attack}-{norm}", key


def attack_sweep(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, attack: str, norm: str,
                 eps_list: list[float], steps: int, restarts: int = 1, regime: str = "linear", seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = DEFAULT_BATCH,
                 batch_multiple: int = 1, ensemble_options: dict | None = None) -> dict:
    """Robust accuracy of `clf` over `eps_list` for one attack (or ensemble), as {"rows": tidy rows, "mask":
    [[0/1]*n]*len(eps), "members": the attacks run, "fooled_by": [[member index or -1/-2]*n]*len(eps)}.
    `ensemble_options`: n_targets, n_queries for the members that take them.

    Cached as JSON under `<cache_dir>/attacks/` keyed by the classifier's weights, the points and the attack settings,
    so an interrupted sweep over many models resumes at the first unfinished one.
    """
    def compute():
        # sharded across torch.distributed ranks when launched by torchrun; the same numbers in one process
        res = sharded_robust_accuracy(clf.to(device), x, y, eps_list=eps_list, attack=attack, norm=norm,
                                      steps=steps, restarts=restarts, batch_size=batch_size,
                                      batch_multiple=batch_multiple, seed=seed, **(ensemble_options or {}))
        rows = res.to_rows(model=model, regime=regime, task=task)
        if "square" in res.members and len(res.members) > 1:
            _flag_blackbox(rows, res)
        return {"rows": rows, "mask": res.robust_mask.to(torch.uint8).tolist(), "members": res.members,
                "fooled_by": res.fooled_by.tolist()}

    if cache_dir is None:
        return compute()
    folder, name, key = sweep_cache(clf, x, y, model=model, task=task, attack=attack, norm=norm, eps_list=eps_list,
                                    steps=steps, restarts=restarts, seed=seed, regime=regime, cache_dir=cache_dir,
                                    ensemble_options=ensemble_options, batch_size=batch_size,
                                    batch_multiple=batch_multiple)
    return cached_json(folder, name, key, compute)


BLACKBOX_TOLERANCE = 0.01  # fraction of points Square may fool beyond every white-box attack before a flag


def _flag_blackbox(rows: list[dict], res: attacks.RobustAccuracy) -> None:
    """AutoAttack's gradient-masking check on an ensemble's rows: the fraction of points that only the black-box
    Square fooled (every white-box member before it missed them) goes into `square_only`; above
    BLACKBOX_TOLERANCE the row is flagged BLACKBOX_BEATS_WHITEBOX."""
    k = res.members.index("square")
    for j, row in enumerate(rows):
        frac = float((res.fooled_by[j] == k).float().mean())
        row["square_only"] = frac
        if frac > BLACKBOX_TOLERANCE:
            note = attacks.flag(attacks.BLACKBOX_BEATS_WHITEBOX, f"Square alone fooled {100 * frac:.1f} % of the "
                                                                 f"points every white-box attack missed")
            row["flags"] = ";".join(f for f in (row["flags"], note) if f)


def run_attack_grid(classifiers: dict[tuple[str, str], nn.Module], points: dict[str, tuple], settings: list[dict],
                    *, steps: int, restarts: int, seed: int = 0, regime: str = "linear",
                    cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False,
                    batch_size: int = DEFAULT_BATCH, batch_multiple: int = 1):
    """Every classifier x every attack setting. `classifiers[(model, task)]`, `points[task] = (x, y)`,
    `settings = [{"attack": "pgd", "norm": "linf", "eps_list": [...]}, ...]` (FGSM always runs 1 step, 1 restart;
    an ensemble setting may carry "options": {"n_targets": 9, "n_queries": 5000}; a setting with "n" attacks only
    the first n points of each task).

    `batch_size`: points per attack batch at most (the unit of random starts and of torchrun sharding);
    `batch_multiple`: cut the points into a multiple of this many near-equal batches (`attack_batches`).
    Returns (tidy DataFrame, masks) with `masks[(model, task, attack, norm)]` a 0/1 tensor [len(eps), n].
    """
    jobs, entries = [], []
    for model, task in classifiers:
        x, y = points[task]
        for s in settings:
            one_step = s["attack"] == "fgsm"
            n = s.get("n") or len(y)  # a costly setting (the full ensemble on a CPU) may cover a prefix only
            job = dict(clf=classifiers[(model, task)], x=x[:n], y=y[:n], model=model, task=task, attack=s["attack"],
                       norm=s["norm"], eps_list=s["eps_list"], steps=1 if one_step else steps,
                       restarts=1 if one_step else restarts, regime=regime, seed=seed, batch_size=batch_size,
                       batch_multiple=batch_multiple)
            if s["attack"] in attacks.ENSEMBLES:
                job["ensemble_options"] = dict(s.get("options", {}))
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
    tasks = tasks or [params["task"], *params["transfer_tasks"]]
    points = {t: data.load_points(t, "test", n=params["n_attack"], seed=params["seed"], **data.sources(params))
              for t in tasks}
    classifiers = linear_classifiers(cache_dir, params["methods"], tasks)  # what notebook 02 fitted, checked
    options = {"n_targets": params["n_targets"], "n_queries": params["square_queries"]}
    settings = [{"attack": a, "norm": "linf", "eps_list": params["eps_linf"], "options": options,
                 "n": params["n_ensemble"] if a in attacks.ENSEMBLES else None}
                for a in params["linf_attacks"]] + \
               [{"attack": a, "norm": "l2", "eps_list": params["eps_l2"], "options": options}
                for a in params["l2_attacks"]]
    return classifiers, points, settings


def replicate_inputs(profile: str, cache_dir: str | os.PathLike, tasks: list[str]):
    """The seed replicates notebook 01 trained (`seeds` > 1) and notebook 02 fitted: (runs {name: (method,
    training seed)}, classifiers {(name, task)}); ({}, {}) when there are none."""
    runs = replicate_runs(profile, cache_dir)
    return runs, (linear_classifiers(cache_dir, list(runs), tasks) if runs else {})


WORST_CASE = "worst-case"


def worst_case(table: pd.DataFrame, masks: dict, eps_lists: dict[str, list[float]]):
    """The per-point worst case over every attack run on each (model, task, norm): a point is robust at eps only if
    no attack run on it fooled it there (an attack that covered only the first k points counts on those). Returns (tidy rows with attack WORST_CASE, steps and restarts the largest of the
    attacks combined, flags their union; masks {(model, task, WORST_CASE, norm): 0/1 [len(eps), n]})."""
    rows, out = [], {}
    groups: dict[tuple, list] = {}
    for (model, task, attack, norm), m in masks.items():
        if attack != WORST_CASE:
            groups.setdefault((model, task, norm), []).append((attack, m))
    for (model, task, norm), members in groups.items():
        n = max(m.shape[1] for _, m in members)
        # an attack run on a prefix of the points only (the CPU profile's ensemble) counts on that prefix
        mask = torch.ones(members[0][1].shape[0], n, dtype=torch.bool)
        for _, m in members:
            mask[:, :m.shape[1]] &= m.bool()
        mask = mask.to(torch.uint8)
        out[(model, task, WORST_CASE, norm)] = mask
        names = [a for a, _ in members]
        sub = table[(table.model == model) & (table.task == task) & (table.norm == norm) & table.attack.isin(names)]
        flags = sorted({f for fs in sub["flags"].fillna("") for f in str(fs).split(";") if f})
        for j, eps in enumerate(sorted({float(e) for e in eps_lists[norm]})):
            rows.append({"model": model, "regime": sub.regime.iloc[0] if len(sub) else "linear", "task": task,
                         "attack": WORST_CASE, "norm": norm, "eps": eps, "steps": int(sub.steps.max()),
                         "restarts": int(sub.restarts.max()), "accuracy": float(mask[j].float().mean()),
                         "n": mask.shape[1], "flags": ";".join(flags), "attacks": "+".join(names)})
    return pd.DataFrame(rows), out


def convergence_run(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, *, model: str, task: str, eps: float,
                    schedule: list[tuple[int, int]], reference: float, attack: str = "apgd-ce", seed: int = 0,
                    tolerance: float = 0.01, device: str = "cpu") -> list[dict]:
    """Robust accuracy of `attack` at `eps` for each (steps, restarts) of `schedule` (increasing budgets). Robustness
    that keeps falling as steps and restarts grow was never real: every row gets the NOT_CONVERGED flag when the
    strongest budget lands more than `tolerance` below `reference` (the worst case the headline rests on, on the
    same points) or below the first budget."""
    clf.to(device)
    rows = []
    for steps, restarts in schedule:
        res = attacks.robust_accuracy(clf, x, y, eps_list=[eps], attack=attack, steps=steps, restarts=restarts,
                                      seed=seed)
        rows.append({"model": model, "regime": "linear", "task": task, "attack": f"{attack} (convergence)",
                     "norm": "linf", "eps": eps, "steps": steps, "restarts": restarts, "accuracy": res[eps],
                     "n": res.n, "flags": ";".join(res.flags), "reference": reference})
    strongest = rows[-1]["accuracy"]
    drop = max(reference, rows[0]["accuracy"]) - strongest
    if drop > tolerance:
        note = attacks.flag(attacks.NOT_CONVERGED, f"{100 * drop:.1f} points lower with {schedule[-1][0]} steps x "
                                                   f"{schedule[-1][1]} restarts")
        for r in rows:
            r["flags"] = ";".join(f for f in (r["flags"], note) if f)
    return rows


def run_convergence(classifiers: dict[tuple[str, str], nn.Module], points: dict[str, tuple], *, eps: float,
                    schedule: list[tuple[int, int]], reference: dict[tuple[str, str], float], n: int,
                    attack: str = "apgd-ce", seed: int = 0, cache_dir: str | os.PathLike | None = None,
                    device: str = "cpu", progress: bool = False) -> list[dict]:
    """`convergence_run` for every classifier on the first `n` points of its task (one job each, in worker
    processes on a CPU), cached under `<cache_dir>/convergence/`. `reference[(model, task)]`: the worst-case robust
    accuracy at `eps` on the same points."""
    entries = []
    for (m, t), clf in classifiers.items():
        x, y = points[t][0][:n], points[t][1][:n]
        key = {"weights": weights_digest(clf), "points": points_digest(x, y), "eps": eps,
               "schedule": [list(s) for s in schedule], "attack": attack, "seed": seed,
               "reference": reference[(m, t)], "kernel": KERNEL_VERSION}
        entries.append((None if cache_dir is None else Path(cache_dir) / "convergence", f"{m}-{t}", key,
                        dict(clf=clf, x=x, y=y, model=m, task=t, eps=eps, schedule=schedule,
                             reference=reference[(m, t)], attack=attack, seed=seed, device=device)))
    out = run_cached(convergence_run, entries, desc="convergence", device=device, progress=progress)
    return [r for rows in out for r in rows]


# -------------------------------------------------------------------------------------- transfer and black box

def transfer_sweep(source: nn.Module, targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                   source_name: str, task: str, eps_list: list[float], steps: int, seed: int = 0,
                   regime: str = "linear", device: str = "cpu", batch_size: int = 256) -> list[dict]:
    """Transfer attack: L-inf PGD crafted on `source` (its last iterate: the first point that fools the source is
    barely across its boundary and transfers worse), scored (float32 verdict) on each target, `batch_size` points
    at a time (each batch's random start seeded by `seed` and its index), so that only a batch of adversarial images
    is ever held (5,000 ImageNet points would be 3 GB, and one ResNet-50 batch of them more than a GPU holds).

    A target point counts as robust when the target classifies it correctly both clean and after the transfer
    (a point the target gets wrong clean is not robust, as with every other attack here).
    """
    rows = []
    clean_right = {name: _correct(target, x, y, device) for name, target in targets.items()}
    for eps in eps_list:
        robust = {name: torch.ones(len(y), dtype=torch.bool) for name in targets}  # eps 0: the clean verdicts alone
        for b, i in enumerate(range(0, len(y), batch_size) if eps > 0 else []):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            x_adv = attacks.pgd(source, xb, yb, eps=eps, norm="linf", steps=steps, keep="last",
                                seed=derive_seed(seed, b, SEED_STREAM_BATCH))
            for name, target in targets.items():
                robust[name][i:i + batch_size] = _correct(target, x_adv, yb, device)
        for name in targets:
            acc = float((clean_right[name] & robust[name]).float().mean())
            rows.append({"model": name, "regime": regime, "task": task, "attack": f"transfer-pgd<{source_name}",
                         "norm": "linf", "eps": eps, "steps": steps, "restarts": 1, "accuracy": acc, "n": len(y),
                         "flags": ""})
    return rows


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, batch_size: int = 512) -> torch.Tensor:
    """bool [N]: the float32 model classifies each point right (eval mode)."""
    model.eval().to(device)
    return torch.cat([model(x[i:i + batch_size].to(device)).float().argmax(1).cpu() == y[i:i + batch_size]
                      for i in range(0, len(x), batch_size)])


def run_transfer(classifiers: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, task: str,
                 eps_list: list[float], steps: int, supervised: str = SUPERVISED, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = False,
                 batch_size: int = 256) -> list[dict]:
    """Transfer attacks in both directions: PGD L-inf crafted on the supervised classifier and scored on every SSL
    one, and crafted on each SSL classifier and scored on the supervised one, `batch_size` points at a time. One job
    per source (in worker processes on a CPU), each cached under `<cache_dir>/transfer/`. Returns tidy rows."""
    sup = classifiers[supervised]
    plan = [(supervised, {m: c for m, c in classifiers.items() if m != supervised})] + \
           [(m, {supervised: sup}) for m in classifiers if m != supervised]
    entries = []
    for source, targets in plan:
        key = {"source": weights_digest(classifiers[source]),
               "targets": {t: weights_digest(c) for t, c in targets.items()}, "points": points_digest(x, y),
               "eps": list(eps_list), "steps": steps, "seed": seed, "task": task, "kernel": KERNEL_VERSION,
               "keep": "last", "clean_right": True, "batch_size": batch_size}
        entries.append((None if cache_dir is None else Path(cache_dir) / "transfer", f"{source}-{task}", key,
                        dict(source=classifiers[source], targets=targets, x=x, y=y, source_name=source, task=task,
                             eps_list=eps_list, steps=steps, seed=seed, device=device, batch_size=batch_size)))
    out = run_cached(transfer_sweep, entries, desc="transfer", device=device, progress=progress)
    return [r for rows in out for r in rows]


# ------------------------------------------------------------------------------------------------------- command

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--notebook", default="03", choices=["03"], help="whose attack grid to run (03: linear regime)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, as for `python -m utils.pipeline --set` (repeatable)")
    args = ap.parse_args(argv)
    overrides = parse_set(args.set)
    try:
        check_overrides(args.profile, overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rank, size = init_distributed()
    params = notebook_parameters(args.profile, args.notebook, {**overrides_from_env(), **overrides})
    cache_dir = output_dirs(args.profile)["cache_dir"]
    device = resolve_device(params["device"])
    if device.type == "cuda":
        device = torch.device(f"cuda:{torch.cuda.current_device()}")  # torchrun sets each rank's device
    classifiers, points, settings = attack_inputs(params, cache_dir)
    table, _ = run_attack_grid(classifiers, points, settings, steps=params["steps"], restarts=params["restarts"],
                               seed=params["seed"], cache_dir=cache_dir, device=device, progress=rank == 0,
                               batch_size=params["attack_batch"], batch_multiple=params["attack_batch_multiple"])
    if rank == 0:
        print(f"{len(table)} rows over {len(classifiers)} classifiers on {size} rank(s); cached under "
              f"{cache_dir}/attacks/")
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
