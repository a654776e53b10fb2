"""Checks that run before any trial starts, so that no GPU time is spent on a sweep that cannot finish.

Each check collects every problem (not just the first) with the command that fixes it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

from rayexp import tracking
from rayexp.backbones import get_spec
from rayexp.backbones.weights import OFFLINE_ENV, weights_status
from rayexp.data.catalog import get_dataset_info
from rayexp.data.rows import fraction_thresholds
from rayexp.data.shards import dataset_location, is_prepared, load_manifest, verify_dataset
from rayexp.errors import RayexpError


def check_datasets(datasets: Sequence[str], data_dir: str) -> dict[str, dict]:
    """The manifests of ``datasets``, each checked against its shards (:func:`verify_dataset`: every file's
    size and sha256, per-class counts, labels in range). Every unprepared, inconsistent or modified dataset is
    listed with the command that fixes it."""
    manifests, problems = {}, []
    for name in datasets:
        if not is_prepared(data_dir, name):
            get_dataset_info(name)  # an unknown name is an error of its own
            problems.append(
                f"  - {name}: not prepared in {data_dir}; run: python datasets/prepare.py {name} --data-dir {data_dir}"
            )
            continue
        try:
            manifest = load_manifest(data_dir, name)
            start = time.perf_counter()
            verify_dataset(dataset_location(data_dir, name), manifest)
            size = sum(b for meta in manifest["splits"].values() for b in meta["bytes"].values())
            print(
                f"[rayexp] {name}: {size / 1e6:.1f} MB of shards verified in {time.perf_counter() - start:.1f}s",
                flush=True,
            )
        except RayexpError as exc:
            problems.append(f"  - {exc}")
            continue
        manifests[name] = manifest
    if problems:
        raise RayexpError("datasets missing or not as prepared, nothing was started:\n" + "\n".join(problems))
    return manifests


def check_input_sizes(backbones: Sequence[str], manifests: dict[str, dict]) -> None:
    """Every backbone accepts every dataset's training resolution."""
    problems = []
    for backbone in backbones:
        spec = get_spec(backbone)
        for name, manifest in manifests.items():
            h, w = manifest["input_size"]
            if min(h, w) < spec.min_input or (spec.builder == "wavemix_192_16" and (h % 32 or w % 32)):
                multiples = ", multiples of 32" if spec.builder == "wavemix_192_16" else ""
                problems.append(
                    f"  - {backbone} cannot train on {name} at {h}x{w} (smallest side {spec.min_input}{multiples})"
                )
    if problems:
        raise RayexpError("input sizes the backbones cannot take:\n" + "\n".join(problems))


def resolve_weights(backbones: Sequence[str], weights_dir: str | None, fallback_to_random: bool) -> dict[str, str]:
    """``{backbone: "pretrained" | "random"}``.

    Without ``fallback_to_random`` (the paper's grid) any unavailable weight file stops the sweep with
    the list of files and where to put them. With it (the demo) the fallback is announced once, loudly,
    and recorded as ``weights=random`` on every run.
    """
    statuses = [weights_status(get_spec(b), weights_dir) for b in backbones]
    missing = [s for s in statuses if not s.available]
    if missing and not fallback_to_random:
        lines = [f"  - {s.backbone}: {s.where}\n      fix: {s.fix}" for s in missing]
        raise RayexpError("pretrained weights cannot be had, nothing was started:\n" + "\n".join(lines))
    if missing:
        bar = "!" * 78
        names = ", ".join(s.backbone for s in missing)
        print(
            f"\n{bar}\n!! NO PRETRAINED WEIGHTS for {names}: offline and not in the cache.\n"
            f"!! These backbones train from RANDOM INIT; every run records weights=random.\n"
            f"!! Their numbers are not ImageNet fine-tuning results. To use real weights:\n"
            + "".join(f"!!   {s.fix}\n" for s in missing)
            + f"{bar}\n",
            file=sys.stderr,
            flush=True,
        )
    return {s.backbone: ("pretrained" if s.available else "random") for s in statuses}


def check_selection(keys, manifests: dict[str, dict], selection: str) -> None:
    """With ``selection=val``, every class of every (dataset, fraction) must leave a validation row to select
    on: a class with a single training row at that fraction would be trained on but never validated."""
    if selection != "val":
        return
    problems = []
    for dataset, fraction in sorted({(k.dataset, k.fraction) for k in keys}):
        manifest = manifests[dataset]
        single = [manifest["classes"][c] for c, k in enumerate(fraction_thresholds(manifest, fraction)) if k < 2]
        if single:
            names = ", ".join(single[:5]) + (f" and {len(single) - 5} more" if len(single) > 5 else "")
            problems.append(
                f"  - {dataset} at fraction {fraction}: {len(single)} class(es) have a single training row, none to "
                f"hold out ({names})"
            )
    if problems:
        raise RayexpError(
            "selection=val needs a validation row in every class:\n"
            + "\n".join(problems)
            + "\n  use a larger fraction or --selection test"
        )


def node_problems(
    data_dir: str, datasets: list[str], pretrained: list[str], weights_dir: str | None, tracking_uri: str, offline: bool
) -> list[str]:
    """What this node cannot do for a sweep: read the datasets, find the weights, reach MLflow.

    Runs on every node of a cluster (as a Ray task) before any trial starts; returns problems, not raises,
    so that the driver can list all nodes' problems at once.
    """
    problems = []
    for name in datasets:
        try:
            load_manifest(data_dir, name)
        except RayexpError as exc:
            problems.append(f"dataset {name}: {exc}")
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    for backbone in pretrained:
        status = weights_status(get_spec(backbone), weights_dir)
        if not status.available:
            problems.append(f"weights of {backbone}: {status.where}; fix: {status.fix}")
    if tracking_uri.startswith(("http://", "https://")):
        try:
            tracking.check_server(tracking_uri)
        except RayexpError as exc:
            problems.append(str(exc))
    elif tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        problems.append(
            f"the MLflow store {tracking_uri} is a file this node cannot see; on a multi-node cluster run an MLflow "
            "server (cluster.yaml starts one on the head) and pass --tracking-uri http://<head>:5000"
        )
    return problems
