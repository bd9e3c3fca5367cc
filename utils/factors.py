"""The study's four factors, one varied at a time with the rest fixed: architecture, training length, augmentation
and batch size. Each level is a pretraining run (cached by `utils.ssl.pretrain_or_load`), a linear probe and an
attack at a reference eps; results are tidy rows (factor, level, method, clean accuracy, robust accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
    seed, data_root); `probe_data`: a `utils.data.classification_task` dict; `attack_points`: (x, y) test points.
    Returns a DataFrame: method, factor, level, clean, robust, eps, steps, restarts, n, pretrain_s, flags.
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from utils import attacks
    from utils.evaluation import linear_probe
    from utils.ssl import load_epoch_checkpoint, pretrain_or_load

    rows = []
    x, y = attack_points
    jobs = [(m, lv) for m in methods for lv in levels]
    for method, lv in tqdm(jobs, desc="factor ablation", disable=not progress):
        params = {**base, **lv.overrides}
        encoder, info = pretrain_or_load(method, **params, cache_dir=cache_dir, progress=False)
        if lv.snapshot_epoch is not None and lv.snapshot_epoch != params["epochs"]:
            snap_params = {k: v for k, v in params.items() if k not in ("keep_epochs", "data_root")}
            encoder = load_epoch_checkpoint(method, lv.snapshot_epoch, **snap_params, cache_dir=cache_dir)
        clf = linear_probe(encoder, probe_data["x_train"], probe_data["y_train"], probe_data["n_classes"],
                           iters=probe_iters, seed=seed, device=device)
        torch.manual_seed(seed)
        res = attacks.robust_accuracy(clf, x, y, eps_list=[0.0, ref_eps], attack="pgd", norm="linf", steps=steps,
                                      restarts=1, seed=seed)
        rows.append({"method": method, "factor": lv.factor, "level": lv.level, "clean": res[0.0],
                     "robust": res[ref_eps], "eps": ref_eps, "attack": "pgd", "norm": "linf", "steps": steps,
                     "restarts": 1, "n": res.n, "pretrain_s": round(info.get("wall_time_s", 0.0), 1),
                     "flags": ";".join(res.flags)})
    return pd.DataFrame(rows)
