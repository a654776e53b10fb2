"""Per-trial overhead: N short trials run as a rayexp sweep, in each runtime, vs the same trainings in one plain
PyTorch process.

Each training is one epoch (AdamW only) of ``--backbone`` on ``--fraction`` of the bundled digits
dataset (a few hundred images) plus one pass over its test split, batch 16, with the same augmentation
and normalisation in both arms. The plain arm reads and decodes the shards, builds the model and calls
:func:`rayexp.training.fit` in this process, once per seed. The sweep arm runs the same keys through
:func:`rayexp.orchestrate.run_sweep` on a local Ray instance (started before the clock starts, as a
sweep starts it once), logging to a fresh MLflow store, once per runtime (``--runtime tune``: the Tune trial
function trains; ``--runtime train``: a one-worker Ray Train run per trial). The difference, divided by N, is
what Ray Tune (and Ray Train), Ray Data and MLflow add per trial.

Prints a table, then ``seconds_per_trial <runtime> <overhead>`` for each runtime and, last,
``ratio sweep_vs_plain <runtime> <value>``.

    python benchmarks/trial_overhead.py --trials 6 [--runtimes tune train]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rayexp.backbones import create_backbone
from rayexp.data.batches import Normalizer, augmented, epoch_seed, memory_batches, normalization
from rayexp.data.catalog import get_dataset_info
from rayexp.data.codec import decode_image
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import digits
from rayexp.data.writer import write_dataset
from rayexp.grid import TrialKey
from rayexp.training import TrainConfig, fit, seed_everything


def plain_training(data_dir: Path, key: TrialKey, batch_size: int) -> float:
    """One trial's work in plain PyTorch: read, decode, build, train one epoch, evaluate. Returns its test accuracy."""
    manifest = load_manifest(data_dir, key.dataset)
    size = tuple(manifest["input_size"])

    def tensors(split: str, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        table = read_split(data_dir, key.dataset, split, fraction, columns=["image", "label"])
        from PIL import Image

        images = np.stack(
            [
                np.asarray(Image.fromarray(decode_image(b)).resize(size[::-1], Image.Resampling.BILINEAR))
                for b in table["image"].to_pylist()
            ]
        )
        return torch.from_numpy(images), torch.tensor(table["label"].to_pylist())

    train_images, train_labels = tensors("train", key.fraction)
    test_images, test_labels = tensors("test", 1.0)
    device = torch.device("cpu")
    normalize = Normalizer(*normalization(manifest, "dataset"), device)
    seed_everything(key.seed)
    model = create_backbone(key.backbone, manifest["n_classes"], pretrained=False).to(memory_format=torch.channels_last)

    def train_batches(epoch: int):
        seed = epoch_seed(key.seed, epoch)
        return map(
            normalize, augmented(memory_batches(train_images, train_labels, batch_size, shuffle_seed=seed), seed)
        )

    def test_batches():
        return map(normalize, memory_batches(test_images, test_labels, batch_size))

    cfg = TrainConfig(max_epochs=1, patience=1, dualopt=False, precision="fp32", seed=key.seed)
    return fit(model, train_batches, test_batches, cfg, device, manifest["n_classes"])["best_test_acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--backbone", default="mobilenet_v3_large")
    p.add_argument("--fraction", type=float, default=0.2, help="of digits' 1,438 training images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runtimes", nargs="+", default=["tune", "train"], choices=["tune", "train"])
    args = p.parse_args()

    os.environ.setdefault("RAYEXP_OFFLINE", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    work = Path(tempfile.mkdtemp(prefix="rayexp-overhead-"))
    data_dir = work / "data"
    write_dataset(data_dir, get_dataset_info("digits"), digits.load_source("digits"), quiet=True)
    keys = [TrialKey(args.backbone, "digits", args.fraction, seed) for seed in range(args.trials)]
    torch.set_num_threads(1)  # the sweep's training worker holds one CPU; so does the plain arm

    start = time.perf_counter()
    plain_acc = [plain_training(data_dir, key, args.batch_size) for key in keys]
    plain = time.perf_counter() - start

    from rayexp import tracking
    from rayexp.orchestrate import run_sweep
    from rayexp.orchestrate.resources import init_ray
    from rayexp.settings import SweepPlan, SweepSettings

    def settings(runtime: str) -> SweepSettings:
        return SweepSettings(
            experiment=f"overhead-{runtime}",
            data_dir=str(data_dir),
            storage=str(work / "ray_results"),
            tracking_uri=tracking.resolve_tracking_uri(f"sqlite:///{work / 'mlflow.db'}"),
            train=TrainConfig(max_epochs=1, patience=1, precision="fp32", dualopt=False),
            batch_size=args.batch_size,
            device="cpu",
            runtime=runtime,
        )

    start = time.perf_counter()
    init_ray(settings("tune"))
    ray_start = time.perf_counter() - start
    sweeps, accuracies = {}, {}
    manifest = load_manifest(data_dir, "digits")
    for runtime in args.runtimes:
        plan = SweepPlan(
            settings=settings(runtime),
            keys=tuple(keys),
            weights={args.backbone: "random"},
            data_fingerprints={"digits": manifest["fingerprint"]},
            input_sizes={"digits": tuple(manifest["input_size"])},
        )
        start = time.perf_counter()
        outcome = run_sweep(plan)
        sweeps[runtime] = time.perf_counter() - start
        if outcome["errored"]:
            raise SystemExit(f"trials errored: {outcome['errored']}")
        results = tracking.fetch_trial_results(plan.settings.tracking_uri, plan.settings.experiment)
        accuracies[runtime] = sorted(round(r["best_test_acc"], 3) for r in results)

    n = len(keys)
    images = len(read_split(data_dir, "digits", "train", args.fraction, columns=["label"]))
    print(
        f"\n# {n} trials of {args.backbone} on digits x {args.fraction} ({images} training images), "
        f"1 epoch, batch {args.batch_size}, CPU ({os.cpu_count()} cores)"
    )
    print(f"{'arm':<34}{'total s':>10}{'s/trial':>10}")
    print(f"{'plain PyTorch, sequential':<34}{plain:>10.1f}{plain / n:>10.1f}")
    for runtime, seconds in sweeps.items():
        arm = f"rayexp sweep, --runtime {runtime}"
        print(f"{arm:<34}{seconds:>10.1f}{seconds / n:>10.1f}")
    print(f"{'ray.init (once per sweep)':<34}{ray_start:>10.1f}")
    print(
        f"test accuracy plain {sorted(round(a, 3) for a in plain_acc)}, "
        + ", ".join(f"{runtime} {acc}" for runtime, acc in accuracies.items())
    )
    for runtime, seconds in sweeps.items():
        print(f"seconds_per_trial {runtime} {(seconds - plain) / n:.2f}")
    for runtime, seconds in sweeps.items():
        print(f"ratio sweep_vs_plain {runtime} {seconds / plain:.3f}")


if __name__ == "__main__":
    main()
