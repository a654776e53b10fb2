"""Requests no node can hold, refused before they hang: the trial's request against cluster.yaml's node types
(``--check-cluster``, what a user runs on an edited file before ``ray up``), against a live local Ray, and the
autoscaling config found from the cluster's own autoscaler process."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rayexp import cluster_shape, tracking
from rayexp.cli import main
from rayexp.cluster_shape import NodeType, TrialRequest, fit_problems, trials_per_node
from tests.conftest import REPO
from tests.test_sweep_e2e import DEFAULTS, _argv

A100 = NodeType("gpu_a100_80gb", {"CPU": 12, "GPU": 1, "accelerator_type:A100-80G": 1}, 16)


def test_a_trial_fits_a_node_type_only_when_every_part_of_its_request_does():
    assert trials_per_node(TrialRequest(2, 10, 1, "A100-80G"), A100) == 1
    assert trials_per_node(TrialRequest(2, 10, 1), A100) == 1  # no accelerator named: any GPU does
    assert trials_per_node(TrialRequest(4, 10, 1), A100) == 0  # 14 CPUs on a 12-vCPU node
    assert trials_per_node(TrialRequest(2, 10, 2), A100) == 0
    assert trials_per_node(TrialRequest(2, 10, 1, "H100"), A100) == 0
    assert trials_per_node(TrialRequest(1, 1, 0.5), A100) == 2  # two trials share the GPU
    eight = NodeType("p4de", {"CPU": 96, "GPU": 8, "accelerator_type:A100-80G": 1}, 2)
    assert trials_per_node(TrialRequest(2, 10, 1, "A100-80G"), eight) == 8
    head = NodeType("head", {"CPU": 0, "rayexp_trial_driver": 64}, 1, head=True)
    problems = fit_problems(TrialRequest(4, 10, 1, "H100"), [head, A100], "node type", train_runtime=True)
    assert problems == [
        "a trial needs 4 worker + 10 data CPUs and 1 GPU (accelerator_type:H100) on one node, and no node type holds "
        "it: head 0 CPU; gpu_a100_80gb 12 CPU, 1 GPU, A100-80G; lower --worker-cpus/--data-cpus, --gpus-per-trial "
        "or fix --accelerator-type to fit a node type"
    ]
    assert "'rayexp_trial_driver' resource" in fit_problems(TrialRequest(1, 1), [A100], "node", True)[0]


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--worker-cpus", "4", "--data-cpus", "10"], "4 worker + 10 data CPUs and 1 GPU on one node"),
        (["--gpus-per-trial", "2", "--device", "gpu"], "2 worker + 10 data CPUs and 2 GPU on one node"),
        (["--accelerator-type", "H100", "--device", "gpu"], "1 GPU (accelerator_type:H100) on one node"),
        (["--accelerator-type", "A100-80GB", "--device", "gpu"], "(accelerator_type:A100-80GB) on one node"),  # typo
    ],
)
def test_check_cluster_refuses_what_the_shipped_file_cannot_hold(extra, said, capsys):
    assert main(DEFAULTS, ["--check-cluster", str(REPO / "cluster.yaml"), *extra]) == 2
    captured = capsys.readouterr()
    assert "holds no trial" in captured.out and "Traceback" not in captured.err
    assert said in captured.err and "gpu_a100_80gb 12 CPU, 1 GPU, A100-80G" in captured.err


def test_check_cluster_on_the_shipped_file_and_on_an_edited_one(tmp_path, capsys):
    assert main(DEFAULTS, ["--check-cluster", str(REPO / "cluster.yaml"), "--runtime", "train"]) == 0
    out = capsys.readouterr().out
    assert "gpu_a100_80gb 12 CPU, 1 GPU, A100-80G: 1 trial(s) per node, up to 16 nodes: 16 at once" in out
    assert "trials at once at max_workers (16): 16" in out
    assert "head memory: 1.6 GB x 16 trials + 3 GB = 28.6 GB, within half of the head's 64 GB" in out
    # An edited file: eight GPUs a node, 64 trials at once, on the same head: over the head's memory rule.
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    edited = copy.deepcopy(config)
    edited["max_workers"] = 8
    worker = edited["available_node_types"]["gpu_a100_80gb"]
    worker["resources"] = {"CPU": 96, "GPU": 8, "accelerator_type:A100-80G": 1}
    worker["max_workers"] = 8
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(edited))
    argv = ["--check-cluster", str(path), "--runtime", "train", "--worker-cpus", "2", "--data-cpus", "10"]
    assert main(DEFAULTS, argv) == 2
    captured = capsys.readouterr()
    assert "8 trial(s) per node, up to 8 nodes: 64 at once" in captured.out
    assert "the head's 64 GB holds 1.6 GB x 64 running trials + 3 GB = 105.4 GB over half its memory" in captured.err
    assert main(DEFAULTS, [*argv, "--max-concurrent", "16"]) == 0  # as many at once as the head holds
    (tmp_path / "broken.yaml").write_text("available_node_types: [")
    assert main(DEFAULTS, ["--check-cluster", str(tmp_path / "broken.yaml")]) == 2
    assert "broken.yaml: not YAML" in capsys.readouterr().err


def test_the_autoscaling_config_is_found_from_the_clusters_own_autoscaler(tmp_path):
    proc = tmp_path / "proc"
    monitor = "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"
    for pid, port, config in (("101", 6379, "/other.yaml"), ("202", 46379, "/ours.yaml")):
        (proc / pid).mkdir(parents=True)
        words = ["/venv/bin/python", "-u", monitor, f"--gcs-address=10.0.0.2:{port}", f"--autoscaling-config={config}"]
        (proc / pid / "cmdline").write_bytes("\0".join(words).encode() + b"\0")
    (proc / "self").mkdir()
    assert cluster_shape.monitor_config_path("10.0.0.2:46379", proc) == Path("/ours.yaml")
    assert cluster_shape.monitor_config_path("10.0.0.2:6379", proc) == Path("/other.yaml")
    found = cluster_shape.monitor_config_path("10.0.0.2:1234", proc)
    assert found is None or found == Path("~/ray_bootstrap_config.yaml").expanduser()  # ray up's, if this is a head
    types = cluster_shape.node_types(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    assert [(t.name, t.head, t.max_workers) for t in types] == [("head", True, 1), ("gpu_a100_80gb", False, 16)]


@pytest.mark.slow
def test_device_gpu_on_a_local_ray_without_gpus_is_refused_before_anything_runs(
    ray_local, digits_dir, tmp_path, capsys
):
    argv = ["--device", "gpu", "--experiment", "no-gpu", "--backbones", "shufflenet_v2_x2_0"]
    assert main(DEFAULTS, _argv(tmp_path, digits_dir, *argv)) == 2
    err = capsys.readouterr().err
    assert "the trials cannot run on this cluster, nothing was started" in err
    assert "a trial needs 2 worker + 10 data CPUs and 1 GPU on one node, and no live node of the cluster" in err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("no-gpu").experiment_id])
    assert {r.data.tags.get(tracking.KIND_TAG) for r in runs} <= {tracking.LOCK_KIND}  # no trial, no cell
