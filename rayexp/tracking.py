"""MLflow: the only module that imports mlflow.

One experiment per sweep; one run per trial, named and tagged by its key, created (or continued, when a
trial is retried or resumed) by the training worker itself with an explicit tracking URI, so logging works
from any node. The driver uses the same module to check the store before a sweep, to skip finished
keys, and to read results back for the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from rayexp.errors import RayexpError
from rayexp.liveness import pid_alive

KIND_TAG = "rayexp.kind"  # "trial", "cell" (the parent of a cell's seeds) or "summary" (the sweep's report)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
# What a trial run was produced from (see rayexp.fingerprint): a finished run counts only for the same values.
DATA_TAG = "data_fingerprint"
PROTOCOL_TAG = "protocol_fingerprint"
SETTINGS_TAG = "protocol_settings"  # the settings behind the protocol fingerprint, as JSON, to say what changed
WEIGHTS_TAG = "weights_origin"  # pretrained | random
BATCH_TAG = "batch_size_resolved"
ERROR_TAG = "error"  # a failed trial's error message, shown in the sweep's summary
CAPPED_TAG = "capped"  # the DualOpt phases (AdamW, SGD) that ended at --max-epochs, not by patience
STOPPED_TAG = "stopped_by"  # who stopped a trial before its protocol ended: a scheduler or a budget
PREDICTIONS_ARTIFACT = "test_predictions.csv"  # id,label,prediction of the best epoch's test pass
SEEDS_TAG = "seeds"  # on a cell's parent run: the seeds planned for it, comma-separated


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
        path = Path(uri[len("sqlite:///") :]).expanduser()
        return f"sqlite:///{path.resolve()}"
    if uri.startswith("file:"):
        path = Path(uri[len("file:") :].lstrip("/") if not uri.startswith("file:///") else uri[len("file://") :])
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
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RayexpError(
                f"the MLflow store {uri} cannot be created: its folder {folder} cannot be made ({exc.strerror or exc}); "
                "pass --tracking-uri sqlite:///<a writable folder>/mlflow.db"
            ) from None
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name)
        if experiment.lifecycle_stage == "deleted":
            raise RayexpError(
                f"MLflow experiment {name!r} at {uri} is deleted; restore it or choose another --experiment"
            )
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


def ensure_cell_runs(
    uri: str,
    experiment: str,
    cells: Iterable[tuple[str, str, float]],
    domains: dict[str, str],
    seeds: dict[tuple[str, str, float], Iterable[int]] | None = None,
) -> dict[str, str]:
    """The parent run of each (backbone, dataset, fraction) cell, created if missing: ``{cell name: run id}``.

    Made by the driver before any trial starts, so that seeds running at once never race to create
    their parent; each trial nests its own run under it. ``seeds`` are the seeds planned per cell, kept in
    the parent's ``seeds`` tag (the union over sweeps), so that a report knows a cell is incomplete.
    """
    client = _client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    existing = {r.data.tags["cell"]: r for r in _runs(client, experiment_id, "cell")}
    out = {}
    for cell in cells:
        backbone, dataset, fraction = cell
        name = cell_name(backbone, dataset, fraction)
        planned = sorted(set((seeds or {}).get(cell, ())))
        run = existing.get(name)
        if run is None:
            tags = {
                KIND_TAG: "cell",
                "cell": name,
                "backbone": backbone,
                "dataset": dataset,
                "fraction": repr(fraction),
                "domain": domains.get(dataset, ""),
            }
            if planned:
                tags[SEEDS_TAG] = ",".join(map(str, planned))
            run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            client.set_terminated(run_id, status="FINISHED")
        else:
            run_id = run.info.run_id
            union = sorted(set(planned) | set(_seeds(run.data.tags.get(SEEDS_TAG))))
            if union and union != _seeds(run.data.tags.get(SEEDS_TAG)):
                client.set_tag(run_id, SEEDS_TAG, ",".join(map(str, union)))
        out[name] = run_id
    return out


def _seeds(text: str | None) -> list[int]:
    return [int(s) for s in (text or "").split(",") if s.strip().lstrip("-").isdigit()]


def log_cell_summary(
    uri: str, experiment: str, backbone: str, dataset: str, fraction: float, metrics: dict[str, float]
) -> bool:
    """Log a cell's summary (``best_of_3``, ``mean``, ``std``, ``n_seeds``) on its parent run; False when the
    cell has no parent run."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = _runs(client, exp.experiment_id, "cell", cell=cell_name(backbone, dataset, fraction)) if exp else []
    if not parents:
        return False
    TrialRun(uri, parents[0].info.run_id).log_metrics(metrics)
    return True


def fetch_cells(uri: str, experiment: str) -> list[tuple[str, str, float, str, tuple[int, ...]]]:
    """Every cell the sweep set out to run, from its parent runs: (backbone, dataset, fraction, domain, planned seeds).

    A report compares these with the finished trials, so a partial sweep shows its missing cells and seeds.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return sorted(
        (
            r.data.tags["backbone"],
            r.data.tags["dataset"],
            float(r.data.tags["fraction"]),
            r.data.tags.get("domain", ""),
            tuple(_seeds(r.data.tags.get(SEEDS_TAG))),
        )
        for r in _runs(client, exp.experiment_id, "cell")
    )


def _record(run) -> dict:
    return {"status": run.info.status, "run_id": run.info.run_id, "tags": dict(run.data.tags)}


def trial_records(uri: str, experiment: str) -> dict[str, dict]:
    """Each trial key's run: ``{"status", "run_id", "tags"}``, where tags hold its fingerprints
    (:mod:`rayexp.fingerprint`), so the driver can tell a run of the same data and protocol from a stale one."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    return {r.data.tags["key"]: _record(r) for r in _trial_runs(client, exp.experiment_id)}


def trial_record(uri: str, experiment: str, key: str) -> dict | None:
    """One key's run as :func:`trial_records` gives it, or None: read by the trial itself when it ends."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = _trial_runs(client, exp.experiment_id, key) if exp else []
    return _record(runs[0]) if runs else None


def trial_statuses(uri: str, experiment: str) -> dict[str, str]:
    """Each trial key's run status: FINISHED, FAILED (errored), RUNNING or KILLED (interrupted)."""
    return {key: record["status"] for key, record in trial_records(uri, experiment).items()}


def supersede_runs(uri: str, run_ids: Iterable[str], reason: str) -> None:
    """Take trial runs out of the results (kind ``superseded``), keeping them for history: their key is
    trained again because its data or protocol changed."""
    client = _client(uri)
    for run_id in run_ids:
        client.set_tag(run_id, KIND_TAG, "superseded")
        client.set_tag(run_id, "superseded_because", reason[:4000])
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


def fail_trial_run(
    uri: str, experiment: str, key: str, message: str, tags: dict[str, str], parent_run_id: str | None
) -> None:
    """Mark a trial's run FAILED with its error message, creating the run when the trial failed before it
    opened one (so ``--retry-errored`` and the UI see every failed key)."""
    client = _client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    existing = _trial_runs(client, experiment_id, key)
    if existing:
        run_id = existing[0].info.run_id
    else:
        nesting = {PARENT_TAG: parent_run_id} if parent_run_id else {}
        run_tags = {KIND_TAG: "trial", "key": key, "attempts": "1", **nesting, **tags}
        run_id = client.create_run(experiment_id, run_name=key, tags=run_tags).info.run_id
    client.set_tag(run_id, ERROR_TAG, message[:5000])
    client.set_terminated(run_id, status="FAILED")


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class TrialRun:
    """The MLflow run of one trial; continued, never duplicated, when the trial runs again."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = _client(uri)
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
    ) -> "TrialRun":
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        existing = _trial_runs(client, experiment_id, key)
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "attempts", str(int(existing[0].data.tags.get("attempts", "1")) + 1))
            if ERROR_TAG in existing[0].data.tags:  # the last attempt's error; this attempt has none yet
                client.delete_tag(run_id, ERROR_TAG)
        else:
            nesting = {PARENT_TAG: parent_run_id} if parent_run_id else {}
            run_id = client.create_run(
                experiment_id, run_name=key, tags={KIND_TAG: "trial", "key": key, "attempts": "1", **nesting, **tags}
            ).info.run_id
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
    the per-epoch history (the best monitored epoch's test accuracy, and its val accuracy when
    ``selection`` is val, as a finished trial logs them), and the run is tagged :data:`STOPPED_TAG`.
    Returns False when the run had finished by itself (nothing to do).
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
    run.set_tags({STOPPED_TAG: reason})
    seconds = sum(v for _, v in metric_history(uri, run_id, "epoch_seconds"))
    final = {
        "best_test_acc": test[best_epoch],
        "best_epoch": best_epoch,
        "epochs_run": max(monitored),
        "train_seconds": seconds,
    }
    if selection == "val":
        final["best_val_acc"] = monitored[best_epoch]
    run.finish(final)
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
                "stopped_by": tags.get(STOPPED_TAG),
                "capped": tags.get(CAPPED_TAG),
                "selection": tags.get("selection") or params.get("selection"),
                "best_val_acc": _clean(metrics.get("best_val_acc")),
                "test_rows": _clean(_float(params.get("test_rows"))),
                "num_classes": _clean(_float(params.get("num_classes"))),
                "test_majority_rate": _clean(_float(params.get("test_majority_rate"))),
                "parent_run_id": tags.get(PARENT_TAG),
                "accelerator": tags.get("accelerator"),
                "train_seconds": _clean(metrics.get("train_seconds")),
                "train_images_per_s": _clean(metrics.get("train_images_per_s")),
                "inference_images_per_s": _clean(metrics.get("test_images_per_s")),
                "best_test_balanced_acc": _clean(metrics.get("best_test_balanced_acc")),
                "run_id": run.info.run_id,
                "start_time": run.info.start_time,
                "data_fingerprint": tags.get(DATA_TAG),
                "protocol_fingerprint": tags.get(PROTOCOL_TAG),
                "error": tags.get(ERROR_TAG),
            }
        )
    return rows


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def fetch_predictions(uri: str, run_id: str) -> tuple[list[str], list[int], list[int]] | None:
    """A trial's best-epoch test predictions (:data:`PREDICTIONS_ARTIFACT`) as (ids, labels, predictions),
    or None when the run has none or the file is not one rayexp wrote (then a verdict falls back to its
    summary rule and says so)."""
    import csv
    import tempfile

    client = _client(uri)
    with tempfile.TemporaryDirectory(prefix="rayexp-predictions-") as folder:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, folder)
            with open(path, newline="") as handle:
                reader = csv.reader(handle)
                if next(reader, None) != ["id", "label", "prediction"]:
                    return None
                ids, labels, predictions = [], [], []
                for row in reader:
                    ids.append(row[0])
                    labels.append(int(row[1]))
                    predictions.append(int(row[2]))
        except Exception:  # noqa: BLE001 - missing, unreadable or malformed: all mean "no predictions"
            return None
    if len(set(ids)) != len(ids):
        return None
    return ids, labels, predictions


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


# ---------------------------------------------------------------------------------------------------------
# One sweep per experiment: a lock kept in MLflow itself.
#
# Two sweeps into one experiment would train the same trial keys and log every epoch twice into the same
# run. The drivers may share nothing but the tracking store (a SQLite file, or an ``mlflow server`` that
# drivers on several hosts talk to), so the lock lives in that store, as one "lock" run per experiment.
#
# Why it is atomic: MLflow never lets a run's param change. ``log_param`` of a key the run already has,
# with another value, raises MlflowException; in the SQL store (which an HTTP server also writes through)
# the (run, key) primary key turns two concurrent inserts into one commit and one IntegrityError, so that
# is a compare-and-set, not a read-then-write. The lock's generations are params ``holder.1``,
# ``holder.2``, ...: whoever logs ``holder.<g+1>`` first holds generation g+1, and every value carries a
# random token, so no two drivers ever write the same value (which MLflow would accept twice). Releasing,
# and the heartbeat, are tags (``released.<g>``, ``heartbeat.<g>``): only the holder writes them.
# (An ``mlflow server`` on a plain file store checks then writes, so there the lock is only best effort.)
# ---------------------------------------------------------------------------------------------------------


HEARTBEAT_S = 30.0  # how often a holder refreshes ``heartbeat.<g>``
STALE_S = 180.0  # a holder whose heartbeat is older than this is taken for dead (drivers on other hosts)
LOCK_RUN_NAME = "sweep-lock"
_RETIRED = "retired"  # ``holder.1`` of a lock run that lost the race to be the experiment's lock run
_LOCK_ATTEMPTS = 5

_lock_log = logging.getLogger(__name__)


@dataclass
class _Hold:
    """An unreleased generation of a lock run: who holds it, and why it is stale (None: alive)."""

    run_id: str
    generation: int
    holder: dict
    heartbeat_age_s: float
    stale: str | None


def _generation(params: dict[str, str]) -> int:
    """The current generation of a lock run: its largest ``holder.<n>`` (0 when never taken)."""
    numbers = [key[len("holder.") :] for key in params if key.startswith("holder.")]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _epoch(iso: object) -> float | None:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


def _hold(run) -> _Hold | None:
    """The unreleased generation of lock run ``run`` (from search or get_run), or None when it is free."""
    params, tags = run.data.params, run.data.tags
    generation = _generation(params)
    if generation == 0 or f"released.{generation}" in tags or params.get("holder.1") == _RETIRED:
        return None
    try:
        holder = json.loads(params[f"holder.{generation}"])
        if not isinstance(holder, dict):
            raise ValueError(holder)
    except ValueError:
        holder = {"host": "?", "pid": None, "started": "?", "token": params[f"holder.{generation}"]}
    try:
        beat = float(tags[f"heartbeat.{generation}"])
    except (KeyError, ValueError):  # taken, but no heartbeat written yet: count from the start
        beat = _epoch(holder.get("started")) or 0.0
    age = max(0.0, time.time() - beat)
    stale = None
    if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
        stale = f"its process {holder.get('pid')} is gone"
    elif age > STALE_S:
        stale = f"no heartbeat for {age:.0f} s"
    return _Hold(run.info.run_id, generation, holder, age, stale)


def _busy(experiment: str, hold: _Hold) -> RayexpError:
    h = hold.holder
    return RayexpError(
        f"experiment {experiment!r} is being swept by pid {h.get('pid')} on host {h.get('host')} since "
        f"{h.get('started')} (heartbeat {hold.heartbeat_age_s:.0f} s ago): wait for it to finish, "
        f"or use another --experiment"
    )


def _interrupted(experiment: str, hold: _Hold) -> RayexpError:
    h = hold.holder
    return RayexpError(
        f"the earlier sweep of experiment {experiment!r} (pid {h.get('pid')} on host {h.get('host')}, since "
        f"{h.get('started')}) was interrupted ({hold.stale}) without releasing it: pass --resume to continue "
        f"it, or choose another --experiment"
    )


def _lock_runs(client, experiment_id: str) -> list:
    """The experiment's usable lock runs, first the one every driver takes: by (start_time, run_id)."""
    runs = [r for r in _runs(client, experiment_id, "lock") if r.data.params.get("holder.1") != _RETIRED]
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _ensure_lock_runs(client, experiment_id: str) -> list:
    """``_lock_runs``, after creating the experiment's lock run if it has none.

    Two drivers may both find none and both create one. Each then searches again and uses the first by
    (start_time, run_id); a driver whose own run is not first retires it before deleting it: it logs
    ``holder.1 = "retired"``, which fails if a driver that saw only this run has already taken it (then
    the run stays, a lock run like any other), and otherwise makes sure no one can take it later.
    """
    from mlflow.exceptions import MlflowException

    runs = _lock_runs(client, experiment_id)
    if runs:
        return runs
    own = client.create_run(experiment_id, run_name=LOCK_RUN_NAME, tags={KIND_TAG: "lock"}).info.run_id
    client.set_terminated(own, status="FINISHED")  # not a running job in MLflow's UI
    runs = _lock_runs(client, experiment_id)
    if runs and runs[0].info.run_id != own:
        try:
            client.log_param(own, "holder.1", _RETIRED)
        except MlflowException:
            return runs  # already taken by someone: it stays
        client.delete_run(own)
        runs = [r for r in runs if r.info.run_id != own]
    return runs


def _lock_experiment_id(client, uri: str, experiment: str) -> str:
    try:
        return ensure_experiment(uri, experiment)
    except RayexpError:
        # Two drivers creating the same new experiment: one create fails, and the experiment exists.
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage != "active":
            raise
        return found.experiment_id


class SweepLock:
    """Generation ``generation`` of the experiment's lock run, held by this process until ``release()``.

    While held, a daemon thread writes ``heartbeat.<generation>`` every ``HEARTBEAT_S`` seconds, so that
    drivers on other hosts, which cannot see whether this process lives, can tell a crashed holder (no
    heartbeat for ``STALE_S``) from a busy one. Use it as a context manager, or call ``release()``.
    """

    def __init__(self, uri: str, experiment: str, run_id: str, generation: int, holder: dict) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_id = run_id
        self.generation = generation
        self.holder = holder
        self._client = _client(uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._released = False

    def __repr__(self) -> str:
        return f"SweepLock({self.experiment!r}, generation={self.generation}, released={self._released})"

    def __enter__(self) -> "SweepLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def released(self) -> bool:
        return self._released

    def _beat(self) -> None:
        self._client.set_tag(self.run_id, f"heartbeat.{self.generation}", f"{time.time():.3f}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):  # the global, read each time: tests shorten it
            try:
                self._beat()
            except Exception as exc:  # a blip of the server: the next beat comes in HEARTBEAT_S
                _lock_log.warning("sweep lock heartbeat of %r failed: %s", self.experiment, exc)

    def _start(self) -> None:
        self._beat()  # the first one now: a holder without a heartbeat looks older than it is
        self._thread = threading.Thread(target=self._heartbeat, name=f"sweep-lock-{self.experiment}", daemon=True)
        self._thread.start()

    def still_held(self) -> bool:
        """False once released, or once another driver took a later generation (it found this one stale)."""
        params = self._client.get_run(self.run_id).data.params
        return not self._released and _generation(params) == self.generation

    def release(self) -> None:
        """Stop the heartbeat and tag ``released.<generation>``; calling it again does nothing."""
        with self._mutex:
            if self._released:
                return
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=10)
            self._client.set_tag(self.run_id, f"released.{self.generation}", datetime.now(timezone.utc).isoformat())
            self._released = True


def acquire_sweep_lock(uri: str, experiment: str, resume: bool = False) -> SweepLock:
    """Take the one-sweep-at-a-time lock of ``experiment`` (created if missing) in the store at ``uri``.

    Raises RayexpError, naming the host and pid that hold it, while another sweep holds it. A holder that
    died without releasing it (same host and its pid is gone, or no heartbeat for ``STALE_S``) is taken
    over only with ``resume=True``; without it, the error says to pass --resume.

    Taking it is ``log_param(lock run, "holder.<g+1>", this driver)``: MLflow's write-once params make
    that an atomic compare-and-set (see the section comment). In the rare case that two lock runs exist
    (two drivers created one at the same moment and neither saw the other's yet), every driver reads the
    holds of all of them: after winning, it reads them again, and it backs off and retries if another run
    got a new holder in the meantime. Two drivers that each first write their claim and then read the
    other's cannot both miss each other, so they never both keep the lock.
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    experiment_id = _lock_experiment_id(client, uri, experiment)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }
    mine = json.dumps(me, sort_keys=True)
    for _ in range(_LOCK_ATTEMPTS):
        runs = _ensure_lock_runs(client, experiment_id)
        holds = [h for h in map(_hold, runs) if h is not None]
        live = [h for h in holds if h.stale is None]
        if live:
            raise _busy(experiment, live[0])
        if holds and not resume:
            raise _interrupted(experiment, holds[0])
        taken_over = {(h.run_id, h.generation) for h in holds}
        run_id = runs[0].info.run_id
        generation = _generation(runs[0].data.params) + 1
        key = f"holder.{generation}"
        try:
            client.log_param(run_id, key, mine)
        except MlflowException as exc:
            winner = client.get_run(run_id)
            value = winner.data.params.get(key)
            if value is not None and value not in (mine, _RETIRED):
                hold = _hold(winner)  # None only if the winner has already released it
                if hold is None:
                    raise RayexpError(f"experiment {experiment!r} was just swept by another driver; try again")
                raise _busy(experiment, hold) from None
            if value != mine:  # retired under us, or the store failed: look again
                _lock_log.info("sweep lock of %r: %s; trying again", experiment, exc)
                time.sleep(random.uniform(0.05, 0.3))
                continue
        lock = SweepLock(uri, experiment, run_id, generation, me)
        others = [h for h in map(_hold, _lock_runs(client, experiment_id)) if h is not None and h.run_id != run_id]
        conflicts = [h for h in others if (h.run_id, h.generation) not in taken_over]
        if conflicts:  # another lock run got a holder while we took ours: give ours back, look again
            lock.release()
            time.sleep(random.uniform(0.05, 0.3))
            continue
        for h in others:  # the interrupted holds this resume takes over, on other lock runs
            client.set_tag(h.run_id, f"released.{h.generation}", f"taken over by {mine}")
        lock._start()
        return lock
    raise RayexpError(
        f"could not take the sweep lock of experiment {experiment!r}: other sweeps of it keep "
        f"starting at the same moment; try again"
    )


def sweep_lock_holder(uri: str, experiment: str) -> dict | None:
    """Who holds the sweep lock of ``experiment``: the holder's host, pid, started and token, plus
    ``generation``, ``run_id``, ``heartbeat_age_s`` and ``stale`` (why it looks dead, or None); None
    when no sweep holds it (or the experiment does not exist). Reads only; creates nothing."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    holds = [h for h in map(_hold, _lock_runs(client, exp.experiment_id)) if h is not None]
    if not holds:
        return None
    hold = min(holds, key=lambda h: h.stale is not None)  # a live holder first
    return {
        **hold.holder,
        "generation": hold.generation,
        "run_id": hold.run_id,
        "heartbeat_age_s": hold.heartbeat_age_s,
        "stale": hold.stale,
    }
