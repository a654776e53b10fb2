"""A real multi-node Ray cluster on this machine: a head and two worker nodes with one (logical) GPU each."""

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
def test_trials_spread_over_gpu_nodes_and_survive_a_lost_node(cluster, digits_dir, tmp_path, capsys):
    from ray.util.state import list_actors

    c, workers = cluster
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
    )
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert "preflight passed on 3 nodes" in out and "on GPU" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    nodes = {
        r["key"]: client.get_run(r["run_id"]).data.tags["node_id"] for r in tracking.fetch_trial_results(uri, "cluster")
    }
    assert len(nodes) == 2 and set(nodes.values()) == worker_ids  # one trial per GPU node, recorded in MLflow
    # Where the design puts each part (README, "Sizing the head"): the trial functions and Train's controllers
    # on the head, through the trial-driver resource; training and Ray Data's decode tasks on the GPU nodes.
    from ray.util.state import list_tasks

    head = c.head_node.node_id

    def nodes_of(class_name: str) -> set[str]:
        return {a.node_id for a in list_actors(address=c.address, filters=[("class_name", "=", class_name)])}

    assert nodes_of("TrainController") == {head} and nodes_of("RayTrainWorker") == worker_ids
    decode = [t for t in list_tasks(address=c.address, detail=True, limit=10000) if "ReadParquet" in t.name]
    assert decode and {t.node_id for t in decode} <= worker_ids

    # Now lose the node a trial runs on: the trial continues from its checkpoint on the other node.
    lost = {}

    def remove_node_after_first_epoch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                rows = tracking.fetch_trial_results(uri, "lost")
                if rows and tracking.metric_history(uri, rows[0]["run_id"], "test_acc"):
                    actors = list_actors(
                        address=c.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
                    )
                    victims = [w for w in workers if actors and w.node_id == actors[0].node_id]
                    if victims:
                        lost["node"] = victims[0].node_id
                        c.remove_node(victims[0], allow_graceful=False)
                        return
            except Exception as exc:  # the store or the state API not ready yet
                lost.setdefault("errors", []).append(repr(exc))
            time.sleep(0.5)

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
        "--max-epochs",
        "4",
        "--patience",
        "4",
        "--no-dualopt",
        "--worker-cpus",
        "1",
        "--data-cpus",
        "1",
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
