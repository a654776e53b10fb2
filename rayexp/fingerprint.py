"""What a result was produced from: the data's fingerprint and the protocol's, and what changed between two.

A trial key names *which* cell and seed a run is; these fingerprints say *what* it was trained on and how.
A finished run counts as done only for the same fingerprints, and a report never puts runs of different
fingerprints in one table. No Ray and no MLflow here.

* The **data fingerprint** is the manifest's (:func:`rayexp.data.shards.manifest_fingerprint`): it covers
  every shard file's sha256 and each split's per-class counts.
* The **protocol fingerprint** is a sha256 of :func:`protocol_settings`: every sweep setting that changes
  the numbers, the fixed hyperparameters of :class:`rayexp.training.TrainConfig`, the validation share and
  rayexp's version. Settings that only change speed (cache, CPUs, compile, concurrency) are left out.
  Per backbone, a run also records the weights it started from and its batch size (the registry's
  differs by backbone, so it is not a sweep-wide setting): they are compared as well
  (:func:`trial_identity`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from rayexp import __version__
from rayexp.data.rows import VAL_SHARE
from rayexp.tracking.schema import BATCH_TAG, DATA_TAG, PROTOCOL_TAG, SETTINGS_TAG, WEIGHTS_TAG
from rayexp.training import TrainConfig


def protocol_settings(
    *,
    max_epochs: int,
    patience: int,
    precision: str,
    selection: str,
    dualopt: bool,
    normalize: str,
    augment: bool,
) -> dict:
    """The settings a result depends on, beyond its data and its key: the protocol's identity."""
    fixed = asdict(TrainConfig())
    for name in ("max_epochs", "patience", "precision", "selection", "dualopt", "seed"):
        fixed.pop(name)
    return {
        "max_epochs_per_phase": max_epochs,
        "patience": patience,
        "precision": precision,
        "selection": selection,
        "val_share": VAL_SHARE if selection == "val" else None,
        "dualopt": dualopt,
        "normalize": normalize,
        "augment": augment,
        "head_precision": "fp32",  # the classifier head outside autocast (training.keep_fp32)
        "single_image_batches": "skipped",  # training.train_one_epoch: BatchNorm cannot train on one image
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in fixed.items()},
        "rayexp_version": __version__,
    }


def digest(settings: dict) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def trial_identity(data: str, settings: dict, weights: str, batch_size: int) -> dict[str, str]:
    """The tags that bind one trial's run to what produced it."""
    return {
        DATA_TAG: data,
        PROTOCOL_TAG: digest(settings),
        SETTINGS_TAG: json.dumps(settings, sort_keys=True),
        WEIGHTS_TAG: weights,
        BATCH_TAG: str(batch_size),
    }


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, for messages and experiment names."""
    return (fingerprint or "none").split(":")[-1][:12]


def changes(recorded: dict[str, str], expected: dict[str, str]) -> list[str]:
    """What differs between a run's recorded identity tags and the identity a sweep would give it, in words."""
    if not recorded.get(DATA_TAG) or not recorded.get(PROTOCOL_TAG):
        return ["the run records no fingerprint (an older rayexp made it)"]
    out = []
    if recorded[DATA_TAG] != expected[DATA_TAG]:
        out.append(f"the data changed (fingerprint {short(recorded[DATA_TAG])} -> {short(expected[DATA_TAG])})")
    if recorded[PROTOCOL_TAG] != expected[PROTOCOL_TAG]:
        try:
            old = json.loads(recorded.get(SETTINGS_TAG) or "{}")
        except json.JSONDecodeError:
            old = {}
        new = json.loads(expected[SETTINGS_TAG])
        diffs = [
            f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        ]
        out.append("the protocol changed (" + (", ".join(diffs) or "settings unknown") + ")")
    for tag, what in ((WEIGHTS_TAG, "weights"), (BATCH_TAG, "batch size")):
        if recorded.get(tag) != expected[tag]:
            out.append(f"the {what} changed ({recorded.get(tag)} -> {expected[tag]})")
    return out
