"""Preparing a dataset: find its files (download, a local copy, or a user's folder), convert, write shards.

The library side of ``datasets/prepare.py``: one call per dataset, atomic and idempotent.
"""

from __future__ import annotations

import errno
import importlib
import numbers
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from rayexp.data.catalog import CATALOG, DatasetInfo, default_data_dir, get_dataset_info
from rayexp.data.download import download
from rayexp.data.records import Source
from rayexp.data.scratch import leftover_name, remove_stale_leftovers, storage_error
from rayexp.data.shards import FORMAT_VERSION, dataset_dir, is_prepared, load_manifest, outdated_format, verify_dataset
from rayexp.data.writer import write_dataset
from rayexp.errors import RayexpError
from rayexp.grid import SEED_LIMIT, seed_problem

SPLIT_MODES = ("default", "paper")


def check_settings(seed: int, workers: int | None) -> None:
    """Refuse a seed or a worker count that would fail deep inside (NumPy rejects a negative seed with a
    traceback) or never start, before anything is written. ``workers=None`` means one per CPU."""
    if seed_problem(seed):
        raise RayexpError(f"--seed: {seed_problem(seed)}; use a whole number from 0 to {SEED_LIMIT - 1}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1):
        raise RayexpError(
            f"--workers {workers}: use 1 or more processes (the default is one per CPU, {default_workers()})"
        )


def _is_storage_error(exc: OSError, data_dir: Path) -> bool:
    """Whether an OSError is the data dir's fault (full, read-only, or a file under it), not a source file's."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS):
        return True
    return bool(exc.filename) and Path(os.path.realpath(exc.filename)).is_relative_to(data_dir)


def source_module(info: DatasetInfo) -> ModuleType:
    """The module under ``rayexp/data/sources`` that reads ``info``'s source format."""
    try:
        return importlib.import_module(f"rayexp.data.sources.{info.source}")
    except ModuleNotFoundError as exc:
        if exc.name == f"rayexp.data.sources.{info.source}":
            raise RayexpError(f"dataset {info.name!r}: no converter for source format {info.source!r} yet") from None
        raise


def dataset_info(name: str, source: str | None, domain: str | None) -> DatasetInfo:
    """The catalog entry, or for a name outside the catalog with ``--source``, a user's own dataset."""
    if name in CATALOG:
        info = get_dataset_info(name)
        return replace(info, domain=domain) if domain else info
    if source is None:
        get_dataset_info(name)  # raises: unknown dataset, with the list
    if not name.replace("_", "").replace("-", "").isalnum():
        raise RayexpError(f"dataset name {name!r}: use letters, digits, '_' and '-' only")
    return DatasetInfo(
        name=name,
        title=name,
        domain=domain or "custom",
        n_classes=0,
        train=0,
        test=0,
        source="folder",
        split_rule="given folders, else stratified 80/20",
    )


def downloads_dir(data_dir: str | os.PathLike, name: str) -> Path:
    return Path(data_dir).expanduser().resolve() / ".downloads" / name


def how_to_prepare(name: str, data_dir: str | os.PathLike) -> tuple[str, str]:
    """``(command, what to fetch)``: the command that prepares catalog dataset ``name`` into ``data_dir`` from
    where things stand, and for a source that cannot be downloaded, what to fetch and from where (its source
    module's :func:`local_help`; '' otherwise). The one answer of ``prepare.py --list`` and the sweeps' preflight.

    ``--data-dir`` is named unless it is the default; a bucket is prepared locally and copied there.
    """
    info = get_dataset_info(name)
    module = source_module(info)
    remote = module.remote_files(name)
    uri = "://" in str(data_dir)
    command = f"python datasets/prepare.py {name}"
    if not uri and Path(data_dir).expanduser().resolve() != default_data_dir():
        command += f" --data-dir {data_dir}"
    then = f", then copy its folder to {data_dir}" if uri else ""
    if info.source == "digits" or (not uri and downloads_dir(data_dir, name).is_dir()):
        return command + then, ""  # bundled, or its files already downloaded
    if remote and all(r.checksum for r in remote):
        return command + " --download" + then, ""
    return command + " --source PATH" + then, module.local_help(name)


def _source_root(path: str | os.PathLike, work: Path) -> Path:
    """A folder the source module can search: the folder itself, or one holding a link to the archive."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise RayexpError(f"--source {path} does not exist")
    if path.is_dir():
        return path
    root = work / "source"
    root.mkdir(parents=True)
    (root / path.name).symlink_to(path)
    return root


def _source_files(
    info: DatasetInfo,
    module: ModuleType,
    data_dir: Path,
    work: Path,
    source: str | os.PathLike | None,
    download_files: bool,
    quiet: bool,
) -> Path:
    """The folder the source module reads: ``--source``'s, the download folder (downloading first with
    ``download_files``), or the scratch folder for digits, which ship inside scikit-learn."""
    if source is not None:
        return _source_root(source, work)
    if download_files:
        remote = module.remote_files(info.name)
        if not remote:
            raise RayexpError(f"{info.name} cannot be downloaded automatically: {module.local_help(info.name)}")
        root = downloads_dir(data_dir, info.name)
        for item in remote:
            download(item, root, quiet=quiet)
        return root
    if downloads_dir(data_dir, info.name).is_dir():
        return downloads_dir(data_dir, info.name)
    if not module.remote_files(info.name) and info.source == "digits":
        return work
    how = "--download, or " if module.remote_files(info.name) else ""
    raise RayexpError(f"{info.name}: no source files; pass {how}--source PATH. {module.local_help(info.name)}")


def prepare(
    name: str,
    data_dir: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    download_files: bool = False,
    domain: str | None = None,
    split: str = "default",
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
    skip_corrupt: bool = False,
    quiet: bool = False,
    allow_outside: bool = False,
) -> dict:
    """Prepare ``name`` into ``data_dir``; returns its manifest (the existing one if already prepared).

    A folder of ``name`` without a manifest is not prepared (an unfinished or damaged copy) and is
    replaced; one prepared in an older shard format is prepared again, saying so in one line. Scratch
    folders left in ``data_dir`` by killed runs are removed first, a live run's kept.
    """
    check_settings(seed, workers)
    if split not in SPLIT_MODES:
        raise RayexpError(f"--split {split!r}: use one of {', '.join(SPLIT_MODES)}")
    info = dataset_info(name, str(source) if source else None, domain)
    if is_prepared(data_dir, info.name) and not force:
        old = outdated_format(data_dir, info.name)
        if old is None:
            return load_manifest(data_dir, info.name)
        force = True
        print(
            f"[rayexp] {info.name}: prepared in shard format {old}, this rayexp reads format {FORMAT_VERSION}; "
            "preparing it again",
            file=sys.stderr,
        )
    if allow_outside and info.source != "folder":
        raise RayexpError(
            f"--allow-outside-paths is for a CSV of your own images; {info.name} is read by its own source"
        )
    module = source_module(info)
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(data_dir, info.name, ("work",), quiet=quiet)
        work = data_dir / leftover_name("work", info.name)
        work.mkdir()
    except OSError as exc:
        raise storage_error(info.name, data_dir, exc) from exc
    try:
        root = _source_files(info, module, data_dir, work, source, download_files, quiet)
        src = module.load_source(info.name, root, work, split, **({"allow_outside": True} if allow_outside else {}))
        if info.n_classes and len(src.classes) != info.n_classes and split == "default" and source is None:
            src.notes.append(f"{len(src.classes)} classes where the paper has {info.n_classes}")
        if not info.n_classes:
            info = replace(info, n_classes=len(src.classes))
        return write_dataset(
            data_dir,
            info,
            src,
            seed=seed,
            force=force,
            workers=workers or default_workers(),
            skip_corrupt=skip_corrupt,
            quiet=quiet,
        )
    except OSError as exc:  # extracting an archive into the scratch folder can fill the disk too
        if _is_storage_error(exc, data_dir):
            raise storage_error(info.name, data_dir, exc) from exc
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_user_source(
    name: str,
    source: str | os.PathLike,
    domain: str | None,
    input_size: tuple[int, int],
    allow_outside: bool = False,
) -> tuple[DatasetInfo, Source]:
    """A user's folder or CSV read by the generic folder source, and the entry preparation will write it with.

    Loaded once here so that the data check and the preparation see the same records and split. A CSV's
    paths must lie under its folder unless ``allow_outside``.
    """
    if name in CATALOG:
        raise RayexpError(f"--name {name!r} is one of the paper's datasets; give your data another name")
    info = replace(dataset_info(name, str(source), domain), input_size=tuple(input_size))
    with tempfile.TemporaryDirectory(prefix="rayexp-source-") as work:
        root = _source_root(source, Path(work))
        src = source_module(info).load_source(info.name, root, Path(work), "default", allow_outside=allow_outside)
    return replace(info, n_classes=len(src.classes)), src


def prepare_user_source(
    info: DatasetInfo,
    source: Source,
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    skip_corrupt: bool = False,
    workers: int | None = None,
    quiet: bool = False,
) -> dict:
    """Write a loaded user source as ``info.name`` (split with ``seed``), unless the prepared copy came
    from the same files (the source's listing checksum) at the same settings; a changed folder is
    prepared again."""
    check_settings(seed, workers)
    if is_prepared(data_dir, info.name):
        try:
            manifest = load_manifest(data_dir, info.name)
            same = (
                manifest.get("source_checksums") == dict(source.checksums)
                and source.checksums
                and manifest["input_size"] == list(info.input_size)
                and manifest["domain"] == info.domain
                and manifest["seed"] == seed
                and (skip_corrupt or not manifest.get("skipped_corrupt"))
            )
            if same:
                verify_dataset(dataset_dir(data_dir, info.name), manifest)
        except RayexpError as exc:  # an older format, or a copy changed since: the folder is the truth
            if not quiet:
                print(f"[rayexp] {info.name}: the prepared copy cannot be used ({exc}); preparing again")
            same = False
        else:
            if same:
                if not quiet:
                    print(
                        f"[rayexp] {info.name}: the prepared copy in {dataset_dir(data_dir, info.name)} is of the same "
                        "files; not preparing again"
                    )
                return manifest
            if not quiet:
                print(f"[rayexp] {info.name}: the images or settings changed since it was prepared; preparing again")
    return write_dataset(
        data_dir,
        info,
        source,
        seed=seed,
        force=True,
        workers=workers or default_workers(),
        skip_corrupt=skip_corrupt,
        quiet=quiet,
    )


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))


def summary(manifest: dict, data_dir: str | os.PathLike) -> str:
    """A one-screen summary of a prepared dataset."""
    lines = [
        f"{manifest['name']} ({manifest['title']}, {manifest['domain']}) in {dataset_dir(data_dir, manifest['name'])}"
    ]
    for split, meta in manifest["splits"].items():
        counts = meta["class_counts"]
        lines.append(f"  {split:<5} {meta['rows']:>7} images, per class {min(counts)}..{max(counts)}")
    paper = manifest.get("paper_counts") or {}
    if paper:
        got = {s: manifest["splits"][s]["rows"] for s in paper if s in manifest["splits"]}
        same = all(got.get(s) == n for s, n in paper.items())
        lines.append(
            f"  paper's counts: {', '.join(f'{s} {n}' for s, n in paper.items())} ({'match' if same else 'differ'})"
        )
    image = manifest["image"]
    lines.append(
        f"  {manifest['n_classes']} classes; stored {image['encoding']} from {'x'.join(map(str, image['stored_min']))} "
        f"to {'x'.join(map(str, image['stored_max']))}; trained at {'x'.join(map(str, manifest['input_size']))}"
    )
    norm = manifest["normalization"]
    rows = {s: meta["rows"] for s, meta in manifest["splits"].items()}
    shares = "/".join(str(round(100 * n / max(1, sum(rows.values())))) for n in rows.values())
    lines.append(
        f"  mean {norm['mean']} std {norm['std']}; split: {manifest['split_rule']} (seed {manifest['seed']}): "
        + " / ".join(f"{s} {n}" for s, n in rows.items())
        + f" ({shares} here)"
    )
    for note in manifest.get("notes", []):
        lines.append(f"  note: {note}")
    if manifest.get("skipped_corrupt"):
        lines.append(
            f"  skipped {len(manifest['skipped_corrupt'])} corrupt image(s): "
            + ", ".join(s["id"] for s in manifest["skipped_corrupt"][:5])
        )
    return "\n".join(lines)
