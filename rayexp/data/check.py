"""A data check: read every image of a user's source once, before any shards are written or GPUs rented.

Preparation only stops on an image it cannot decode. Other problems in a user's own data pass silently
and surface, if at all, as numbers that look fine: an image copied into both train and test inflates
every backbone's test score, a class with one training image breaks ``selection=val`` at small
fractions, a grayscale minority is quietly converted. :func:`check_source` finds these on the very split
preparation will write (it shares :func:`~rayexp.data.records.assign_splits` and the image loading) and
reports them as :class:`Problem` s; the serious ones stop a run unless the user accepts them.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from rayexp.data.imagefile import ImageFileError, load_image, to_rgb
from rayexp.data.records import Source, assign_splits
from rayexp.data.rows import fraction_count
from rayexp.data.shards import SPLITS
from rayexp.data.workers import Progress, parallel_map
from rayexp.errors import RayexpError

KINDS = (
    "unreadable",
    "skipped_files",
    "duplicate_across_splits",
    "class_too_small",
    "duplicate_within_split",
    "imbalance",
    "small_images",
    "mixed_modes",
)
SELECTIONS = ("test", "val")
IMBALANCE_RATIO = 10.0  # largest / smallest training class above which accuracy mostly reflects the large classes
SHOWN_FILES = 10  # file names per problem in the text report; to_dict keeps them all


@dataclass
class Problem:
    """One finding: what kind, whether it stops a run, what to do about it, and every file involved."""

    kind: str
    serious: bool
    message: str
    files: list[str] = field(default_factory=list)


@dataclass
class DataCheck:
    """What the check saw: per-split class counts, image sizes and modes, and the problems found."""

    classes: list[str]
    counts: dict[str, list[int]]
    sizes: dict
    modes: dict[str, int]
    problems: list[Problem]
    name: str = "dataset"
    input_size: tuple[int, int] = (256, 256)

    def serious(self) -> list[Problem]:
        """The problems that stop a run unless the user passes --accept-warnings."""
        return [p for p in self.problems if p.serious]

    def lines(self) -> list[str]:
        """A report for a terminal or a log: counts per class and split, sizes, modes, then each problem."""
        splits = list(self.counts)
        n_images = sum(sum(c) for c in self.counts.values())
        out = [f"data check of {self.name}: {len(self.classes)} classes, {n_images} readable images"]
        width = max([len("total")] + [len(c) for c in self.classes])
        out.append("  " + "class".ljust(width) + "".join(f"{s:>8}" for s in splits))
        for label, name in enumerate(self.classes):
            out.append("  " + name.ljust(width) + "".join(f"{self.counts[s][label]:>8}" for s in splits))
        out.append("  " + "total".ljust(width) + "".join(f"{sum(self.counts[s]):>8}" for s in splits))
        totals = {s: sum(c) for s, c in self.counts.items()}
        if len(totals) > 1 and sum(totals.values()):
            shares = "/".join(f"{round(100 * n / sum(totals.values()))}" for n in totals.values())
            out.append("  split: " + " / ".join(f"{s} {n}" for s, n in totals.items()) + f" ({shares})")
        train = [n for n in self.counts.get("train", []) if n > 0]
        if train:
            out.append(
                f"  largest/smallest training class: {max(train)}/{min(train)} = {max(train) / min(train):.1f}:1"
            )
        if self.sizes:
            out.append(
                "  sizes (HxW): "
                + ", ".join(f"{k} {_hw(self.sizes[k])}" for k in ("min", "median", "max"))
                + f"; trained at {_hw(self.input_size)}"
            )
        if self.modes:
            out.append(
                "  modes: " + ", ".join(f"{mode} {n}" for mode, n in sorted(self.modes.items(), key=lambda kv: -kv[1]))
            )
        if not self.problems:
            out.append("  no problems found")
        else:
            serious = len(self.serious())
            out.append(f"  {serious} serious problem(s), {len(self.problems) - serious} warning(s):")
        for problem in self.problems:
            out.append(f"  {'SERIOUS' if problem.serious else 'warning'} [{problem.kind}] {problem.message}")
            out += [f"      {f}" for f in problem.files[:SHOWN_FILES]]
            if len(problem.files) > SHOWN_FILES:
                out.append(f"      and {len(problem.files) - SHOWN_FILES} more")
        return out

    def to_dict(self) -> dict:
        """Plain JSON types only (tuples as lists), for logging the check beside the runs it gated."""
        d = asdict(self)
        d["sizes"] = {k: list(v) for k, v in self.sizes.items()}
        d["input_size"] = list(self.input_size)
        return d


def _hw(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def inspect_image(image: object) -> tuple[int, int, str, str]:
    """(height, width, original PIL mode, pixel key) of one record's image, loaded as preparation loads it.

    The key hashes the decoded RGB pixels and the shape, not the file: a PNG and a BMP of the same
    pixels are duplicates, two JPEG encodings of one photo are not. Raises
    :class:`~rayexp.data.imagefile.ImageFileError` for a file that cannot be decoded.
    """
    pil, _ = load_image(image)
    mode = pil.mode
    pixels = np.asarray(to_rgb(pil))
    digest = hashlib.sha1(pixels.tobytes()).hexdigest()
    return pil.height, pil.width, mode, f"{pixels.shape[0]}x{pixels.shape[1]}:{digest}"


def _inspect_job(job: tuple) -> tuple:
    """:func:`inspect_image` in a worker process: its result, or (None, the error) for a bad file."""
    image, record_id = job
    try:
        return inspect_image(image)
    except (ImageFileError, OSError, ValueError) as exc:  # to_rgb's errors: a mode PIL cannot convert
        return None, f"{record_id}: {exc}"


def min_train_images(fraction: float, selection: str) -> int:
    """The fewest training images a class needs so that ``fraction`` of it can be trained (and validated) on.

    With ``selection=val`` the fraction must keep two rows of the class, one to train on and one held out;
    otherwise one row is enough.
    """
    need = 2 if selection == "val" else 1
    n = 1
    while fraction_count(n, fraction) < need:
        n += 1
    return n


def check_source(
    source: Source,
    *,
    name: str = "dataset",
    seed: int = 0,
    input_size: tuple[int, int] = (256, 256),
    fractions: Sequence[float] = (1.0,),
    selection: str = "val",
    workers: int | None = None,
    quiet: bool = False,
) -> DataCheck:
    """Read every image of ``source`` once and report what would quietly spoil the runs trained on it.

    ``seed`` must be the one preparation will use, so the stratified split checked is the split written.
    ``fractions`` and ``selection`` are the sweep's, which decide how many training images a class
    needs. A generator of records is read into a list and put back on ``source`` so preparation can
    still read it.
    """
    if selection not in SELECTIONS:
        raise RayexpError(f"selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise RayexpError(f"fractions {list(fractions)}: each must be in (0, 1]")
    records = list(source.records)
    if not isinstance(source.records, (list, tuple)):
        source.records = records
    labels = _checked_labels(name, source, records)
    splits = assign_splits(name, source, records, labels, seed)

    progress = Progress(f"checking {name}", len(records), quiet)
    results = list(
        parallel_map(_inspect_job, [(r.image, r.id) for r in records], workers or os.cpu_count() or 1, progress)
    )
    ok = [i for i, res in enumerate(results) if res[0] is not None]
    unreadable = [records[i].id for i, res in enumerate(results) if res[0] is None]

    present = [s for s in SPLITS if s in set(splits)]
    counts = {s: [0] * len(source.classes) for s in present}
    for i in ok:
        counts[splits[i]][records[i].label] += 1
    sizes = _size_summary(results, ok)
    modes = dict(Counter(results[i][2] for i in ok).most_common())

    problems = _unreadable(unreadable) + _skipped(source)
    problems += _duplicates(records, splits, results, ok, source.classes)
    problems += _small_classes(records, counts, source.classes, fractions, selection)
    problems += _imbalance(records, splits, counts, source.classes)
    problems += _small_images(records, results, ok, tuple(input_size))
    problems += _mixed_modes(records, results, ok, modes, source.classes)
    problems.sort(key=lambda p: (not p.serious, KINDS.index(p.kind)))
    return DataCheck(list(source.classes), counts, sizes, modes, problems, name=name, input_size=tuple(input_size))


def _checked_labels(name: str, source: Source, records: list) -> np.ndarray:
    """The records' labels, refused when there are none, one is outside the classes, or only one class occurs."""
    if not records:
        raise RayexpError(f"dataset {name!r}: the source yielded no images")
    n_classes = len(source.classes)
    labels = np.array([r.label for r in records], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        r = records[bad[0]]
        raise RayexpError(f"dataset {name!r}: image {r.id!r} has label {r.label}, outside 0..{n_classes - 1}")
    if len(set(labels.tolist())) < 2:
        raise RayexpError(
            f"dataset {name!r} has images of {len(set(labels.tolist()))} class(es) ({', '.join(source.classes)}): "
            "choosing a classifier needs at least two; add a folder of images of another class"
        )
    return labels


def _size_summary(results: list[tuple], ok: list[int]) -> dict:
    """The (H, W) of the readable images with the fewest pixels, the median count and the most; empty when none is.
    Real images' sizes, never per-axis extremes (10x10000 and 10000x10 images are not "max 10000x10000")."""
    if not ok:
        return {}
    sizes = sorted(((results[i][0], results[i][1]) for i in ok), key=lambda hw: (hw[0] * hw[1], hw))
    return {"min": sizes[0], "median": sizes[(len(sizes) - 1) // 2], "max": sizes[-1]}


def _skipped(source: Source) -> list[Problem]:
    """What a folder source passed over (hidden files and folders, other extensions): said, never silent."""
    if not source.skipped:
        return []
    return [
        Problem(
            "skipped_files",
            False,
            f"{len(source.skipped)} file(s) or folder(s) are not read: hidden, or not an image extension; rename "
            "any that are images you meant to include",
            list(source.skipped),
        )
    ]


def _unreadable(ids: list[str]) -> list[Problem]:
    if not ids:
        return []
    return [
        Problem(
            "unreadable",
            True,
            f"{len(ids)} image(s) cannot be decoded, so preparation would stop on them: "
            "fix or remove these files, or pass --accept-warnings to skip them",
            ids,
        )
    ]


def _labels_note(groups: list[list[int]], records, classes: list[str]) -> str:
    """A clause for duplicate groups whose copies carry different labels (at most one label is right)."""
    mixed = [g for g in groups if len({records[i].label for i in g}) > 1]
    if not mixed:
        return ""
    example = ", ".join(sorted({classes[records[i].label] for i in mixed[0]}))
    return f"; {len(mixed)} group(s) carry different labels (e.g. {example}): keep the copy with the right one"


def _duplicates(records, splits: list[str], results: list[tuple], ok: list[int], classes: list[str]) -> list[Problem]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        groups[results[i][3]].append(i)
    dupes = [g for g in groups.values() if len(g) > 1]
    across = [g for g in dupes if len({splits[i] for i in g}) > 1]
    within = [g for g in dupes if len({splits[i] for i in g}) == 1]
    problems = []
    if across:
        problems.append(
            Problem(
                "duplicate_across_splits",
                True,
                f"{len(across)} image(s) appear with identical pixels in more than one split "
                f"({sum(len(g) for g in across)} files): the model is tested on images it trained on, which "
                "inflates every backbone's test score; remove all but one copy of each"
                + _labels_note(across, records, classes),
                [records[i].id for g in across for i in g],
            )
        )
    if within:
        problems.append(
            Problem(
                "duplicate_within_split",
                False,
                f"{len(within)} image(s) appear more than once within one split ({sum(len(g) for g in within)} files): "
                "they count twice in training or in the test score; remove the extra copies"
                + _labels_note(within, records, classes),
                [records[i].id for g in within for i in g],
            )
        )
    return problems


def _small_classes(
    records, counts: dict[str, list[int]], classes: list[str], fractions: Sequence[float], selection: str
) -> list[Problem]:
    smallest = min(fractions)
    need = min_train_images(smallest, selection)
    train, test = counts.get("train", [0] * len(classes)), counts.get("test", [0] * len(classes))
    problems = []
    for label, name in enumerate(classes):
        reasons = []
        if test[label] == 0:
            reasons.append("no test images: add some, or the class cannot be scored")
        if train[label] < need:
            why = " (one to train on, one held out to validate)" if selection == "val" else ""
            reasons.append(
                f"at fraction {smallest:g} with selection={selection} it needs at least {need} training images{why}: "
                "add images, drop the class"
                + (", or use a larger fraction or --selection test" if selection == "val" else "")
            )
        if reasons:
            problems.append(
                Problem(
                    "class_too_small",
                    True,
                    f"class {name!r} has {train[label]} training and {test[label]} test images; " + "; ".join(reasons),
                    [r.id for r in records if r.label == label],
                )
            )
    return problems


def _imbalance(records, splits: list[str], counts: dict[str, list[int]], classes: list[str]) -> list[Problem]:
    train = counts.get("train", [])
    present = [n for n in train if n > 0]
    if not present or max(present) / min(present) <= IMBALANCE_RATIO:
        return []
    largest = max(range(len(train)), key=lambda c: train[c])
    minority = [c for c, n in enumerate(train) if 0 < n * IMBALANCE_RATIO < train[largest]]
    small = set(minority)
    return [
        Problem(
            "imbalance",
            False,
            f"training classes range from {min(present)} to {train[largest]} images "
            f"({max(present) / min(present):.0f}:1; "
            f"smallest {', '.join(repr(classes[c]) for c in minority[:5])}{', ...' if len(minority) > 5 else ''}, "
            f"largest {classes[largest]!r}): "
            "plain accuracy mostly reflects the large classes; add images to the small ones or read balanced accuracy",
            [r.id for r, s in zip(records, splits) if s == "train" and r.label in small],
        )
    ]


def _small_images(records, results: list[tuple], ok: list[int], input_size: tuple[int, int]) -> list[Problem]:
    small = [i for i in ok if results[i][0] < input_size[0] or results[i][1] < input_size[1]]
    if not small:
        return []
    at = _hw(input_size)
    if len(small) * 2 <= len(ok):
        message = (
            f"{len(small)} of {len(ok)} images are smaller than the training size {at} and will be upscaled "
            "(blurred); check they are not thumbnails or crops"
        )
    else:
        sizes = Counter((results[i][0], results[i][1]) for i in small).most_common(1)[0][0]
        message = (
            f"most images ({len(small)} of {len(ok)}, typically {_hw(sizes)}) are smaller than the training size {at} "
            "and will be upscaled: the backbones see no detail the originals lack, and train slower than they need to"
        )
    return [Problem("small_images", False, message, [records[i].id for i in small])]


def _mixed_modes(
    records, results: list[tuple], ok: list[int], modes: dict[str, int], classes: list[str]
) -> list[Problem]:
    if len(modes) < 2:
        return []
    common = next(iter(modes))  # most common first
    others = [i for i in ok if results[i][2] != common]
    message = (
        f"images come in {len(modes)} modes ({', '.join(f'{m} {n}' for m, n in modes.items())}); "
        "all are converted to RGB for training"
    )
    other_classes = {records[i].label for i in others}
    if len(other_classes) == 1 and len(classes) > 1:
        label = other_classes.pop()
        # only worth saying when the mode could tell the class: most of that class is in it
        if 2 * len(others) >= sum(1 for i in ok if records[i].label == label):
            message += (
                f"; most of class {classes[label]!r} and no other class is non-{common}: "
                "the model may learn the mode rather than the content; convert them or add such images to other classes"
            )
    return [Problem("mixed_modes", False, message, [records[i].id for i in others])]
