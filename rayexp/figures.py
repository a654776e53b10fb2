"""The matplotlib figures: a trial's confusion matrix, a dataset's accuracy against its training fraction,
the backbone x dataset heatmap of one fraction, and the ImageNet-rank scatter.

Drawn from plain numbers: no rules (those are :mod:`rayexp.results`'), no MLflow, no Ray and none of the
report's modules, so that a trial worker can draw its confusion matrix with nothing but matplotlib.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Mapping, Sequence


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (trial workers and servers have no display)."""
    # Imported here, not at the top: matplotlib is slow to import and most importers of this module draw nothing.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def percent_label(fraction: float) -> str:
    """A training fraction as a tick label: 0.01 -> "1%", 0.1 -> "10%", 1.0 -> "100%"."""
    return f"{100 * fraction:g}%"


def accuracy_vs_fraction(
    dataset: str, curves: Mapping[str, Sequence[tuple[float, float]]], chance: float | None, path: Path
) -> None:
    """One line per backbone of ``curves`` (``(fraction, accuracy %)`` points, legend in their order), the
    chance level (a fraction) dashed, a log x axis whose ticks are the fractions drawn, labelled in percent
    ("1%", "10%", "100%"); written to ``path`` as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for backbone, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backbone)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.1f}%)")
    ax.set_xscale("log")
    ticks = sorted({p[0] for points in curves.values() for p in points})
    ax.minorticks_off()
    ax.set_xticks(ticks, [percent_label(t) for t in ticks])
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}%")
    ax.set_xlabel("share of the training split")
    ax.set_ylabel("top-1 test accuracy, best of seeds")
    ax.set_title(f"{dataset}: accuracy vs training data")
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap(
    title: str,
    backbones: Sequence[str],
    columns: Sequence[tuple[str, str]],
    labels: Sequence[Sequence[str | None]],
    rank: Sequence[Sequence[float | None]],
    path: Path,
) -> None:
    """Backbones (rows) x datasets (``columns``: ``(dataset, domain)``, grouped by domain) as one PNG: each
    cell coloured by its ``rank`` within its dataset (1 = best: dark) and annotated with its label (the
    accuracy in percent), bold where it ranks first; a cell without a label is grey and reads "–". Domains are
    named above their columns and separated by lines. Sized so that 11 backbones x 20 datasets stay legible."""
    plt = pyplot()
    n_rows, n_cols = len(backbones), len(columns)
    ranks = [[float("nan") if r is None else float(r) for r in line] for line in rank]
    worst = max([2.0] + [r for line in rank for r in line if r is not None])
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.78 * n_cols), max(3.0, 1.9 + 0.42 * n_rows)), dpi=100)
    cmap = plt.get_cmap("YlGn_r").with_extremes(bad="#dddddd")
    image = ax.imshow(ranks, cmap=cmap, vmin=1, vmax=worst, aspect="auto")  # nan (no score): the "bad" grey
    best = [min((rank[i][j] for i in range(n_rows) if rank[i][j] is not None), default=None) for j in range(n_cols)]
    for i in range(n_rows):
        for j in range(n_cols):
            value, place = labels[i][j], rank[i][j]
            if value is None:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="#666666")
                continue
            dark = place is not None and place <= 1 + 0.35 * (worst - 1)
            ax.text(
                j,
                i,
                value,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
                fontweight="bold" if place is not None and place == best[j] else "normal",  # first, ties included
            )
    ax.set_xticks(range(n_cols), [d for d, _ in columns], rotation=40, ha="right", fontsize=9)
    ax.set_yticks(range(n_rows), list(backbones), fontsize=9)
    ax.set_xticks([j - 0.5 for j in range(n_cols + 1)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(n_rows + 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    start = 0
    for j in range(1, n_cols + 1):
        if j == n_cols or columns[j][1] != columns[start][1]:
            if j < n_cols:
                ax.axvline(j - 0.5, color="black", linewidth=1.2)
            ax.text((start + j - 1) / 2, -0.7, columns[start][1], ha="center", va="bottom", fontsize=8, style="italic")
            start = j
    # Wrapped to the figure's width: a grid of few datasets makes a narrow figure that would clip the title.
    ax.set_title(textwrap.fill(title, max(40, int(fig.get_figwidth() * 10))), pad=22)
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("rank within dataset (1 = best)", fontsize=8)
    bar.ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def imagenet_rank(points: Sequence[tuple[float, float, str]], rho: float, p: float, path: Path) -> None:
    """Each backbone's ``(ImageNet top-1 rank, mean fine-tuning rank, name)`` as a labelled scatter, titled
    with Spearman's ``rho`` and its ``p``; written to ``path`` as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for x, y, name in points:
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("ImageNet top-1 rank")
    ax.set_ylabel("mean fine-tuning rank")
    ax.set_title(f"Spearman rho = {rho:.2f} (p = {p:.2g})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix (rows true, columns predicted) as a PNG."""
    plt = pyplot()
    n = len(confusion)
    size = min(12, 2 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
        for i in range(n):
            for j in range(n):
                if confusion[i][j]:
                    ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
