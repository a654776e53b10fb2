"""The shard format: one prepared dataset as a manifest plus Parquet parts, written atomically.

``<data_dir>/<name>/manifest.json`` and ``<data_dir>/<name>/<split>/part-NNNNN.parquet`` with columns
``image`` (encoded PNG/JPEG, RGB), ``label`` (int32), ``id`` (string) and ``rank`` (int32, the row's
position within its class in a fixed seeded permutation). Training only ever reads this format; every
source module only yields :class:`SourceRecord` s, and all shared work (splitting, ranking, encoding,
resizing, statistics, writing, verifying) lives here once.

A fraction ``f`` of the training split is the rows with ``rank < max(1, ceil(f * n_class))``. The
training split is stored sorted by rank, so that filter is a prefix of the files and Parquet's row-group
statistics let a 1% trial skip the other 99% of the bytes.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from rayexp import __version__
from rayexp.data.catalog import DatasetInfo
from rayexp.errors import RayexpError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95  # re-encoding a JPEG source at 95 keeps artefacts well below those already present
SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary()),
        pa.field("label", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("rank", pa.int32()),
    ]
)


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


def fraction_count(n_class: int, fraction: float) -> int:
    """How many training rows of a class of ``n_class`` a fraction keeps: ``max(1, ceil(f * n))``.

    Rounded to 9 decimals first so that float error (0.1 * 150 = 15.000000000000002) does not add a row.
    """
    return max(1, math.ceil(round(fraction * n_class, 9)))


def class_ranks(labels: Sequence[int], seed: int) -> np.ndarray:
    """Each row's position within its class in one seeded permutation of all rows."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    ranks = np.empty(len(labels), dtype=np.int32)
    seen: dict[int, int] = {}
    for row in order:
        label = int(labels[row])
        ranks[row] = seen.get(label, 0)
        seen[label] = ranks[row] + 1
    return ranks


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


def stored_size(native: tuple[int, int], train_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) to store an image of ``native`` size at: min(native, training size), never upscaled.

    The image is scaled down, keeping its aspect ratio, until one side reaches the training size, so
    that the resize at training time (which ignores aspect ratio) still only ever shrinks it.
    """
    h, w = native
    scale = max(train_size[0] / h, train_size[1] / w)
    if scale >= 1.0:
        return (h, w)
    return (max(train_size[0], round(h * scale)), max(train_size[1], round(w * scale)))


DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)  # what PIL raises for a bad or truncated file


def load_image(image: object) -> tuple["Image.Image", bytes | None]:
    """A record's image as a fully decoded PIL image, plus the file's bytes when it came as a file.

    Accepts everything :class:`SourceRecord` allows. The pixels are loaded here, not lazily, so that a
    truncated file fails now with one of :data:`DECODE_ERRORS`.
    """
    if callable(image) and not isinstance(image, Image.Image):
        image = image()
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        pil = Image.open(io.BytesIO(data))
        pil.load()
        return pil, data
    if isinstance(image, np.ndarray):
        return Image.fromarray(image), None
    return image, None


def to_rgb(pil: "Image.Image") -> "Image.Image":
    """The image in RGB; 16- and 32-bit integer images are stretched to 8 bits first (a plain convert clips them)."""
    if pil.mode == "RGB":
        return pil
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(pil, dtype=np.float64)
        span = max(array.max() - array.min(), 1.0)
        pil = Image.fromarray(((array - array.min()) * (255.0 / span)).astype(np.uint8))
    return pil.convert("RGB")


def encode_image(image: "Image.Image | np.ndarray | bytes", train_size: tuple[int, int], encoding: str, record_id: str) -> tuple[bytes, tuple[int, int]]:
    """RGB, at most the training size, encoded as ``encoding``; returns the bytes and the stored (H, W).

    A JPEG that is already RGB and small enough is stored byte for byte, not re-encoded.
    """
    try:
        pil, data = load_image(image)
        if data is not None and encoding == "jpeg" and pil.format == "JPEG" and pil.mode == "RGB" and stored_size((pil.height, pil.width), train_size) == (pil.height, pil.width):
            return data, (pil.height, pil.width)
        pil = to_rgb(pil)
    except DECODE_ERRORS as exc:
        raise CorruptImageError(f"image {record_id!r} cannot be decoded ({exc}); fix or remove that file, or pass --skip-corrupt") from None
    size = stored_size((pil.height, pil.width), train_size)
    if size != (pil.height, pil.width):
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    buffer = io.BytesIO()
    if encoding == "png":
        pil.save(buffer, format="PNG")
    elif encoding == "jpeg":
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return buffer.getvalue(), size


class CorruptImageError(RayexpError):
    """An image a source yielded cannot be decoded."""


def decode_image(data: bytes) -> np.ndarray:
    """HxWx3 uint8 array of an encoded shard image."""
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))


def is_uri(location: str | os.PathLike) -> bool:
    """A bucket or file URI (``gs://``, ``s3://``, ``file://``) rather than a local path."""
    return "://" in str(location)


def dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """A local dataset folder (preparation writes locally; copy the folder to a bucket to share it)."""
    return Path(data_dir).expanduser().resolve() / name


def dataset_location(data_dir: str | os.PathLike, name: str) -> str:
    """Where a prepared dataset is read from: a local folder or, for a bucket ``--data-dir``, a URI."""
    return f"{str(data_dir).rstrip('/')}/{name}" if is_uri(data_dir) else str(dataset_dir(data_dir, name))


def _read_text(location: str) -> str | None:
    """The text of a local file or a bucket object, None if it does not exist."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def is_prepared(data_dir: str | os.PathLike, name: str) -> bool:
    return _read_text(f"{dataset_location(data_dir, name)}/{MANIFEST}") is not None


def load_manifest(data_dir: str | os.PathLike, name: str) -> dict:
    """The manifest of a prepared dataset, or an error that says how to prepare it."""
    location = f"{dataset_location(data_dir, name)}/{MANIFEST}"
    text = _read_text(location)
    if text is None:
        raise RayexpError(
            f"dataset {name!r} is not prepared in {data_dir} (no {location}); "
            f"run: python datasets/prepare.py {name} --data-dir {data_dir}"
            + (" locally, then copy the folder to the bucket" if is_uri(data_dir) else "")
        )
    manifest = json.loads(text)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RayexpError(
            f"dataset {name!r} in {dataset_location(data_dir, name)} has shard format {manifest.get('format_version')}, "
            f"this rayexp reads {FORMAT_VERSION}; run: python datasets/prepare.py {name} --force"
        )
    return manifest


def split_paths(data_dir: str | os.PathLike, manifest: dict, split: str) -> list[str]:
    """Paths (or URIs) of a split's Parquet parts."""
    if split not in manifest["splits"]:
        raise RayexpError(f"dataset {manifest['name']!r} has no {split!r} split (it has {', '.join(manifest['splits'])})")
    root = dataset_location(data_dir, manifest["name"])
    return [f"{root}/{f}" for f in manifest["splits"][split]["files"]]


def _parquet_dataset(paths: list[str]) -> "pads.Dataset":
    """A PyArrow dataset over local paths or URIs (one filesystem for all of a split's parts)."""
    if paths and is_uri(paths[0]):
        from pyarrow import fs as pafs

        filesystem, _ = pafs.FileSystem.from_uri(paths[0])
        return pads.dataset([pafs.FileSystem.from_uri(p)[1] for p in paths], format="parquet", filesystem=filesystem)
    return pads.dataset(paths, format="parquet")


def fraction_thresholds(manifest: dict, fraction: float) -> list[int]:
    """Per class, the rank below which a training row belongs to ``fraction``."""
    counts = manifest["splits"]["train"]["class_counts"]
    return [fraction_count(n, fraction) for n in counts]


VAL_SHARE = 0.1  # selection=val holds out this share of each class of the trial's training rows
PARTS = ("all", "train", "val")


def holdout_count(k: int) -> int:
    """Rows of a class of ``k`` fraction rows held out for validation: 10%, at least one, none if k < 2."""
    return 0 if k < 2 else max(1, round(VAL_SHARE * k))


def rank_ranges(manifest: dict, fraction: float, part: str = "all") -> list[tuple[list[int], int, int]]:
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


def fraction_filter(manifest: dict, fraction: float, part: str = "all") -> "pc.Expression | None":
    """A PyArrow filter selecting ``fraction`` of the training split (or its train/val part); None for all of it."""
    if fraction >= 1.0 and part == "all":
        return None
    ranges = rank_ranges(manifest, fraction, part)
    if not ranges:
        return pc.scalar(False)
    # One bound on rank that prunes row groups by their statistics, then the exact per-class rule.
    expr = None
    for labels, lo, hi in ranges:
        term = pc.field("label").isin(labels) & (pc.field("rank") < hi)
        if lo:
            term = term & (pc.field("rank") >= lo)
        expr = term if expr is None else expr | term
    return (pc.field("rank") < max(hi for _, _, hi in ranges)) & expr


def read_split(data_dir: str | os.PathLike, name: str, split: str, fraction: float = 1.0, columns: Sequence[str] | None = None, part: str = "all") -> pa.Table:
    """A split (or a fraction of the training split, or its train/val part) as an Arrow table, filter pushed into the scan."""
    manifest = load_manifest(data_dir, name)
    dataset = _parquet_dataset(split_paths(data_dir, manifest, split))
    filt = fraction_filter(manifest, fraction, part) if split == "train" else None
    return dataset.to_table(columns=list(columns) if columns else None, filter=filt)


def row_groups_scanned(data_dir: str | os.PathLike, name: str, fraction: float) -> tuple[int, int]:
    """(row groups a fraction's scan must read, row groups in the training split).

    What the pushed-down filter buys: row groups whose ``rank`` statistics exclude the fraction are
    never read.
    """
    manifest = load_manifest(data_dir, name)
    dataset = _parquet_dataset(split_paths(data_dir, manifest, "train"))
    filt = fraction_filter(manifest, fraction)
    total = kept = 0
    for fragment in dataset.get_fragments():
        total += fragment.metadata.num_row_groups
        kept += len(fragment.split_by_row_group(filter=filt)) if filt is not None else fragment.metadata.num_row_groups
    return kept, total


def _write_split(root: Path, split: str, rows: list[dict], rows_per_part: int, row_group_rows: int) -> list[str]:
    (root / split).mkdir(parents=True)
    files = []
    for part, begin in enumerate(range(0, max(len(rows), 1), rows_per_part)):
        table = pa.Table.from_pylist(rows[begin : begin + rows_per_part], schema=SCHEMA)
        rel = f"{split}/part-{part:05d}.parquet"
        # No compression: the images are PNG/JPEG already, and a plain layout keeps scans cheap.
        pq.write_table(table, root / rel, row_group_size=row_group_rows, compression="none", write_statistics=True)
        files.append(rel)
    return files


class _Progress:
    """A progress line on a terminal; a line per 10% otherwise (logs, CI)."""

    def __init__(self, message: str, total: int, quiet: bool = False) -> None:
        self.message, self.total, self.done, self.quiet = message, total, 0, quiet
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.quiet:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        text = f"{self.message}: {self.done}/{self.total} images ({rate:.0f}/s)"
        if self.tty:
            print("\r" + text, end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
        elif self.done == self.total or self.done % max(self.total // 10, 1) == 0:
            print(text, file=sys.stderr, flush=True)


def _encode_job(job: tuple) -> tuple:
    """Encode one record in a worker process: (data, size, channel sums, channel squared sums, pixels) or (None, error)."""
    image, record_id, train_size, encoding = job
    try:
        data, size = encode_image(image, train_size, encoding, record_id)
    except CorruptImageError as exc:
        return None, str(exc)
    pixels = decode_image(data).reshape(-1, 3).astype(np.float64) / 255.0
    return data, size, pixels.sum(0), (pixels**2).sum(0), len(pixels)


def parallel_map(fn, jobs: list[tuple], workers: int, progress: _Progress):
    """``fn(job)`` for each job, in job order, across ``workers`` processes (in this one for few jobs);
    ``fn`` must be a module-level function so that the worker processes can import it."""
    if workers <= 1 or len(jobs) < 64:
        for job in jobs:
            yield fn(job)
            progress.step()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may hold threads (Ray, PyArrow) that fork would copy half-way.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(fn, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8)))):
            yield result
            progress.step()


def write_dataset(
    data_dir: str | os.PathLike,
    info: DatasetInfo,
    source: Source,
    *,
    seed: int = 0,
    force: bool = False,
    workers: int = 1,
    skip_corrupt: bool = False,
    rows_per_part: int = 4096,
    row_group_rows: int = 256,
    quiet: bool = False,
) -> dict:
    """Encode, split, rank and write ``source`` as shards of ``info.name``, atomically; returns the manifest.

    Images are encoded in ``workers`` processes. Everything is written to a hidden temporary folder beside
    the target, verified, then renamed into place, so an error or an interrupt never leaves a
    half-written dataset behind. A corrupt image stops the run naming it, or with ``skip_corrupt`` is
    left out, counted and listed in the manifest.
    """
    target = dataset_dir(data_dir, info.name)
    if target.exists() and not force:
        raise RayexpError(f"dataset {info.name!r} is already prepared in {target}; pass --force to redo it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{info.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        manifest = _write_into(tmp, info, source, seed, workers, skip_corrupt, rows_per_part, row_group_rows, quiet)
        verify_dataset(tmp, manifest)
        if target.exists():
            old = target.parent / f".{info.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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


def _write_into(root: Path, info: DatasetInfo, source: Source, seed: int, workers: int, skip_corrupt: bool, rows_per_part: int, row_group_rows: int, quiet: bool) -> dict:
    root.mkdir(parents=True)
    n_classes = len(source.classes)
    records = list(source.records)
    if not records:
        raise RayexpError(f"dataset {info.name!r}: the source yielded no images")
    labels = np.array([r.label for r in records], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        r = records[bad[0]]
        raise RayexpError(f"dataset {info.name!r}: image {r.id!r} has label {r.label}, outside 0..{n_classes - 1}")
    splits = assign_splits(info.name, source, records, labels, seed)

    encoding = source.encoding or info.encoding
    progress = _Progress(f"preparing {info.name}", len(records), quiet)
    jobs = [(r.image, r.id, tuple(info.input_size), encoding) for r in records]
    encoded: list[tuple | None] = []
    skipped: list[dict] = []
    channel_sum, channel_sq, n_pixels = np.zeros(3), np.zeros(3), 0
    for record, split, result in zip(records, splits, parallel_map(_encode_job, jobs, workers, progress)):
        if result[0] is None:
            if not skip_corrupt:
                raise CorruptImageError(result[1])
            skipped.append({"id": record.id, "split": split, "error": result[1]})
            encoded.append(None)
            continue
        encoded.append(result[:2])
        if split == "train":
            channel_sum += result[2]
            channel_sq += result[3]
            n_pixels += result[4]

    manifest_splits: dict[str, dict] = {}
    sizes = [e[1] for e in encoded if e is not None]
    for split in [s for s in SPLITS if s in set(splits)]:
        idx = [i for i, s in enumerate(splits) if s == split and encoded[i] is not None]
        ranks = class_ranks(labels[idx], seed)
        rows = [
            {"image": encoded[i][0], "label": int(labels[i]), "id": records[i].id, "rank": int(rank)}
            for i, rank in zip(idx, ranks)
        ]
        rows.sort(key=lambda row: (row["rank"], row["label"]))
        counts = np.bincount(labels[idx], minlength=n_classes)
        manifest_splits[split] = {
            "rows": len(rows),
            "class_counts": [int(c) for c in counts],
            "files": _write_split(root, split, rows, rows_per_part, row_group_rows),
        }
    if "train" not in manifest_splits or n_pixels == 0:
        raise RayexpError(f"dataset {info.name!r}: the training split is empty")
    mean = channel_sum / n_pixels
    std = np.sqrt(np.maximum(channel_sq / n_pixels - mean**2, 1e-12))
    heights, widths = [s[0] for s in sizes], [s[1] for s in sizes]
    paper = {"train": info.train, "test": info.test} if info.train else {}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": info.name,
        "title": info.title,
        "domain": info.domain,
        "classes": list(source.classes),
        "n_classes": n_classes,
        "splits": manifest_splits,
        "image": {
            "encoding": encoding,
            "jpeg_quality": JPEG_QUALITY if encoding == "jpeg" else None,
            "max_size": list(info.input_size),
            "stored_min": [min(heights), min(widths)],
            "stored_max": [max(heights), max(widths)],
        },
        "input_size": list(info.input_size),
        "augment": info.augment,
        "balanced_accuracy": info.balanced_accuracy,
        "normalization": {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]},
        "split_rule": source.split_rule,
        "seed": seed,
        "source_checksums": dict(source.checksums),
        "paper_counts": paper,
        "notes": list(source.notes),
        "skipped_corrupt": skipped,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rayexp_version": __version__,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_dataset(root: Path, manifest: dict) -> None:
    """Read the written shards back: row and class counts as recorded, labels in range, ranks dense."""
    n_classes = manifest["n_classes"]
    for split, meta in manifest["splits"].items():
        table = pads.dataset([str(root / f) for f in meta["files"]], format="parquet").to_table(columns=["label", "rank", "id"])
        if table.num_rows != meta["rows"]:
            raise RayexpError(f"{manifest['name']}/{split}: wrote {meta['rows']} rows but read back {table.num_rows}")
        labels = table["label"].to_numpy()
        if labels.min() < 0 or labels.max() >= n_classes:
            raise RayexpError(f"{manifest['name']}/{split}: a label is outside 0..{n_classes - 1}")
        counts = np.bincount(labels, minlength=n_classes)
        if counts.tolist() != meta["class_counts"]:
            raise RayexpError(f"{manifest['name']}/{split}: class counts read back differ from those written")
        empty = [manifest["classes"][c] for c in np.flatnonzero(counts == 0)]
        if empty:
            raise RayexpError(f"{manifest['name']}/{split}: classes with no images: {', '.join(empty)}")
        ranks = table["rank"].to_numpy()
        for c in range(n_classes):
            if sorted(ranks[labels == c].tolist()) != list(range(counts[c])):
                raise RayexpError(f"{manifest['name']}/{split}: ranks of class {c} are not 0..{counts[c] - 1}")
