"""cluster.yaml, checked with Ray's own autoscaler validator, and what the sweep relies on in it."""

import copy

import yaml

from rayexp import cluster_shape
from rayexp.orchestrate import DRIVER_RESOURCE
from tests.conftest import REPO


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_config()))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "gcp"
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"


def test_gpu_nodes_have_one_gpu_and_the_head_carries_the_driver_resource():
    config = _config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["resources"]["GPU"] == 1 for t in gpu_types)
    assert all(t["node_config"]["machineType"] == "a2-ultragpu-1g" for t in gpu_types)
    assert "GPU" not in head["resources"] and head["resources"][DRIVER_RESOURCE] >= 1
    start = " ".join(config["head_start_ray_commands"])
    assert f'"{DRIVER_RESOURCE}"' in start  # the running head really has the resource
    # No CPU for Ray tasks on the head: Ray Data's decoding runs on the GPU nodes (tests/test_cluster.py).
    assert head["resources"]["CPU"] == 0 and "--num-cpus=0" in start
    assert "mlflow server" in start and "--artifacts-destination gs://" in start
    assert "0.0.0.0" not in start.split("mlflow server")[1]  # MLflow listens only inside the cluster


def test_the_head_holds_max_workers_concurrent_trials_by_the_readmes_sizing_rule():
    """README, "Sizing the head": 1.6 GB per running trial (benchmarks/cluster_footprint.py) plus 3 GB for the
    head's own services, within half the head's memory: the rule ``--check-cluster`` applies."""
    config = _config()
    head = config["available_node_types"][config["head_node_type"]]
    need = cluster_shape.HEAD_GB_PER_TRIAL * config["max_workers"] + cluster_shape.HEAD_SERVICES_GB
    assert (cluster_shape.HEAD_GB_PER_TRIAL, cluster_shape.HEAD_SERVICES_GB) == (1.6, 3.0)
    assert need <= cluster_shape.MACHINE_MEMORY_GB[head["node_config"]["machineType"]] / 2


def test_no_credentials_in_the_file():
    text = (REPO / "cluster.yaml").read_text().lower()
    for word in ("private_key", "secret", "password", "aws_access_key", "credentials.json"):
        assert word not in text
