"""cluster.yaml as Ray's autoscaler sees it: a head started with an autoscaling config built from the shipped
file's own node types (Ray's ``fake_multinode`` provider launches each worker node as local raylets), zero GPU
nodes at start. A sweep run as the README runs it (``--address``, ``--device gpu``) makes the autoscaler launch GPU
nodes from zero; a second one, submitted through the Jobs API as ``ray job submit`` does, loses its node mid-trial
(its processes killed, as a preempted VM's) and resumes from its checkpoint on the node launched in its place; the
idle nodes are removed after. Only this test's own Ray processes are started and stopped (never ``ray stop``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from rayexp import tracking
from rayexp.cli import main
from rayexp.cluster_shape import DRIVER_RESOURCE
from tests.conftest import REPO
from tests.test_sweep_e2e import DEFAULTS, _argv, _free_port

FAKE_HEAD = "ray.head.default"  # the fake provider's head type; the worker types keep cluster.yaml's names
WORKER_CPUS = 2  # cluster.yaml's 12 vCPUs per GPU node, scaled to this machine
MAX_WORKERS = 2
IDLE_MINUTES = 0.1
BACKBONE = "shufflenet_v2_x2_0+random"


def fake_config(gcs_address: str) -> dict:
    """An autoscaling config for the fake provider from cluster.yaml: its worker node types by name, with their
    GPUs and accelerator type, CPUs scaled down, from zero nodes; its head with no CPU for tasks and the trial-driver
    resource, as shipped; a short idle timeout."""
    shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = shipped["available_node_types"][shipped["head_node_type"]]
    types = {
        FAKE_HEAD: {
            "resources": {**head["resources"], DRIVER_RESOURCE: 4},
            "node_config": {},
            "max_workers": 0,
        }
    }
    for name, spec in shipped["available_node_types"].items():
        if name == shipped["head_node_type"]:
            continue
        assert spec["min_workers"] == 0  # from zero GPU nodes, as shipped
        types[name] = {
            "resources": {**spec["resources"], "CPU": WORKER_CPUS},
            "node_config": {},
            "min_workers": 0,
            "max_workers": MAX_WORKERS,
        }
    return {
        "cluster_name": "rayexp-autoscaling-test",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": shipped["upscaling_speed"],
        "idle_timeout_minutes": IDLE_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": FAKE_HEAD,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _processes_of(*markers: str) -> list[int]:
    """The processes whose command line, environment or open files name every one of ``markers``: this
    cluster's (its temp dir: Ray's agents rename their command line, but keep their logs there open), and no
    other Ray's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    text += b"\0" + os.readlink(fd).encode()
        except OSError:
            continue
        if all(marker.encode() in text for marker in markers):
            found.append(int(entry.name))
    return found


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


@contextlib.contextmanager
def autoscaling_cluster() -> Iterator[dict]:
    """The head, started as cluster.yaml starts it (no CPUs, the trial-driver resource) but with the fake provider's
    autoscaling config; its own temp dir, ports and processes, all stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="rx-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port, dashboard, agent, client = (_free_port() for _ in range(4))
    config = temp / "autoscaling.json"
    config.write_text(json.dumps(fake_config(f"127.0.0.1:{port}")))
    head_resources = fake_config("")["available_node_types"][FAKE_HEAD]["resources"]
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
    ray_cli = Path(sys.executable).parent / "ray"
    started = time.monotonic()
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=0", f"--dashboard-port={dashboard}"]
        + [f"--resources={json.dumps({k: v for k, v in head_resources.items() if k != 'CPU'})}"]
        + [f"--autoscaling-config={config}", f"--temp-dir={temp}", "--include-dashboard=true"]
        # Ports of their own: the defaults (the dashboard agent's 52365, Ray Client's 10001) may be another Ray's
        + [f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}", "--disable-usage-stats"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield {
            "address": f"127.0.0.1:{port}",
            "dashboard": f"http://127.0.0.1:{dashboard}",
            "logs": temp / "session_latest" / "logs",
            "config": config,
            "temp": str(temp),
            "start_s": time.monotonic() - started,
        }
    finally:
        _kill(_processes_of(str(temp)), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _processes_of(str(temp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        _kill(_processes_of(str(temp)))
        shutil.rmtree(temp, ignore_errors=True)


def _gpu_nodes() -> set[str]:
    """Every node with a GPU the cluster has had, the removed ones included (they have no resources left)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU") or not n["Alive"]}


def _monitor_log(logs: Path) -> str:
    return (logs / "monitor.log").read_text(errors="replace") if (logs / "monitor.log").exists() else ""


@pytest.mark.slow
def test_a_sweep_scales_gpu_nodes_from_zero_survives_a_preempted_node_and_scales_back(
    digits_dir, tmp_path, capsys, monkeypatch
):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the head's: this machine may hold a token for other clusters
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    with autoscaling_cluster() as cluster:
        address = cluster["address"]
        ray.init(address=address, log_to_driver=False)
        try:
            assert not [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]  # zero GPU nodes
            # Stage 1: the README's command on the cluster; the autoscaler adds GPU nodes of cluster.yaml's type.
            started = time.monotonic()
            first_up = {}

            def watch() -> None:
                while time.monotonic() - started < 300 and "s" not in first_up:
                    if any(n["Alive"] and n["Resources"].get("GPU") for n in ray.nodes()):
                        first_up["s"] = time.monotonic() - started
                    time.sleep(0.25)

            threading.Thread(target=watch, daemon=True).start()
            common = ["--backbones", BACKBONE, "--max-epochs", "2", "--no-dualopt", "--worker-cpus", "1"]
            common += ["--data-cpus", "1", "--device", "gpu", "--address", address]
            argv = _argv(tmp_path, digits_dir, *common, "--experiment", "scaled", "--seeds", "0", "1")
            assert main(DEFAULTS, argv) == 0
            sweep_s = time.monotonic() - started
            out = capsys.readouterr().out
            assert "on GPU (runtime: train)" in out
            uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            rows = tracking.fetch_trial_results(uri, "scaled")
            assert sorted(r["key"] for r in rows) == [f"{BACKBONE}/digits/0.1/0", f"{BACKBONE}/digits/0.1/1"]
            assert {r["status"] for r in rows} == {"FINISHED"}
            launched = _gpu_nodes()
            trained_on = {client.get_run(r["run_id"]).data.tags["node_id"] for r in rows}
            assert trained_on <= launched  # every trial on a GPU node the autoscaler launched, none on the head
            # Where the design puts each part (README, "Sizing the head"): the trial functions and Train's controllers
            # on the head, through the trial-driver resource; the Train workers and Ray Data's decode tasks on the
            # GPU nodes (tests/test_cluster.py checks the light runtime's placement on a fixed cluster).
            from ray.util.state import list_actors, list_tasks

            head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
            actors = list_actors(address=address, limit=10000)

            def nodes_of(class_name: str) -> set[str]:
                return {a.node_id for a in actors if a.class_name.split(".")[-1] == class_name}

            assert nodes_of("TrainController") == {head} and nodes_of("ImplicitFunc") == {head}
            assert nodes_of("RayTrainWorker") and nodes_of("RayTrainWorker") <= launched
            decode = [t for t in list_tasks(address=address, detail=True, limit=10000) if "ReadParquet" in t.name]
            assert decode and {t.node_id for t in decode} <= launched
            log = _monitor_log(cluster["logs"])
            shipped = yaml.safe_load((REPO / "cluster.yaml").read_text())
            gpu_type = next(t for t in shipped["available_node_types"] if t != shipped["head_node_type"])
            assert re.search(rf"Adding \d+ node\(s\) of type {gpu_type}", log)
            print(
                f"head up in {cluster['start_s']:.1f}s; first GPU node up {first_up.get('s', float('nan')):.1f}s "
                f"after the sweep started; 2 trials in {sweep_s:.1f}s"
            )

            # Stage 2: a sweep submitted as a Ray Job; its node is lost after the first epoch (its processes
            # killed, as a preempted VM's) and the trial resumes from its checkpoint on a node launched in its place.
            from ray.job_submission import JobStatus, JobSubmissionClient

            lost = {}

            def preempt_after_first_epoch() -> None:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        rows = tracking.fetch_trial_results(uri, "preempted")
                        if rows and tracking.metric_history(uri, rows[0]["run_id"], "test_acc"):
                            actor = next(
                                a
                                for a in list_actors(address=address, limit=10000)
                                if a.class_name.split(".")[-1] == "RayTrainWorker" and a.state == "ALIVE"
                            )
                            lost["node"] = actor.node_id
                            # the fake provider numbers nodes alike in every cluster: this one's, by its temp dir
                            lost["pids"] = _processes_of(f"RAY_CLOUD_INSTANCE_ID={actor.node_id}", cluster["temp"])
                            _kill(lost["pids"])
                            return
                    except Exception as exc:  # the store, or the state API, not ready yet
                        lost.setdefault("errors", []).append(repr(exc))
                    time.sleep(0.2)

            job_argv = _argv(tmp_path, digits_dir, *common, "--experiment", "preempted", "--seeds", "0")
            job_argv[job_argv.index("--max-epochs") + 1] = "4"
            job_argv += ["--patience", "4"]
            jobs = JobSubmissionClient(cluster["dashboard"])
            # What `ray job submit -- python sweeps/…` runs, with the test's sweep defaults (tests/test_sweep_e2e).
            entrypoint = (
                f"cd {REPO} && {sys.executable} -c 'import sys; from rayexp.cli import main; "
                "from tests.test_sweep_e2e import DEFAULTS; sys.exit(main(DEFAULTS, sys.argv[1:]))' "
                + " ".join(f"'{a}'" for a in job_argv)
            )
            thread = threading.Thread(target=preempt_after_first_epoch, daemon=True)
            thread.start()
            submitted = time.monotonic()
            job = jobs.submit_job(entrypoint=entrypoint)
            deadline = time.monotonic() + 420
            while jobs.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
                assert time.monotonic() < deadline, jobs.get_job_logs(job)[-3000:]
                time.sleep(1)
            logs = jobs.get_job_logs(job)
            assert jobs.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
            thread.join(timeout=5)
            print("lost", {k: v for k, v in lost.items() if k != "errors"})
            assert "node" in lost, f"no node was lost: {lost.get('errors', [])[-3:]}"
            (row,) = tracking.fetch_trial_results(uri, "preempted")  # one run for the key
            run = client.get_run(row["run_id"])
            # 2 attempts; 3 when the restart was first placed on the killed node before Ray had marked it dead
            assert row["status"] == "FINISHED" and row["epochs_run"] == 4 and run.data.tags["attempts"] in ("2", "3")
            assert run.data.tags["node_id"] != lost["node"] and run.data.tags["node_id"] in _gpu_nodes()
            history = client.download_artifacts(row["run_id"], "history.csv", str(tmp_path))
            epochs = [line.split(",")[0] for line in Path(history).read_text().splitlines()[1:]]
            assert epochs == ["1", "2", "3", "4"]  # resumed from its checkpoint, not started again

            job_s = time.monotonic() - submitted
            # Stage 3: idle GPU nodes are removed after the idle timeout: back to the head alone.
            idle_from = time.monotonic()
            deadline = time.monotonic() + 60 + IDLE_MINUTES * 60
            while any(n["Alive"] and n["Resources"].get("GPU") for n in ray.nodes()):
                assert time.monotonic() < deadline, "idle GPU nodes were not removed"
                time.sleep(1)
            assert re.search(rf"Removing \d+ nodes of type {gpu_type} \(idle\)", _monitor_log(cluster["logs"]))
            print(
                f"the preempted job's sweep in {job_s:.1f}s; the GPU nodes gone {time.monotonic() - idle_from:.1f}s "
                f"after it ({IDLE_MINUTES * 60:.0f}s idle timeout)"
            )
        finally:
            ray.shutdown()
