"""Reading trial runs back: their results, their test predictions and their metrics' history."""

from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import rayexp.tracking.schema as schema
from rayexp.errors import RayexpError
from rayexp.tracking.client import experiment_id, mlflow_client, search_runs

if TYPE_CHECKING:
    from mlflow.entities import Run


def _clean(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _result_row(run: Run) -> dict:
    """One trial run as :func:`fetch_trial_results` gives it."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    return {
        "key": tags[schema.KEY_TAG],
        "backbone": tags.get(schema.BACKBONE_TAG),
        "dataset": tags.get(schema.DATASET_TAG),
        "domain": tags.get(schema.DOMAIN_TAG),
        "fraction": float(tags.get(schema.FRACTION_TAG, "nan")),
        "seed": int(tags.get(schema.SEED_TAG, -1)),
        "status": run.info.status,
        "best_test_acc": _clean(metrics.get(schema.BEST_TEST_ACC_METRIC)),
        "best_epoch": _clean(metrics.get(schema.BEST_EPOCH_METRIC)),
        "epochs_run": _clean(metrics.get(schema.EPOCHS_RUN_METRIC)),
        "weights": params.get(schema.WEIGHTS_PARAM),
        "stopped_by": tags.get(schema.STOPPED_TAG),
        "capped": tags.get(schema.CAPPED_TAG),
        "selection": tags.get(schema.SELECTION_TAG) or params.get(schema.SELECTION_PARAM),
        "best_val_acc": _clean(metrics.get(schema.BEST_VAL_ACC_METRIC)),
        "test_rows": _clean(_float(params.get(schema.TEST_ROWS_PARAM))),
        "num_classes": _clean(_float(params.get(schema.NUM_CLASSES_PARAM))),
        "test_majority_rate": _clean(_float(params.get(schema.TEST_MAJORITY_PARAM))),
        "test_class_rows": params.get(schema.TEST_CLASS_ROWS_PARAM),
        "parent_run_id": tags.get(schema.PARENT_TAG),
        "accelerator": tags.get(schema.ACCELERATOR_TAG),
        "train_seconds": _clean(metrics.get(schema.TRAIN_SECONDS_METRIC)),
        "train_images_per_s": _clean(metrics.get(schema.TRAIN_IMAGES_PER_S_METRIC)),
        "inference_images_per_s": _clean(metrics.get(schema.TEST_IMAGES_PER_S_METRIC)),
        "best_test_balanced_acc": _clean(metrics.get(schema.BEST_TEST_BALANCED_ACC_METRIC)),
        "run_id": run.info.run_id,
        "start_time": run.info.start_time,
        "data_fingerprint": tags.get(schema.DATA_TAG),
        "protocol_fingerprint": tags.get(schema.PROTOCOL_TAG),
        "error": tags.get(schema.ERROR_TAG),
    }


def fetch_trial_results(uri: str, experiment: str, **tags: str) -> list[dict]:
    """Every trial run of ``experiment`` (with ``tags``, if given): key, cell, status, final metrics and
    weights, from MLflow alone."""
    client = mlflow_client(uri)
    found = experiment_id(client, experiment)
    if found is None:
        raise RayexpError(f"MLflow experiment {experiment!r} does not exist at {uri}")
    return [_result_row(run) for run in search_runs(client, found, schema.TRIAL_KIND, **tags)]


def _read_predictions(path: str) -> tuple[list[str], list[int], list[int]] | None:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader, ())) != schema.PREDICTIONS_HEADER:
            return None
        ids, labels, predictions = [], [], []
        for row in reader:
            ids.append(row[0])
            labels.append(int(row[1]))
            predictions.append(int(row[2]))
    return ids, labels, predictions


def fetch_predictions(uri: str, run_id: str) -> tuple[list[str], list[int], list[int]] | None:
    """A trial's best-epoch test predictions (:data:`~rayexp.tracking.schema.PREDICTIONS_ARTIFACT`) as
    (ids, labels, predictions), or None when the run has none or the file is not one rayexp wrote (then a
    verdict falls back to its summary rule and says so). A file with no rows or an image twice is returned as
    it is, for the verdict to name (:class:`rayexp.results.Predictions`)."""
    client = mlflow_client(uri)
    with tempfile.TemporaryDirectory(prefix="rayexp-predictions-") as folder:
        try:
            found = _read_predictions(client.download_artifacts(run_id, schema.PREDICTIONS_ARTIFACT, folder))
        except Exception:  # noqa: BLE001 - missing, unreadable or malformed: all mean "no predictions"
            return None
    return found


def fetch_artifact(uri: str, run_id: str, path: str) -> bytes | None:
    """One artifact of a run as bytes, or None when the run has no such file."""
    client = mlflow_client(uri)
    with tempfile.TemporaryDirectory(prefix="rayexp-artifact-") as folder:
        try:
            return Path(client.download_artifacts(run_id, path, folder)).read_bytes()
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            return None


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    return sorted((m.step, m.value) for m in mlflow_client(uri).get_metric_history(run_id, metric))
