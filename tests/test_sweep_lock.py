"""One sweep per experiment: the lock in MLflow, on a real SQLite store, contended by real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rayexp.errors import RayexpError
from rayexp.tracking import SweepLock, acquire_sweep_lock
from rayexp.tracking import lock as sweep_lock
from rayexp.tracking.schema import KIND_TAG, LOCK_KIND, heartbeat_tag, holder_param

REPO = Path(__file__).resolve().parents[1]

# One contender: takes the lock of each experiment named on the command line, one round at a time. It
# says it is ready (file ``ready``), starts round i when the file ``go.<i>`` appears, and prints
# "<experiment> acquired <generation>" or "<experiment> refused <message>"; with ``hold`` it then sleeps
# holding the lock, so that the test can kill it.
CONTENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rayexp.errors import RayexpError
    from rayexp.tracking import acquire_sweep_lock

    uri, folder, mode, *experiments = sys.argv[1:]
    folder = Path(folder)
    (folder / f"ready.{__import__('os').getpid()}").touch()
    for i, experiment in enumerate(experiments):
        go = folder / f"go.{i}"
        while not go.exists():
            time.sleep(0.001)
        try:
            lock = acquire_sweep_lock(uri, experiment, resume=mode == "resume")
        except RayexpError as exc:
            print(experiment, "refused", exc, flush=True)
            continue
        print(experiment, "acquired", lock.generation, flush=True)
        if mode == "hold":
            time.sleep(600)
        # never released: in the race, the loser must be refused whatever the winner does afterwards
    """
)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema and nothing else: made once (seconds of migrations)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def uri(tmp_path: Path, empty_store: Path) -> str:
    """A fresh store per test, its schema made before any processes share it."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def start(uri: str, folder: Path, mode: str, *experiments: str) -> subprocess.Popen:
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CONTENDER, uri, str(folder), mode, *experiments],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(folder: Path, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while len(list(folder.glob("ready.*"))) < n:
        assert time.time() < deadline, "contenders did not start"
        time.sleep(0.01)


def lock_run_id(uri: str, experiment: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{LOCK_KIND}'")
    return run.info.run_id


def plant_holder(uri: str, experiment: str, generation: int, heartbeat_age_s: float) -> None:
    """A holder on another host, written straight into the store, with a heartbeat that old."""
    client = MlflowClient(tracking_uri=uri)
    run_id = lock_run_id(uri, experiment)
    holder = {"host": "elsewhere", "pid": 4242, "started": "2025-01-01T00:00:00+00:00", "token": "planted"}
    client.log_param(run_id, holder_param(generation), json.dumps(holder))
    client.set_tag(run_id, heartbeat_tag(generation), str(time.time() - heartbeat_age_s))


def lock_holder(uri: str, experiment: str) -> dict | None:
    """Who holds the lock of ``experiment`` as acquire_sweep_lock judges it (a live holder first): host, pid,
    started, token and ``stale``; None when no sweep holds it."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    holds = [h for h in map(sweep_lock._hold, sweep_lock._lock_runs(client, exp.experiment_id)) if h is not None]
    if not holds:
        return None
    hold = min(holds, key=lambda h: h.stale is not None)
    return {**hold.holder, "stale": hold.stale}


def held(lock: SweepLock) -> bool:
    """Whether the store still has ``lock``'s generation as the unreleased one of its lock run."""
    hold = sweep_lock._hold(MlflowClient(tracking_uri=lock.uri).get_run(lock.run_id))
    return hold is not None and hold.generation == lock.generation


def test_second_sweep_refused_naming_holder_then_acquires_after_release(uri: str, tmp_path: Path) -> None:
    lock = acquire_sweep_lock(uri, "exp")
    assert lock.generation == 1
    held_by = lock_holder(uri, "exp")
    assert (held_by["host"], held_by["pid"], held_by["stale"]) == (socket.gethostname(), os.getpid(), None)

    folder = tmp_path / "other"
    other = start(uri, folder, "once", "exp", "exp")  # another driver: two tries, one before, one after release
    wait_ready(folder, 1)
    (folder / "go.0").touch()
    line = other.stdout.readline().strip()
    assert line.startswith("exp refused ")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
    assert "being swept" in line and "--experiment" in line

    lock.release()
    lock.release()  # idempotent
    assert lock_holder(uri, "exp") is None
    (folder / "go.1").touch()
    out, err = other.communicate(timeout=60)
    assert (out.strip(), other.returncode) == ("exp acquired 2", 0), err
    run = MlflowClient(tracking_uri=uri).get_run(lock.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "sweep-lock"


def test_simultaneous_sweeps_exactly_one_acquires(uri: str, tmp_path: Path) -> None:
    experiments = ["race-0", "race-1", "race-2"]  # fresh each round: both also create the experiment and lock run
    folder = tmp_path / "race"
    procs = [start(uri, folder, "once", *experiments) for _ in range(2)]
    wait_ready(folder, 2)
    for i in range(len(experiments)):
        (folder / f"go.{i}").touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out)
    lines = [line.split(" ", 2) for out in outs for line in out.splitlines()]
    for experiment in experiments:
        verdicts = sorted(verdict for name, verdict, _ in lines if name == experiment)
        assert verdicts == ["acquired", "refused"], (experiment, outs)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        locks = sweep_lock._lock_runs(client, exp.experiment_id)
        assert sum(sweep_lock._hold(r) is not None for r in locks) == 1  # one holder, on one lock run


def test_killed_holder_taken_over_only_with_resume(uri: str, tmp_path: Path) -> None:
    folder = tmp_path / "killed"
    proc = start(uri, folder, "hold", "exp")
    wait_ready(folder, 1)
    (folder / "go.0").touch()
    assert proc.stdout.readline().strip() == "exp acquired 1"
    os.kill(proc.pid, signal.SIGKILL)  # no release, no more heartbeats
    proc.wait()  # reaped: its pid is gone

    held_by = lock_holder(uri, "exp")
    assert held_by["pid"] == proc.pid and "is gone" in held_by["stale"]
    with pytest.raises(RayexpError, match="--resume") as refused:
        acquire_sweep_lock(uri, "exp")
    assert f"pid {proc.pid} on host {socket.gethostname()}" in str(refused.value)
    assert "interrupted" in str(refused.value)

    with acquire_sweep_lock(uri, "exp", resume=True) as lock:
        assert lock.generation == 2
        assert lock_holder(uri, "exp")["pid"] == os.getpid()
    assert not held(lock) and lock_holder(uri, "exp") is None


def test_holder_on_another_host_judged_by_its_heartbeat(uri: str) -> None:
    acquire_sweep_lock(uri, "exp").release()  # makes the lock run; generation 1 released

    plant_holder(uri, "exp", 2, heartbeat_age_s=sweep_lock.STALE_S + 60)
    with pytest.raises(RayexpError, match="--resume") as refused:
        acquire_sweep_lock(uri, "exp")
    assert "host elsewhere" in str(refused.value) and "no heartbeat for" in str(refused.value)
    lock = acquire_sweep_lock(uri, "exp", resume=True)
    assert lock.generation == 3
    lock.release()

    plant_holder(uri, "exp", 4, heartbeat_age_s=5)
    for resume in (False, True):  # alive on its host: never taken over
        with pytest.raises(RayexpError, match="being swept by pid 4242 on host elsewhere") as refused:
            acquire_sweep_lock(uri, "exp", resume=resume)
        assert "heartbeat 5 s ago" in str(refused.value)


def test_heartbeat_refreshed_while_held_and_stopped_on_release(uri: str, monkeypatch) -> None:
    monkeypatch.setattr(sweep_lock, "HEARTBEAT_S", 0.1)
    client = MlflowClient(tracking_uri=uri)
    lock = acquire_sweep_lock(uri, "exp")
    first = float(client.get_run(lock.run_id).data.tags[heartbeat_tag(1)])  # written before acquire returned
    time.sleep(0.5)
    later = float(client.get_run(lock.run_id).data.tags[heartbeat_tag(1)])
    assert later > first
    assert held(lock)
    lock.release()
    assert not lock._thread.is_alive() and not held(lock)
    stopped = client.get_run(lock.run_id).data.tags[heartbeat_tag(1)]
    time.sleep(0.3)
    assert client.get_run(lock.run_id).data.tags[heartbeat_tag(1)] == stopped

    # a heartbeat older than STALE_S makes a holder on another host stale
    monkeypatch.setattr(sweep_lock, "STALE_S", 0.2)
    plant_holder(uri, "exp", 2, heartbeat_age_s=0)
    assert lock_holder(uri, "exp")["stale"] is None
    time.sleep(0.3)
    assert "no heartbeat" in lock_holder(uri, "exp")["stale"]
