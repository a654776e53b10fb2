"""Training images/second per backbone: fed by the real pipeline vs by synthetic tensors already on the device.

The synthetic arm is the ceiling: the same ``train_one_epoch`` over ready, normalised, channels-last
batches that already sit on the device. The real arm is what a trial gets: generated JPEGs of ~500 px
prepared into shards at ``--size``, read and decoded by Ray Data into the in-memory cache, shuffled,
TrivialAugmentWide-augmented in the worker's threads and normalised on the device
(:class:`rayexp.data.batches.TrialBatches`, the class a trial's worker uses). The cache is filled
before the clock starts; the first timed epoch of each arm is a warm-up. Mixed precision as a trial
resolves it (bf16 on GPUs that have it; ``--precision`` on the CPU), channels-last, and ``--compile``
adds ``torch.compile``.

Prints one row per backbone (real, synthetic, ratio, the real arm's data-wait share) and, last,
``ratio training_real_vs_synthetic_min <the smallest ratio>``.

    python benchmarks/training_throughput.py                                  # CPU: 64x64, batch 16
    python benchmarks/training_throughput.py --size 256 --batch 128 --images 4096 --data-cpus 12   # GPU node
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from prepare import generate  # benchmarks/prepare.py: the same generated JPEGs

from rayexp.backbones import create_trial_model, list_backbones
from rayexp.data.batches import Normalizer, TrialBatches
from rayexp.data.catalog import DatasetInfo
from rayexp.data.pipeline import build_trial_datasets, configure_data_context
from rayexp.data.shards import load_manifest
from rayexp.data.sources import folder
from rayexp.data.writer import write_dataset
from rayexp.orchestrate.context import TrialResources
from rayexp.training import TrainConfig, make_optimizer, make_scaler, resolve_precision, train_one_epoch


def synthetic_batches(
    n: int, batch: int, size: int, classes: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,), device=device)
    return [(images, labels)] * max(1, n // batch)


def measure(
    name: str,
    batches: TrialBatches,
    synthetic: list,
    classes: int,
    device: torch.device,
    precision: str,
    compile: bool,
    epochs: int,
) -> dict:
    model = create_trial_model(name, classes, seed=0, device=device, pretrained=False, compile=compile)
    optimizer, scaler = make_optimizer(model, TrainConfig()), make_scaler(device, precision)
    out = {}
    for arm, epoch_batches in (("synthetic", lambda epoch: synthetic), ("real", batches.train)):
        train_one_epoch(model, epoch_batches(0), optimizer, scaler, device, precision)  # warm-up (and compilation)
        runs = [
            train_one_epoch(model, epoch_batches(epoch), optimizer, scaler, device, precision)
            for epoch in range(1, epochs + 1)
        ]
        seen = sum(r["train_images"] for r in runs)
        out[arm] = seen / sum(r["train_seconds"] for r in runs)
        out[f"{arm}_wait"] = sum(r["data_wait_fraction"] * r["train_seconds"] for r in runs) / sum(
            r["train_seconds"] for r in runs
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    p.add_argument("--size", type=int, default=256 if gpu else 64)
    p.add_argument("--batch", type=int, default=128 if gpu else 16)
    p.add_argument(
        "--images", type=int, default=4096 if gpu else 256, help="generated training images (80%% of them train)"
    )
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per arm, after one warm-up epoch")
    p.add_argument("--worker-cpus", type=float, default=2 if gpu else 1)
    p.add_argument("--data-cpus", type=float, default=10 if gpu else 1)
    p.add_argument(
        "--precision",
        default=None,
        choices=["bf16", "fp16", "fp32"],
        help="default: a trial's auto (bf16 on GPU), bf16 on CPU",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile each model (as --compile does in a sweep)")
    p.add_argument("--backbones", nargs="+", default=[s.name for s in list_backbones()])
    args = p.parse_args()
    device = torch.device("cuda" if gpu else "cpu")
    precision = args.precision or (resolve_precision("auto", device) if gpu else "bf16")
    torch.set_num_threads(max(1, int(args.worker_cpus)))
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    import ray.data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"# generating {args.images} JPEGs of ~500 px, preparing at {args.size}x{args.size} ...", flush=True)
        generate(tmp / "src", args.images)
        info = DatasetInfo(
            name="bench",
            title="bench",
            domain="custom",
            n_classes=10,
            train=0,
            test=0,
            source="folder",
            split_rule="stratified 80/20",
            input_size=(args.size, args.size),
        )
        write_dataset(tmp / "data", info, folder.load_source("bench", tmp / "src", tmp, "default"), quiet=True)
        manifest = load_manifest(tmp / "data", "bench")
        ray.init(num_cpus=max(2, int(args.worker_cpus + args.data_cpus)), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().execution_options = configure_data_context(
            args.data_cpus
        )  # as trial_driver does
        datasets, cached = build_trial_datasets(tmp / "data", manifest, 1.0, "test", 64e9)
        batches = TrialBatches(
            {k: d.iterator() for k, d in datasets.items()},
            batch_size=args.batch,
            seed=0,
            normalize=Normalizer(manifest["normalization"]["mean"], manifest["normalization"]["std"], device),
            threads=TrialResources(args.worker_cpus, args.data_cpus, gpus=0, cache_bytes=0).batch_threads(cached),
        )
        start = time.perf_counter()
        rows = len(batches.memory["train"][1])
        print(f"# cache filled: {rows} training images in {time.perf_counter() - start:.1f} s", flush=True)
        synthetic = synthetic_batches(rows, args.batch, args.size, manifest["n_classes"], device)

        where = torch.cuda.get_device_name() if gpu else f"CPU, {os.cpu_count()} cores"
        print(
            f"# {args.size}x{args.size}, batch {args.batch}, {precision}, channels-last, compile={args.compile}, "
            f"{args.worker_cpus:g} worker + {args.data_cpus:g} data CPUs, on {where}"
        )
        print(f"{'backbone':<22}{'real img/s':>11}{'synthetic':>11}{'ratio':>7}{'data wait':>11}", flush=True)
        ratios = {}
        for name in args.backbones:
            r = measure(name, batches, synthetic, manifest["n_classes"], device, precision, args.compile, args.epochs)
            ratios[name] = r["real"] / r["synthetic"]
            print(
                f"{name:<22}{r['real']:>11.1f}{r['synthetic']:>11.1f}{ratios[name]:>7.2f}{r['real_wait']:>10.0%}",
                flush=True,
            )
        ray.shutdown()
    worst = min(ratios, key=ratios.get)
    print(f"# lowest: {worst}")
    print(f"ratio training_real_vs_synthetic_min {ratios[worst]:.3f}")


if __name__ == "__main__":
    main()
