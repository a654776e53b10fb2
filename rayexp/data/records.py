"""What a source module hands over, and the split of its records: a :class:`Source` of
:class:`SourceRecord` s, each with its official split or none, the writer's stratified test/train draw
deciding those. Shared by the writer and the data check, so that both see the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from rayexp.data.shards import SPLITS
from rayexp.errors import RayexpError


@dataclass
class SourceRecord:
    """One image as a source yields it, before any shared processing.

    ``image`` is a PIL image, an HxW or HxWxC array, the encoded file's bytes, a path to the file, or a
    picklable zero-argument callable returning one of those (so that large sources load lazily, in the
    worker process that encodes the image). ``split`` is the official split, or None to let the writer
    split stratified with the source's test fraction. ``group`` (e.g. a patient id) is kept for
    provenance; sources that split by group assign ``split`` themselves.
    """

    image: object
    label: int
    id: str
    split: str | None = None
    group: str | None = None


@dataclass
class Source:
    """What a source module hands the writer: class names, records and how the split was made."""

    classes: list[str]
    records: Iterable[SourceRecord]
    split_rule: str
    test_fraction: float | None = None  # for records with split=None
    checksums: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # documented differences from the paper, shown in the summary
    encoding: str | None = None  # overrides the catalog's (a user's folder of PNGs is stored as PNG)
    skipped: list[str] = field(default_factory=list)  # files and folders a folder source passed over, and why


def stratified_test_mask(labels: Sequence[int], test_fraction: float, seed: int) -> np.ndarray:
    """True for the rows that go to the test split: ``round(test_fraction * n)`` of each class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_test = int(round(test_fraction * len(rows)))
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)
        mask[rng.permutation(rows)[:n_test]] = True
    return mask


def assign_splits(name: str, source: Source, records: list[SourceRecord], labels: np.ndarray, seed: int) -> list[str]:
    """Each record's split: its own, or for ``split=None`` the seeded stratified test/train draw.

    Public so that anything judging a dataset before it is written (the data check) sees exactly the
    split that preparation will write.
    """
    splits = [r.split for r in records]
    if any(s is None for s in splits):
        if source.test_fraction is None:
            raise RayexpError(f"dataset {name!r}: records without a split need the source's test_fraction")
        undecided = np.array([s is None for s in splits])
        mask = iter(stratified_test_mask(labels[undecided], source.test_fraction, seed))
        splits = [("test" if next(mask) else "train") if s is None else s for s in splits]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise RayexpError(f"dataset {name!r}: unknown split names {unknown}; use {SPLITS}")
    return splits
