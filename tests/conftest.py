"""Shared fixtures: a prepared digits dataset, a real local Ray instance, planted weight files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from rayexp.backbones import create_backbone, get_spec
from rayexp.data.catalog import get_dataset_info
from rayexp.data.sources import digits
from rayexp.data.writer import write_dataset

REPO = Path(__file__).resolve().parents[1]

# Hermetic: no test sees the user's weight caches or the network, and Ray workers (started later by the
# ray_local fixture) inherit the same environment.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="rayexp-torch-home-")
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="rayexp-hf-home-")  # timm's weights: huggingface_hub's cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RAYEXP_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A data dir holding the real digits dataset, prepared with small row groups so pruning shows."""
    data_dir = tmp_path_factory.mktemp("data")
    write_dataset(data_dir, get_dataset_info("digits"), digits.load_source("digits"), row_group_rows=64)
    return data_dir


def plant_weights(torch_home: Path, name: str) -> dict[str, torch.Tensor]:
    """Write random 1000-class weights of ``name`` where torch's cache looks; returns them."""
    spec = get_spec(name)
    state = create_backbone(name, 1000, pretrained=False).state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / spec.weights_file)
    return state


# The end-to-end tests that show a runtime keeps rayexp's semantics run on both (README: Runtimes).
both_runtimes = pytest.mark.parametrize("runtime", ["tune", "train"])


@pytest.fixture()
def ray_local():
    """A real local Ray instance (2 CPUs, dashboard on, the trial-driver resource), started once and reused.

    Function-scoped so that a test which ran its own multi-node cluster (and shut it down) leaves the
    next test a fresh local instance rather than a dead connection.
    """
    import ray

    from rayexp.orchestrate import DRIVER_RESOURCE
    from rayexp.orchestrate.orphans import remove_orphaned_placement_groups

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, resources={DRIVER_RESOURCE: 1}, include_dashboard=True, log_to_driver=False)
    # A group an earlier test's stopped trial left behind would starve this one (ray-project/ray#62753): once
    # that test's Train controllers and workers are gone, whatever they made and left is released.
    _wait_for_no_live_trials()
    remove_orphaned_placement_groups()
    yield ray


def _wait_for_no_live_trials(timeout_s: float = 60.0) -> None:
    import time

    from ray._private.state import state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = state.actor_table(None, actor_state_name="ALIVE").values()
        names = {a["ActorClassName"].split(".")[-1] for a in alive}
        if not names & {"TrainController", "RayTrainWorker", "ImplicitFunc"}:
            return
        time.sleep(0.5)


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_exit():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture()
def small_filesystem(tmp_path):
    """``mount(size, readonly=False)``: a real filesystem of ``size`` (tmpfs) at a new folder under ``tmp_path``,
    to fill up or to refuse writes as a full or read-only disk does; unmounted afterwards. Skipped where this
    machine does not let the tests mount one (it needs root in a container that allows mounts)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str, readonly: bool = False) -> Path:
        target = tmp_path / f"mounted-{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
