"""Trial runs by key, for the driver: their records (status and tags), and ending them from outside the
trial (failed, stopped, or superseded by a new training of the same key)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from rayexp.tracking.client import ensure_experiment, experiment_id, mlflow_client, trial_runs
from rayexp.tracking.reading import metric_history
from rayexp.tracking.runs import TrialRun, new_trial_run_tags
from rayexp.tracking.schema import (
    BEST_EPOCH_METRIC,
    BEST_TEST_ACC_METRIC,
    BEST_VAL_ACC_METRIC,
    EPOCH_SECONDS_METRIC,
    EPOCHS_RUN_METRIC,
    ERROR_TAG,
    FAILED,
    FINISHED,
    KEY_TAG,
    KILLED,
    KIND_TAG,
    RUNNING,
    STOPPED_TAG,
    SUPERSEDED_KIND,
    SUPERSEDED_TAG,
    TEST_ACC_METRIC,
    TRAIN_SECONDS_METRIC,
    VAL_ACC_METRIC,
)

if TYPE_CHECKING:
    from mlflow.entities import Run


def _record(run: Run) -> dict:
    return {"status": run.info.status, "run_id": run.info.run_id, "tags": dict(run.data.tags)}


def trial_records(uri: str, experiment: str) -> dict[str, dict]:
    """Each trial key's run: ``{"status", "run_id", "tags"}``, where tags hold its fingerprints
    (:mod:`rayexp.fingerprint`), so the driver can tell a run of the same data and protocol from a stale one."""
    client = mlflow_client(uri)
    found_id = experiment_id(client, experiment)
    if found_id is None:
        return {}
    return {r.data.tags[KEY_TAG]: _record(r) for r in trial_runs(client, found_id)}


def trial_record(uri: str, experiment: str, key: str) -> dict | None:
    """One key's run as :func:`trial_records` gives it, or None: read by the trial itself when it ends."""
    client = mlflow_client(uri)
    found_id = experiment_id(client, experiment)
    runs = trial_runs(client, found_id, key) if found_id is not None else []
    return _record(runs[0]) if runs else None


def trial_statuses(uri: str, experiment: str) -> dict[str, str]:
    """Each trial key's run status: FINISHED, FAILED (errored), RUNNING or KILLED (interrupted)."""
    return {key: record["status"] for key, record in trial_records(uri, experiment).items()}


def supersede_runs(uri: str, run_ids: Iterable[str], reason: str) -> None:
    """Take trial runs out of the results (kind ``superseded``), keeping them for history: their key is
    trained again because its data or protocol changed."""
    client = mlflow_client(uri)
    for run_id in run_ids:
        client.set_tag(run_id, KIND_TAG, SUPERSEDED_KIND)
        client.set_tag(run_id, SUPERSEDED_TAG, reason[:4000])
        if client.get_run(run_id).info.status == RUNNING:
            client.set_terminated(run_id, status=KILLED)


def fail_trial_run(
    uri: str, experiment: str, key: str, message: str, tags: dict[str, str], parent_run_id: str | None
) -> None:
    """Mark a trial's run FAILED with its error message, creating the run when the trial failed before it
    opened one (so ``--retry-errored`` and the UI see every failed key)."""
    client = mlflow_client(uri)
    found_id = ensure_experiment(uri, experiment)
    existing = trial_runs(client, found_id, key)
    if existing:
        run_id = existing[0].info.run_id
    else:
        run_tags = new_trial_run_tags(key, tags, parent_run_id)
        run_id = client.create_run(found_id, run_name=key, tags=run_tags).info.run_id
    client.set_tag(run_id, ERROR_TAG, message[:5000])
    client.set_terminated(run_id, status=FAILED)


def close_stopped_run(uri: str, experiment: str, key: str, selection: str, reason: str) -> bool:
    """Finish the run of a trial that Tune stopped (a scheduler or a budget) before its protocol ended.

    Its worker was stopped from outside and could not log its final metrics: they are derived here from
    the per-epoch history (the best monitored epoch's test accuracy, and its val accuracy when
    ``selection`` is val, as a finished trial logs them), and the run is tagged :data:`STOPPED_TAG`.
    Returns False when the run had finished by itself (nothing to do).
    """
    client = mlflow_client(uri)
    found_id = experiment_id(client, experiment)
    runs = trial_runs(client, found_id, key) if found_id is not None else []
    if not runs or runs[0].info.status == FINISHED:
        return False
    run_id = runs[0].info.run_id
    test = dict(metric_history(uri, run_id, TEST_ACC_METRIC))
    monitored = dict(metric_history(uri, run_id, VAL_ACC_METRIC if selection == "val" else TEST_ACC_METRIC))
    if not monitored:
        client.set_terminated(run_id, status=KILLED)
        return True
    best_epoch = max(monitored, key=lambda epoch: (monitored[epoch], -epoch))
    run = TrialRun(uri, run_id)
    run.set_tags({STOPPED_TAG: reason})
    final = {
        BEST_TEST_ACC_METRIC: test[best_epoch],
        BEST_EPOCH_METRIC: best_epoch,
        EPOCHS_RUN_METRIC: max(monitored),
        TRAIN_SECONDS_METRIC: sum(v for _, v in metric_history(uri, run_id, EPOCH_SECONDS_METRIC)),
    }
    if selection == "val":
        final[BEST_VAL_ACC_METRIC] = monitored[best_epoch]
    run.finish(final)
    return True
