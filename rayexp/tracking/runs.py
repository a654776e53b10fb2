"""Writing a run: :class:`TrialRun`, the run of one trial (also used to write a cell's or the sweep's
summary run), and the sweep's summary run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rayexp.tracking.client import create_experiment, ensure_experiment, mlflow_client, search_runs, trial_runs
from rayexp.tracking.schema import (
    ATTEMPTS_TAG,
    ERROR_TAG,
    FINISHED,
    KEY_TAG,
    KIND_TAG,
    PARENT_TAG,
    RUNNING,
    SUMMARY_KIND,
    SUMMARY_RUN_NAME,
    TRIAL_KIND,
)


def new_trial_run_tags(key: str, tags: dict[str, str], parent_run_id: str | None) -> dict[str, str]:
    """The tags a trial's run is created with: its kind, key, first attempt and parent, then ``tags``."""
    nesting = {PARENT_TAG: parent_run_id} if parent_run_id else {}
    return {KIND_TAG: TRIAL_KIND, KEY_TAG: key, ATTEMPTS_TAG: "1", **nesting, **tags}


class TrialRun:
    """The MLflow run of one trial; continued, never duplicated, when the trial runs again."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = mlflow_client(uri)
        self.run_id = run_id

    @classmethod
    def open(
        cls,
        uri: str,
        experiment: str,
        key: str,
        tags: dict[str, str],
        params: dict[str, object],
        parent_run_id: str | None = None,
    ) -> TrialRun:
        """The run of trial ``key``: created with ``tags`` and ``params``, or, when the trial runs again,
        continued (RUNNING again, one more attempt, the last attempt's error gone, ``tags`` updated and
        only new ``params`` logged: MLflow never changes a param)."""
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp is not None else create_experiment(client, uri, experiment)
        existing = trial_runs(client, experiment_id, key)
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status=RUNNING)
            client.set_tag(run_id, ATTEMPTS_TAG, str(int(existing[0].data.tags.get(ATTEMPTS_TAG, "1")) + 1))
            if ERROR_TAG in existing[0].data.tags:  # the last attempt's error; this attempt has none yet
                client.delete_tag(run_id, ERROR_TAG)
        else:
            run_tags = new_trial_run_tags(key, tags, parent_run_id)
            run_id = client.create_run(experiment_id, run_name=key, tags=run_tags).info.run_id
        run = cls(uri, run_id)
        run.set_tags(tags)  # a continued run gets this attempt's node and trial id
        run.log_params(params)
        return run

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param  # lazy: see client.mlflow_client

        logged = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log the numbers among ``metrics`` (at ``step``, else 0); others are left out."""
        from mlflow.entities import Metric  # lazy: see client.mlflow_client

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step if step is not None else 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Upload ``data`` as ``artifact_file`` (through the server when the store is HTTP)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), artifact_path=None if parent == "." else parent)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def finish(self, final: dict[str, float]) -> None:
        """Log the final metrics and end the run FINISHED."""
        self.log_metrics(final)
        self.client.set_terminated(self.run_id, status=FINISHED)


def summary_run(uri: str, experiment: str) -> TrialRun:
    """The sweep's one summary run (created on first use), which holds the report as artifacts."""
    client = mlflow_client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    runs = search_runs(client, experiment_id, SUMMARY_KIND)
    if runs:
        return TrialRun(uri, runs[0].info.run_id)
    tags = {KIND_TAG: SUMMARY_KIND}
    run_id = client.create_run(experiment_id, run_name=SUMMARY_RUN_NAME, tags=tags).info.run_id
    return TrialRun(uri, run_id)
