"""The tracking store: its URI, its server, its experiments, and the search for runs of one kind."""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from rayexp.errors import RayexpError
from rayexp.tracking.schema import KEY_TAG, KIND_TAG, TRIAL_KIND

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


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


LOCKED_WAIT_S = 600.0  # how long, in all, a call waits out a locked SQLite store before its error is raised
LOCKED_PAUSE_S = 5.0  # between tries (each try itself waits MLflow's busy timeout, 20 s, before it fails)


def _locked(exc: BaseException) -> bool:
    return "database is locked" in str(exc)


class PatientClient:
    """An ``MlflowClient`` whose calls wait out a SQLite store another process holds locked (a backup, a long
    write): one line per wait, and the call again, rather than MLflow's traceback of every failed statement. A
    failed SQLite statement committed nothing, so calling again is safe. Other errors pass through at once."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self._client, self._uri = client, uri

    def __getattr__(self, name: str):
        found = getattr(self._client, name)
        if not callable(found):
            return found

        def patiently(*args, **kwargs):
            waited = 0.0
            while True:
                started = time.monotonic()
                try:
                    return found(*args, **kwargs)
                except Exception as exc:
                    waited += time.monotonic() - started
                    if not _locked(exc) or waited >= LOCKED_WAIT_S:
                        raise
                print(
                    f"[rayexp] the MLflow store {self._uri} is locked by another process; waiting for it "
                    f"({waited:.0f} s so far, at most {LOCKED_WAIT_S:.0f} s)",
                    flush=True,
                )
                time.sleep(LOCKED_PAUSE_S)
                waited += LOCKED_PAUSE_S

        return patiently


def mlflow_client(uri: str) -> MlflowClient:
    # mlflow is imported where it is used (here, and for its Param, Metric and MlflowException), not at the
    # top: importing it takes ~1.4 s against ~0.05 s for the whole package without it, and every rayexp
    # command imports this package (rayexp.cli -> results -> fingerprint, for the schema's tag names),
    # including those that never touch MLflow (prepare, --help).
    from mlflow.tracking import MlflowClient

    # "Creating initial MLflow database tables..." on a new SQLite store: MLflow's INFO, not the user's news; and
    # its ERROR with a traceback for every statement a locked store refused, which PatientClient words itself.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A report reads every trial's predictions file: one progress bar each would bury its output (set it to
    # true to see them).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=uri)
    return PatientClient(client, uri) if uri.startswith("sqlite:") else client  # type: ignore[return-value]


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


def _make_store_folder(uri: str) -> None:
    if not uri.startswith("sqlite:///"):
        return
    folder = Path(uri[len("sqlite:///") :]).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RayexpError(
            f"the MLflow store {uri} cannot be created: its folder {folder} cannot be made "
            f"({exc.strerror or exc}); pass --tracking-uri sqlite:///<a writable folder>/mlflow.db"
        ) from None


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store's file (``<its folder>/mlartifacts/<name>``),
    not MLflow's default ``./mlruns`` of whatever directory the command ran in; a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return folder.resolve().as_uri()


def create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Create experiment ``name`` with its artifacts where :func:`artifact_location` says."""
    return client.create_experiment(name, artifact_location=artifact_location(uri, name))


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if missing; checks the store answers."""
    check_server(uri)
    _make_store_folder(uri)
    try:
        client = mlflow_client(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return create_experiment(client, uri, name)
        if experiment.lifecycle_stage == "deleted":
            raise RayexpError(
                f"MLflow experiment {name!r} at {uri} is deleted; restore it or choose another --experiment"
            )
        return experiment.experiment_id
    except RayexpError:
        raise
    except Exception as exc:  # MLflow raises many types for a store it cannot use
        raise RayexpError(f"the MLflow tracking store {uri} cannot be used ({type(exc).__name__}: {exc})") from None


def existing_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` for a reader that creates nothing: neither a SQLite store that is not
    there nor the experiment; an error naming the experiments the store has otherwise."""
    check_server(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise RayexpError(f"there is no MLflow store at {uri}: pass the sweep's --tracking-uri")
    client = mlflow_client(uri)
    found = experiment_id(client, name)
    if found is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise RayexpError(
            f"MLflow store {uri} has no experiment {name!r}; its experiments: {', '.join(names) or 'none'}"
        )
    return found


def experiment_id(client: MlflowClient, name: str) -> str | None:
    """The id of experiment ``name``, or None when it does not exist: for readers, which create nothing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def search_runs(client: MlflowClient, experiment_id: str, kind: str, **tags: str) -> list[Run]:
    """Every run of ``kind`` (:data:`~rayexp.tracking.schema.KIND_TAG`) with these tag values."""
    query = f"tags.`{KIND_TAG}` = '{kind}'" + "".join(f" and tags.{k} = '{v}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(client: MlflowClient, experiment_id: str, key: str | None = None) -> list[Run]:
    """Every trial run, or the run of trial ``key``."""
    return search_runs(client, experiment_id, TRIAL_KIND, **({KEY_TAG: key} if key is not None else {}))
