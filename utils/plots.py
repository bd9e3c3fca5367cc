"""Figures, drawn from tensors or result tables only (so a figure can be redrawn without recomputing).

Every function returns the matplotlib Figure; `save_figure` writes it atomically as PNG.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from utils.config import METRIC_MAP, METRIC_MIOU
from utils.stats import accuracy_interval
from utils.store import atomic_save

SUPERVISED = "supervised"


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save `fig` as PNG (dpi from rcParams) atomically and return the path."""
    return atomic_save(lambda tmp: fig.savefig(tmp, format="png"), path)


def show_image(ax, img, **kw) -> None:
    """One image [C, H, W] (or [H, W]) in [0, 1] on `ax`: one channel in inverted grey (dark ink on white, as
    Fashion-MNIST is drawn), three channels in colour."""
    img = np.asarray(img.detach().cpu().float() if hasattr(img, "detach") else img)
    if img.ndim == 3 and img.shape[0] == 3:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), **kw)
    else:
        ax.imshow(img[0] if img.ndim == 3 else img, cmap="gray_r", vmin=0, vmax=1, **kw)


def sample_grid(x, y, classes: list[str], per_class: int = 8, title: str | None = None, max_classes: int = 10):
    """Grid of `per_class` images per class: rows = the first `max_classes` classes. x [N,C,H,W] in [0,1], y [N]."""
    x, y = np.asarray(x), np.asarray(y)
    classes = classes[:max_classes]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95), squeeze=False)
    for r, name in enumerate(classes):
        idx = np.flatnonzero(y == r)[:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                show_image(ax, x[idx[c]])
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, y=0.93)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def method_palette(methods: list[str]) -> dict[str, tuple]:
    """One colour per method; the supervised baseline is always black so it stands apart."""
    ssl = [m for m in methods if m != SUPERVISED]
    colors = dict(zip(ssl, sns.color_palette("colorblind", len(ssl))))
    colors[SUPERVISED] = (0.0, 0.0, 0.0)
    return colors


def curves_vs_eps(df: pd.DataFrame, *, x: str = "eps", y: str = "accuracy", hue: str = "model", col: str | None = None,
                  title: str | None = None, eps_in_255: bool = True, ylabel: str = "robust accuracy"):
    """Lines of `y` against eps, one per `hue` value (supervised dashed black), one panel per `col` value."""
    cols = list(dict.fromkeys(df[col])) if col else [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False, sharey=True)
    palette = method_palette(list(dict.fromkeys(df[hue])))
    for ax, cv in zip(axes[0], cols):
        sub = df if cv is None else df[df[col] == cv]
        for m, g in sub.groupby(hue, sort=False):
            g = g.sort_values(x)
            xs = g[x] * (255 if eps_in_255 and g["norm"].iloc[0] == "linf" else 1) if "norm" in g else g[x]
            ax.plot(xs, g[y], marker="o", ms=3, lw=2.4 if m == SUPERVISED else 1.4,
                    ls="--" if m == SUPERVISED else "-", color=palette.get(m), label=m)
        norm = sub["norm"].iloc[0] if "norm" in sub and len(sub) else ""
        ax.set_xlabel("eps (x/255)" if eps_in_255 and norm == "linf" else "eps")
        ax.set_title(str(cv) if cv is not None else "")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(loc="upper right", fontsize=8, frameon=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_bars(df: pd.DataFrame, *, y: str = "accuracy", x: str = "task", hue: str = "model",
                  title: str | None = None, ylabel: str = "clean accuracy"):
    """Grouped bars of accuracy per task, one bar per model (supervised in black), value printed on each bar."""
    models = list(dict.fromkeys(df[hue]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models) * df[x].nunique() / 2, 3.4))
    sns.barplot(df, x=x, y=y, hue=hue, hue_order=models, palette=method_palette(models), ax=ax)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7, rotation=90, padding=2)
    lo = max(0.0, float(df[y].min()) - 0.15)
    ax.set_ylim(lo, 1.0)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _eps_label(eps: float, norm: str) -> str:
    return f"{eps * 255:.0f}/255" if norm == "linf" else f"{eps:g}"


def robust_curves_grid(df: pd.DataFrame, *, tasks: list[str], attacks: list[tuple[str, str]], title: str | None = None):
    """Robust accuracy vs eps: rows = tasks, columns = (attack, norm) pairs; supervised dashed black."""
    fig, axes = plt.subplots(len(tasks), len(attacks), figsize=(3.0 * len(attacks), 2.7 * len(tasks)),
                             squeeze=False, sharey=True)
    palette = method_palette(list(dict.fromkeys(df["model"])))
    for r, task in enumerate(tasks):
        for c, (attack, norm) in enumerate(attacks):
            ax = axes[r, c]
            sub = df[(df.task == task) & (df.attack == attack) & (df.norm == norm)]
            for m, g in sub.groupby("model", sort=False):
                g = g.sort_values("eps")
                xs = g["eps"] * (255 if norm == "linf" else 1)
                sup = m == SUPERVISED
                ax.plot(xs, g["accuracy"], marker="o", ms=2.5, lw=2.6 if sup else 1.2, ls="--" if sup else "-",
                        color=palette[m], label=m, zorder=3 if sup else 2)
            steps = int(sub["steps"].iloc[0]) if len(sub) else 0
            ax.set_title(f"{task}\n{attack} {norm}, {steps} steps", fontsize=9)
            ax.set_xlabel("eps (x/255)" if norm == "linf" else "eps (L2)", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
        axes[r, 0].set_ylabel("robust accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.0), frameon=False)
    return fig


def robustness_heatmap(df: pd.DataFrame, *, tasks: list[str], attack: str = "pgd", norm: str = "linf",
                       title: str | None = None):
    """Heatmaps of robust accuracy, method (rows, supervised last) x eps (columns), one panel per task."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = df[(df.task == task) & (df.attack == attack) & (df.norm == norm)]
        piv = sub.pivot_table(index="model", columns="eps", values="accuracy")
        order = [m for m in dict.fromkeys(sub["model"]) if m != SUPERVISED] + [SUPERVISED]
        piv = piv.reindex([m for m in order if m in piv.index])
        piv.columns = [_eps_label(e, norm) for e in piv.columns]
        sns.heatmap(piv, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar=False, ax=ax,
                    annot_kws={"fontsize": 8})
        ax.axhline(len(piv) - 1, color="white", lw=2)
        ax.set_title(f"{task}: {attack} {norm}", fontsize=10)
        ax.set_xlabel("eps")
        ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gap_with_ci(gaps: pd.DataFrame, *, title: str | None = None, col: str = "task"):
    """SSL-minus-supervised robust accuracy gap (points) vs eps with its bootstrap CI, one line per SSL method.

    `gaps` columns: model, eps, norm, gap, lo, hi and `col` (one panel per value)."""
    cols = list(dict.fromkeys(gaps[col]))
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.4), squeeze=False, sharey=True)
    palette = method_palette(list(dict.fromkeys(gaps["model"])) + [SUPERVISED])
    for ax, cv in zip(axes[0], cols):
        sub = gaps[gaps[col] == cv]
        for m, g in sub.groupby("model", sort=False):
            g = g.sort_values("eps")
            xs = g["eps"] * (255 if g["norm"].iloc[0] == "linf" else 1)
            ax.plot(xs, 100 * g["gap"], marker="o", ms=3, lw=1.3, color=palette[m], label=m)
            ax.fill_between(xs, 100 * g["lo"], 100 * g["hi"], color=palette[m], alpha=0.12)
        ax.axhline(0, color="black", lw=1.2, ls="--")
        ax.set_title(str(cv), fontsize=10)
        ax.set_xlabel("eps (x/255)" if sub["norm"].iloc[0] == "linf" else "eps")
    axes[0, 0].set_ylabel("SSL − supervised (points)")
    axes[0, -1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_spread(table: pd.DataFrame, *, value: str = "probe_accuracy", title: str | None = None,
                ylabel: str = "quick probe accuracy"):
    """One dot per training seed of each method (main seed ringed), on one axis: how far retraining moves `value`.
    `table` columns: method, seed, `value`."""
    methods = list(dict.fromkeys(table["method"]))
    palette = method_palette(methods)
    first = table.groupby("method")["seed"].transform("min") == table["seed"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.0 * len(methods), 3.2))
    for i, m in enumerate(methods):
        g = table[table.method == m]
        xs = i + np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.array([i])
        ax.scatter(xs, g[value], s=36, color=palette[m], edgecolor=np.where(first[g.index], "black", "none"),
                   linewidth=1.2, zorder=3)
        ax.hlines(g[value].mean(), i - 0.25, i + 0.25, color=palette[m], lw=1.5)
        ax.annotate(f"range {100 * (g[value].max() - g[value].min()):.1f} pt", (i, g[value].min()),
                    xytext=(0, -12), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(methods)), methods)
    pad = max(0.01, float(table[value].max() - table[value].min()))
    ax.set_ylim(float(table[value].min()) - pad, float(table[value].max()) + pad)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def seed_gaps(seed_gaps: pd.DataFrame, *, title: str | None = None):
    """The SSL-minus-supervised gap (points) vs eps per seeded SSL method (`stats.seed_gap_table` rows): one small
    dot per training seed, the mean over seeds, the interval resampling test points only (thin, grey) and the one
    resampling seeds and points (thick, the method's colour); one panel per task."""
    tasks = list(dict.fromkeys(seed_gaps["task"]))
    methods = list(dict.fromkeys(seed_gaps["model"]))
    palette = method_palette(methods + [SUPERVISED])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.5), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        sub = seed_gaps[seed_gaps.task == task]
        eps_values = sorted(sub["eps"].unique())
        pos = {e: k for k, e in enumerate(eps_values)}
        for j, m in enumerate(methods):
            shift = (j - (len(methods) - 1) / 2) * 0.22
            for r in sub[sub.model == m].itertuples():
                x = pos[r.eps] + shift
                ax.vlines(x, 100 * r.lo, 100 * r.hi, color=palette[m], lw=3.2, alpha=0.55)
                ax.vlines(x + 0.06, 100 * r.lo_points, 100 * r.hi_points, color="0.45", lw=1.0)
                per = [100 * float(v) for v in str(r.seed_gaps).split(";")]
                ax.scatter([x] * len(per), per, s=9, color=palette[m], zorder=3)
                ax.scatter([x], [100 * r.gap], s=34, marker="_", color="black", zorder=4)
            ax.plot([], [], color=palette[m], lw=3.2, alpha=0.55, label=f"{m}: seeds + points")
        ax.plot([], [], color="0.45", lw=1.0, label="test points only")
        ax.axhline(0, color="black", lw=1.0, ls="--")
        norm = sub["norm"].iloc[0]
        ax.set_xticks(range(len(eps_values)), [_eps_label(e, norm) for e in eps_values])
        ax.set_xlabel(f"eps ({norm})")
        ax.set_title(str(task), fontsize=10)
    axes[0, 0].set_ylabel("SSL − supervised (points)")
    axes[0, -1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def adversarial_examples(examples: dict, classes: list[str], *, eps: float, amplify: float | None = None,
                         title: str | None = None):
    """Teaching grid: per model (rows) and image, the clean image, the amplified perturbation, the adversarial image,
    with predictions. `examples[model] = {"x": [k,1,H,W], "x_adv": [k,1,H,W], "y", "pred_clean", "pred_adv"}`."""
    models = list(examples)
    k = len(examples[models[0]]["x"])
    fig, axes = plt.subplots(len(models), 3 * k, figsize=(1.45 * 3 * k, 1.55 * len(models)), squeeze=False)
    amplify = amplify or 0.5 / max(eps, 1e-8)
    for r, m in enumerate(models):
        e = examples[m]
        for i in range(k):
            x, xa = e["x"][i].detach().cpu().float(), e["x_adv"][i].detach().cpu().float()
            ok_c, ok_a = int(e["pred_clean"][i]) == int(e["y"][i]), int(e["pred_adv"][i]) == int(e["y"][i])
            panels = [(x, classes[int(e["pred_clean"][i])], ok_c),
                      ((xa - x).mean(0) * amplify + 0.5, f"δ x{amplify:.0f}", None),  # channel mean of δ
                      (xa, classes[int(e["pred_adv"][i])], ok_a)]
            for j, (img, label, ok) in enumerate(panels):
                ax = axes[r, 3 * i + j]
                if ok is None:
                    ax.imshow(np.asarray(img), cmap="RdBu_r", vmin=0, vmax=1)
                else:
                    show_image(ax, img)
                ax.set_xticks([])
                ax.set_yticks([])
                color = "black" if ok is None else ("tab:green" if ok else "tab:red")
                ax.set_title(label, fontsize=7, color=color)
        axes[r, 0].set_ylabel(m, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


REGIME_ORDER = ["linear", "finetuned", "adv-finetuned"]


def regimes_gap(df: pd.DataFrame, *, ref_eps: float, title: str | None = None):
    """Left: SSL-minus-supervised robust-accuracy gap at `ref_eps` per SSL method, bars grouped by regime, one row per
    task. Right: clean vs robust accuracy per regime (what robustness costs). `df`: tidy rows with a `regime` column
    (PGD L-inf), including eps 0 (clean) and `ref_eps`."""
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 3.3 * len(tasks)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1]})
    regimes = [r for r in REGIME_ORDER if r in set(df["regime"])]
    reg_colors = dict(zip(REGIME_ORDER, sns.color_palette("Set2", 3)))
    for r, task in enumerate(tasks):
        sub = df[(df.task == task) & np.isclose(df.eps, ref_eps)]
        sup = sub[sub.model == SUPERVISED].set_index("regime")["accuracy"]
        gap = sub[sub.model != SUPERVISED].copy()
        gap["gap"] = 100 * (gap["accuracy"] - gap["regime"].map(sup))
        ax = axes[r, 0]
        sns.barplot(gap, x="model", y="gap", hue="regime", hue_order=regimes, palette=reg_colors, ax=ax)
        ax.axhline(0, color="black", lw=1)
        ax.set_ylabel(f"SSL − supervised\n(points, eps={ref_eps * 255:.0f}/255)")
        ax.set_xlabel("")
        ax.set_title(task, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.legend(fontsize=8, title=None)
        ax2 = axes[r, 1]
        clean = df[(df.task == task) & (df.eps == 0)].set_index(["model", "regime"])["accuracy"]
        rob = sub.set_index(["model", "regime"])["accuracy"]
        both = pd.DataFrame({"clean": clean, "robust": rob}).dropna().reset_index()
        for reg in regimes:
            b = both[both.regime == reg]
            ax2.scatter(b["clean"], b["robust"], color=reg_colors[reg], label=reg, s=28,
                        edgecolor=["black" if m == SUPERVISED else "none" for m in b["model"]], linewidth=1.5)
        ax2.set_xlabel("clean accuracy")
        ax2.set_ylabel(f"robust accuracy (eps={ref_eps * 255:.0f}/255)")
        ax2.set_title(f"{task}: the cost of robustness (black ring = supervised)", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def factor_panels(df: pd.DataFrame, *, title: str | None = None):
    """One panel per factor: robust accuracy (solid) and clean accuracy (dotted) against the factor's levels, one colour
    per method, each with its 95 % percentile-bootstrap interval over the n test points (`stats.accuracy_interval`).
    `df` columns: method, factor, level, clean, robust, eps, n."""
    factors = list(dict.fromkeys(df["factor"]))
    fig, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 3.5), squeeze=False, sharey=True)
    methods = list(dict.fromkeys(df["method"]))
    palette = method_palette(methods)
    lows, highs = [], []
    for ax, f in zip(axes[0], factors):
        sub = df[df.factor == f]
        levels = list(dict.fromkeys(sub["level"]))
        for k, (m, g) in enumerate(sub.groupby("method", sort=False)):
            g = g.set_index("level").reindex(levels)
            xs = np.arange(len(levels)) + 0.08 * (k - (len(methods) - 1) / 2)  # methods side by side
            for col, marker, ls in (("robust", "o", "-"), ("clean", ".", ":")):
                ci = np.array([accuracy_interval(a, n) for a, n in zip(g[col], g["n"])])
                lows.append(np.nanmin(ci[:, 0]))
                highs.append(np.nanmax(ci[:, 1]))
                ax.errorbar(xs, g[col], yerr=np.abs(ci.T - g[col].to_numpy()), marker=marker, ls=ls, capsize=2,
                            color=palette[m], label=f"{m} {col}")
        ax.set_xticks(range(len(levels)), levels)
        ax.set_title(f, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    lo, hi = min(lows), max(highs)  # zoom to the data: a 2-point difference must be readable against its interval
    axes[0, 0].set_ylim(max(0.0, lo - 0.03), min(1.0, hi + 0.03))
    eps = df["eps"].iloc[0]
    axes[0, 0].set_ylabel(f"accuracy (robust: PGD L-inf {eps * 255:.0f}/255)\nbars: 95 % bootstrap over points")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curves(histories: dict[str, list[float]], *, title: str | None = None):
    """Pretraining loss against epoch, one small panel per method (losses of different methods have different scales)."""
    methods = list(histories)
    cols = min(4, len(methods))
    rows = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False)
    palette = method_palette(methods)
    for ax, m in zip(axes.flat, methods):
        h = histories[m]
        ax.plot(range(1, len(h) + 1), h, marker="o", ms=3, color=palette[m])
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def augmented_views(x, views: list, *, title: str | None = None):
    """Originals (first row) and augmented views (next rows). x [k,1,H,W]; views: list of [k,1,H,W] in [0,1]."""
    k = len(x)
    fig, axes = plt.subplots(1 + len(views), k, figsize=(1.1 * k, 1.15 * (1 + len(views))), squeeze=False)
    for r, batch in enumerate([x, *views]):
        for c in range(k):
            show_image(axes[r, c], batch[c])
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel("original" if r == 0 else f"view {r}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------- dense tasks

def plot_dense_vs_eps(df: pd.DataFrame, title: str | None = None):
    """mAP@0.5 (detection, PGD) and mIoU (segmentation, PGD and SegPGD) against eps, one line per encoder."""
    panels = {("detection", "pgd", METRIC_MAP): "detection: mAP@0.5, PGD",
              ("segmentation", "pgd", METRIC_MIOU): "segmentation: mIoU, PGD",
              ("segmentation", "segpgd", METRIC_MIOU): "segmentation: mIoU, SegPGD"}
    parts = []
    for (task, attack, metric), name in panels.items():
        sub = df[(df["task"] == task) & (df["attack"] == attack) & (df["metric"] == metric)].copy()
        sub["panel"] = name
        parts.append(sub)
    data = pd.concat(parts)
    fig = curves_vs_eps(data, col="panel", ylabel="mAP@0.5 / mIoU", title=title)
    for ax in fig.axes:  # the metrics sit well below 1 here: use the room
        ax.set_ylim(0, min(1.0, 1.15 * float(data["accuracy"].max())) + 0.01)
    return fig


def plot_gap_dense_vs_cls(gaps: pd.DataFrame, have_classification: bool, title: str | None = None):
    """SSL-minus-supervised gap against eps per task (`utils.stats.ssl_gaps`): absolute (metric units) and relative
    (retained fraction). `title` is appended to the default heading (e.g. the attack's steps and n)."""
    styles = {"classification": ("k", "o"), "detection": ("tab:blue", "s"), "segmentation": ("tab:orange", "^")}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for task, g in gaps.groupby("task", sort=False):
        g = g.sort_values("eps")
        color, marker = styles.get(task, ("grey", "x"))
        label = f"{task} ({g['metric'].iloc[0]}, {g['attack'].iloc[0]})"
        axes[0].plot(g["eps"] * 255, g["gap"], color=color, marker=marker, label=label)
        axes[1].plot(g["eps"] * 255, g["rel_gap"], color=color, marker=marker, label=label)
    dense_eps = gaps.loc[gaps["task"] != "classification", "eps"]
    for ax, yl in zip(axes, ["SSL mean - supervised (metric units)", "SSL - supervised (retained fraction)"]):
        ax.axhline(0, color="grey", lw=0.8)
        if len(dense_eps):  # notebook 03 may go to larger eps: show the range the dense tasks share
            ax.set_xlim(-0.3, 255 * float(dense_eps.max()) * 1.05 + 0.3)
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel(yl)
    axes[1].legend(fontsize=8)
    head = ("SSL advantage: dense tasks beside classification" if have_classification else
            "SSL advantage in the dense tasks only (notebook 03's classification table is missing)")
    fig.suptitle(head + (f"\n{title}" if title else ""))
    fig.tight_layout()
    return fig


def _class_colors(k: int) -> list:
    """One colour per class of `k`; class 0 (background) transparent."""
    return [(0, 0, 0, 0)] + [plt.get_cmap("tab20")(i % 20) for i in range(k - 1)]


def _show_canvas(ax, img) -> None:
    """A [C, H, W] image in [0, 1] (grey or RGB), axes off."""
    img = img.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")


def _show_mask(ax, mask, colors: list, alpha: float) -> None:
    """A class mask [H, W] over the image; values outside the classes (VOC's 255 boundary) drawn as background."""
    k = len(colors)
    m = mask.clone()
    m[(m < 0) | (m >= k)] = 0
    ax.imshow(m.numpy(), cmap=ListedColormap(colors), vmin=0, vmax=k - 1, alpha=alpha, interpolation="nearest")


def kept_detections(d: dict, *, score_min: float, nms_iou: float) -> dict:
    """Detections {"boxes" [m, 4], "scores" [m], "labels" [m]} after class-wise NMS at IoU `nms_iou`
    (torchvision.ops.batched_nms) and then a score threshold `score_min`, highest score first."""
    from torchvision.ops import batched_nms

    keep = batched_nms(d["boxes"].float(), d["scores"].float(), d["labels"], nms_iou)
    keep = keep[d["scores"][keep] >= score_min]
    return {k: d[k][keep] for k in ("boxes", "scores", "labels")}


def plot_examples(ex: dict, class_names: list[str], score_min: float = 0.3, nms_iou: float = 0.3,
                  title: str | None = None):
    """`utils.dense.example_predictions` drawn: top row ground-truth boxes, clean and adversarial detections (after
    class-wise NMS at IoU `nms_iou`, score >= `score_min`, both stated in the title); bottom row the masks."""
    k = len(class_names)
    colors = _class_colors(k)

    def boxes(ax, d, scored):
        if scored:
            d = kept_detections(d, score_min=score_min, nms_iou=nms_iou)
        for j in range(len(d["boxes"])):
            x1, y1, x2, y2 = d["boxes"][j].tolist()
            lab = int(d["labels"][j])
            c = colors[lab] if 0 < lab < k else (1, 1, 1, 1)
            # Boxes are pixel-edge coordinates; imshow centres pixel i at i, so shift by half a pixel.
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=c, lw=1.5))
            txt = class_names[lab] if 0 <= lab < k else str(lab)
            if scored:
                txt += f" {float(d['scores'][j]):.2f}"
            ax.text(x1 - 0.5, y1 - 1.5, txt, color=c, fontsize=6, va="bottom")

    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    eps_txt = f"{ex['eps'] * 255:g}/255"
    for ax, img, d, scored, t in [(axes[0, 0], ex["image"], ex["gt"], False, "ground truth"),
                                  (axes[0, 1], ex["image"], ex["det_clean"], True, "clean detections"),
                                  (axes[0, 2], ex["adv_det"], ex["det_adv"], True, f"PGD eps={eps_txt}")]:
        _show_canvas(ax, img)
        boxes(ax, d, scored)
        ax.set_title(t, fontsize=9)
    for ax, img, m, t in [(axes[1, 0], ex["seg_image"], ex["gt_mask"], "ground-truth mask"),
                          (axes[1, 1], ex["seg_image"], ex["seg_clean"], "clean segmentation"),
                          (axes[1, 2], ex["adv_seg"], ex["seg_adv"], f"SegPGD eps={eps_txt}")]:
        _show_canvas(ax, img)
        _show_mask(ax, m, colors, 0.55)
        ax.set_title(t, fontsize=9)
    present = sorted(set(ex["gt_mask"].unique().tolist()) | set(ex["seg_clean"].unique().tolist())
                     | set(ex["seg_adv"].unique().tolist()))
    handles = [Rectangle((0, 0), 1, 1, color=colors[c]) for c in present if 0 < c < k]
    fig.legend(handles, [class_names[c] for c in present if 0 < c < k], loc="lower center", ncol=6, fontsize=8)
    shown = f"detections after NMS (IoU {nms_iou:g}) with score >= {score_min:g}"
    fig.suptitle(f"{title}\n{shown}" if title else shown)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_scenes(scenes, n: int = 6, title: str | None = None):
    """The first `n` scenes of a `utils.scenes.Scenes` with their boxes (top row) and masks (bottom row)."""
    k = scenes.num_classes
    colors = _class_colors(k)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.0))
    for j in range(n):
        img = scenes.image_batch([j])[0]
        for r in range(2):
            _show_canvas(axes[r, j], img)
        if scenes.boxes is not None:
            for b, lab in zip(scenes.boxes[j].tolist(), scenes.labels[j].tolist()):
                axes[0, j].add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                               ec=colors[lab], lw=1.2))
                axes[0, j].text(b[0] - 0.5, b[1] - 1, scenes.class_names[lab], color=colors[lab], fontsize=6)
        if scenes.masks is not None:
            _show_mask(axes[1, j], scenes.mask_batch([j])[0], colors, 0.6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ teaching (notebook 03, part 1)

def _gray(ax, img, title: str, color: str = "black") -> None:
    """One [C, H, W] or [H, W] image in [0, 1], axes off, with a title."""
    show_image(ax, img)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, color=color)


def prediction_panel(x, probs, classes: list[str], *, true: int, title: str | None = None):
    """A test image (x [1, H, W] in [0, 1]) beside the classifier's probability per class (probs [K]); the true
    class in green, the predicted one (if different) in red."""
    probs = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=float)
    pred = int(probs.argmax())
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(7.5, 2.8), gridspec_kw={"width_ratios": [1, 2.2]})
    _gray(a0, x, f"true: {classes[true]}")
    shown = list(range(len(probs))) if len(probs) <= 10 else sorted(set(np.argsort(-probs)[:9].tolist()) | {true})
    colors = ["tab:green" if i == true else "tab:red" if i == pred else "0.7" for i in shown]
    a1.barh(range(len(shown)), probs[shown], color=colors)
    a1.set_yticks(range(len(shown)), [classes[i] for i in shown], fontsize=8)
    a1.invert_yaxis()
    a1.set_xlim(0, 1)
    a1.set_xlabel("probability")
    a1.set_title(f"prediction: {classes[pred]} ({probs[pred]:.2f})", fontsize=9,
                 color="tab:green" if pred == true else "tab:red")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def perturbation_pictures(x, perturbed: dict, *, classes: list[str], true: int, title: str | None = None):
    """The clean image x [1, H, W], then per entry of `perturbed` ({label: (x_adv [1, H, W], predicted class)}) the
    perturbation x_adv - x in grey levels (/255, red = brighter, one colour scale for all) and the perturbed image."""
    deltas = {k: (np.asarray((xa - x).detach().cpu().float()) * 255, p) for k, (xa, p) in perturbed.items()}  # [C,H,W]
    vmax = max(float(np.abs(d).max()) for d, _ in deltas.values()) or 1.0
    fig, axes = plt.subplots(1, 1 + 2 * len(perturbed), figsize=(2.1 * (1 + 2 * len(perturbed)), 2.6))
    _gray(axes[0], x, f"clean: {classes[true]}")
    for j, (label, (xa, pred)) in enumerate(perturbed.items()):
        d, _ = deltas[label]
        ax = axes[1 + 2 * j]
        im = ax.imshow(d.mean(0), cmap="RdBu_r", vmin=-vmax, vmax=vmax)  # the channel mean of δ
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{label}\nmax |δ| {np.abs(d).max():.1f}/255, ‖δ‖₂ {np.linalg.norm(d) / 255:.2f}", fontsize=8)
        _gray(axes[2 + 2 * j], xa, f"predicted: {classes[int(pred)]}",
              "tab:green" if int(pred) == true else "tab:red")
    fig.colorbar(im, ax=list(axes), shrink=0.75, label="δ (grey levels /255)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attack_trace(losses, preds, classes: list[str], *, true: int, title: str | None = None):
    """One point under attack, iterate by iterate (0 = the random start): its cross-entropy loss (left) and the class
    the model predicts (right; the true class dashed green). losses, preds: [steps + 1]."""
    losses = np.asarray(losses.detach().cpu() if hasattr(losses, "detach") else losses, dtype=float)
    preds = np.asarray(preds.cpu() if hasattr(preds, "cpu") else preds, dtype=int)
    it = np.arange(len(losses))
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.5, 2.8))
    a0.plot(it, losses, marker="o", color="black")
    a0.set_xlabel("iterate (0 = random start)")
    a0.set_ylabel("cross-entropy loss")
    a0.set_title("the loss the attack climbs", fontsize=9)
    shown = sorted(set(preds.tolist()) | {true})
    a1.step(it, [shown.index(p) for p in preds], where="mid", color="black")
    a1.scatter(it, [shown.index(p) for p in preds], c=["tab:green" if p == true else "tab:red" for p in preds],
               zorder=3)
    a1.axhline(shown.index(true), color="tab:green", ls="--", lw=1)
    a1.set_yticks(range(len(shown)), [classes[c] for c in shown], fontsize=8)
    a1.set_ylim(-0.5, len(shown) - 0.5)
    a1.set_xlabel("iterate (0 = random start)")
    a1.set_title("predicted class (green = right)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
