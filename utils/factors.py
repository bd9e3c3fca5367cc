"""The study's four factors, one varied at a time with the rest fixed: architecture, training length, augmentation
and batch size. Each level is a pretraining run (cached by `utils.pretrain.pretrain_or_load`), a linear probe and an
attack at a reference eps; results are tidy rows (factor, level, method, clean accuracy, robust accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from utils import attacks
from utils.parallel import job_threads, local_workers, map_jobs
from utils.pretrain import load_epoch_checkpoint, pretrain_or_load
from utils.probe import linear_probe
from utils.store import param_hash


@dataclass(frozen=True)
class Level:
    """One factor level: which factor, its label, the pretraining overrides, and (training length) which snapshot."""

    factor: str
    level: str
    overrides: dict = field(default_factory=dict)
    snapshot_epoch: int | None = None


def factor_levels(*, archs: list[str], epoch_checkpoints: list[int], augmentations: list[str],
                  batch_sizes: list[int]) -> list[Level]:
    """All levels of the four factors. The base run is archs[0], the full augmentation list, the base batch size;
    training length reads snapshots of one run of max(epoch_checkpoints) epochs."""
    levels = [Level("architecture", a, {"arch": a}) for a in archs]
    longest = max(epoch_checkpoints)
    levels += [Level("training length", f"{e} ep", {"epochs": longest, "keep_epochs": list(epoch_checkpoints)}, e)
               for e in sorted(epoch_checkpoints)]
    levels.append(Level("augmentation", "all", {"augmentations": list(augmentations)}))
    levels += [Level("augmentation", f"−{fam}", {"augmentations": [a for a in augmentations if a != fam]})
               for fam in augmentations]
    levels += [Level("batch size", str(b), {"batch_size": b}) for b in batch_sizes]
    return levels


def run_factor_ablation(methods: list[str], levels: list[Level], base: dict, *, probe_data: dict, attack_points: tuple,
                        ref_eps: float, steps: int, cache_dir: str, probe_iters: int = 100, seed: int = 0,
                        device: str = "cpu", progress: bool = False):
    """For each method and level: pretrain (or load), probe, then PGD L-inf at `ref_eps` (`steps` steps, 1 restart).

    `base`: pretraining parameters shared by all levels (arch, n_pretrain, epochs, batch_size, lr, augmentations,
    seed, task, sources: the task's path parameters); `probe_data`: a `utils.data.classification_task` dict;
    `attack_points`: (x, y) test points.
    Two phases, each spread over worker processes on a CPU: the distinct pretraining runs (levels that share a run,
    such as the base run or the snapshots of one long run, train it once), then one probe + attack per level.
    Returns a DataFrame with the tidy columns of notebook 03 (model, regime, task, attack, norm, eps, steps, restarts,
    accuracy = robust accuracy at `ref_eps`, n, flags) plus method, factor, level, clean, robust and pretrain_s.
    """
    jobs = []  # (method, level, pretraining parameters, the run's hash)
    for m in methods:
        for lv in levels:
            params = {**base, **lv.overrides}
            jobs.append((m, lv, params, param_hash({"method": m, **params})))
    runs = {run: {"method": m, **params} for m, _, params, run in jobs}  # levels sharing a run train it once
    trained = map_jobs(_pretrain, [{"job": job, "cache_dir": cache_dir} for job in runs.values()],
                       workers=local_workers(device, len(runs)), threads=job_threads(device),
                       desc="factor ablation: pretraining", progress=progress)
    wall = dict(zip(runs, trained))
    level_jobs = [dict(method=m, level=lv, params=params, cache_dir=cache_dir, probe_data=probe_data,
                       attack_points=attack_points, ref_eps=ref_eps, steps=steps, probe_iters=probe_iters, seed=seed,
                       device=device, pretrain_s=wall[run]) for m, lv, params, run in jobs]
    rows = map_jobs(_level_row, level_jobs, workers=local_workers(device, len(level_jobs)),
                    threads=job_threads(device), desc="factor ablation: probe + attack", progress=progress)
    return pd.DataFrame(rows)


def _pretrain(job: dict, cache_dir: str) -> float:
    """Train (or find in the cache) one pretraining run; returns its training wall time in seconds."""
    params = dict(job)
    _, info = pretrain_or_load(params.pop("method"), **params, cache_dir=cache_dir, progress=False)
    return round(info.get("wall_time_s", 0.0), 1)


def _level_row(*, method: str, level: Level, params: dict, cache_dir: str, probe_data: dict, attack_points: tuple,
               ref_eps: float, steps: int, probe_iters: int, seed: int, device: str, pretrain_s: float) -> dict:
    """One level of one method: its encoder from the cache, a linear probe, PGD L-inf at 0 and `ref_eps`."""
    encoder, _ = pretrain_or_load(method, **params, cache_dir=cache_dir, progress=False)
    if level.snapshot_epoch is not None and level.snapshot_epoch != params["epochs"]:
        snap_params = {k: v for k, v in params.items() if k != "keep_epochs"}
        encoder = load_epoch_checkpoint(method, level.snapshot_epoch, **snap_params, cache_dir=cache_dir)
    clf = linear_probe(encoder, probe_data["x_train"], probe_data["y_train"], probe_data["n_classes"],
                       iters=probe_iters, seed=seed, device=device)
    torch.manual_seed(seed)
    x, y = attack_points
    res = attacks.robust_accuracy(clf, x, y, eps_list=[0.0, ref_eps], attack="pgd", norm="linf", steps=steps,
                                  restarts=1, seed=seed)
    return {"model": method, "regime": "linear", "task": probe_data["task"],
            "accuracy": res[ref_eps], "method": method, "factor": level.factor, "level": level.level,
            "clean": res[0.0], "robust": res[ref_eps], "eps": ref_eps, "attack": "pgd", "norm": "linf", "steps": steps,
            "restarts": 1, "n": res.n, "pretrain_s": pretrain_s, "flags": ";".join(res.flags)}
