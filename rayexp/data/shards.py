"""The shard format: one prepared dataset as a manifest plus Parquet parts; where it lives, its manifest,
reading it and verifying it.

``<data_dir>/<name>/manifest.json`` and ``<data_dir>/<name>/<split>/part-NNNNN.parquet`` with columns
``image`` (encoded PNG/JPEG, RGB), ``label`` (int32), ``id`` (string), ``rank`` (int32, the row's
index within its class in a fixed seeded permutation) and ``position`` (float64, ``(rank + 0.5) / n_class``
with ``n_class`` the class's row count in that split). Training only ever reads this format; every
source module only yields :class:`rayexp.data.records.SourceRecord` s, and :mod:`rayexp.data.writer` does
all the shared work of writing it (splitting, ranking, encoding with :mod:`rayexp.data.codec`,
statistics) once.

Every split is stored in stratified order, sorted by (position, label): each class is spread evenly over
the file, so every prefix holds the split's class proportions (within one row per class). A streamed
epoch, which reads the file in order through a small local shuffle buffer, therefore keeps the split's
class mix all the way through, instead of ending on the majority class alone.

A fraction ``f`` of the training split is the rows with ``rank < max(1, ceil(f * n_class))``
(:mod:`rayexp.data.rows`). Those rows have ``position < max(1, ceil(f * n_class)) / n_class`` (about
``f``), so they lie in the first part of the files and Parquet's row-group statistics on ``position``
let a 1% trial skip the other ~99% of the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from rayexp.data.rows import TrialRows
from rayexp.errors import RayexpError

# 2: each shard file's checksum and size, and the manifest's fingerprint; 3: the position column, splits in
# stratified order
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary()),
        pa.field("label", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("position", pa.float64()),
    ]
)


def stratified_positions(labels: Sequence[int], ranks: Sequence[int]) -> np.ndarray:
    """Each row's ``position``: ``(rank + 0.5) / n_class``, its class's count ``n_class`` taken over these rows.

    Sorting a split by (position, label) interleaves its classes evenly, so every prefix of it holds the
    split's class proportions (within one row per class).
    """
    labels, ranks = np.asarray(labels, dtype=np.int64), np.asarray(ranks, dtype=np.float64)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    return (ranks + 0.5) / counts[labels]


def is_uri(location: str | os.PathLike) -> bool:
    """A bucket or file URI (``gs://``, ``s3://``, ``file://``) rather than a local path."""
    return "://" in str(location)


def dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """A local dataset folder (preparation writes locally; copy the folder to a bucket to share it)."""
    return Path(data_dir).expanduser().resolve() / name


def dataset_location(data_dir: str | os.PathLike, name: str) -> str:
    """Where a prepared dataset is read from: a local folder or, for a bucket ``--data-dir``, a URI."""
    return f"{str(data_dir).rstrip('/')}/{name}" if is_uri(data_dir) else str(dataset_dir(data_dir, name))


def _open_input(location: str):
    """A binary input stream over a local file or a bucket object."""
    if not is_uri(location):
        return open(location, "rb")
    filesystem, path = pafs.FileSystem.from_uri(location)
    return filesystem.open_input_stream(path)


def _file_size(location: str) -> int | None:
    """A file's size in bytes, None if it does not exist."""
    if not is_uri(location):
        return os.stat(location).st_size if os.path.isfile(location) else None
    filesystem, path = pafs.FileSystem.from_uri(location)
    info = filesystem.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def file_sha256(location: str) -> str:
    """The sha256 (hex) of a local file or a bucket object, as a manifest records each shard's."""
    digest = hashlib.sha256()
    with _open_input(location) as stream:
        while block := stream.read(1 << 22):
            digest.update(block)  # hashlib releases the GIL on large blocks: files hash in parallel threads
    return digest.hexdigest()


def _read_text(location: str) -> str | None:
    """The text of a local file or a bucket object, None if it does not exist."""
    if _file_size(location) is None:
        return None
    with _open_input(location) as stream:
        return stream.read().decode()


def is_prepared(data_dir: str | os.PathLike, name: str) -> bool:
    return _read_text(f"{dataset_location(data_dir, name)}/{MANIFEST}") is not None


def outdated_format(data_dir: str | os.PathLike, name: str) -> int | None:
    """The shard format of a prepared dataset when it is older than this rayexp's :data:`FORMAT_VERSION`
    (so that preparing it again is the fix), else None: not prepared, current, newer, or unreadable (which
    :func:`load_manifest` explains)."""
    text = _read_text(f"{dataset_location(data_dir, name)}/{MANIFEST}")
    try:
        version = json.loads(text).get("format_version") if text is not None else None
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
        return version
    return None


def _prepare_fix(name: str) -> str:
    return (
        f"prepare it again: python datasets/prepare.py {name} --force "
        "(with the --source or --download it was prepared from)"
    )


def load_manifest(data_dir: str | os.PathLike, name: str) -> dict:
    """The manifest of a prepared dataset, checked for consistency (:func:`validate_manifest`), or an
    error that says how to prepare it."""
    location = f"{dataset_location(data_dir, name)}/{MANIFEST}"
    text = _read_text(location)
    if text is None:
        raise RayexpError(
            f"dataset {name!r} is not prepared in {data_dir} (no {location}); "
            f"run: python datasets/prepare.py {name} --data-dir {data_dir}"
            + (" locally, then copy the folder to the bucket" if is_uri(data_dir) else "")
        )
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RayexpError(f"{location} is not valid JSON ({exc}); {_prepare_fix(name)}") from None
    if not isinstance(manifest, dict):
        raise RayexpError(f"{location} is not a manifest (a JSON object); {_prepare_fix(name)}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RayexpError(
            f"dataset {name!r} in {dataset_location(data_dir, name)} has shard format "
            f"{manifest.get('format_version')}, this rayexp reads {FORMAT_VERSION}; {_prepare_fix(name)}"
        )
    validate_manifest(manifest, location)
    return manifest


FINGERPRINT_EXCLUDED = ("fingerprint", "created", "rayexp_version", "source_checksums")


def manifest_fingerprint(manifest: dict) -> str:
    """The dataset's fingerprint: a sha256 of its manifest, which holds every shard file's sha256 and each
    split's per-class counts, so it changes whenever the data trained on changes.

    Left out: when and by which rayexp it was prepared, and the source's checksums (a folder whose files
    were only touched prepares into the same shards, so its results stay valid).
    """
    content = {k: v for k, v in manifest.items() if k not in FINGERPRINT_EXCLUDED}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _find_problems(manifest: dict, problems: list[str]) -> None:
    """Add to ``problems`` what contradicts itself in a manifest; a missing or mistyped field raises
    KeyError, TypeError or AttributeError (the problems found before it stay)."""
    classes, n_classes, splits = manifest["classes"], manifest["n_classes"], manifest["splits"]
    if manifest.get("fingerprint") != manifest_fingerprint(manifest):
        problems.append("its content does not match its fingerprint: it was edited after preparation")
    if not isinstance(n_classes, int) or n_classes != len(classes):
        problems.append(f"n_classes is {n_classes!r} but {len(classes)} classes are listed")
    if len(classes) < 2:
        problems.append(f"{len(classes)} class(es): a classification benchmark needs at least two")
    if "train" not in splits or "test" not in splits:
        problems.append(f"splits {sorted(splits)}: train and test are both needed")
    for split, meta in splits.items():
        counts = meta["class_counts"]
        if len(counts) != len(classes):
            problems.append(f"{split}: {len(counts)} class counts for {len(classes)} classes")
        if sum(counts) != meta["rows"]:
            problems.append(f"{split}: {meta['rows']} rows but the class counts add up to {sum(counts)}")
        if not meta["files"] or set(meta["files"]) != set(meta["sha256"]) or set(meta["files"]) != set(meta["bytes"]):
            problems.append(f"{split}: files without a checksum and size")
    size = manifest["input_size"]
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        problems.append(f"input_size {size!r} is not two positive integers")
    std = manifest["normalization"]["std"]
    if len(std) != 3 or min(std) <= 0:
        problems.append(f"normalization std {std!r} is not three positive numbers")


def validate_manifest(manifest: dict, location: str) -> None:
    """Refuse a manifest that contradicts itself or was edited by hand (its fingerprint no longer matches).

    Cheap (no shard is read), so every reader of a manifest runs it; :func:`verify_dataset` checks the
    files against it.
    """
    name = manifest.get("name", "?")
    problems: list[str] = []
    try:
        _find_problems(manifest, problems)
    except (KeyError, TypeError, AttributeError) as exc:
        problems.append(f"a field is missing or of the wrong type ({type(exc).__name__}: {exc})")
    if problems:
        raise RayexpError(
            f"{location} of dataset {name!r} is inconsistent: " + "; ".join(problems) + f"; {_prepare_fix(name)}"
        )


def split_paths(data_dir: str | os.PathLike, manifest: dict, split: str) -> list[str]:
    """Paths (or URIs) of a split's Parquet parts."""
    if split not in manifest["splits"]:
        raise RayexpError(
            f"dataset {manifest['name']!r} has no {split!r} split (it has {', '.join(manifest['splits'])})"
        )
    root = dataset_location(data_dir, manifest["name"])
    return [f"{root}/{f}" for f in manifest["splits"][split]["files"]]


def _parquet_dataset(paths: list[str]) -> "pads.Dataset":
    """A PyArrow dataset over local paths or URIs (one filesystem for all of a split's parts)."""
    if paths and is_uri(paths[0]):
        filesystem, _ = pafs.FileSystem.from_uri(paths[0])
        return pads.dataset([pafs.FileSystem.from_uri(p)[1] for p in paths], format="parquet", filesystem=filesystem)
    return pads.dataset(paths, format="parquet")


def read_split(
    data_dir: str | os.PathLike,
    name: str,
    split: str,
    fraction: float = 1.0,
    columns: Sequence[str] | None = None,
    part: str = "all",
) -> pa.Table:
    """A split (or a fraction of the training split, or its train/val part) as an Arrow table, the filter
    (:meth:`rayexp.data.rows.TrialRows.filter`) pushed into the scan."""
    manifest = load_manifest(data_dir, name)
    dataset = _parquet_dataset(split_paths(data_dir, manifest, split))
    filt = TrialRows(split, fraction, part).filter(manifest)
    return dataset.to_table(columns=list(columns) if columns else None, filter=filt)


def row_groups_scanned(data_dir: str | os.PathLike, name: str, fraction: float) -> tuple[int, int]:
    """(row groups a fraction's scan must read, row groups in the training split).

    What the pushed-down filter buys: row groups whose ``position`` statistics exclude the fraction are
    never read.
    """
    manifest = load_manifest(data_dir, name)
    dataset = _parquet_dataset(split_paths(data_dir, manifest, "train"))
    filt = TrialRows("train", fraction).filter(manifest)
    total = kept = 0
    for fragment in dataset.get_fragments():
        total += fragment.metadata.num_row_groups
        kept += len(fragment.split_by_row_group(filter=filt)) if filt is not None else fragment.metadata.num_row_groups
    return kept, total


def verify_files(location: str | os.PathLike, manifest: dict, threads: int = 8) -> None:
    """Every shard file's size and sha256 as ``manifest`` records them, or raise naming the file. A trial runs it
    against the manifest its sweep's preflight verified before it reads a row, so that what was verified is what
    it trains and is scored on (~1 GB/s)."""
    root = str(location).rstrip("/")
    name, fix = manifest["name"], _prepare_fix(manifest["name"])
    files = [(f"{root}/{rel}", meta) for meta in manifest["splits"].values() for rel in meta["files"]]
    for (path, meta), size in zip(files, [_file_size(p) for p, _ in files]):
        rel = path[len(root) + 1 :]
        if size is None:
            raise RayexpError(f"shard {path} of dataset {name!r} is missing; {fix}")
        if size != meta["bytes"][rel]:
            raise RayexpError(
                f"shard {path} has {size} bytes, its manifest says {meta['bytes'][rel]}: "
                f"it changed after preparation; {fix}"
            )
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        digests = list(pool.map(file_sha256, [p for p, _ in files]))
    for (path, meta), digest in zip(files, digests):
        if digest != meta["sha256"][path[len(root) + 1 :]]:
            raise RayexpError(
                f"shard {path} does not match the checksum in its manifest: it changed after preparation; {fix}"
            )


def _verify_rows(root: str, manifest: dict, split: str) -> list[str]:
    """A split's rows read back (no image) against its manifest entry, or raise naming the split; its ids."""
    meta, n_classes, classes = manifest["splits"][split], manifest["n_classes"], manifest["classes"]
    where, fix = f"dataset {manifest['name']!r}, {split} split ({root}/{split}/)", _prepare_fix(manifest["name"])
    try:
        dataset = _parquet_dataset([f"{root}/{f}" for f in meta["files"]])
        missing = [c for c in SCHEMA.names if c not in dataset.schema.names]
        table = None if missing else dataset.to_table(columns=["label", "rank", "id", "position"])
    except (pa.ArrowException, OSError) as exc:
        raise RayexpError(f"{where} cannot be read ({exc}); {fix}") from None
    if missing:
        raise RayexpError(f"{where}: the shards have no {', '.join(missing)} column (an older shard format); {fix}")
    if table.num_rows != meta["rows"]:
        raise RayexpError(f"{where}: the manifest says {meta['rows']} rows, the shards hold {table.num_rows}; {fix}")
    labels = table["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise RayexpError(f"{where}: a label is outside 0..{n_classes - 1}; {fix}")
    counts = np.bincount(labels, minlength=n_classes)
    if counts.tolist() != meta["class_counts"]:
        raise RayexpError(
            f"{where}: the shards' class counts {counts.tolist()} differ from the manifest's "
            f"{meta['class_counts']}; {fix}"
        )
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty and split in ("train", "test"):
        raise RayexpError(f"{where}: classes with no images: {', '.join(empty)}")
    ranks = table["rank"].to_numpy()
    for c in range(n_classes):
        if not np.array_equal(np.sort(ranks[labels == c]), np.arange(counts[c])):
            raise RayexpError(f"{where}: the ranks of class {classes[c]!r} are not 0..{counts[c] - 1}; {fix}")
    positions = table["position"].to_numpy()
    if len(labels) and not np.allclose(positions, stratified_positions(labels, ranks), rtol=1e-12, atol=0):
        raise RayexpError(f"{where}: a row's position is not (rank + 0.5) / its class's count; {fix}")
    if np.any(np.diff(positions) < 0):
        raise RayexpError(f"{where}: the rows are not in stratified order (by position); {fix}")
    return table["id"].to_pylist()


def verify_dataset(location: str | os.PathLike, manifest: dict, checksums: bool = True, threads: int = 8) -> None:
    """Check the shards at ``location`` (a folder or URI) against their manifest, or raise naming the file.

    Every file's size and sha256 as recorded (with ``checksums``), then its rows read back (labels, ranks,
    positions and ids, no image): row and per-class counts as recorded, labels in 0..C-1, ranks dense in
    each class, so a fraction selects what the manifest says it does, and each position ``(rank + 0.5) /
    n_class``, in stratified (non-decreasing) order, so that pruning by position keeps every fraction row; no
    id in two splits (a forger who recomputed the manifest's checksums still cannot put test images in train).
    Measured on a 2-core machine: about 1 GB of shards a second, most of it hashing.
    """
    root = str(location).rstrip("/")
    if checksums:
        verify_files(root, manifest, threads)
    seen: dict[str, str] = {}
    for split in manifest["splits"]:
        ids = _verify_rows(root, manifest, split)
        both = sorted({i for i in ids if i in seen})
        if both:
            raise RayexpError(
                f"dataset {manifest['name']!r}: {len(both)} image id(s) are in both the {seen[both[0]]} and the "
                f"{split} split (e.g. {both[0]!r}): the splits overlap, so test accuracy would be measured on "
                f"training images; {_prepare_fix(manifest['name'])}"
            )
        seen.update(dict.fromkeys(ids, split))
