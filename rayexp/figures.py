"""The matplotlib figures: a trial's confusion matrix, a dataset's accuracy against its training fraction,
and the ImageNet-rank scatter.

Drawn from plain numbers: no rules (those are :mod:`rayexp.results`'), no MLflow, no Ray and none of the
report's modules, so that a trial worker can draw its confusion matrix with nothing but matplotlib.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (trial workers and servers have no display)."""
    # Imported here, not at the top: matplotlib is slow to import and most importers of this module draw nothing.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_fraction(
    dataset: str, curves: Mapping[str, Sequence[tuple[float, float]]], chance: float | None, path: Path
) -> None:
    """One line per backbone of ``curves`` (``(fraction, accuracy %)`` points, legend in their order), the
    chance level (a fraction) dashed, a log x axis; written to ``path`` as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for backbone, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backbone)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.1f}%)")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training split")
    ax.set_ylabel("top-1 test accuracy (%), best of seeds")
    ax.set_title(f"{dataset}: accuracy vs training data")
    ax.legend(fontsize=8)
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
