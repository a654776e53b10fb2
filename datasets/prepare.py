"""Prepare datasets into shards, once; training only reads the shards.

    python datasets/prepare.py --list                    # every dataset: images, download, prepared?, how to get it
    python datasets/prepare.py cifar10 --download        # download (checksum verified), convert
    python datasets/prepare.py stanford_cars --source ~/Downloads/stanford_cars   # a local copy (folder or archive)
    python datasets/prepare.py mydata --source path/to/imagefolder --domain medical   # a user's own data

Atomic (a failed or interrupted run leaves nothing half-written; what a killed run leaves, the next run
removes) and idempotent (a prepared dataset, one with its manifest.json, is left alone unless --force;
one prepared by an older rayexp in an older shard format is prepared again).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rayexp.data.catalog import CATALOG, default_data_dir
from rayexp.data.preparation import (
    SPLIT_MODES,
    check_settings,
    default_workers,
    how_to_prepare,
    prepare,
    summary,
)
from rayexp.data.shards import dataset_dir, is_prepared, load_manifest, outdated_format
from rayexp.errors import RayexpError


def list_datasets(data_dir: str) -> None:
    """Every catalog dataset: its domain, its number of images (the paper's, train and test together), the size
    of its download ("?" where no source sizes it), whether it is prepared (its rows then), and
    where it is or the command that prepares it, with what to fetch by hand where it cannot be downloaded."""
    print(
        f"{'dataset':<15} {'domain':<15} {'images':>8} {'download':>9} {'prepared':<8} {'train/test':>13}  "
        "where / how to get it"
    )
    for name, info in CATALOG.items():
        size = "bundled" if info.source == "digits" else info.download_size or "?"
        head = f"{name:<15} {info.domain:<15} {info.images:>8,} {size:>9}"
        if is_prepared(data_dir, name):
            try:
                m = load_manifest(data_dir, name)
            except RayexpError as exc:
                print(f"{head} {'BROKEN':<8} {'-':>13}  {exc}")
                continue
            rows = "/".join(str(m["splits"][s]["rows"]) for s in m["splits"])
            print(f"{head} {'yes':<8} {rows:>13}  {dataset_dir(data_dir, name)}")
            continue
        try:
            command, fetch = how_to_prepare(name, data_dir)
            how = command + (f"\n{'':<16}PATH: {fetch}" if fetch else "")
        except RayexpError as exc:
            how = str(exc)
        print(f"{head} {'no':<8} {'-':>13}  {how}")


def _stdout_closed() -> int:
    """Whoever read stdout went away (``prepare.py --list | head``): stop quietly, with success."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="dataset to prepare (a catalog name, or a new name with --source)")
    p.add_argument(
        "--list",
        action="store_true",
        help="list every dataset: its images, download size, whether it is prepared, and the command that gets it",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the source files into <data-dir>/.downloads/<name>/ (checksums verified)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="a local copy of a catalog dataset (the archive, the folder holding it, or the extracted folder; --list "
        "says what to fetch), or for your own data a folder of <class>/ images or a CSV of path,label[,split]",
    )
    p.add_argument("--domain", default=None, help="the domain recorded for your own dataset (e.g. medical)")
    p.add_argument(
        "--data-dir", default=str(default_data_dir()), help="where prepared datasets live (default: %(default)s)"
    )
    p.add_argument(
        "--split",
        default="default",
        choices=SPLIT_MODES,
        help="paper: the paper's counts where rayexp's clean split differs (BreakHis image-level, RSNA every CSV row)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of stratified splits and of the fraction ranks, 0 to 2**32-1, recorded in the manifest "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=default_workers(), help="processes encoding images (default: %(default)s)"
    )
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="a CSV source's image paths may lie outside the CSV's folder (by default they must not)",
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave out images that cannot be decoded (counted and listed in the manifest) instead of stopping",
    )
    p.add_argument("--force", action="store_true", help="prepare again (otherwise a prepared dataset is left alone)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    try:
        args = p.parse_args(argv)
    except SystemExit:  # --help (or a usage error): flushed here, so that a closed pipe ends quietly
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_closed()
        raise
    try:
        if args.list:
            list_datasets(args.data_dir)
            sys.stdout.flush()
            return 0
        if not args.name:
            p.error("give a dataset name, or --list")
        check_settings(args.seed, args.workers)  # before anything is read or written
        # a dataset of an older shard format is prepared again (prepare says so), as with --force
        if (
            is_prepared(args.data_dir, args.name)
            and not args.force
            and outdated_format(args.data_dir, args.name) is None
        ):
            print(
                f"{args.name} is already prepared in {dataset_dir(args.data_dir, args.name)} (use --force to redo it)"
            )
            return 0
        start = time.perf_counter()
        manifest = prepare(
            args.name,
            args.data_dir,
            source=args.source,
            download_files=args.download,
            domain=args.domain,
            allow_outside=args.allow_outside_paths,
            split=args.split,
            seed=args.seed,
            force=args.force,
            workers=args.workers,
            skip_corrupt=args.skip_corrupt,
        )
        print(f"prepared in {time.perf_counter() - start:.1f}s\n" + summary(manifest, args.data_dir))
        return 0
    except RayexpError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()


if __name__ == "__main__":
    sys.exit(main())
