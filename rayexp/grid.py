"""The trial key and grid expansion (no Ray here).

A trial is one (backbone, dataset, fraction, seed). Its key ``backbone/dataset/fraction/seed`` names
the Tune trial, tags the MLflow run and is the unit of resume: a key whose MLflow run finished is never
trained again.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from rayexp.errors import RayexpError

PAPER_FRACTIONS: tuple[float, ...] = (1.0, 0.1, 0.01)
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2)
SEED_LIMIT = 2**32  # NumPy's seeding range: a seed outside it is refused, never wrapped or hashed


def seed_problem(seed: object) -> str | None:
    """Why ``seed`` cannot seed a trial or a split (NumPy refuses negatives with a traceback), or None."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        return f"seed {seed!r} is outside 0..{SEED_LIMIT - 1}"
    return None


def format_fraction(fraction: float) -> str:
    """Canonical text of a fraction: ``1.0``, ``0.1``, ``0.01`` (Python's shortest round-trip repr)."""
    return repr(float(fraction))


def validate_fraction(fraction: float) -> float:
    """Return ``fraction`` as a float, or raise if it is not in (0, 1]."""
    value = float(fraction)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise RayexpError(
            f"fraction {fraction!r} is outside (0, 1]: a fraction is the share of the training split "
            "to train on, e.g. --fractions 0.01 0.1 1.0"
        )
    return value


@dataclass(frozen=True, order=True)
class TrialKey:
    """One cell of the grid for one seed."""

    backbone: str
    dataset: str
    fraction: float
    seed: int

    def __str__(self) -> str:
        return f"{self.backbone}/{self.dataset}/{format_fraction(self.fraction)}/{self.seed}"

    @property
    def cell(self) -> tuple[str, str, float]:
        """The (backbone, dataset, fraction) cell whose seeds are summarised together."""
        return (self.backbone, self.dataset, self.fraction)

    @property
    def dirname(self) -> str:
        """A file-system-safe form of the key, for trial and checkpoint folders (also in buckets): ``/`` becomes
        ``-``, and the ``:`` and ``@`` of ``torchvision:``/``timm:`` names ``_`` (no registry name has them)."""
        return str(self).replace("/", "-").replace(":", "_").replace("@", "_")

    @classmethod
    def parse(cls, text: str) -> "TrialKey":
        """Inverse of ``str(key)``."""
        parts = text.split("/")
        if len(parts) != 4:
            raise RayexpError(f"trial key {text!r} is not of the form backbone/dataset/fraction/seed")
        backbone, dataset, fraction, seed = parts
        try:
            return cls(backbone, dataset, validate_fraction(float(fraction)), int(seed))
        except ValueError as exc:
            raise RayexpError(f"trial key {text!r}: {exc}") from None


def expand_grid(
    backbones: Sequence[str],
    datasets: Sequence[str],
    fractions: Iterable[float],
    seeds: Iterable[int],
) -> list[TrialKey]:
    """All trial keys of the grid, seeds of one cell adjacent, without duplicates.

    Ordered dataset, fraction, backbone, seed so that a cell's seeds finish close together and a
    partial sweep has whole cells rather than scattered seeds.
    """
    fractions = [validate_fraction(f) for f in fractions]
    seeds = [int(s) for s in seeds]
    bad = [problem for problem in map(seed_problem, seeds) if problem]
    if bad:
        raise RayexpError(f"--seeds: {'; '.join(bad)}")
    for name, values in (("backbones", backbones), ("datasets", datasets), ("fractions", fractions), ("seeds", seeds)):
        if not values:
            raise RayexpError(f"the grid has no {name}: give at least one with --{name}")
    keys: list[TrialKey] = []
    seen: set[TrialKey] = set()
    for dataset, fraction, backbone, seed in itertools.product(datasets, fractions, backbones, seeds):
        key = TrialKey(backbone, dataset, fraction, seed)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys
