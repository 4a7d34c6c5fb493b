"""Figures shared by the notebooks, saved to ``pics/`` at a stated size and dpi."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower().startswith(("qt", "tk", "gtk", "wx", "macosx")):
    matplotlib.use("Agg")  # headless runs (papermill, CI) must never need a display
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from helpers.core import config, storage
from helpers.data import load_rgb

DPI = 150
TOP_N = 15  # per-class figures of larger datasets show this many best and worst classes


def save_figure(fig, name: str, folder: Path | None = None, dpi: int = DPI) -> Path:
    """Write ``<pics>/<name>.png`` atomically at ``dpi``; the figure size is the one it was made with."""
    folder = storage.ensure_writable_dir(folder or config.pics_dir(), "figures", "CLIPLAB_OUT")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return storage.atomic_write_bytes(folder / f"{name}.png", buf.getvalue())


def confusion_matrix(cm: np.ndarray, classnames: list[str], title: str = "", normalize: bool = True):
    """Heatmap of a confusion matrix (rows: true class; normalised per row = recall on the diagonal)."""
    cm = np.asarray(cm, dtype=np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(classnames)
    fig, ax = plt.subplots(figsize=(min(0.6 * n + 3, 12), min(0.55 * n + 2.5, 11)))  # at most 1800 px wide
    labels = classnames if n <= 40 else False  # beyond 40 classes names would overlap: the matrix alone
    sns.heatmap(shown, annot=n <= 15, fmt=".2f" if normalize else ".0f", cmap="Blues", vmin=0,
                vmax=1 if normalize else None, xticklabels=labels, yticklabels=labels, ax=ax,
                cbar_kws={"label": "fraction of true class" if normalize else "images"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def reliability_diagram(calib: dict, title: str = "", show_ece: bool = True):
    """Accuracy vs confidence per bin (from :func:`helpers.metrics.calibration`), with ECE in the title
    (``show_ece`` False for untrained weights: their numbers are never shown as results)."""
    edges = np.asarray(calib["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    count = np.asarray(calib["count"])
    acc = np.where(count > 0, calib["accuracy"], np.nan)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(f"{title}  ECE = {calib['ece']:.3f}".strip() if show_ece else title)
    ax2.bar(centers, count, width=width * 0.95, color="grey")
    ax2.set_xlabel("confidence (max softmax)")
    ax2.set_ylabel("images")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def prediction_grid(paths, true, pred, classnames: list[str], n: int = 8, seed: int = 0, title: str = ""):
    """Two rows of test images captioned "Predicted (True)": correct ones left block, mistakes right."""
    true, pred = np.asarray(true), np.asarray(pred)
    rng = np.random.default_rng(seed)
    ok, bad = np.flatnonzero(pred == true), np.flatnonzero(pred != true)
    pick_ok = rng.choice(ok, size=min(n, len(ok)), replace=False) if len(ok) else []
    pick_bad = rng.choice(bad, size=min(n, len(bad)), replace=False) if len(bad) else []
    cols = max(len(pick_ok), len(pick_bad), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.6), squeeze=False)
    for row, (picks, label, colour) in enumerate(((pick_ok, "correct", "green"), (pick_bad, "mistakes", "red"))):
        for j in range(cols):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(picks):
                i = picks[j]
                ax.imshow(load_rgb(paths[i]))
                ax.set_title(f"{classnames[pred[i]]}\n({classnames[true[i]]})", fontsize=7, color=colour)
        axes[row, 0].text(-0.15, 0.5, label, transform=axes[row, 0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=9, color=colour)
    fig.suptitle(title or "Predicted (True)", fontsize=10)
    fig.tight_layout()
    return fig


def mark_untrained(fig, spec: str):
    """Stamp a figure made with untrained weights so it is never read as a result."""
    fig.text(0.5, 0.5, f"UNTRAINED WEIGHTS ({spec})\npath check, not a result", ha="center", va="center",
             fontsize=13, color="red", alpha=0.35, rotation=25, transform=fig.transFigure, zorder=100)
    return fig


def grouped_bars(table, x: str, bars: list[str], title: str = "", ylabel: str = "top-1 accuracy"):
    """One group of bars per row of ``table`` (e.g. val and test accuracy per prompt)."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 3.8 + 0.2 * len(bars)), layout="constrained")
    width = 0.8 / len(bars)
    for j, col in enumerate(bars):
        ax.bar(np.arange(n) + (j - (len(bars) - 1) / 2) * width, table[col], width=width, label=col)
    ax.set_xticks(np.arange(n), table[x], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    # outside the axes, below their tick labels however long those are: never over bars or labels
    fig.legend(fontsize=8, loc="outside lower center", ncol=1 if len(bars) > 2 else 2, frameon=False)
    return fig


def per_class_delta(classnames: list[str], delta, title: str = "", xlabel: str = "recall difference"):
    """Horizontal bars of a per-class difference (e.g. recall of the best prompt minus the plain name)."""
    delta = np.asarray(delta, dtype=np.float64)
    classnames = list(classnames)
    if len(classnames) > 2 * TOP_N:  # many classes: the TOP_N largest gains and losses stay readable
        order = np.argsort(-delta)
        keep = np.concatenate([order[:TOP_N], order[-TOP_N:]])
        title = f"{title}\n{TOP_N} largest and {TOP_N} smallest of {len(classnames)} classes".strip()
        classnames, delta = [classnames[i] for i in keep], delta[keep]
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(classnames) + 1.5))
    ax.barh(np.arange(len(classnames)), delta, color=np.where(delta >= 0, "tab:green", "tab:red"))
    ax.set_yticks(np.arange(len(classnames)), classnames, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def kshot_curve(summary, zero_shot: dict | None = None, title: str = "", metric_label: str = "test top-1"):
    """Accuracy against k (log axis) with 95% CI bands, one line per (model, head); zero-shot as a
    horizontal line per model; the 'all' point is drawn at the right edge."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    numeric = [k for k in summary["k"].unique() if k != "all"]
    k_all = (max(numeric) * 4) if numeric else 1
    colours = dict(zip(summary["model"].unique(), sns.color_palette("tab10"), strict=False))
    for (model, head), g in summary.groupby(["model", "head"], sort=False):
        x = np.array([k_all if k == "all" else float(k) for k in g["k"]])
        order = np.argsort(x)
        style = "-o" if head == "linear probe" else "--s"
        ax.plot(x[order], g["mean"].to_numpy()[order], style, color=colours[model], label=f"{model} {head}", ms=4)
        ax.fill_between(x[order], g["ci_low"].to_numpy()[order], g["ci_high"].to_numpy()[order],
                        color=colours[model], alpha=0.15)
    for model, acc in (zero_shot or {}).items():
        ax.axhline(acc, color=colours.get(model, "k"), ls=":", lw=1.5, label=f"{model} zero-shot")
    ax.set_xscale("log", base=2)
    ticks = sorted(numeric) + ([k_all] if "all" in set(summary["k"]) else [])
    ax.set_xticks(ticks, [str(int(t)) for t in sorted(numeric)] + (["all"] if "all" in set(summary["k"]) else []))
    ax.set_xlabel("labelled images per class (k)")
    ax.set_ylabel(metric_label)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
