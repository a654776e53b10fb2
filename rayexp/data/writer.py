"""Writing a source (:mod:`rayexp.data.records`) as shards (:mod:`rayexp.data.shards`): checking its
labels, encoding its images in worker processes, ranking each split's rows, computing the statistics,
and the atomic write of the Parquet parts and the manifest.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayexp import __version__
from rayexp.data.catalog import DatasetInfo
from rayexp.data.codec import JPEG_QUALITY, CorruptImageError, decode_image, encode_image
from rayexp.data.records import Source, SourceRecord, assign_splits
from rayexp.data.scratch import leftover_name, move_into_place, remove_stale_leftovers, storage_error
from rayexp.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    SCHEMA,
    SPLITS,
    dataset_dir,
    file_sha256,
    manifest_fingerprint,
    stratified_positions,
    verify_dataset,
)
from rayexp.data.workers import Progress, parallel_map
from rayexp.errors import RayexpError


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


def _checked_labels(name: str, source: Source, records: list[SourceRecord]) -> np.ndarray:
    """The records' labels, refused unless every class of ``source`` has images and no other label occurs."""
    n_classes = len(source.classes)
    if not records:
        raise RayexpError(f"dataset {name!r}: the source yielded no images")
    labels = np.array([r.label for r in records], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        r = records[bad[0]]
        raise RayexpError(f"dataset {name!r}: image {r.id!r} has label {r.label}, outside 0..{n_classes - 1}")
    # A classifier of one class scores 100% and says nothing; refuse it before encoding anything.
    present = set(labels.tolist())
    if len(present) < 2:
        of = f" (of {n_classes}: {', '.join(source.classes)})" if n_classes > 1 else ""
        raise RayexpError(
            f"dataset {name!r} has images of only class {source.classes[labels[0]]!r}{of}: a classifier needs "
            "at least two classes; add images of at least one more class (another class folder)"
        )
    empty = [c for label, c in enumerate(source.classes) if label not in present]
    if empty:
        raise RayexpError(
            f"dataset {name!r}: classes with no images: {', '.join(empty)}; "
            "add images of each, or remove them from the source"
        )
    return labels


def _encode_job(job: tuple) -> tuple:
    """Encode one record in a worker process: (data, size, channel sums, channel squared sums, pixels)
    or (None, error)."""
    image, record_id, train_size, encoding = job
    try:
        data, size = encode_image(image, train_size, encoding, record_id)
    except CorruptImageError as exc:
        return None, str(exc)
    pixels = decode_image(data).reshape(-1, 3).astype(np.float64) / 255.0
    return data, size, pixels.sum(0), (pixels**2).sum(0), len(pixels)


@dataclass
class _Encoded:
    """Every record encoded (None where skipped as corrupt), the skipped ones, and the training split's
    per-channel pixel sums."""

    images: list[tuple | None]
    skipped: list[dict]
    channel_sum: np.ndarray
    channel_sq: np.ndarray
    n_pixels: int


def _encode_all(
    info: DatasetInfo,
    records: list[SourceRecord],
    splits: list[str],
    encoding: str,
    workers: int,
    skip_corrupt: bool,
    quiet: bool,
) -> _Encoded:
    """Encode every record in ``workers`` processes; a corrupt image stops it unless ``skip_corrupt``."""
    progress = Progress(f"preparing {info.name}", len(records), quiet)
    jobs = [(r.image, r.id, tuple(info.input_size), encoding) for r in records]
    out = _Encoded([], [], np.zeros(3), np.zeros(3), 0)
    for record, split, result in zip(records, splits, parallel_map(_encode_job, jobs, workers, progress)):
        if result[0] is None:
            if not skip_corrupt:
                raise CorruptImageError(result[1])
            out.skipped.append({"id": record.id, "split": split, "error": result[1]})
            out.images.append(None)
            continue
        out.images.append(result[:2])
        if split == "train":
            out.channel_sum += result[2]
            out.channel_sq += result[3]
            out.n_pixels += result[4]
    return out


def _write_split(root: Path, split: str, rows: list[dict], rows_per_part: int, row_group_rows: int) -> dict:
    """Write a split's parts; returns its manifest entry's ``files``, ``sha256`` and ``bytes``."""
    (root / split).mkdir(parents=True)
    files = []
    for part, begin in enumerate(range(0, max(len(rows), 1), rows_per_part)):
        table = pa.Table.from_pylist(rows[begin : begin + rows_per_part], schema=SCHEMA)
        rel = f"{split}/part-{part:05d}.parquet"
        # No compression: the images are PNG/JPEG already, and a plain layout keeps scans cheap.
        pq.write_table(table, root / rel, row_group_size=row_group_rows, compression="none", write_statistics=True)
        files.append(rel)
    return {
        "files": files,
        "sha256": {rel: file_sha256(str(root / rel)) for rel in files},
        "bytes": {rel: (root / rel).stat().st_size for rel in files},
    }


def _write_splits(
    root: Path,
    records: list[SourceRecord],
    labels: np.ndarray,
    splits: list[str],
    encoded: _Encoded,
    n_classes: int,
    seed: int,
    rows_per_part: int,
    row_group_rows: int,
) -> dict[str, dict]:
    """Rank and write each split in stratified order; returns the manifest's ``splits``."""
    manifest_splits: dict[str, dict] = {}
    for split in [s for s in SPLITS if s in set(splits)]:
        idx = [i for i, s in enumerate(splits) if s == split and encoded.images[i] is not None]
        ranks = class_ranks(labels[idx], seed)
        positions = stratified_positions(labels[idx], ranks)
        rows = [
            {
                "image": encoded.images[i][0],
                "label": int(labels[i]),
                "id": records[i].id,
                "rank": int(rank),
                "position": float(position),
            }
            for i, rank, position in zip(idx, ranks, positions)
        ]
        rows.sort(key=lambda row: (row["position"], row["label"]))  # stratified order: see rayexp.data.shards
        counts = np.bincount(labels[idx], minlength=n_classes)
        manifest_splits[split] = {
            "rows": len(rows),
            "class_counts": [int(c) for c in counts],
            **_write_split(root, split, rows, rows_per_part, row_group_rows),
        }
    return manifest_splits


def _manifest(info: DatasetInfo, source: Source, encoding: str, splits: dict, encoded: _Encoded, seed: int) -> dict:
    """The manifest of a written dataset, its fingerprint included."""
    mean = encoded.channel_sum / encoded.n_pixels
    std = np.sqrt(np.maximum(encoded.channel_sq / encoded.n_pixels - mean**2, 1e-12))
    sizes = [e[1] for e in encoded.images if e is not None]
    heights, widths = [s[0] for s in sizes], [s[1] for s in sizes]
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": info.name,
        "title": info.title,
        "domain": info.domain,
        "classes": list(source.classes),
        "n_classes": len(source.classes),
        "splits": splits,
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
        "paper_counts": {"train": info.train, "test": info.test} if info.train else {},
        "notes": list(source.notes),
        "skipped_corrupt": encoded.skipped,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rayexp_version": __version__,
    }
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    return manifest


def _write_into(
    root: Path,
    info: DatasetInfo,
    source: Source,
    seed: int,
    workers: int,
    skip_corrupt: bool,
    rows_per_part: int,
    row_group_rows: int,
    quiet: bool,
) -> dict:
    """Write ``source`` as a dataset in the new folder ``root``; returns its manifest."""
    root.mkdir(parents=True)
    records = list(source.records)
    labels = _checked_labels(info.name, source, records)
    splits = assign_splits(info.name, source, records, labels, seed)
    encoding = source.encoding or info.encoding
    encoded = _encode_all(info, records, splits, encoding, workers, skip_corrupt, quiet)
    manifest_splits = _write_splits(
        root, records, labels, splits, encoded, len(source.classes), seed, rows_per_part, row_group_rows
    )
    if "train" not in manifest_splits or encoded.n_pixels == 0:
        raise RayexpError(f"dataset {info.name!r}: the training split is empty")
    manifest = _manifest(info, source, encoding, manifest_splits, encoded, seed)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _is_under(path: str | os.PathLike, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(folder)


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
    half-written dataset behind; the temporary folders of runs killed outright are removed by the next run.
    A folder without a manifest is not a prepared dataset and is replaced. A full or read-only disk is a
    :class:`RayexpError` naming the folder. A corrupt image stops the run naming it, or with
    ``skip_corrupt`` is left out, counted and listed in the manifest.
    """
    target = dataset_dir(data_dir, info.name)
    if (target / MANIFEST).is_file() and not force:
        raise RayexpError(f"dataset {info.name!r} is already prepared in {target}; pass --force to redo it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(target.parent, info.name, ("partial", "old"), quiet=quiet)
    except OSError as exc:
        raise storage_error(info.name, target.parent, exc) from exc
    if target.exists() and not (target / MANIFEST).is_file():
        # what is_prepared and the sweep go by: without a manifest the folder is not a prepared dataset
        print(
            f"[rayexp] {info.name}: {target} has no {MANIFEST} (an unfinished or damaged copy), "
            "so it is not prepared; replacing it",
            file=sys.stderr,
        )
    tmp = target.parent / leftover_name("partial", info.name)
    try:
        manifest = _write_into(tmp, info, source, seed, workers, skip_corrupt, rows_per_part, row_group_rows, quiet)
        verify_dataset(tmp, manifest, checksums=False)  # just hashed while writing
        move_into_place(tmp, target, info.name)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.filename and not _is_under(exc.filename, target.parent):
            raise  # not the data dir's fault (a source file); the source's own error says more
        raise storage_error(info.name, target.parent, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
