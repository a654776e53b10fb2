"""MLflow: the only module that imports mlflow.

One experiment per sweep; one run per trial, named and tagged by its key, created (or continued, when a
trial is retried or resumed) by the training worker itself with an explicit tracking URI, so logging works
from any node. The driver uses the same module to check the store before a sweep, to skip finished
keys, and to read results back for the report.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from rayexp.errors import RayexpError

KIND_TAG = "rayexp.kind"  # "trial", "cell" (the parent of a cell's seeds) or "summary" (the sweep's report)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI


def cell_name(backbone: str, dataset: str, fraction: float) -> str:
    return f"{backbone}/{dataset}/{fraction!r}"


def resolve_tracking_uri(uri: str | None) -> str:
    """An explicit, absolute tracking URI: a Train worker's working directory differs from the driver's.

    Default ``sqlite:///mlflow.db`` in the current directory; relative SQLite and file paths are made
    absolute; ``http(s)://`` servers are kept as given.
    """
    if not uri:
        uri = "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser()
        return f"sqlite:///{path.resolve()}"
    if uri.startswith("file:"):
        path = Path(uri[len("file:"):].lstrip("/") if not uri.startswith("file:///") else uri[len("file://"):])
        return Path(path).expanduser().resolve().as_uri()
    if "://" not in uri:
        path = Path(uri).expanduser().resolve()
        return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()
    return uri


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """For an HTTP tracking server: fail fast, with the fix, if it does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status < 400:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise RayexpError(
        f"the MLflow tracking server {uri} does not answer ({problem}); start it "
        f"(mlflow server --host 127.0.0.1 --port 5000) or pass --tracking-uri sqlite:///mlflow.db"
    )


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if missing; checks the store answers."""
    check_server(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            raise RayexpError(f"MLflow experiment {name!r} at {uri} is deleted; restore it or choose another --experiment")
        return experiment.experiment_id
    except RayexpError:
        raise
    except Exception as exc:  # MLflow raises many types for a store it cannot use
        raise RayexpError(f"the MLflow tracking store {uri} cannot be used ({type(exc).__name__}: {exc})") from None


def _runs(client, experiment_id: str, kind: str, **tags: str) -> list:
    query = f"tags.`{KIND_TAG}` = '{kind}'" + "".join(f" and tags.{k} = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _trial_runs(client, experiment_id: str, key: str | None = None) -> list:
    return _runs(client, experiment_id, "trial", **({"key": key} if key is not None else {}))


def ensure_cell_runs(uri: str, experiment: str, cells: Iterable[tuple[str, str, float]], domains: dict[str, str]) -> dict[str, str]:
    """The parent run of each (backbone, dataset, fraction) cell, created if missing: ``{cell name: run id}``.

    Made by the driver before any trial starts, so that seeds running at once never race to create
    their parent; each trial nests its own run under it.
    """
    client = _client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    existing = {r.data.tags["cell"]: r.info.run_id for r in _runs(client, experiment_id, "cell")}
    out = {}
    for backbone, dataset, fraction in cells:
        name = cell_name(backbone, dataset, fraction)
        if name not in existing:
            tags = {KIND_TAG: "cell", "cell": name, "backbone": backbone, "dataset": dataset,
                    "fraction": repr(fraction), "domain": domains.get(dataset, "")}
            run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            client.set_terminated(run_id, status="FINISHED")
            existing[name] = run_id
        out[name] = existing[name]
    return out


def update_cell_summary(uri: str, experiment: str, backbone: str, dataset: str, fraction: float) -> dict | None:
    """Log ``best_of_3``, ``mean``, ``std`` and ``n_seeds`` of a cell's finished seeds on its parent run."""
    from rayexp.report import summarize

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    name = cell_name(backbone, dataset, fraction)
    parents = _runs(client, exp.experiment_id, "cell", cell=name) if exp else []
    if not parents:
        return None
    # Only this cell's runs: called after every trial, it must not read the whole sweep each time.
    rows = fetch_trial_results(uri, experiment, backbone=backbone, dataset=dataset, fraction=repr(fraction))
    (summary,) = summarize(rows) or [None]
    if summary is None or summary.n_seeds == 0:
        return None
    metrics = {"best_of_3": summary.best_of_3, "mean": summary.mean, "n_seeds": summary.n_seeds}
    if summary.std is not None:
        metrics["std"] = summary.std
    TrialRun(uri, parents[0].info.run_id).log_metrics(metrics)
    return metrics


def fetch_cells(uri: str, experiment: str) -> list[tuple[str, str, float, str]]:
    """Every cell the sweep set out to run, from its parent runs: (backbone, dataset, fraction, domain).

    A report compares these with the finished trials, so a partial sweep shows its missing cells.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return sorted(
        (r.data.tags["backbone"], r.data.tags["dataset"], float(r.data.tags["fraction"]), r.data.tags.get("domain", ""))
        for r in _runs(client, exp.experiment_id, "cell")
    )


def trial_statuses(uri: str, experiment: str) -> dict[str, str]:
    """Each trial key's run status: FINISHED, FAILED (errored), RUNNING or KILLED (interrupted)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    return {r.data.tags["key"]: r.info.status for r in _trial_runs(client, exp.experiment_id)}


def finished_keys(uri: str, experiment: str) -> set[str]:
    """Keys whose trial run finished: the unit of resume, never trained again."""
    return {key for key, status in trial_statuses(uri, experiment).items() if status == "FINISHED"}


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class TrialRun:
    """The MLflow run of one trial; continued, never duplicated, when the trial runs again."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = _client(uri)
        self.run_id = run_id

    @classmethod
    def open(cls, uri: str, experiment: str, key: str, tags: dict[str, str], params: dict[str, object], parent_run_id: str | None = None) -> "TrialRun":
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        existing = _trial_runs(client, experiment_id, key)
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "attempts", str(int(existing[0].data.tags.get("attempts", "1")) + 1))
        else:
            nesting = {PARENT_TAG: parent_run_id} if parent_run_id else {}
            run_id = client.create_run(experiment_id, run_name=key, tags={KIND_TAG: "trial", "key": key, "attempts": "1", **nesting, **tags}).info.run_id
        run = cls(uri, run_id)
        run.set_tags(tags)  # a continued run gets this attempt's node and trial id
        run.log_params(params)
        return run

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

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
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), artifact_path=None if parent == "." else parent)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def finish(self, final: dict[str, float]) -> None:
        self.log_metrics(final)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, status="FAILED")


def close_stopped_run(uri: str, experiment: str, key: str, selection: str, reason: str) -> bool:
    """Finish the run of a trial that Tune stopped (a scheduler or a budget) before its protocol ended.

    Its worker was stopped from outside and could not log its final metrics: they are derived here from
    the per-epoch history (the best monitored epoch's test accuracy), and the run is tagged
    ``stopped_by``. Returns False when the run had finished by itself (nothing to do).
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = _trial_runs(client, exp.experiment_id, key) if exp else []
    if not runs or runs[0].info.status == "FINISHED":
        return False
    run_id = runs[0].info.run_id
    test = dict(metric_history(uri, run_id, "test_acc"))
    monitored = dict(metric_history(uri, run_id, "val_acc" if selection == "val" else "test_acc"))
    if not monitored:
        client.set_terminated(run_id, status="KILLED")
        return True
    best_epoch = max(monitored, key=lambda epoch: (monitored[epoch], -epoch))
    run = TrialRun(uri, run_id)
    run.set_tags({"stopped_by": reason})
    seconds = sum(v for _, v in metric_history(uri, run_id, "epoch_seconds"))
    run.finish({"best_test_acc": test[best_epoch], "best_epoch": best_epoch, "epochs_run": max(monitored), "train_seconds": seconds})
    return True


def fetch_trial_results(uri: str, experiment: str, **tags: str) -> list[dict]:
    """Every trial run of ``experiment`` (with ``tags``, if given): key, cell, status, final metrics and
    weights, from MLflow alone."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RayexpError(f"MLflow experiment {experiment!r} does not exist at {uri}")
    rows = []
    for run in _runs(client, exp.experiment_id, "trial", **tags):
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        rows.append(
            {
                "key": tags["key"],
                "backbone": tags.get("backbone"),
                "dataset": tags.get("dataset"),
                "domain": tags.get("domain"),
                "fraction": float(tags.get("fraction", "nan")),
                "seed": int(tags.get("seed", -1)),
                "status": run.info.status,
                "best_test_acc": _clean(metrics.get("best_test_acc")),
                "best_epoch": _clean(metrics.get("best_epoch")),
                "epochs_run": _clean(metrics.get("epochs_run")),
                "weights": params.get("weights"),
                "stopped_by": tags.get("stopped_by"),
                "parent_run_id": tags.get(PARENT_TAG),
                "accelerator": tags.get("accelerator"),
                "train_seconds": _clean(metrics.get("train_seconds")),
                "train_images_per_s": _clean(metrics.get("train_images_per_s")),
                "inference_images_per_s": _clean(metrics.get("test_images_per_s")),
                "best_test_balanced_acc": _clean(metrics.get("best_test_balanced_acc")),
                "run_id": run.info.run_id,
            }
        )
    return rows


def summary_run(uri: str, experiment: str) -> "TrialRun":
    """The sweep's one summary run (created on first use), which holds the report as artifacts."""
    client = _client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    runs = _runs(client, experiment_id, "summary")
    if runs:
        return TrialRun(uri, runs[0].info.run_id)
    run_id = client.create_run(experiment_id, run_name="report", tags={KIND_TAG: "summary"}).info.run_id
    return TrialRun(uri, run_id)


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, metric))
