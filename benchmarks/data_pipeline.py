"""Images/second delivered to the training loop: rayexp's Ray Data pipeline vs a plain DataLoader over ImageFolder.

Both arms deliver the same thing: shuffled batches of 256x256 images, TrivialAugmentWide applied per
image, normalised to float, from the same generated JPEGs of ~500 px, with ``--workers`` CPUs doing the
data work besides the consuming (training) process.

* (a) rayexp: the JPEGs prepared once into shards (stored at <= 256 px short side; preparation is timed
  but, as a one-off, kept out of the rate), then :func:`rayexp.data.pipeline.build_trial_datasets` and
  :class:`rayexp.data.batches.TrialBatches` exactly as a trial's training worker uses them: Ray Data
  decodes (``torchvision.io``) and resizes with ``--workers`` CPUs, into the in-memory cache when the
  images fit (``cached``) or every epoch (``streamed``); augmentation runs in the consuming process.
* (b) ``torch.utils.data.DataLoader(ImageFolder(...), num_workers=--workers)`` with
  ``Resize((256, 256)), TrivialAugmentWide(), ToTensor(), Normalize(...)``, persistent workers: the
  usual torchvision recipe, decoding the full JPEG every epoch.

Rates are over all ``--epochs`` epochs, first epoch included. Prints a table and, last,
``ratio data_pipeline_vs_dataloader <cached a / b>``.

    python benchmarks/data_pipeline.py --images 2000 --workers 2 --epochs 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.data
import torch
from prepare import generate  # benchmarks/prepare.py: the same generated JPEGs
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from rayexp.data.batches import Normalizer, TrialBatches
from rayexp.data.pipeline import build_trial_datasets, configure_data_context
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.orchestrate.context import TrialResources

SIZE = 256


def drain(epochs, batches_of_epoch) -> tuple[float, list[float]]:
    """Seconds to consume every batch of every epoch, and the images/second of each epoch."""
    rates, total = [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        n = 0
        for images, labels in batches_of_epoch(epoch):
            assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == torch.float32, images.shape
            n += len(labels)
        seconds = time.perf_counter() - start
        total += seconds
        rates.append(n / seconds)
    return total, rates


def dataloader_arm(src: Path, workers: int, batch: int, epochs: int, mean, std) -> tuple[float, list[float]]:
    transform = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE)),
            transforms.TrivialAugmentWide(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(src, transform=transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

    def batches(epoch: int):
        torch.manual_seed(epoch)
        return iter(loader)

    return drain(epochs, batches)


def rayexp_arm(
    data_dir: Path, manifest: dict, workers: int, batch: int, epochs: int, cache_gb: float
) -> tuple[float, list[float], bool]:
    ray.data.DataContext.get_current().execution_options = configure_data_context(workers)  # as trial_driver does
    datasets, cached = build_trial_datasets(data_dir, manifest, 1.0, "test", cache_gb * 1e9)
    start = time.perf_counter()
    batches = TrialBatches(
        {name: ds.iterator() for name, ds in datasets.items()},
        batch_size=batch,
        seed=0,
        normalize=Normalizer(manifest["normalization"]["mean"], manifest["normalization"]["std"], torch.device("cpu")),
        augment=True,
        threads=TrialResources(1, workers, gpus=0, cache_bytes=0).batch_threads(cached),  # a 1-CPU trial's
    )
    _, rates = drain(epochs, batches.train)
    return time.perf_counter() - start, rates, cached  # the cache's fill (overlapping epoch 1) included


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument(
        "--workers", type=int, default=2, help="data CPUs in both arms (DataLoader workers; Ray Data CPU limit)"
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10, help="a DualOpt trial runs at least 2 x patience = 20")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"# generating {args.images} JPEGs of ~500 px ...", flush=True)
        generate(tmp / "src", args.images)
        start = time.perf_counter()
        manifest = prepare("bench", tmp / "data", source=tmp / "src", workers=args.workers, quiet=True)
        prepare_s = time.perf_counter() - start
        # Every image in both arms: the rayexp arm trains on its train split; the DataLoader on those files.
        train_ids = set(read_split(tmp / "data", "bench", "train", columns=["id"])["id"].to_pylist())
        for path in (tmp / "src").rglob("*.jpg"):
            if str(path.relative_to(tmp / "src")) not in train_ids:
                path.unlink()
        n = len(train_ids)
        mean, std = manifest["normalization"]["mean"], manifest["normalization"]["std"]

        print(f"# (b) DataLoader + ImageFolder, {args.workers} workers ...", flush=True)
        loader_s, loader_rates = dataloader_arm(tmp / "src", args.workers, args.batch, args.epochs, mean, std)

        ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
        # Ray starts its worker processes (and they import torchvision) once per node, not per trial:
        # warm them up untimed, as the DataLoader's persistent workers are started before its clock too.
        rayexp_arm(tmp / "data", manifest, args.workers, args.batch, 1, cache_gb=0.0)
        print("# (a) rayexp, cached ...", flush=True)
        cached_s, cached_rates, cached = rayexp_arm(
            tmp / "data", manifest, args.workers, args.batch, args.epochs, cache_gb=4.0
        )
        print("# (a) rayexp, streamed (decode every epoch) ...", flush=True)
        streamed_s, streamed_rates, _ = rayexp_arm(
            tmp / "data", manifest, args.workers, args.batch, args.epochs, cache_gb=0.0
        )
        ray.shutdown()

    images = n * args.epochs
    print(
        f"\n# {n} training images (~500 px JPEGs) x {args.epochs} epochs -> {SIZE}x{SIZE}, TrivialAugmentWide, "
        "normalised; "
        f"batch {args.batch}; {args.workers} data CPUs + the consumer; machine: {os.cpu_count()} CPUs"
    )
    print(
        f"# rayexp preparation (one-off, {args.workers} processes): {prepare_s:.1f} s, "
        f"{n / prepare_s * (args.images / n):.0f} images/s"
    )
    print(f"{'arm':<34}{'img/s all':>10}{'per epoch':>30}")
    for name, seconds, rates in (
        ("(b) DataLoader + ImageFolder", loader_s, loader_rates),
        ("(a) rayexp, cached" + ("" if cached else " (did not fit)"), cached_s, cached_rates),
        ("(a) rayexp, streamed", streamed_s, streamed_rates),
    ):
        print(f"{name:<34}{images / seconds:>10.0f}{' '.join(f'{r:8.0f}' for r in rates):>30}")
    print(f"ratio data_pipeline_streamed_vs_dataloader {loader_s / streamed_s:.2f}")
    print(f"ratio data_pipeline_vs_dataloader {loader_s / cached_s:.2f}")


if __name__ == "__main__":
    main()
