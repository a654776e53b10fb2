"""Which rows of a prepared dataset a trial reads: its split, its fraction and its validation hold-out.

A fraction ``f`` of the training split is, in each class of ``n_class`` rows, the rows with
``rank < max(1, ceil(f * n_class))``. With ``selection=val`` the last ranks of those rows (10% of each
class, at least one when the class has two or more) are held out to validate on: the ``val`` part; the
rest is the ``train`` part. Any other split is read whole.

:class:`TrialRows` describes such a set of rows, and builds the one filter that selects them: a PyArrow
expression for the PyArrow reader, the same rule in Ray Data's expressions for the pipeline. The filter
bounds ``position`` (see :mod:`rayexp.data.shards`), so a scan skips row groups outside the fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow.compute as pc

VAL_SHARE = 0.1  # selection=val holds out this share of each class of the trial's training rows
PARTS = ("all", "train", "val")

RankRanges = list[tuple[list[int], int, int]]  # [(labels, lo, hi), ...]: those classes' ranks lo <= rank < hi


def fraction_count(n_class: int, fraction: float) -> int:
    """How many training rows of a class of ``n_class`` a fraction keeps: ``max(1, ceil(f * n))``.

    Rounded to 9 decimals first so that float error (0.1 * 150 = 15.000000000000002) does not add a row.
    """
    return max(1, math.ceil(round(fraction * n_class, 9)))


def fraction_thresholds(manifest: dict, fraction: float) -> list[int]:
    """Per class, the rank below which a training row belongs to ``fraction``."""
    counts = manifest["splits"]["train"]["class_counts"]
    return [fraction_count(n, fraction) for n in counts]


def holdout_count(k: int) -> int:
    """Rows of a class of ``k`` fraction rows held out for validation: 10%, at least one, none if k < 2."""
    return 0 if k < 2 else max(1, round(VAL_SHARE * k))


def rank_ranges(manifest: dict, fraction: float, part: str = "all") -> RankRanges:
    """Classes grouped by the rank range ``[lo, hi)`` a trial reads: ``[(labels, lo, hi), ...]``.

    ``part`` ``all`` is the fraction; ``train`` and ``val`` split it for ``selection=val``: the last
    ranks of each class (10%, at least one when the class has two or more rows) are the validation
    rows. Grouping keeps filter expressions small even for 200 classes.
    """
    if part not in PARTS:
        raise ValueError(f"part {part!r} not in {PARTS}")
    groups: dict[tuple[int, int], list[int]] = {}
    for label, k in enumerate(fraction_thresholds(manifest, fraction)):
        held = holdout_count(k) if part != "all" else 0
        lo, hi = (0, k - held) if part in ("all", "train") else (k - held, k)
        if hi > lo:
            groups.setdefault((lo, hi), []).append(label)
    return [(labels, lo, hi) for (lo, hi), labels in sorted(groups.items())]


def position_bounds(ranges: RankRanges, class_counts: Sequence[int]) -> tuple[float, float]:
    """``(lo, hi)`` such that every row of ``ranges`` (from :func:`rank_ranges`) has ``lo <= position < hi``.

    A row of class c with ``lo_c <= rank < hi_c`` has ``position = (rank + 0.5) / n_c``, strictly between
    ``lo_c / n_c`` and ``hi_c / n_c`` (by ``0.5 / n_c``, far more than float rounding), so the bounds over
    all classes are safe; Parquet's row-group statistics on ``position`` prune by them.
    """
    lo = min(lo_c / class_counts[c] for labels, lo_c, _ in ranges for c in labels)
    hi = max(hi_c / class_counts[c] for labels, _, hi_c in ranges for c in labels)
    return lo, hi


@dataclass(frozen=True)
class Dialect:
    """How an expression library spells the filter's pieces: a column, a literal, and ``column in values``."""

    column: Callable[[str], Any]
    literal: Callable[[Any], Any]
    isin: Callable[[Any, list[int]], Any]


ARROW = Dialect(pc.field, pc.scalar, lambda column, values: column.isin(values))


@dataclass(frozen=True)
class TrialRows:
    """The rows a trial reads from one split: ``fraction`` of the training split, or its ``part``
    (:data:`PARTS`) for ``selection=val``; any other split whole."""

    split: str
    fraction: float = 1.0
    part: str = "all"

    @property
    def whole(self) -> bool:
        """Whether these are all of the split's rows (no filter needed)."""
        return self.split != "train" or (self.fraction >= 1.0 and self.part == "all")

    def ranges(self, manifest: dict) -> RankRanges:
        """The rank ranges of the training split these rows are (see :func:`rank_ranges`)."""
        return rank_ranges(manifest, self.fraction, self.part)

    def count(self, manifest: dict) -> int:
        """How many rows these are."""
        if self.whole:
            return manifest["splits"][self.split]["rows"]
        return sum(len(labels) * (hi - lo) for labels, lo, hi in self.ranges(manifest))

    def filter(self, manifest: dict, dialect: Dialect = ARROW) -> Any:
        """The filter selecting these rows from the split, in ``dialect`` (PyArrow's by default); None when
        they are the whole split.

        Bounds on ``position`` that prune row groups by their statistics, then the exact per-class rule on
        ``rank``.
        """
        if self.whole:
            return None
        ranges = self.ranges(manifest)
        column, literal = dialect.column, dialect.literal
        if not ranges:
            return literal(False)
        expr = None
        for labels, lo, hi in ranges:
            term = dialect.isin(column("label"), labels) & (column("rank") < literal(hi))
            if lo:
                term = term & (column("rank") >= literal(lo))
            expr = term if expr is None else expr | term
        lo_position, hi_position = position_bounds(ranges, manifest["splits"]["train"]["class_counts"])
        prune = column("position") < literal(hi_position)
        if lo_position > 0:
            prune = (column("position") >= literal(lo_position)) & prune
        return prune & expr


def trial_rows(fraction: float, selection: str) -> dict[str, TrialRows]:
    """The rows of each split a trial reads, by the name its pipeline gives them: ``train`` (the fraction, less
    the validation rows with ``selection="val"``), ``val`` (those rows) and ``test`` (whole)."""
    if selection == "val":
        train, val = TrialRows("train", fraction, "train"), TrialRows("train", fraction, "val")
        return {"train": train, "val": val, "test": TrialRows("test")}
    return {"train": TrialRows("train", fraction), "test": TrialRows("test")}


def split_rows(manifest: dict, split: str, fraction: float = 1.0, part: str = "all") -> int:
    """Rows a trial reads from ``split``: all of it, or ``fraction`` (or its train/val part) of the training split."""
    return TrialRows(split, fraction, part).count(manifest)
