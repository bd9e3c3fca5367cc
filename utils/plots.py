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

from utils.results import atomic_save

SUPERVISED = "supervised"


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save `fig` as PNG (dpi from rcParams) atomically and return the path."""
    return atomic_save(lambda tmp: fig.savefig(tmp, format="png"), path)


def sample_grid(x, y, classes: list[str], per_class: int = 8, title: str | None = None):
    """Grid of `per_class` images per class: rows = classes. x [N,1,H,W] in [0,1], y [N] int."""
    x, y = np.asarray(x), np.asarray(y)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    for r, name in enumerate(classes):
        idx = np.flatnonzero(y == r)[:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(x[idx[c], 0], cmap="gray_r", vmin=0, vmax=1)
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
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    if title:
        ax.set_title(title, pad=40)
    fig.tight_layout()
    return fig
