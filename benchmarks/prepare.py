"""Preparation throughput: images/second converting a generated folder of JPEGs, sequential vs parallel.

Generates ``--images`` JPEGs of about 500 px (random textures, several classes), prepares them once with
one process and once with ``--workers`` processes, checks both wrote identical shards, and prints the
table and, last, ``ratio prepare_parallel_vs_sequential <value>``.

    python benchmarks/prepare.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split


def generate(folder: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(400, 600, size=2)
        base = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((int(w), int(h)), Image.Resampling.BILINEAR)
        path = folder / f"class{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)


def timed(name: str, src: Path, data_dir: Path, workers: int) -> float:
    start = time.perf_counter()
    prepare(name, data_dir, source=src, workers=workers, quiet=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"# generating {args.images} JPEGs of ~500 px ...", flush=True)
        generate(tmp / "src", args.images)
        sequential = timed("bench", tmp / "src", tmp / "one", 1)
        parallel = timed("bench", tmp / "src", tmp / "many", args.workers)
        same = read_split(tmp / "one", "bench", "train").equals(read_split(tmp / "many", "bench", "train"))
        shutil.rmtree(tmp / "src")
    print(f"# {args.images} images, stored at <= 256 px short side, on {os.cpu_count()} CPUs; identical shards: {same}")
    print(f"{'mode':<12} {'workers':>7} {'seconds':>8} {'images/s':>9}")
    print(f"{'sequential':<12} {1:>7} {sequential:>8.1f} {args.images / sequential:>9.0f}")
    print(f"{'parallel':<12} {args.workers:>7} {parallel:>8.1f} {args.images / parallel:>9.0f}")
    print(f"ratio prepare_parallel_vs_sequential {sequential / parallel:.2f}")


if __name__ == "__main__":
    main()
