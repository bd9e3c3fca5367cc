"""The README's results section, generated from the result tables (`python -m utils.readme`).

The README quotes the `cpu` profile. Every number (and every phrase that states a direction, such as "holds") in its
section "Results in the `cpu` profile" sits between two HTML comments, invisible on GitHub:

    the gap averages <!-- num:03.gap.fashion_mnist -->−3.0<!-- /num --> points
    the study's finding <!-- txt:03.verdict.fashion_mnist -->does **not** hold<!-- /txt --> in-domain

`num:` holds a number (with its unit where the plural depends on it), `txt:` a generated phrase. Each key names a
field of one small function of this module (`QUOTES`) that computes it from the tables with the same `utils.stats`
functions the notebooks print their verdicts with: the verdict sentences are read back, never recomputed here. The
tables the README quotes are copied from `results/cpu/` (the notebooks' wall times from the runner's record,
`runs/cpu/state.json`) into `figures/tables/`, which is committed, so `--check` and the tests run no notebook.

    python -m utils.readme            # copy the tables into figures/tables/, rewrite the numbers in README.md
    python -m utils.readme --check    # rewrite nothing; exit 1 listing each number the README states differently

A marker never starts a line: on GitHub a line that starts with `<!--` is raw HTML, not Markdown.

Studies layer, above the pipeline: reads tables, provenance and the runner's record only (pandas).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from utils import stats, store
from utils.config import DEFAULT_PROFILE, REPO_ROOT, SUPERVISED, output_dirs
from utils.pipeline import NOTEBOOK_OUTPUTS, list_notebooks
from utils.robustness import BLACKBOX_TOLERANCE, WORST_CASE

README_PROFILE = DEFAULT_PROFILE  # the profile whose numbers the README quotes
README_PATH = REPO_ROOT / "README.md"
FIGURES_DIR = REPO_ROOT / "figures"  # the figures the README shows
TABLES_DIR = FIGURES_DIR / "tables"
SECTION = "## Results in the `cpu` profile"
# The result tables the README quotes (each copied with its provenance), and the runner's record of the notebooks.
TABLES = ["01_encoders.csv", "01_seeds.csv", "02_linear_eval.csv", "02_seeds.csv", "03_gap_ci.csv",
          "03_robustness.csv", "03_seed_gaps.csv", "04_regimes.csv", "04_factors.csv", "05_dense.csv"]
CHAIN_TIMES = "chain_times.csv"

MARKER = re.compile(r"<!-- (?P<kind>num|txt):(?P<key>[\w.\-]+) -->(?P<value>.*?)<!-- /(?P=kind) -->")
METHOD_NAMES = {"supervised": "supervised", "simclr": "SimCLR", "mocov2": "MoCo v2", "byol": "BYOL", "swav": "SwAV",
                "dino": "DINO", "barlowtwins": "Barlow Twins", "vicreg": "VICReg"}
TASK_NAMES = {"fashion_mnist": "Fashion-MNIST", "digits": "digits"}
TASKS = ("fashion_mnist", "digits")


class ReadmeError(ValueError):
    """The README's markers or a verdict sentence cannot be read; the message says what and where."""


class MissingTable(FileNotFoundError):
    """A table the README quotes does not exist; the message names the notebook that writes it."""


def _run_hint(table: str, profile: str = README_PROFILE) -> str:
    """How to make `table`: the notebook that declares it (`NOTEBOOK_OUTPUTS`) and the command that runs it."""
    nb = next((k for k, out in NOTEBOOK_OUTPUTS.items() if table in out.get("results_dir", [])), None)
    if nb is None:
        return f"run the chain: `python -m utils.pipeline --profile {profile}`, then `python -m utils.readme`"
    files = [p.name for p in list_notebooks(REPO_ROOT) if p.name.startswith(nb + "_")]
    return (f"run notebook {nb} ({files[0] if files else nb}): "
            f"`python -m utils.pipeline --profile {profile} --only {nb}`, then `python -m utils.readme`")


# ------------------------------------------------------------------------------------------------- the tables

class Tables:
    """The committed copies in `folder` (default `figures/tables/`): tables and their provenance, read once each, and
    memoized results so that each `utils.stats` sentence is computed once per rewrite."""

    def __init__(self, folder: str | Path = TABLES_DIR):
        self.folder = Path(folder)
        self._memo: dict = {}

    def table(self, name: str) -> pd.DataFrame:
        return self.memo(name, lambda: pd.read_csv(self.path(name, name)))

    def params(self, name: str) -> dict:
        return self.provenance(name)["params"]

    def provenance(self, name: str) -> dict:
        return self.memo(name + ".json", lambda: store.read_json(self.path(name + ".provenance.json", name)))

    def memo(self, key: str, compute: Callable):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def path(self, file: str, table: str) -> Path:
        """`folder/file`; a MissingTable naming the notebook that writes `table` when it does not exist."""
        if not (self.folder / file).is_file():
            raise MissingTable(f"{self.folder / file} is missing: {_run_hint(table)}")
        return self.folder / file


def copy_tables(results_dir: str | Path, runs_dir: str | Path, dest: str | Path = TABLES_DIR,
                profile: str = README_PROFILE, figures_dir: str | Path = FIGURES_DIR) -> list[Path]:
    """Copy the tables the README quotes (with their provenance) from `results_dir` into `dest`, and the runner's
    record of each finished notebook (`runs_dir/state.json`) into `dest/chain_times.csv`: notebook, name, seconds
    (wall time), finished, figures_from_run (every figure that run wrote lies in `figures_dir` now, by the sha256 the
    runner recorded). Checks every source first, then writes; a missing table names the notebook that writes it."""
    results_dir, runs_dir, dest, figures_dir = Path(results_dir), Path(runs_dir), Path(dest), Path(figures_dir)
    for name in TABLES:
        for f in (name, name + ".provenance.json"):
            if not (results_dir / f).is_file():
                raise MissingTable(f"{results_dir / f} is missing: {_run_hint(name, profile)}")
    state_path = runs_dir / "state.json"
    if not state_path.is_file():
        raise MissingTable(f"{state_path} (the runner's record of the notebooks' wall times) is missing: "
                           f"{_run_hint(CHAIN_TIMES, profile)}")
    written = [store.atomic_write_bytes(dest / f, (results_dir / f).read_bytes())
               for name in TABLES for f in (name, name + ".provenance.json")]

    def drawn(outputs: dict[str, str]) -> bool:
        figs = {Path(p).name: sha for p, sha in outputs.items() if p.endswith(".png")}
        return bool(figs) and all((figures_dir / n).is_file() and store.file_sha256(figures_dir / n) == sha
                                  for n, sha in figs.items())

    rows = [{"notebook": nb[:2], "name": nb, "seconds": rec["seconds"], "finished": rec.get("finished", ""),
             "figures_from_run": drawn(rec.get("outputs") or {})}
            for nb, rec in sorted(store.read_json(state_path).items())
            if isinstance(rec, dict) and rec.get("status") == "done" and "seconds" in rec]
    times = pd.DataFrame(rows, columns=["notebook", "name", "seconds", "finished", "figures_from_run"])
    written.append(store.atomic_write_bytes(dest / CHAIN_TIMES, times.to_csv(index=False).encode()))
    return written


# --------------------------------------------------------------------------------------------------- formatting

def _signed(text: str) -> str:
    """'-3.0' -> '−3.0' (the README's minus sign); '+18.1' stays."""
    return "−" + text[1:] if text.startswith("-") else text


def _eps(eps: float) -> str:
    return f"{eps * 255:g}/255"


def _plural(n: int, unit: str) -> str:
    return f"{n:,} {unit}" + ("" if n == 1 else "s")


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _verb(deltas: list[float], up: str, down: str, other: str) -> str:
    return up if all(d > 0 for d in deltas) else down if all(d < 0 for d in deltas) else other


def _parse(source: str, pattern: str, text: str) -> list[dict]:
    """Every match of `pattern` in the sentence `text` that `utils.stats.<source>` printed; none is an error (the
    sentence changed: update the pattern here)."""
    found = [m.groupdict() for m in re.finditer(pattern, text)]
    if not found:
        raise ReadmeError(f"utils.stats.{source} printed a sentence utils.readme cannot read; update its pattern "
                          f"in utils/readme.py:\n{text}")
    return found


def _of_task(rows: list[dict], task: str, source: str) -> dict:
    match = [r for r in rows if r["task"] == task]
    if not match:
        raise ReadmeError(f"utils.stats.{source} says nothing about task {task!r}")
    return match[0]


# ------------------------------------------------------------------- the quoted numbers: one function per finding

def run(t: Tables, notebooks: tuple[str, ...], names: tuple[str, ...]) -> dict:
    """Where the numbers of `notebooks` come from: the commit in their tables' provenance, whether the figures the
    README shows are the ones that run drew, each notebook's wall time in minutes, and the encoder cache."""
    commits = {n: str(t.provenance(n).get("git_commit", "unknown")) for n in names}
    short = {n: c.split("-")[0][:7] + (" (with uncommitted changes)" if c.endswith("-dirty") else "")
             for n, c in commits.items()}
    commit = (f"commit {short[names[0]]}" if len(set(short.values())) == 1 else
              "commits " + ", ".join(f"{c} ({n[:2]})" for n, c in short.items()))
    times = t.table(CHAIN_TIMES).assign(notebook=lambda d: d["notebook"].astype(str).str.zfill(2))
    rec = {nb: times[times.notebook == nb].iloc[0] for nb in notebooks if (times.notebook == nb).any()}
    label = f"{notebooks[0]}-{notebooks[-1]}" if len(notebooks) > 2 else " and ".join(notebooks)
    if len(rec) == len(notebooks) and all(str(r["figures_from_run"]).lower() == "true" for r in rec.values()):
        sentence = f"Figures and tables of {label} come from one run of the `cpu` profile, at {commit}"
    else:
        sentence = (f"The tables of {label} come from a run of the `cpu` profile at {commit}; their figures were "
                    f"drawn by another run (rerun with `make reproduce`)")
    out = {"sentence": sentence}
    for nb in notebooks:  # None: the runner has no finished run of it to time
        m = float(rec[nb]["seconds"]) / 60 if nb in rec else None
        out[f"{nb}.minutes"] = None if m is None else f"{m:.1f}" if m < 10 else f"{m:.0f}"
    if "01" in notebooks:
        enc = t.table("01_encoders.csv").dropna(subset=["arch"])
        k = int(enc["from_cache"].astype(str).str.lower().eq("true").sum())
        out["cache"] = ("encoders from the cache" if k == len(enc) else "encoders trained in that run" if k == 0
                        else f"{k} of {len(enc)} encoders from the cache")
    return out


def chain_minutes(t: Tables) -> str | None:
    """The whole chain's wall time in minutes: the sum of the runner's times of notebooks 01-05 (None when one of
    them has no finished run)."""
    times = t.table(CHAIN_TIMES).assign(notebook=lambda d: d["notebook"].astype(str).str.zfill(2))
    rows = times[times.notebook.isin(["01", "02", "03", "04", "05"])]
    return None if len(rows) < 5 else f"{rows['seconds'].astype(float).sum() / 60:.1f}"


def param(t: Tables, table: str, key: str, fmt: Callable = str) -> str:
    """A knob of the notebook that wrote `table`, from the table's provenance."""
    return fmt(t.params(table)[key])


def quick_probe(t: Tables) -> dict:
    """Notebook 01's `stats.quick_probe_verdict`, read back."""
    text = t.memo("quick_probe", lambda: stats.quick_probe_verdict(t.table("01_encoders.csv"), margin=0.03))
    r = _parse("quick_probe_verdict", r"random-init encoder: (?P<random>[\d.]+); supervised: (?P<supervised>\S+);"
               r" SSL (?P<ssl_min>[\d.]+)-(?P<ssl_max>[\d.]+)\.\n(?P<beat>\d+) of (?P<n_ssl>\d+) SSL", text)[0]
    return {**r, "ssl_range": f"{r['ssl_min']}-{r['ssl_max']}", "beat": f"{r['beat']} of {r['n_ssl']}"}


def clean_accuracy(t: Tables, task: str) -> dict:
    """Notebook 02's `stats.clean_accuracy_verdict` for `task`, read back, and who leads on clean images."""
    text = t.memo("clean", lambda: stats.clean_accuracy_verdict(t.table("02_linear_eval.csv")))
    rows = _parse("clean_accuracy_verdict", r"(?P<task>\S+) \(n=(?P<n>\d+)\): supervised (?P<supervised>[\d.]+)"
                  r" \[95 % [\d.]+-[\d.]+\]; SSL mean [\d.]+ \(best \S+ (?P<best>[\d.]+), worst \S+ "
                  r"(?P<worst>[\d.]+)\); (?P<beat>\d+) of (?P<n_ssl>\d+) SSL", text)
    r = _of_task(rows, task, "clean_accuracy_verdict")
    beat, n = int(r["beat"]), int(r["n_ssl"])
    leader = ("the supervised encoder leads every SSL encoder" if beat == 0 else
              "every SSL encoder leads the supervised one" if beat == n else
              f"{beat} of {n} SSL encoders lead the supervised one")
    return {**r, "ssl_range": f"{r['worst']}-{r['best']}", "leader": leader}


def linear_eval(t: Tables, task: str, attack: str = WORST_CASE) -> dict:
    """Notebook 03's `stats.linear_eval_verdict` (L-inf gap table) for `task` and `attack`, read back."""
    text = t.memo("linear_eval", lambda: stats.linear_eval_verdict(t.table("03_gap_ci.csv"), norm="linf"))
    rows = _parse("linear_eval_verdict", r"(?P<task>\S+) \((?P<attack>[^)]+)\): mean SSL-minus-\S+ gap "
                  r"(?P<gap>[+-][\d.]+) points over \d+ eps x \d+ methods \([^)]*\); significantly above zero in "
                  r"(?P<above>\d+)/(?P<cells>\d+) cells, below in (?P<below>\d+)/\d+\. The finding "
                  r"(?P<verdict>holds|does NOT hold|is mixed) in this setting\.", text)
    r = _of_task([r for r in rows if r["attack"] == attack], task, "linear_eval_verdict")
    words = {"holds": "**does** hold", "does NOT hold": "does **not** hold", "is mixed": "is **mixed**"}
    return {**r, "gap": _signed(r["gap"]), "below": "none" if r["below"] == "0" else r["below"],
            "words": words[r["verdict"]]}


def attack_grid(t: Tables) -> dict:
    """Notebook 03's grid around the verdict: eps range and points (gap table), whether PGD alone reaches the worst
    case's verdicts, how far the worst case lies below PGD, and the masking check as the notebook prints it (the
    largest fraction of points only the black-box Square fooled, against `BLACKBOX_TOLERANCE`)."""
    g = t.table("03_gap_ci.csv")
    e = sorted(g[(g.norm == "linf") & (g.eps > 0)]["eps"].unique())
    out = {"eps_range": f"{e[0] * 255:g}-{e[-1] * 255:g}/255",
           **{f"n.{k}": f"{int(g[g.task == k]['n'].iloc[0]):,}" for k in TASKS}}
    differ = [TASK_NAMES[k] for k in TASKS if linear_eval(t, k, "pgd")["verdict"] != linear_eval(t, k)["verdict"]]
    out["pgd_agrees"] = "reaches the same verdicts" if not differ else f"reaches another verdict on {_names(differ)}"
    rob = t.table("03_robustness.csv")
    sub = rob[(rob.norm == "linf") & (rob.regime == "linear") & rob.attack.isin(["pgd", WORST_CASE])]
    acc = sub.pivot_table(index=["model", "task", "eps"], columns="attack", values="accuracy")
    out["worst_below_pgd"] = f"{100 * (acc['pgd'] - acc[WORST_CASE]).max():.1f}"
    frac = rob[rob.attack == "autoattack"]["square_only"].astype(float)
    worst, over, tol = frac.max(), int((frac > BLACKBOX_TOLERANCE).sum()), f"{100 * BLACKBOX_TOLERANCE:g} %"
    out["square_only"] = (
        "finds no point that only the black-box Square fooled (no sign of gradient masking)" if worst == 0 else
        f"finds at most {100 * worst:.1f} % of the points fooled by the black-box Square alone, under the {tol} flag "
        f"(no sign of gradient masking)" if over == 0 else
        f"finds up to {100 * worst:.1f} % of the points fooled by the black-box Square alone, above the {tol} flag in "
        f"{over} classifier x eps cells: a sign of gradient masking")
    return out


def clean_lead(t: Tables, task: str) -> str:
    """From notebook 03's gap table (worst case, L-inf): how far the supervised encoder starts above (or below) the
    SSL encoders on clean images, and up to which eps the mean gap keeps that sign."""
    g = t.table("03_gap_ci.csv")
    g = g[(g.task == task) & (g.attack == WORST_CASE) & (g.norm == "linf")]
    clean, mean = 100 * g[g.eps == 0]["gap"], g[g.eps > 0].groupby("eps")["gap"].mean().sort_index()
    if (clean < 0).all():
        who, lo, hi, sign = "the supervised encoder starts", -clean.max(), -clean.min(), -1
    elif (clean > 0).all():
        who, lo, hi, sign = "the SSL encoders start", clean.min(), clean.max(), 1
    else:
        return _signed(f"on clean images the SSL encoders lie {clean.min():+.1f} to ") + \
            _signed(f"{clean.max():+.1f} points from the supervised one")
    run_ = 0  # how many eps, from the smallest, keep the clean lead's sign
    while run_ < len(mean) and mean.iloc[run_] * sign > 0:
        run_ += 1
    lead = (f"loses its lead from {_eps(mean.index[0])}" if run_ == 0 else
            f"keeps its lead up to {_eps(mean.index[run_ - 1])}")
    return f"{who} {lo:.1f}-{hi:.1f} points higher on clean images and {lead}"


def seed_spread01(t: Tables) -> dict:
    """Notebook 01's `stats.seed_spread_sentence` on its seeds table, read back: the largest seed-to-seed range of
    the quick probe and the spread between methods at one seed (points)."""
    text = t.memo("seeds01", lambda: stats.seed_spread_sentence(t.table("01_seeds.csv"), value="probe_accuracy",
                                                                what="quick probe accuracy"))
    return _parse("seed_spread_sentence", r"over (?P<n>\d+) training seeds .*; the largest seed-to-seed range is "
                  r"(?P<range>[\d.]+) points, the spread between these methods at one seed (?P<between>[\d.]+) "
                  r"points\.", text)[0]


def seeds03(t: Tables, task: str) -> dict:
    """Notebook 03's `stats.seed_verdict` (the seed table beside the worst-case headline), read back for `task`:
    the seeded methods, seeds, seed-to-seed sd of the gap, the seeds' share of its variance, and the headline's
    counts once widened by the seed spread."""
    def verdict():
        g = t.table("03_gap_ci.csv")
        return stats.seed_verdict(t.table("03_seed_gaps.csv"), g[g.attack == WORST_CASE])
    text = t.memo("seeds03", verdict)
    head = _parse("seed_verdict", r"Training seeds: (?P<methods>.+) and the supervised baseline were each trained "
                  r"with (?P<n>\d+) seeds", text)[0]
    rows = _parse("seed_verdict", r"  (?P<task>\S+) \(n=\d+ points x \d+ seeds\): the gap moves between seeds "
                  r"by (?P<sd>[\d.]+) points \(sd, mean over \d+ method x eps cells; largest (?P<sd_max>[\d.]+)\)\. "
                  r"Seeds make up (?P<share>\d+) % of the gap's bootstrap variance", text)
    wide = _parse("seed_verdict", r"  (?P<task>\S+), the \S+ headline \(one seed per encoder\) widened by that seed "
                  r"spread \(pooled sd [\d.]+ points\): (?P<above>\d+)/(?P<cells>\d+) cells above zero, "
                  r"(?P<below>\d+)/\d+ below \(test points only: (?P<above_points>\d+) above, "
                  r"(?P<below_points>\d+) below\)", text)
    r = {**_of_task(rows, task, "seed_verdict"), **_of_task(wide, task, "seed_verdict")}
    names = [METHOD_NAMES.get(m, m) for m in head["methods"].split(", ")]
    return {**r, "n": head["n"], "methods": _names([METHOD_NAMES[SUPERVISED], *names])}


def convergence(t: Tables) -> dict:
    """Notebook 03's `stats.convergence_summary` on its robustness table's convergence rows, read back, with the
    schedule of its parameters ('10 -> 50 -> 100 steps')."""
    def summary():
        rob = t.table("03_robustness.csv")
        return stats.convergence_summary(rob[rob["attack"].str.endswith("(convergence)")])
    r = _parse("convergence_summary", r"Convergence at eps=(?P<eps>[\d.]+)/255 on n=(?P<n>\d+) points, \S+ from "
               r"\d+ steps x \d+ restart\(s\) to \d+ x \d+: accuracy fell by at most (?P<max_drop>-?[\d.]+) points"
               r" \([^)]*\); the strongest budget lies at most (?P<below_worst>[\d.]+) points below the worst "
               r"case over all attacks \([^)]*\)\.\nnot converged \(more than 1 point lower\): (?P<flagged>.*) "
               r"of (?P<total>\d+) classifiers\.", t.memo("convergence", summary))[0]
    flagged = [] if r["flagged"] == "none" else r["flagged"].split(", ")
    by_task: dict[str, list[str]] = {}
    for f in flagged:
        m, task = f.split("/")
        by_task.setdefault(task, []).append(METHOD_NAMES.get(m, m))
    out = {**r, "eps": f"{r['eps']}/255", "flagged": str(len(flagged)),
           "which": "; ".join(f"{_names(ms)} on {TASK_NAMES.get(k, k)}" for k, ms in by_task.items()) or "none"}
    plan = t.params("03_robustness.csv")["convergence_schedule"]
    for col, unit in ((0, "step"), (1, "restart")):
        vals = list(dict.fromkeys(s[col] for s in plan))
        out[unit + "s"] = " -> ".join(str(v) for v in vals) + f" {unit}" + ("" if vals == [1] else "s")
    return out


def regimes(t: Tables) -> dict:
    """Notebook 04's `stats.regimes_verdict`, read back: the gap per task and regime, whether fine-tuning shrinks
    it, and the mean clean and robust accuracy, linear -> adversarially fine-tuned."""
    ref_eps = t.params("04_regimes.csv")["ref_eps"]
    text = t.memo("regimes", lambda: stats.regimes_verdict(t.table("04_regimes.csv"), ref_eps=ref_eps))
    rows = _parse("regimes_verdict", r"(?P<task>\S+) @ eps=\d+/255: mean SSL-minus-\S+ gap linear "
                  r"(?P<linear>[+-][\d.]+), finetuned (?P<finetuned>[+-][\d.]+), adv-finetuned "
                  r"(?P<adv>[+-][\d.]+) points\. Fine-tuning (?P<word>shrinks|does NOT shrink) the gap in "
                  r"this setting\.\n +mean clean / robust accuracy: (?P<accuracies>.*)", text)
    out, gains, shrinks = {}, [], []
    for k in TASKS:
        r = _of_task(rows, k, "regimes_verdict")
        acc = {a["regime"]: a for a in _parse("regimes_verdict", r"(?P<regime>[\w-]+) (?P<clean>[\d.]+) / "
                                                                 r"(?P<robust>[\d.]+)", r["accuracies"])}
        for regime, g in (("linear", r["linear"]), ("finetuned", r["finetuned"]), ("adv-finetuned", r["adv"])):
            out[f"gap.{k}.{regime}"] = _signed(g)
        for col in ("clean", "robust"):
            out[f"{col}.{k}"] = f"{acc['linear'][col]} → {acc['adv-finetuned'][col]}"
        gains.append(float(acc["adv-finetuned"]["robust"]) - float(acc["linear"]["robust"]))
        shrinks += [TASK_NAMES[k]] if r["word"] == "shrinks" else []
    out["shrinks"] = ("shrinks the gap in both tasks, as the study found" if len(shrinks) == len(TASKS) else
                      "does **not** shrink the gap in either task, unlike the study" if not shrinks else
                      f"shrinks the gap on {_names(shrinks)} only")
    out["adv_gain"] = _verb(gains, "buys robustness in both tasks", "costs robustness in both tasks",
                            "buys robustness in one task only")
    return out


def factors(t: Tables) -> dict:
    """Notebook 04's four-factor table (no verdict sentence there): per ablation method, the change from a factor's
    base level (its first) to its last, in points, with a verb when all methods agree; and the augmentation whose
    removal costs the most mean clean accuracy."""
    f = t.table("04_factors.csv")
    out = {"methods": _names([METHOD_NAMES.get(m, m) for m in t.params("04_factors.csv")["ablation_methods"]])}
    for factor, name, cols, plural in (("architecture", "arch", ("clean", "robust"), False),
                                       ("batch size", "batch", ("robust",), True)):
        sub = f[f.factor == factor]
        levels = list(dict.fromkeys(sub["level"].astype(str)))
        out[f"{name}.levels"] = levels[-1] if name == "arch" else f"{levels[0]} → {levels[-1]}"
        for col in cols:
            at = {(m, str(lv)): v for m, lv, v in zip(sub["method"], sub["level"], sub[col])}
            d = [100 * (at[(m, levels[-1])] - at[(m, levels[0])]) for m in dict.fromkeys(sub["method"])]
            verb = _verb(d, *(("raise", "lower", "change") if plural else ("raises", "lowers", "changes")))
            out[f"{name}.{col}"] = f"{verb} {col} accuracy ({_names([_signed(f'{x:+.1f}') for x in d])} points)"
    mean = f[f.factor == "augmentation"].groupby("level", sort=False)["clean"].mean()
    worst = mean.drop(mean.index[0]).idxmin()
    out["aug_name"], out["aug_clean"] = worst.lstrip("−-"), f"{mean.iloc[0]:.3f} → {mean[worst]:.3f}"
    return out


def dense(t: Tables) -> dict:
    """Notebook 05: the supervised encoder's mAP@0.5 and mIoU (`stats.headline_table`; mIoU the lower of PGD and
    SegPGD, the worst case its gap figure uses), clean and at the largest eps, the SSL range there, and where the
    supervised encoder ranks; the retained-fraction gaps (`stats.gap_summary` of `stats.ssl_gaps` over the dense rows
    and notebook 03's classification rows, as the notebook builds them); and `stats.gap_verdict`'s decision."""
    h = stats.headline_table(t.table("05_dense.csv"))
    cols = {("map", "clean"): h["mAP50 clean"], ("miou", "clean"): h["mIoU clean"],
            ("map", "attacked"): h[[c for c in h.columns if c.startswith("mAP50 pgd")][0]],
            ("miou", "attacked"): h[[c for c in h.columns if c.startswith("mIoU ") and "clean" not in c]].min(axis=1)}
    out = {f"{k}.{when}": f"{c[SUPERVISED]:.3f}" for (k, when), c in cols.items()}
    for k in ("map", "miou"):
        ssl = cols[(k, "attacked")].drop(SUPERVISED)
        out[f"{k}.ssl"] = f"{ssl.min():.3f}-{ssl.max():.3f}"
    for when, top, bottom, other in (("clean", "starts highest", "starts lowest", "starts at"),
                                     ("attacked", "stays highest", "falls lowest", "falls to")):
        pair = [cols[("map", when)], cols[("miou", when)]]
        out[f"rank_{when}"] = (top if all(c.idxmax() == SUPERVISED for c in pair) else
                               bottom if all(c.idxmin() == SUPERVISED for c in pair) else other)
    df = t.table("05_dense.csv")
    out["eps_max"] = _eps(df["eps"].max())
    cls = stats.classification_rows(t.path("03_robustness.csv", "03_robustness.csv"), task="fashion_mnist")
    gaps = stats.ssl_gaps(pd.concat([df, cls], ignore_index=True),
                          ssl=[m for m in t.params("05_dense.csv")["methods"] if m != SUPERVISED])
    out["shared_eps"] = ", ".join(f"{e:g}" for e in stats.shared_eps(gaps))
    for task, r in stats.gap_summary(gaps).set_index("task").iterrows():
        out[f"rel_gap.{task}"] = _signed(f"{r['mean_rel_gap']:+.3f}")
    text = stats.gap_verdict(gaps)
    words = {m["task"]: m["word"] for m in re.finditer(r"In (?P<task>\w+) the SSL advantage "
                                                       r"(?P<word>shrinks|does not shrink) \(", text)}
    if "no robustness advantage in classification" in text:
        out["verdict"], out["consequence"] = (
            "the SSL encoders show no robustness advantage in classification to begin with",
            ", so there is nothing to shrink and that finding cannot be tested in this setting")
    elif words and all(w == "does not shrink" for w in words.values()):
        out["verdict"], out["consequence"] = ("it is **larger** than in classification",
                                              ", so that finding does not reproduce in this setting")
    elif words and all(w == "shrinks" for w in words.values()):
        out["verdict"], out["consequence"] = "it is **smaller** than in classification too", ", as the study found"
    elif words:
        out["verdict"] = f"it shrinks in {_names([k for k, w in words.items() if w == 'shrinks'])} only"
        out["consequence"] = ", so that finding reproduces in part"
    else:
        raise ReadmeError(f"utils.stats.gap_verdict gave no verdict utils.readme can read:\n{text}")
    return out


def _quote(fn: Callable, field: str | None = None, **kw) -> Callable[[Tables], str]:
    """The README text of one marker: `fn(tables, **kw)`, or its `field`; memoized per Tables."""
    def quote(t: Tables) -> str:
        out = t.memo(f"{fn.__name__}{sorted(kw.items())}", lambda: fn(t, **kw))
        value = out if field is None else out[field]
        if value is None:
            raise MissingTable(f"{t.folder} gives no {field} (no finished run in {CHAIN_TIMES}): "
                               f"{_run_hint(CHAIN_TIMES)}")
        return value
    return quote


_P01, _P03, _P04, _P05 = "01_encoders.csv", "03_gap_ci.csv", "04_regimes.csv", "05_dense.csv"
_RUN01 = dict(notebooks=("01", "02", "03"), names=(_P01, "02_linear_eval.csv", _P03))
_RUN04 = dict(notebooks=("04", "05"), names=(_P04, "04_factors.csv", _P05))

# key -> function of the tables giving the README's text at that marker
QUOTES: dict[str, Callable[[Tables], str]] = {
    "01-03.run": _quote(run, "sentence", **_RUN01), "04-05.run": _quote(run, "sentence", **_RUN04),
    **{f"{nb}.minutes": _quote(run, f"{nb}.minutes", **_RUN01) for nb in ("01", "02", "03")},
    **{f"{nb}.minutes": _quote(run, f"{nb}.minutes", **_RUN04) for nb in ("04", "05")},
    "chain.minutes": _quote(chain_minutes),
    "01.cache": _quote(run, "cache", **_RUN01),
    "01.arch": _quote(param, table=_P01, key="arch"),
    "01.n_pretrain": _quote(param, table=_P01, key="n_pretrain", fmt="{:,}".format),
    "01.epochs": _quote(param, table=_P01, key="epochs", fmt=lambda v: _plural(v, "epoch")),
    **{f"01.{k}": _quote(quick_probe, field) for k, field in (("random_init", "random"), ("ssl_range", "ssl_range"),
                                                              ("supervised", "supervised"), ("beat", "beat"))},
    **{f"02.{field}.{k}": _quote(clean_accuracy, field, task=k) for k in TASKS
       for field in ("supervised", "ssl_range", "leader")},
    "03.n_ensemble": _quote(param, table=_P03, key="n_ensemble"),
    "03.steps": _quote(param, table=_P03, key="steps", fmt=lambda v: _plural(v, "step")),
    "03.restarts": _quote(param, table=_P03, key="restarts", fmt=lambda v: _plural(v, "restart")),
    **{f"03.{field}": _quote(attack_grid, field) for field in ("eps_range", "n.fashion_mnist", "n.digits", "pgd_agrees",
                                                               "worst_below_pgd", "square_only")},
    **{f"03.{field}.{k}": _quote(linear_eval, field, task=k) for k in TASKS
       for field in ("gap", "above", "below", "cells")},
    **{f"03.verdict.{k}": _quote(linear_eval, "words", task=k) for k in TASKS},
    **{f"03.gap_pgd.{k}": _quote(linear_eval, "gap", task=k, attack="pgd") for k in TASKS},
    "03.clean_lead.fashion_mnist": _quote(clean_lead, task="fashion_mnist"),
    "01.seed_range": _quote(seed_spread01, "range"), "01.seed_between": _quote(seed_spread01, "between"),
    "03.seeds.methods": _quote(seeds03, "methods", task="fashion_mnist"),
    "03.seeds.n": _quote(seeds03, "n", task="fashion_mnist"),
    **{f"03.seeds.{field}.{k}": _quote(seeds03, field, task=k) for k in TASKS
       for field in ("sd", "sd_max", "share", "above", "below", "cells", "above_points", "below_points")},
    **{f"03.conv.{field}": _quote(convergence, field) for field in ("eps", "n", "flagged", "total", "which",
                                                                    "max_drop", "below_worst", "steps", "restarts")},
    "04.finetune_epochs": _quote(param, table=_P04, key="finetune_epochs", fmt=lambda v: _plural(v, "epoch")),
    "04.adv_eps": _quote(param, table=_P04, key="adv_eps", fmt=_eps),
    "04.adv_steps": _quote(param, table=_P04, key="adv_steps", fmt=lambda v: _plural(v, "step")),
    "04.ref_eps": _quote(param, table=_P04, key="ref_eps", fmt=_eps),
    **{f"04.{field}": _quote(regimes, field) for field in
       ["shrinks", "adv_gain"] + [f"{c}.{k}" for c in ("clean", "robust") for k in TASKS] +
       [f"gap.{k}.{r}" for k in TASKS for r in ("linear", "finetuned", "adv-finetuned")]},
    "04.n_ablation": _quote(param, table="04_factors.csv", key="n_ablation", fmt="{:,}".format),
    **{f"04.{field}": _quote(factors, field) for field in ("methods", "arch.levels", "arch.clean", "arch.robust",
                                                           "aug_name", "aug_clean", "batch.levels", "batch.robust")},
    "05.canvas": _quote(param, table=_P05, key="canvas", fmt=lambda v: f"{v}x{v}"),
    "05.steps": _quote(param, table=_P05, key="steps", fmt=lambda v: _plural(v, "step")),
    **{f"05.{field}": _quote(dense, field) for field in
       ("rank_clean", "rank_attacked", "map.clean", "miou.clean", "map.attacked", "miou.attacked", "map.ssl",
        "miou.ssl", "eps_max", "shared_eps", "rel_gap.classification", "rel_gap.detection", "rel_gap.segmentation",
        "verdict", "consequence")},
}


# ------------------------------------------------------------------------------------------------ the README text

def _section(text: str) -> tuple[int, int]:
    """Character offsets of the results section: from its heading to the next `## ` heading (or the end)."""
    start = text.find(SECTION + "\n")
    if start < 0:
        raise ReadmeError(f"the README has no section {SECTION!r}")
    nxt = text.find("\n## ", start + len(SECTION))
    return start, (len(text) if nxt < 0 else nxt + 1)


def markers(text: str) -> list[re.Match]:
    """The markers of the results section; refuses an unknown key and a marker that starts a line."""
    start, end = _section(text)
    found = list(MARKER.finditer(text, start, end))
    unknown = sorted({m["key"] for m in found} - set(QUOTES))
    if unknown:
        raise ReadmeError(f"README markers with no function in utils.readme.QUOTES: {unknown}")
    first = [ln for ln in text[start:end].splitlines() if ln.lstrip().startswith(("<!-- num:", "<!-- txt:"))]
    if first:
        raise ReadmeError(f"a README line starts with a marker (GitHub shows such a line as raw HTML): {first[0]!r}")
    return found


def render(text: str, tables: Tables) -> tuple[str, list[tuple[str, str, str]]]:
    """The README `text` with every marker of its results section filled from `tables`, and the markers whose text
    changed as (key, README's text, the tables' text). Everything outside the markers is kept byte for byte."""
    start, end = _section(text)
    found = markers(text)
    values = {m["key"]: QUOTES[m["key"]](tables) for m in found}
    changed = [(m["key"], m["value"], values[m["key"]]) for m in found if m["value"] != values[m["key"]]]
    filled = MARKER.sub(lambda m: f"<!-- {m['kind']}:{m['key']} -->{values[m['key']]}<!-- /{m['kind']} -->",
                        text[start:end])
    return text[:start] + filled + text[end:], changed


def check(readme: str | Path = README_PATH, tables_dir: str | Path = TABLES_DIR) -> list[tuple[str, str, str]]:
    """Each number whose README text differs from the tables: (key, README's text, the tables' text)."""
    return render(Path(readme).read_text(), Tables(tables_dir))[1]


def rewrite(readme: str | Path = README_PATH, tables_dir: str | Path = TABLES_DIR) -> list[tuple[str, str, str]]:
    """Fill the README's numbers from the tables (atomically; untouched when nothing changed); returns the changes."""
    readme = Path(readme)
    text = readme.read_text()
    new, changed = render(text, Tables(tables_dir))
    if new != text:
        store.atomic_write_bytes(readme, new.encode())
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.readme", description=(
        "Copy the result tables the README quotes from results/<profile>/ into figures/tables/ and rewrite the "
        "numbers of the README's results section from them; --check compares without writing."))
    ap.add_argument("--profile", default=README_PROFILE, help="the profile the README quotes (cpu only)")
    ap.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 listing each number the README "
                                                         "states differently from figures/tables/")
    ap.add_argument("--readme", default=str(README_PATH), help="the README file (default: the repository's)")
    ap.add_argument("--tables", default=str(TABLES_DIR), help="the committed tables (default: figures/tables/)")
    args = ap.parse_args(argv)
    if args.profile != README_PROFILE:
        print(f"the README quotes the {README_PROFILE!r} profile only, not {args.profile!r}", file=sys.stderr)
        return 2
    try:
        if args.check:
            changed = check(args.readme, args.tables)
            for key, old, new in changed:
                print(f"{key}: README says {old!r}, the tables give {new!r}")
            if changed:
                print(f"{len(changed)} number(s) in {args.readme} differ from {args.tables}: run "
                      f"`python -m utils.readme`", file=sys.stderr)
                return 1
            print(f"{args.readme} agrees with {args.tables}")
            return 0
        dirs = output_dirs(args.profile)
        copy_tables(dirs["results_dir"], dirs["runs_dir"], args.tables, args.profile)
        changed = rewrite(args.readme, args.tables)
        for key, old, new in changed:
            print(f"{key}: {old!r} -> {new!r}")
        print(f"{args.readme}: {len(changed)} number(s) rewritten from {args.tables}")
        return 0
    except (MissingTable, ReadmeError) as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
