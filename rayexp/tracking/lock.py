"""One sweep per experiment: a lock kept in MLflow itself.

Two sweeps into one experiment would train the same trial keys and log every epoch twice into the same
run. The drivers may share nothing but the tracking store (a SQLite file, or an ``mlflow server`` that
drivers on several hosts talk to), so the lock lives in that store, as one "lock" run per experiment.

Why it is atomic: MLflow never lets a run's param change. ``log_param`` of a key the run already has,
with another value, raises MlflowException; in the SQL store (which an HTTP server also writes through)
the (run, key) primary key turns two concurrent inserts into one commit and one IntegrityError, so that
is a compare-and-set, not a read-then-write. The lock's generations are params ``holder.1``,
``holder.2``, ...: whoever logs ``holder.<g+1>`` first holds generation g+1, and every value carries a
random token, so no two drivers ever write the same value (which MLflow would accept twice). Releasing,
and the heartbeat, are tags (``released.<g>``, ``heartbeat.<g>``): only the holder writes them.
(An ``mlflow server`` on a plain file store checks then writes, so there the lock is only best effort.)
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from rayexp.errors import RayexpError
from rayexp.liveness import pid_alive
from rayexp.tracking.client import ensure_experiment, mlflow_client, search_runs
from rayexp.tracking.schema import (
    FINISHED,
    HOLDER_PARAM_PREFIX,
    KIND_TAG,
    LOCK_KIND,
    LOCK_RUN_NAME,
    RETIRED_HOLDER,
    heartbeat_tag,
    holder_param,
    released_tag,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

HEARTBEAT_S = 30.0  # how often a holder refreshes ``heartbeat.<g>``
STALE_S = 180.0  # a holder whose heartbeat is older than this is taken for dead (drivers on other hosts)
_LOCK_ATTEMPTS = 5

_log = logging.getLogger(__name__)


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
    numbers = [key[len(HOLDER_PARAM_PREFIX) :] for key in params if key.startswith(HOLDER_PARAM_PREFIX)]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def _epoch(iso: object) -> float | None:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


def _holder(params: dict[str, str], generation: int) -> dict:
    """Who took ``generation``: host, pid, started and token (only the token when it is not rayexp's JSON)."""
    try:
        holder = json.loads(params[holder_param(generation)])
        if not isinstance(holder, dict):
            raise ValueError(holder)
    except ValueError:
        holder = {"host": "?", "pid": None, "started": "?", "token": params[holder_param(generation)]}
    return holder


def _hold(run: Run) -> _Hold | None:
    """The unreleased generation of lock run ``run`` (from search or get_run), or None when it is free."""
    params, tags = run.data.params, run.data.tags
    generation = _generation(params)
    if generation == 0 or released_tag(generation) in tags or params.get(holder_param(1)) == RETIRED_HOLDER:
        return None
    holder = _holder(params, generation)
    try:
        beat = float(tags[heartbeat_tag(generation)])
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


def _lock_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The experiment's usable lock runs, first the one every driver takes: by (start_time, run_id)."""
    runs = search_runs(client, experiment_id, LOCK_KIND)
    runs = [r for r in runs if r.data.params.get(holder_param(1)) != RETIRED_HOLDER]
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _ensure_lock_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """``_lock_runs``, after creating the experiment's lock run if it has none.

    Two drivers may both find none and both create one. Each then searches again and uses the first by
    (start_time, run_id); a driver whose own run is not first retires it before deleting it: it logs
    ``holder.1 = "retired"``, which fails if a driver that saw only this run has already taken it (then
    the run stays, a lock run like any other), and otherwise makes sure no one can take it later.
    """
    from mlflow.exceptions import MlflowException  # lazy: see client.mlflow_client

    runs = _lock_runs(client, experiment_id)
    if runs:
        return runs
    own = client.create_run(experiment_id, run_name=LOCK_RUN_NAME, tags={KIND_TAG: LOCK_KIND}).info.run_id
    client.set_terminated(own, status=FINISHED)  # not a running job in MLflow's UI
    runs = _lock_runs(client, experiment_id)
    if runs and runs[0].info.run_id != own:
        try:
            client.log_param(own, holder_param(1), RETIRED_HOLDER)
        except MlflowException:
            return runs  # already taken by someone: it stays
        client.delete_run(own)
        runs = [r for r in runs if r.info.run_id != own]
    return runs


def _lock_experiment_id(client: MlflowClient, uri: str, experiment: str) -> str:
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
        self._client = mlflow_client(uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._released = False

    def __repr__(self) -> str:
        return f"SweepLock({self.experiment!r}, generation={self.generation}, released={self._released})"

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _beat(self) -> None:
        self._client.set_tag(self.run_id, heartbeat_tag(self.generation), f"{time.time():.3f}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):  # the global, read each time: tests shorten it
            try:
                self._beat()
            except Exception as exc:  # a blip of the server: the next beat comes in HEARTBEAT_S
                _log.warning("sweep lock heartbeat of %r failed: %s", self.experiment, exc)

    def _start(self) -> None:
        self._beat()  # the first one now: a holder without a heartbeat looks older than it is
        self._thread = threading.Thread(target=self._heartbeat, name=f"sweep-lock-{self.experiment}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and tag ``released.<generation>``; calling it again does nothing."""
        with self._mutex:
            if self._released:
                return
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=10)
            released = datetime.now(timezone.utc).isoformat()
            self._client.set_tag(self.run_id, released_tag(self.generation), released)
            self._released = True


def _me() -> dict:
    """This driver as a holder: host, pid, when it started, and a token no other driver has."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }


def _back_off() -> None:
    time.sleep(random.uniform(0.05, 0.3))


def _claim(client: MlflowClient, experiment: str, run_id: str, generation: int, mine: str) -> bool:
    """Log ``holder.<generation> = mine`` on lock run ``run_id``: True when this driver holds it, False to
    look again (the run was retired under us, or the store failed); raises when another driver won it."""
    from mlflow.exceptions import MlflowException  # lazy: see client.mlflow_client

    key = holder_param(generation)
    try:
        client.log_param(run_id, key, mine)
        return True
    except MlflowException as exc:
        winner = client.get_run(run_id)
        value = winner.data.params.get(key)
        if value is not None and value not in (mine, RETIRED_HOLDER):
            hold = _hold(winner)  # None only if the winner has already released it
            if hold is None:
                raise RayexpError(f"experiment {experiment!r} was just swept by another driver; try again")
            raise _busy(experiment, hold) from None
        if value != mine:
            _log.info("sweep lock of %r: %s; trying again", experiment, exc)
            return False
        return True  # the store failed after writing it


def acquire_sweep_lock(uri: str, experiment: str, resume: bool = False) -> SweepLock:
    """Take the one-sweep-at-a-time lock of ``experiment`` (created if missing) in the store at ``uri``.

    Raises RayexpError, naming the host and pid that hold it, while another sweep holds it. A holder that
    died without releasing it (same host and its pid is gone, or no heartbeat for ``STALE_S``) is taken
    over only with ``resume=True``; without it, the error says to pass --resume.

    Taking it is ``log_param(lock run, "holder.<g+1>", this driver)``: MLflow's write-once params make
    that an atomic compare-and-set (see the module's docstring). In the rare case that two lock runs exist
    (two drivers created one at the same moment and neither saw the other's yet), every driver reads the
    holds of all of them: after winning, it reads them again, and it backs off and retries if another run
    got a new holder in the meantime. Two drivers that each first write their claim and then read the
    other's cannot both miss each other, so they never both keep the lock.
    """
    client = mlflow_client(uri)
    experiment_id = _lock_experiment_id(client, uri, experiment)
    me = _me()
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
        if not _claim(client, experiment, run_id, generation, mine):
            _back_off()
            continue
        lock = SweepLock(uri, experiment, run_id, generation, me)
        others = [h for h in map(_hold, _lock_runs(client, experiment_id)) if h is not None and h.run_id != run_id]
        if any((h.run_id, h.generation) not in taken_over for h in others):
            lock.release()  # another lock run got a holder while we took ours: give ours back, look again
            _back_off()
            continue
        for h in others:  # the interrupted holds this resume takes over, on other lock runs
            client.set_tag(h.run_id, released_tag(h.generation), f"taken over by {mine}")
        lock._start()
        return lock
    raise RayexpError(
        f"could not take the sweep lock of experiment {experiment!r}: other sweeps of it keep "
        f"starting at the same moment; try again"
    )
