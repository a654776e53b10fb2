"""Prepare a dataset into shards: ``python datasets/prepare.py NAME [--data-dir DIR] [--force]``.

A one-off step per dataset that writes the compact Parquet format training reads (see README). Atomic
and idempotent: a prepared dataset is left alone unless ``--force``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from rayexp.data.catalog import CATALOG, default_data_dir, get_dataset_info
from rayexp.data.shards import dataset_dir, is_prepared, load_manifest, write_dataset
from rayexp.errors import RayexpError

AVAILABLE_SOURCES = {"digits"}  # the paper's 20 datasets' converters come with their source modules


def list_datasets(data_dir: str) -> None:
    print(f"{'dataset':<16} {'domain':<16} {'prepared':<9} {'rows':>15}  where / how")
    for name, info in CATALOG.items():
        if is_prepared(data_dir, name):
            m = load_manifest(data_dir, name)
            rows = "/".join(str(m["splits"][s]["rows"]) for s in m["splits"])
            print(f"{name:<16} {info.domain:<16} {'yes':<9} {rows:>15}  {dataset_dir(data_dir, name)}")
        else:
            how = f"python datasets/prepare.py {name}" if info.source in AVAILABLE_SOURCES else f"source '{info.source}' not yet supported"
            print(f"{name:<16} {info.domain:<16} {'no':<9} {'-':>15}  {how}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", nargs="?", help="dataset to prepare")
    p.add_argument("--data-dir", default=str(default_data_dir()), help="where prepared datasets live")
    p.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split and of the fraction ranks")
    p.add_argument("--list", action="store_true", help="list every dataset and whether it is prepared")
    args = p.parse_args(argv)
    try:
        if args.list:
            list_datasets(args.data_dir)
            return 0
        if not args.name:
            p.error("give a dataset name, or --list")
        info = get_dataset_info(args.name)
        if is_prepared(args.data_dir, info.name) and not args.force:
            print(f"{info.name} is already prepared in {dataset_dir(args.data_dir, info.name)} (use --force to redo it)")
            return 0
        if info.source not in AVAILABLE_SOURCES:
            raise RayexpError(f"dataset {info.name!r} (source {info.source!r}) has no converter yet; available: {', '.join(sorted(AVAILABLE_SOURCES))}")
        source = importlib.import_module(f"rayexp.data.sources.{info.source}").load_source()
        start = time.perf_counter()
        manifest = write_dataset(args.data_dir, info, source, seed=args.seed, force=args.force)
        counts = ", ".join(f"{split} {meta['rows']}" for split, meta in manifest["splits"].items())
        print(
            f"prepared {info.name} in {dataset_dir(args.data_dir, info.name)} in {time.perf_counter() - start:.1f}s: "
            f"{manifest['n_classes']} classes, {counts}; stored {manifest['image']['encoding']} up to "
            f"{'x'.join(map(str, manifest['image']['stored_max']))}; mean {manifest['normalization']['mean']} std {manifest['normalization']['std']}"
        )
        return 0
    except RayexpError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
