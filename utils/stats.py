"""Statistics behind the verdicts: paired bootstrap intervals, SSL-minus-supervised gap tables, and the sentences
that state what a run found (computed from the tables, never written by hand).

Studies layer: works on masks and tidy tables only (pandas, torch); imports `utils.config` for shared names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from utils.config import METRIC_MAP, METRIC_MIOU, METRIC_PIXEL_ACC, SUPERVISED


# ------------------------------------------------------------------------------------------------ classification

def bootstrap_gap(mask_ssl: torch.Tensor, mask_sup: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """Paired bootstrap over test points of acc(SSL) - acc(supervised); masks are 0/1 [n] on the same points.

    Returns (gap, low, high) with a percentile interval at `level`.
    """
    a, b = mask_ssl.float(), mask_sup.float()
    if a.shape != b.shape:
        raise ValueError(f"masks must cover the same points, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (n_boot, len(a)), generator=g)
    gaps = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = torch.quantile(gaps, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return (a.mean() - b.mean()).item(), lo, hi


def gap_table(masks: dict, eps_lists: dict[str, list[float]], *, attack: str = "pgd", supervised: str = SUPERVISED,
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """SSL-minus-supervised gap with paired bootstrap CIs for one attack: rows model, task, attack, norm, eps, gap,
    lo, hi, n. `masks[(model, task, attack, norm)]` is 0/1 [len(eps), n] over the sweep's eps grid, which is
    `eps_lists[norm]` in any order (a sweep walks it ascending, duplicates once)."""
    rows = []
    for (model, task, atk, norm), m in masks.items():
        if atk != attack or model == supervised:
            continue
        sup = masks[(supervised, task, atk, norm)]
        for j, eps in enumerate(sorted({float(e) for e in eps_lists[norm]})):
            gap, lo, hi = bootstrap_gap(m[j], sup[j], n_boot=n_boot, seed=seed)
            rows.append({"model": model, "task": task, "attack": atk, "norm": norm, "eps": eps, "gap": gap,
                         "lo": lo, "hi": hi, "n": m.shape[1]})
    return pd.DataFrame(rows)


def hierarchical_gap_ci(masks_by_seed: dict, ssl: str | None = None, *, supervised: str = SUPERVISED,
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """acc(SSL) - acc(supervised) over training seeds and test points, with a two-level bootstrap interval.

    `masks_by_seed[s][model]`: 0/1 or bool mask [n] (robust = 1) of `model` trained with seed s, on the same n test
    points for every seed and model (one task, norm and eps). Every seed must hold both `ssl` (default: the one
    model other than `supervised`) and `supervised`; the two are paired by seed (a seed fixes the pretraining
    subset of both) and by point.

    One bootstrap replicate draws n point indices with replacement, then S seeds with replacement, and averages over
    the drawn seeds the gap on the drawn points. The test points are the same for every seed (a crossed design),
    so one draw of points serves all drawn seeds and both models: a hard point is hard for every seed. Points are
    drawn first, with `bootstrap_gap`'s generator calls, so with one seed the interval is `bootstrap_gap`'s, bit
    for bit. With few seeds the seed level's percentile interval is too narrow: where seeds dominate the spread,
    a nominal 95 % interval covered the true gap 64 % of the time with 2 seeds, 77 % with 3, 84 % with 5 and 93 %
    with 10 (simulated, tests/test_stats_seeds.py's model, 300 runs each); state the number of seeds with it.

    Returns a dict: gap (mean over seeds and points), lo, hi (percentile interval at `level`), n_seeds, n (points);
    how much each level contributes, as the exact bootstrap variances of the mean gap when only seeds are resampled
    (points as observed: `var_seed` = population variance of the S per-seed gaps / S) and when only points are
    resampled (all seeds kept: `var_point` = population variance of the n per-point gaps, averaged over seeds, / n),
    and `seed_share` = var_seed / (var_seed + var_point); the point-only interval `lo_points`, `hi_points` (what
    ignoring the seeds would claim); `seed_gaps`, the gap of each seed on the observed points (seed order) and
    `seed_sd`, their standard deviation (ddof 1; 0 with one seed). Gaps are fractions (x100 for points).
    """
    seeds = list(masks_by_seed)
    if not seeds:
        raise ValueError("masks_by_seed is empty: give {training seed: {model: mask}} for at least one seed")
    models = set(masks_by_seed[seeds[0]])
    if ssl is None:
        others = sorted(models - {supervised})
        if len(others) != 1:
            raise ValueError(f"name the SSL model: the masks hold {sorted(models)} besides or without {supervised!r}")
        ssl = others[0]
    missing = {s: [m for m in (ssl, supervised) if m not in masks_by_seed[s]] for s in seeds}
    missing = {s: m for s, m in missing.items() if m}
    if missing:
        raise ValueError(f"every seed needs masks of {ssl!r} and {supervised!r}; missing: {missing}")
    a = torch.stack([torch.as_tensor(masks_by_seed[s][ssl]).float() for s in seeds])  # [S, n]
    b = torch.stack([torch.as_tensor(masks_by_seed[s][supervised]).float() for s in seeds])
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"masks must be [n] on the same points for every seed and model, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    n_seeds, n = a.shape
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)  # as bootstrap_gap draws them
    picks = torch.randint(0, n_seeds, (n_boot, n_seeds), generator=g)
    # per seed and replicate: the gap on the replicate's points [S, n_boot] (one seed at a time: n_boot x n floats)
    d = torch.stack([a[k][idx].mean(1) - b[k][idx].mean(1) for k in range(n_seeds)])
    reps = d[picks, torch.arange(n_boot)[:, None]].mean(1)  # both levels
    by_seed = a.mean(1) - b.mean(1)  # [S], on the observed points
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2])
    lo, hi = torch.quantile(reps, q).tolist()
    lo_p, hi_p = torch.quantile(d.mean(0), q).tolist()  # points resampled, every seed kept
    var_seed = by_seed.double().var(unbiased=False).item() / n_seeds
    var_point = (a - b).double().mean(0).var(unbiased=False).item() / n
    total = var_seed + var_point
    return {"gap": by_seed.mean().item(), "lo": lo, "hi": hi, "n_seeds": n_seeds, "n": n, "var_seed": var_seed,
            "var_point": var_point, "seed_share": var_seed / total if total > 0 else 0.0, "lo_points": lo_p,
            "hi_points": hi_p, "seed_gaps": by_seed.tolist(), "seed_sd": by_seed.std().item() if n_seeds > 1 else 0.0}

def seed_gap_table(masks: dict, runs: dict[str, tuple[str, int]], eps_list: list[float], *, base_seed: int,
                   attack: str = "pgd", norm: str = "linf", supervised: str = SUPERVISED, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """The SSL-minus-supervised gap over training seeds and test points (`hierarchical_gap_ci`) for every SSL
    method trained with several seeds, per task and eps of `eps_list`.

    `masks[(model, task, attack, norm)]`: 0/1 [len(eps), n] as `run_attack_grid` returns them, holding the main
    runs under their method names (training seed `base_seed`) and the seed replicates under their names;
    `runs`: {replicate name: (method, training seed)} (`utils.encoders.replicate_runs`). A method counts when the
    supervised baseline has the same seeds. Rows: model, task, attack, norm, eps, gap, lo, hi (both levels),
    lo_points, hi_points (points only, every seed kept), n_seeds, n, var_seed, var_point, seed_share, seed_sd,
    seed_gaps (the per-seed gaps, ';'-joined, seed order), seeds."""
    by_method: dict[str, dict[int, str]] = {}
    for name, (method, s) in runs.items():
        by_method.setdefault(method, {int(base_seed): method})[int(s)] = name
    grid = sorted({float(e) for e in eps_list})
    tasks = list(dict.fromkeys(t for (_, t, a, nm) in masks if a == attack and nm == norm))
    sup_names = by_method.get(supervised, {})
    rows = []
    for method, names in by_method.items():
        seeds = sorted(s for s in names if s in sup_names)
        if method == supervised or len(seeds) < 2:
            continue
        for task in tasks:
            keys = {s: ((names[s], task, attack, norm), (sup_names[s], task, attack, norm)) for s in seeds}
            if not all(k in masks for pair in keys.values() for k in pair):
                continue
            for j, eps in enumerate(grid):
                res = hierarchical_gap_ci({s: {method: masks[a][j], supervised: masks[b][j]}
                                           for s, (a, b) in keys.items()}, method, supervised=supervised,
                                          n_boot=n_boot, seed=seed)
                rows.append({"model": method, "task": task, "attack": attack, "norm": norm, "eps": eps, **res,
                             "seed_gaps": ";".join(f"{g:.6f}" for g in res["seed_gaps"]),
                             "seeds": ";".join(str(s) for s in seeds)})
    return pd.DataFrame(rows)


def seed_widened(gaps: pd.DataFrame, seed_gaps: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The headline's gap intervals (a `gap_table`: one training seed per encoder, test points resampled) widened
    by the seed-to-seed spread measured on the methods trained with several seeds: per task and eps, the pooled
    sd of a single seed's gap, sqrt(mean seed_sd^2) over those methods, is added in quadrature to each interval's
    normal-equivalent standard error (half-width / z). This assumes every method's gap varies across seeds as much as
    the measured methods' do. Adds columns seed_sd (pooled) and lo_seeds, hi_seeds; cells with no measured spread
    (another task or eps) get NaN."""
    z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor((1 + level) / 2)))
    pooled = np.sqrt(seed_gaps.assign(v=seed_gaps.seed_sd ** 2).groupby(["task", "eps"])["v"].mean())
    pooled = pooled.rename("seed_sd").reset_index()
    out = gaps.copy()
    out["_e"] = out.eps.round(10)
    pooled["_e"] = pooled.eps.round(10)
    out = out.merge(pooled.drop(columns="eps"), on=["task", "_e"], how="left").drop(columns="_e")
    half = np.sqrt(((out.hi - out.lo) / 2) ** 2 + (z * out.seed_sd) ** 2)
    out["lo_seeds"], out["hi_seeds"] = out.gap - half, out.gap + half
    return out


def seed_verdict(seed_gaps: pd.DataFrame, gaps: pd.DataFrame, *, norm: str = "linf", steps: int | None = None,
                 restarts: int | None = None) -> str:
    """What the training seeds add to the verdict, from `seed_gap_table` rows (`norm`, eps > 0) and the headline's
    `gap_table`: how far the gap moves between seeds, how much of its bootstrap variance the seeds and the test
    points each contribute, the seeded methods' cells above / below zero with both levels resampled and with points
    only, and the headline's counts once its intervals are widened by the measured seed spread (`seed_widened`)."""
    sg = seed_gaps[(seed_gaps.norm == norm) & (seed_gaps.eps > 0)] if len(seed_gaps) else seed_gaps
    if sg.empty:
        return ("Training seeds: every encoder was trained (or loaded) once, so the intervals above resample test "
                "points only and say nothing about how much the gap would move with another training seed.")
    n_seeds = int(sg.n_seeds.max())
    methods = list(dict.fromkeys(sg.model))
    budget = "" if steps is None else f", {steps} steps, {restarts} restart(s)"
    lines = [f"Training seeds: {', '.join(methods)} and the supervised baseline were each trained with {n_seeds} "
             f"seeds; every other encoder with one. Measured under {sg.attack.iloc[0]} ({norm}{budget}):"]
    head = gaps[(gaps.norm == norm) & (gaps.eps > 0)]
    wide = seed_widened(head, sg)
    for task, t in sg.groupby("task", sort=False):
        share = 100 * t.var_seed.sum() / max(t.var_seed.sum() + t.var_point.sum(), 1e-300)
        lines.append(
            f"  {task} (n={int(t.n.iloc[0])} points x {n_seeds} seeds): the gap moves between seeds by "
            f"{100 * t.seed_sd.mean():.1f} points (sd, mean over {len(t)} method x eps cells; largest "
            f"{100 * t.seed_sd.max():.1f}). Seeds make up {share:.0f} % of the gap's bootstrap variance (summed "
            f"over those cells), test points {100 - share:.0f} %. With seeds and points resampled, {int((t.lo > 0).sum())}"
            f"/{len(t)} cells lie above zero and {int((t.hi < 0).sum())}/{len(t)} below (points only: "
            f"{int((t.lo_points > 0).sum())} above, {int((t.hi_points < 0).sum())} below).")
        w = wide[wide.task == task].dropna(subset=["seed_sd"])
        if len(w):
            lines.append(
                f"  {task}, the {w.attack.iloc[0]} headline (one seed per encoder) widened by that seed spread "
                f"(pooled sd {100 * w.seed_sd.mean():.1f} "
                f"points): {int((w.lo_seeds > 0).sum())}/{len(w)} cells above zero, {int((w.hi_seeds < 0).sum())}"
                f"/{len(w)} below (test points only: {int((w.lo > 0).sum())} above, {int((w.hi < 0).sum())} below).")
    lines.append(f"  With {n_seeds} seeds the seed level's percentile interval is too narrow (a nominal 95 % covered "
                 f"the true gap about {SEED_COVERAGE.get(n_seeds, 'an unknown share of the time')}"
                 f"{' %' if n_seeds in SEED_COVERAGE else ''} of the time in simulation): read these counts as upper "
                 f"bounds on what the evidence supports.")
    return "\n".join(lines)


# Coverage (%) of the nominal 95 % two-level interval when seeds dominate the spread, by number of seeds (simulated;
# see `hierarchical_gap_ci`).
SEED_COVERAGE = {2: 64, 3: 77, 5: 84, 10: 93}


def seed_spread(table: pd.DataFrame, *, value: str, by: str = "method") -> pd.DataFrame:
    """Seed-to-seed spread of `value` per `by` over the rows' `seed` column: n_seeds, mean, sd (ddof 1), min, max,
    range. Only groups with two seeds or more."""
    g = table.groupby(by, sort=False)[value]
    out = pd.DataFrame({"n_seeds": g.count(), "mean": g.mean(), "sd": g.std(), "min": g.min(), "max": g.max()})
    out["range"] = out["max"] - out["min"]
    return out[out.n_seeds >= 2].reset_index()


def seed_rows(table: pd.DataFrame, runs: dict[str, tuple[str, int]], *, base_seed: int) -> pd.DataFrame:
    """The rows of `table` (a `model` column) that belong to a method trained with several seeds: its main run
    (named after the method; training seed `base_seed`) and its replicates (`runs`: {name: (method, seed)}), with
    the columns method and seed put first; in method order, seeds ascending."""
    seeds = {m: int(base_seed) for m, _ in runs.values()}
    seeds.update({name: int(s) for name, (_, s) in runs.items()})
    method = {**{m: m for m, _ in runs.values()}, **{name: m for name, (m, _) in runs.items()}}
    out = table[table["model"].isin(list(seeds))].copy()
    out.insert(0, "seed", out["model"].map(seeds))
    out.insert(0, "method", out["model"].map(method))
    order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in runs.values()))}
    return out.sort_values(["method", "seed"], key=lambda c: c.map(order) if c.name == "method" else c,
                           kind="stable").reset_index(drop=True)


def seed_spread_sentence(table: pd.DataFrame, *, value: str, what: str, group: Sequence[str] = ()) -> str:
    """One line per `group` value: the seed-to-seed spread of `value` per method (`seed_spread`), beside the spread
    between the methods' first seeds (the differences a one-seed comparison reads as method effects)."""
    lines = []
    groups = table.groupby(list(group), sort=False) if group and len(table) else [((), table)]
    for key, sub in groups:
        sp = seed_spread(sub, value=value) if len(sub) else pd.DataFrame()
        if sp.empty:
            continue
        label = f"{key[0] if isinstance(key, tuple) else key}: " if group else ""
        parts = ", ".join(f"{r.method} {r.mean:.3f} ± {r.sd:.3f} (range {100 * r.range:.1f} points)"
                          for r in sp.itertuples())
        first = sub[sub.seed == table.seed.min()]
        lines.append(f"{label}{what} over {int(sp.n_seeds.max())} training seeds (mean ± sd): {parts}; the "
                     f"largest seed-to-seed range is {100 * sp.range.max():.1f} points, the spread between these "
                     f"methods at one seed {100 * (first[value].max() - first[value].min()):.1f} points.")
    return "\n".join(lines) or f"Every encoder was trained (or loaded) once (`seeds` = 1): no seed-to-seed spread " \
                                f"of the {what}."


def linear_eval_verdict(gaps: pd.DataFrame, *, norm: str = "linf", supervised: str = SUPERVISED) -> str:
    """Does "SSL encoders are more robust under linear evaluation" hold? One sentence per task, from a `gap_table`
    (eps > 0 of `norm`): a method counts as more (less) robust at an eps when its whole interval lies above (below)
    zero; the finding holds when such cells above outnumber those below and the mean gap is positive. The table
    holds one training seed per encoder and its intervals resample test points only (`seed_verdict` adds the
    seeds)."""
    lines = []
    g = gaps[(gaps.norm == norm) & (gaps.eps > 0)]
    for (task, attack), sub in g.groupby(["task", "attack"], sort=False):
        above, below, total = int((sub.lo > 0).sum()), int((sub.hi < 0).sum()), len(sub)
        mean_gap = 100 * sub.gap.mean()
        verdict = ("holds" if above > below and mean_gap > 0 else
                   "does NOT hold" if below >= above else "is mixed")
        lines.append(f"{task} ({attack}): mean SSL-minus-{supervised} gap {mean_gap:+.1f} points over "
                     f"{sub.eps.nunique()} eps x "
                     f"{sub.model.nunique()} methods (one training seed per encoder, n={int(sub.n.iloc[0])} test points resampled); "
                     f"significantly above zero in {above}/{total} cells, below in "
                     f"{below}/{total}. The finding {verdict} in this setting.")
    return "\n".join(lines)


def convergence_summary(conv: pd.DataFrame, flag_name: str = "not_converged") -> str:
    """What the convergence check found, from its rows (one per classifier and budget, with `reference` = the worst
    case the headline rests on): the largest drop from the first budget to the strongest, and which classifiers
    were flagged as not converged."""
    if conv.empty:
        return "No convergence check was run."
    lines = []
    eps = float(conv.eps.iloc[0])
    budgets = conv[["steps", "restarts"]].drop_duplicates().values.tolist()
    first, last = budgets[0], budgets[-1]
    drops = []
    for (model, task), g in conv.groupby(["model", "task"], sort=False):
        a0 = float(g[(g.steps == first[0]) & (g.restarts == first[1])].accuracy.iloc[0])
        a1 = float(g[(g.steps == last[0]) & (g.restarts == last[1])].accuracy.iloc[0])
        ref = float(g.reference.iloc[0])
        flagged = g["flags"].fillna("").str.contains(flag_name).any()
        drops.append((a0 - a1, ref - a1, model, task, flagged))
    worst_step = max(drops)
    worst_ref = max(drops, key=lambda d: d[1])
    flagged = [f"{m}/{t}" for _, _, m, t, f in drops if f]
    lines.append(f"Convergence at eps={eps * 255:g}/255 on n={int(conv.n.iloc[0])} points, APGD-CE from "
                 f"{first[0]} steps x {first[1]} restart(s) to {last[0]} x {last[1]}: accuracy fell by at most "
                 f"{100 * worst_step[0]:.1f} points ({worst_step[2]}/{worst_step[3]}); the strongest budget lies at "
                 f"most {100 * max(worst_ref[1], 0):.1f} points below the worst case over all attacks "
                 f"({worst_ref[2]}/{worst_ref[3]}).")
    lines.append(f"not converged (more than 1 point lower): {', '.join(flagged) if flagged else 'none'} of "
                 f"{len(drops)} classifiers.")
    return "\n".join(lines)


def regimes_verdict(regimes: pd.DataFrame, *, ref_eps: float, supervised: str = SUPERVISED) -> str:
    """Does fine-tuning shrink the SSL-minus-supervised gap? Per task, from notebook 04's regimes table (PGD rows of
    every regime): the mean gap at `ref_eps` per regime, and the mean clean / robust accuracy per regime."""
    lines = []
    at = regimes[regimes.eps.round(8) == round(ref_eps, 8)]
    for t in list(dict.fromkeys(regimes.task)):
        s = at[at.task == t].pivot_table(index="model", columns="regime", values="accuracy")
        gap = (s.drop(supervised) - s.loc[supervised]).mean() * 100
        word = "shrinks" if abs(gap["finetuned"]) < abs(gap["linear"]) else "does NOT shrink"
        lines.append(f"{t} @ eps={ref_eps * 255:.0f}/255: mean SSL-minus-supervised gap linear {gap['linear']:+.1f}, "
                     f"finetuned {gap['finetuned']:+.1f}, adv-finetuned {gap['adv-finetuned']:+.1f} points. "
                     f"Fine-tuning {word} the gap in this setting.")
        clean = regimes[(regimes.task == t) & (regimes.eps == 0)].groupby("regime")["accuracy"].mean()
        rob = at[at.task == t].groupby("regime")["accuracy"].mean()
        lines.append("   mean clean / robust accuracy: " +
                     ", ".join(f"{r} {clean[r]:.3f} / {rob[r]:.3f}" for r in clean.index))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- dense tasks

def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per encoder: clean and strongest-attack (largest eps) mAP@0.5, mIoU (PGD, SegPGD) and pixel accuracy."""
    eps_max = df["eps"].max()
    cols = {}
    for (task, attack, metric), name in {("detection", "pgd", METRIC_MAP): "mAP50",
                                         ("segmentation", "pgd", METRIC_MIOU): "mIoU",
                                         ("segmentation", "segpgd", METRIC_MIOU): "mIoU",
                                         ("segmentation", "segpgd", METRIC_PIXEL_ACC): "pixel_acc"}.items():
        sub = df[(df["task"] == task) & (df["attack"] == attack) & (df["metric"] == metric)]
        piv = sub.pivot_table(index="model", columns="eps", values="accuracy", sort=False)
        if name + " clean" not in cols:
            cols[name + " clean"] = piv[0.0]
        cols[f"{name} {attack} {eps_max * 255:g}/255"] = piv[eps_max]
    return pd.DataFrame(cols).round(3)


# Which curve stands for each task in the gap comparison: (attacks, metric). With several attacks the per-model,
# per-eps minimum counts (the worst case over the attacks run, as robust accuracy takes it).
GAP_CURVES = {"classification": (("pgd",), "accuracy"), "detection": (("pgd",), METRIC_MAP),
              "segmentation": (("pgd", "segpgd"), METRIC_MIOU)}


def classification_rows(path: str | Path, *, task: str) -> pd.DataFrame | None:
    """Notebook 03's linear-evaluation L-inf PGD rows of the in-domain classification `task` (e.g. "fashion_mnist")
    as task "classification", metric "accuracy"; None when the table does not exist (yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    sel = df[(df["attack"] == "pgd") & (df["norm"] == "linf") & (df["task"] == task)
             & (df["regime"] == "linear")].copy()
    sel["task"], sel["metric"] = "classification", "accuracy"
    return sel


def ssl_gaps(df: pd.DataFrame, supervised: str = SUPERVISED, ssl: Sequence[str] | None = None,
             min_clean: float = 0.05) -> pd.DataFrame:
    """SSL-minus-supervised gaps per task and eps for the curves in GAP_CURVES.

    Columns: task, attack, metric, eps, ssl_mean, supervised, gap (ssl_mean - supervised, in the metric's units) and
    rel_gap (the same for the retained fraction metric(eps) / metric(0), which puts tasks with different clean levels
    on one scale; NaN where a model's clean value is below `min_clean`, since a ratio of near-zero numbers is noise).
    `ssl`: the SSL models to average (default: every model but `supervised`). Tasks whose supervised or SSL rows
    are missing are left out."""
    out = []
    for task, (attacks, metric) in GAP_CURVES.items():
        sub = df[(df["task"] == task) & df["attack"].isin(attacks) & (df["metric"] == metric)]
        piv = sub.pivot_table(index="eps", columns="model", values="accuracy", aggfunc="min").sort_index()
        attack = "min(" + ", ".join(attacks) + ")" if len(attacks) > 1 else attacks[0]
        ssl_cols = [c for c in piv.columns if c != supervised and (ssl is None or c in ssl)]
        if supervised not in piv.columns or not ssl_cols:
            continue
        clean = piv.loc[piv.index.min()]
        rel = piv / clean.where(clean >= min_clean)
        for eps in piv.index:
            out.append({"task": task, "attack": attack, "metric": metric, "eps": float(eps),
                        "ssl_mean": piv.loc[eps, ssl_cols].mean(), "supervised": piv.loc[eps, supervised],
                        "gap": piv.loc[eps, ssl_cols].mean() - piv.loc[eps, supervised],
                        "rel_gap": rel.loc[eps, ssl_cols].mean(skipna=False) - rel.loc[eps, supervised]})
    return pd.DataFrame(out, columns=["task", "attack", "metric", "eps", "ssl_mean", "supervised", "gap",
                                      "rel_gap"])


def shared_eps(gaps: pd.DataFrame) -> list[float]:
    """The nonzero eps (in units of 1/255, rounded) at which every task in `gaps` was evaluated, ascending."""
    common = None
    for _, g in gaps.groupby("task"):
        e = {round(v * 255, 6) for v in g["eps"] if v > 0}
        common = e if common is None else common & e
    return sorted(common or [])


def gap_summary(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per task: the gap and the retained-fraction gap averaged over the shared nonzero eps (the area between the
    SSL-mean and supervised curves divided by the number of eps), plus the clean gap."""
    eps255 = shared_eps(gaps)
    rows = []
    for task, g in gaps.groupby("task", sort=False):
        at = g[np.isin(np.round(g["eps"] * 255, 6), eps255)]
        rows.append({"task": task, "metric": g["metric"].iloc[0], "attack": g["attack"].iloc[0],
                     "clean_gap": g.loc[g["eps"].idxmin(), "gap"], "mean_gap": at["gap"].mean(),
                     "mean_rel_gap": at["rel_gap"].mean(skipna=False), "n_eps": len(at)})
    return pd.DataFrame(rows)


def gap_verdict(gaps: pd.DataFrame) -> str:
    """Sentences, computed from `gaps`, on whether the SSL advantage under attack shrinks in the dense tasks compared
    with classification (retained-fraction gap averaged over the shared nonzero eps)."""
    eps255 = shared_eps(gaps)
    if not eps255:
        return "No nonzero eps is shared by the tasks: no comparison is possible."
    summ = gap_summary(gaps).set_index("task")
    eps_txt = ", ".join(f"{e:g}" for e in eps255)
    lines = [f"SSL mean minus supervised, averaged over eps = {eps_txt} (/255):"]
    for t, r in summ.iterrows():
        lines.append(f"  {t:14s} {r['mean_rel_gap']:+.3f} in retained fraction ({r['mean_gap']:+.3f} {r['metric']};"
                     f" clean gap {r['clean_gap']:+.3f})")
    dense_tasks = [t for t in ("detection", "segmentation") if t in summ.index]
    if "classification" not in summ.index:
        lines.append("Notebook 03's table is missing: the dense gaps cannot be set against classification here.")
        return "\n".join(lines)
    cls = summ.loc["classification", "mean_rel_gap"]
    if np.isnan(cls) or any(np.isnan(summ.loc[t, "mean_rel_gap"]) for t in dense_tasks):
        lines.append("A clean metric is too low (< 0.05) for a retained fraction: no verdict in this setting.")
    elif cls <= 0:
        lines.append(f"The SSL encoders show no robustness advantage in classification ({cls:+.3f}), so there is no "
                     f"advantage to shrink in this setting.")
    else:
        for t in dense_tasks:
            d = summ.loc[t, "mean_rel_gap"]
            word = "shrinks" if d < cls else "does not shrink"
            lines.append(f"In {t} the SSL advantage {word} ({d:+.3f} vs {cls:+.3f} in classification).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ accuracy intervals, 01 and 02

def accuracy_interval(accuracy: float, n: int, *, level: float = 0.95, n_boot: int = 4000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy measured on `n` points: resampling the n right/wrong outcomes
    with replacement draws the number right from Binomial(n, accuracy), so the table's (accuracy, n) suffice."""
    n = int(n)
    if n <= 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).binomial(n, min(max(float(accuracy), 0.0), 1.0), size=n_boot) / n
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def quick_probe_verdict(table: pd.DataFrame, *, margin: float = 0.03, supervised: str = SUPERVISED) -> str:
    """Notebook 01's sanity check, from its encoders table (method, probe_accuracy, random_init_accuracy): does every
    SSL encoder beat a randomly initialized encoder of the same architecture by at least `margin`?"""
    rnd = float(table["random_init_accuracy"].iloc[0])
    acc = table.dropna(subset=["probe_accuracy"]).set_index("method")["probe_accuracy"]
    ssl = acc.drop([m for m in (supervised, "random init") if m in acc.index])
    beat = ssl[ssl >= rnd + margin]
    missed = sorted(set(ssl.index) - set(beat.index))
    return (f"random-init encoder: {rnd:.3f}; supervised: {acc.get(supervised, float('nan')):.3f}; SSL "
            f"{ssl.min():.3f}-{ssl.max():.3f}.\n{len(beat)} of {len(ssl)} SSL encoders beat the random-init encoder "
            f"by at least {100 * margin:.0f} points" + (f"; not: {', '.join(missed)}." if missed else "."))


BELOW_PUBLISHED = "below_published"


def published_check(table: pd.DataFrame, published: dict, *, task: str, published_task: str,
                    tolerance: float = 2.0) -> tuple[pd.DataFrame, str]:
    """The guard against the classic silent errors of robustness studies (wrong normalization, missing TF "SAME"
    padding, wrong resize/crop): notebook 02's measured accuracy on `task` beside the published top-1 (`published`,
    in %, measured on `published_task`), keyed by (model, regime), e.g. ("dino", "linear") for a linear probe and
    ("supervised", "own_fc") for the checkpoint's own classifier, or by model alone (every regime of it); a
    shortfall of more than `tolerance` points adds the flag `below_published` to that row. Returns (the table, with
    columns `published_top1` and `shortfall` when there is anything to compare, else unchanged; one sentence)."""
    if not published or task != published_task:
        why = "the encoders were trained here" if not published else f"the in-domain task is {task}"
        return table, f"no published linear top-1 to compare with ({why})."
    out = table.copy()
    regimes = out["regime"] if "regime" in out else pd.Series("linear", index=out.index)
    keys = pd.Series(list(zip(out["model"], regimes)), index=out.index)
    value = keys.map(lambda k: published.get(k, published.get(k[0])))
    rows = (out["task"] == task) & value.notna()
    out["published_top1"] = value.where(rows).astype(float)
    out["shortfall"] = (out["published_top1"] - 100 * out["accuracy"]).where(rows)
    low = rows & (out["shortfall"] > tolerance)
    flags = out["flags"].fillna("") if "flags" in out else pd.Series("", index=out.index)
    out["flags"] = flags.where(~low, (flags + ";" + BELOW_PUBLISHED).str.strip(";"))
    if not low.any():
        return out, (f"every official model is within {tolerance:g} points of (or above) its published top-1 on "
                     f"{task}.")
    detail = ", ".join(f"{model} ({regime}) {100 * acc:.1f} vs {top1:.1f}" for model, regime, acc, top1 in
                       zip(out["model"][low], regimes[low], out["accuracy"][low], out["published_top1"][low]))
    return out, (f"{int(low.sum())} row(s) fall more than {tolerance:g} points below their published top-1 on "
                 f"{task} ({detail}). Likely causes: the normalization inside the model (SimCLR v1 takes "
                 f"unnormalized images, the others ImageNet mean/std), BYOL's TensorFlow 'SAME' padding, the resize and "
                 f"centre crop (short side 256/224 of the crop); a probe fitted on a subset (n_probe_train) or with "
                 f"fewer iterations (probe_epochs) also costs a few points.")


def clean_accuracy_verdict(table: pd.DataFrame, *, supervised: str = SUPERVISED) -> str:
    """Notebook 02's result, one sentence per task from its linear-evaluation table (model, task, accuracy, n):
    supervised against the SSL encoders on clean test images, with the 95 % interval of the supervised accuracy.
    Rows of other regimes (a checkpoint's own classifier, `OWN_FC_REGIME`) are left out."""
    lines = []
    if "regime" in table:
        table = table[table["regime"] == "linear"]
    for task, g in table.groupby("task", sort=False):
        acc = g.set_index("model")["accuracy"]
        n = int(g["n"].iloc[0]) if "n" in g else 0
        ssl, sup = acc.drop(supervised), float(acc[supervised])
        lo, hi = accuracy_interval(sup, n)
        lines.append(f"{task} (n={n}): supervised {sup:.3f} [95 % {lo:.3f}-{hi:.3f}]; SSL mean {ssl.mean():.3f} "
                     f"(best {ssl.idxmax()} {ssl.max():.3f}, worst {ssl.idxmin()} {ssl.min():.3f}); "
                     f"{int((ssl > sup).sum())} of {len(ssl)} SSL encoders beat supervised on clean accuracy.")
    return "\n".join(lines)
