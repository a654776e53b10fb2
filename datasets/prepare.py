"""Prepare datasets into shards, once; training only reads the shards.

    python datasets/prepare.py --list                    # every dataset: prepared?, rows, where, how to get it
    python datasets/prepare.py cifar10 --download        # download (checksum verified), convert
    python datasets/prepare.py stanford_cars --source ~/Downloads/stanford_cars   # a local copy (folder or archive)
    python datasets/prepare.py mydata --source path/to/imagefolder --domain medical   # a user's own data

Atomic (a failed or interrupted run leaves nothing half-written; what a killed run leaves, the next run
removes) and idempotent (a prepared dataset, one with its manifest.json, is left alone unless --force;
one prepared by an older rayexp in an older shard format is prepared again).
"""

from __future__ import annotations

import argparse
import sys
import time

from rayexp.data.catalog import CATALOG, default_data_dir
from rayexp.data.preparation import (
    SPLIT_MODES,
    check_settings,
    default_workers,
    downloads_dir,
    prepare,
    source_module,
    summary,
)
from rayexp.data.shards import dataset_dir, is_prepared, load_manifest, outdated_format
from rayexp.errors import RayexpError


def list_datasets(data_dir: str) -> None:
    print(f"{'dataset':<15} {'domain':<15} {'prepared':<8} {'train/test':>13}  where / how to get it")
    for name, info in CATALOG.items():
        if is_prepared(data_dir, name):
            try:
                m = load_manifest(data_dir, name)
            except RayexpError as exc:
                print(f"{name:<15} {info.domain:<15} {'BROKEN':<8} {'-':>13}  {exc}")
                continue
            rows = "/".join(str(m["splits"][s]["rows"]) for s in m["splits"])
            print(f"{name:<15} {info.domain:<15} {'yes':<8} {rows:>13}  {dataset_dir(data_dir, name)}")
            continue
        try:
            module = source_module(info)
            remote = module.remote_files(name)
            if info.source == "digits":
                how = f"python datasets/prepare.py {name}"
            elif downloads_dir(data_dir, name).is_dir():
                how = f"downloaded; python datasets/prepare.py {name}"
            elif remote and all(r.checksum for r in remote):
                how = f"python datasets/prepare.py {name} --download"
            else:
                how = module.local_help(name)
        except RayexpError as exc:
            how = str(exc)
        print(f"{name:<15} {info.domain:<15} {'no':<8} {'-':>13}  {how}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="dataset to prepare (a catalog name, or a new name with --source)")
    p.add_argument("--list", action="store_true", help="list every dataset and whether it is prepared")
    p.add_argument("--download", action="store_true", help="download the source files (checksums verified)")
    p.add_argument(
        "--source", default=None, help="a local copy: a folder, an archive, or (own data) an image folder or CSV"
    )
    p.add_argument("--domain", default=None, help="domain of a user's own dataset (e.g. medical)")
    p.add_argument(
        "--data-dir", default=str(default_data_dir()), help="where prepared datasets live (default: %(default)s)"
    )
    p.add_argument(
        "--split",
        default="default",
        choices=SPLIT_MODES,
        help="'paper' reproduces the paper's counts where rayexp's clean split differs",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of stratified splits and of the fraction ranks (recorded), 0 to 2**32-1",
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
    p.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        if args.list:
            list_datasets(args.data_dir)
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


if __name__ == "__main__":
    sys.exit(main())
