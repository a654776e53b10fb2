"""A real multi-node Ray cluster on this machine: a head and two worker nodes with one (logical) GPU each.

The light runtime (``--runtime tune``) here; Train's runtime, the default on a cluster, is checked the same way
(placements, a lost node resumed from its checkpoint) on an autoscaling cluster in tests/test_autoscaling.py."""

import os
import threading
import time
from pathlib import Path

import pytest

from rayexp import tracking
from rayexp.cli import main
from rayexp.orchestrate import DRIVER_RESOURCE
from tests.test_sweep_e2e import DEFAULTS, _argv, _free_port


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,  # as cluster.yaml's head: no CPU for tasks, so Ray Data's decoding stays on the GPU nodes
            "resources": {DRIVER_RESOURCE: 4},
            "include_dashboard": True,
            "dashboard_port": _free_port(),
        },
    )
    workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tune"])
def test_trials_spread_over_gpu_nodes_and_survive_a_lost_node(runtime, cluster, digits_dir, tmp_path, capsys):
    from ray.util.state import list_actors

    c, workers = cluster
    # The process that trains, one GPU each: Train's worker, or the light runtime's Tune trial function.
    trains = "RayTrainWorker" if runtime == "train" else "ImplicitFunc"
    worker_ids = {w.node_id for w in workers}
    argv = _argv(
        tmp_path,
        digits_dir,
        "--address",
        c.address,
        "--experiment",
        "cluster",
        "--backbones",
        "shufflenet_v2_x2_0",
        "--seeds",
        "0",
        "1",
        "--max-epochs",
        "2",
        "--no-dualopt",
        "--worker-cpus",
        "1",
        "--data-cpus",
        "1",
        "--runtime",
        runtime,
    )
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert "preflight passed on 3 nodes" in out and f"on GPU (runtime: {runtime})" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    nodes = {
        r["key"]: client.get_run(r["run_id"]).data.tags["node_id"] for r in tracking.fetch_trial_results(uri, "cluster")
    }
    assert len(nodes) == 2 and set(nodes.values()) == worker_ids  # one trial per GPU node, recorded in MLflow
    # Where the design puts each part (README, "Sizing the head" and "Runtimes"): with Train, the trial functions
    # and Train's controllers on the head, through the trial-driver resource; training (the Train worker, or the
    # light runtime's trial function holding its GPU) and Ray Data's decode tasks on the GPU nodes.
    from ray.util.state import list_tasks

    head = c.head_node.node_id

    actors = list_actors(address=c.address, limit=10000)

    def nodes_of(class_name: str) -> set[str]:  # Tune's actor class is ImplicitFunc or ….<locals>.ImplicitFunc
        return {a.node_id for a in actors if a.class_name.split(".")[-1] == class_name}

    assert nodes_of(trains) == worker_ids
    assert nodes_of("TrainController") == ({head} if runtime == "train" else set())
    decode = [t for t in list_tasks(address=c.address, detail=True, limit=10000) if "ReadParquet" in t.name]
    assert decode and {t.node_id for t in decode} <= worker_ids

    # Now lose the node a trial runs on: the trial continues from its checkpoint on the other node.
    lost = {}

    def remove_node_after_first_epoch() -> None:
        # The node and the run are found first, so that the node goes within a poll of the first epoch's metric.
        deadline, victim, run_id = time.time() + 300, None, None
        while time.time() < deadline:
            try:
                if victim is None:
                    alive = [
                        a.node_id
                        for a in list_actors(address=c.address, limit=10000)
                        if a.class_name.split(".")[-1] == trains and a.state == "ALIVE"
                    ]
                    victim = next((w for w in workers if w.node_id in alive), None)
                if run_id is None:
                    rows = tracking.fetch_trial_results(uri, "lost")
                    run_id = rows[0]["run_id"] if rows else None
                if victim is not None and run_id and tracking.metric_history(uri, run_id, "test_acc"):
                    lost["node"] = victim.node_id
                    c.remove_node(victim, allow_graceful=False)
                    return
            except Exception as exc:  # the store or the state API not ready yet
                lost.setdefault("errors", []).append(repr(exc))
            time.sleep(0.2)

    # Light-runtime epochs on 10% last under a second: half the data gives the interruption time to land.
    fraction = "0.5" if runtime == "tune" else "0.1"
    thread = threading.Thread(target=remove_node_after_first_epoch, daemon=True)
    thread.start()
    argv = _argv(
        tmp_path,
        digits_dir,
        "--address",
        c.address,
        "--experiment",
        "lost",
        "--backbones",
        "shufflenet_v2_x2_0",
        "--fractions",
        fraction,
        "--max-epochs",
        "4",
        "--patience",
        "4",
        "--no-dualopt",
        "--worker-cpus",
        "1",
        "--data-cpus",
        "1",
        "--runtime",
        runtime,
    )
    assert main(DEFAULTS, argv) == 0
    thread.join(timeout=5)
    assert "node" in lost, f"no node was removed: {lost.get('errors', [])[-3:]}"
    (row,) = tracking.fetch_trial_results(uri, "lost")  # exactly one run for the key
    run = client.get_run(row["run_id"])
    assert row["status"] == "FINISHED" and row["epochs_run"] == 4 and run.data.tags["attempts"] == "2"
    assert run.data.tags["node_id"] != lost["node"]  # finished on the surviving node
    history = Path(client.download_artifacts(row["run_id"], "history.csv", str(tmp_path))).read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]  # resumed, not redone
