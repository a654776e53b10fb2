"""What a trial writes into its MLflow run besides metrics: its config, history, confusion matrix and test
predictions (each named by the run schema in :mod:`rayexp.tracking`)."""

from __future__ import annotations

import csv
import io

from rayexp import tracking
from rayexp.data.shards import read_split
from rayexp.errors import RayexpError
from rayexp.figures import confusion_png


def log_trial_artifacts(
    run: tracking.TrialRun, key: str, config: dict, history: list[dict], confusion: list, classes: list[str]
) -> None:
    """The resolved config, the per-epoch history as CSV and the best epoch's confusion matrix as PNG."""
    run.log_dict(config, tracking.CONFIG_ARTIFACT)
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)
        run.log_text(buffer.getvalue(), tracking.HISTORY_ARTIFACT)
    if confusion:
        run.log_bytes(confusion_png(confusion, classes, title=key), tracking.CONFUSION_ARTIFACT)


def split_row_ids(data_dir: str, dataset: str, split: str) -> dict[tuple[int, int], str]:
    """``(label, rank) -> id`` of every row of ``split``: the key that the evaluation's batches carry for
    each image, read from the shards' id, label and rank columns alone (no images)."""
    table = read_split(data_dir, dataset, split, columns=["id", "label", "rank"])
    return dict(zip(zip(table["label"].to_pylist(), table["rank"].to_pylist()), table["id"].to_pylist()))


def predictions_csv(predictions: dict, ids: dict[tuple[int, int], str]) -> str:
    """The test predictions as CSV text, header ``id,label,prediction``, one row per test image in the
    order it was evaluated.

    ``predictions`` is :func:`rayexp.training.evaluate`'s: lists ``label``, ``prediction`` and ``rank``;
    ``ids`` is :func:`split_row_ids`' of the same split. A row whose (label, rank) is not in ``ids``, or
    predictions that do not cover every row exactly once, raise RayexpError: a wrong id would silently
    pair another image with the prediction.
    """
    if "rank" not in predictions:
        raise RayexpError("the test predictions carry no row ranks, so their images cannot be named")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(tracking.PREDICTIONS_HEADER)
    named = set()
    for label, prediction, rank in zip(
        predictions["label"], predictions["prediction"], predictions["rank"], strict=True
    ):
        row_id = ids.get((label, rank))
        if row_id is None:
            raise RayexpError(
                f"a test prediction's row (label {label}, rank {rank}) is not in the test split; no predictions "
                "were written"
            )
        named.add(row_id)
        writer.writerow([row_id, label, prediction])
    if len(named) != len(predictions["label"]) or len(named) != len(ids):
        raise RayexpError(
            f"the test predictions name {len(named)} distinct rows in {len(predictions['label'])} predictions, for a "
            f"test split of {len(ids)} rows; no predictions were written"
        )
    return buffer.getvalue()


def log_predictions(run, predictions: dict, ids: dict[tuple[int, int], str]) -> None:
    """Log the best epoch's test predictions as the run's :data:`rayexp.tracking.PREDICTIONS_ARTIFACT`,
    replacing an earlier epoch's; nothing when none are known (a checkpoint from before they were kept)."""
    if predictions:
        run.log_text(predictions_csv(predictions, ids), tracking.PREDICTIONS_ARTIFACT)
