"""What a Ray cluster can ever offer one trial, and whether the sweep's trials fit it.

Every trial asks for one node's worth of resources: its training worker's CPUs and its Ray Data decode CPUs
beside it (the head of ``cluster.yaml`` gives tasks no CPU, so decoding runs on the trial's node), a GPU share,
and ``accelerator_type:<type>`` when one is named. A request no node type can hold is not an error to Ray: Tune
waits for ever, with an "infeasible" warning deep in Ray's logs, while the head is paid for. So the sweep checks
the request before Tune starts against what the cluster can ever have: its autoscaler's node types (the config
its head was started with: ``ray up`` writes it to ``~/ray_bootstrap_config.yaml``), else its live nodes, and
``--check-cluster cluster.yaml`` runs the same check on a file before ``ray up``.

No Ray here (a file is checked without a cluster); :mod:`rayexp.orchestrate.sweep` passes the live cluster's
nodes and its autoscaler's config in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from rayexp.errors import RayexpError

if TYPE_CHECKING:
    from rayexp.settings import SweepSettings

DRIVER_RESOURCE = "rayexp_trial_driver"  # the head's slots for the trials' Tune functions (--runtime train)
ACCELERATOR_RESOURCE = "accelerator_type:"  # Ray's per-node resource naming its accelerator, as Train asks for it
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # where `ray up` puts the cluster's config on the head
# Sizing the head (README, measured by benchmarks/cluster_footprint.py): each running trial holds about 1.6 GB on
# the head (its Tune function and Train controller), the head's own services about 3 GB; within half its memory.
HEAD_GB_PER_TRIAL = 1.6
HEAD_SERVICES_GB = 3.0
# Memory of the machine types cluster.yaml and the README name, in GB (a node type's `memory` resource wins).
MACHINE_MEMORY_GB = {
    "n2-standard-8": 32,
    "n2-highmem-8": 64,
    "n2-standard-16": 64,
    "n2-highmem-16": 128,
    "a2-highgpu-1g": 85,
    "a2-ultragpu-1g": 170,
    "m5.2xlarge": 32,
    "r5.2xlarge": 64,
    "p4de.24xlarge": 1152,
}


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster has or can launch: its Ray resources, how many of it at most (None: one live
    node), and its memory in GB where known."""

    name: str
    resources: Mapping[str, float]
    max_workers: int | None = None
    memory_gb: float | None = None
    head: bool = False

    def describe(self) -> str:
        """``gpu_a100_80gb 12 CPU, 1 GPU, A100-80G``: what a trial could get from it."""
        parts = [f"{self.resources.get('CPU', 0):g} CPU"]
        if self.resources.get("GPU"):
            parts.append(f"{self.resources['GPU']:g} GPU")
        parts += [k[len(ACCELERATOR_RESOURCE) :] for k in self.resources if k.startswith(ACCELERATOR_RESOURCE)]
        return f"{self.name} {', '.join(parts)}"


@dataclass(frozen=True)
class TrialRequest:
    """What one trial needs on one node: training worker CPUs, its decode CPUs, a GPU share, an accelerator."""

    worker_cpus: float
    data_cpus: float
    gpus: float = 0.0
    accelerator_type: str | None = None

    def bundle(self) -> dict[str, float]:
        """The resources one node must hold for the trial (an accelerator type counts as present or not)."""
        need = {"CPU": self.worker_cpus + self.data_cpus}
        if self.gpus:
            need["GPU"] = self.gpus
            if self.accelerator_type:
                need[ACCELERATOR_RESOURCE + self.accelerator_type] = 0.001
        return need

    def describe(self) -> str:
        """``4 worker + 10 data CPUs and 1 GPU (accelerator_type:H100)``."""
        text = f"{self.worker_cpus:g} worker + {self.data_cpus:g} data CPUs"
        if self.gpus:
            text += f" and {self.gpus:g} GPU"
            if self.accelerator_type:
                text += f" ({ACCELERATOR_RESOURCE}{self.accelerator_type})"
        return text


def trial_cpus(settings: SweepSettings, use_gpu: bool) -> tuple[float, float]:
    """(training worker CPUs, Ray Data CPUs) per trial: the settings', else 2 and 10 with a GPU (12 vCPU per
    A100), 1 and 1 without."""
    worker = settings.worker_cpus if settings.worker_cpus is not None else (2.0 if use_gpu else 1.0)
    data = settings.data_cpus if settings.data_cpus is not None else (10.0 if use_gpu else 1.0)
    return worker, data


def trial_request(settings: SweepSettings, use_gpu: bool) -> TrialRequest:
    """What each trial of a sweep with ``settings`` asks one node for (a GPU and its type only when trials use
    GPUs)."""
    worker, data = trial_cpus(settings, use_gpu)
    return TrialRequest(
        worker, data, settings.gpus_per_trial if use_gpu else 0.0, settings.accelerator_type if use_gpu else None
    )


def trials_per_node(request: TrialRequest, node: NodeType) -> int:
    """How many of ``request``'s trials one ``node`` holds at once (0: none)."""
    counts = []
    for resource, amount in request.bundle().items():
        have = node.resources.get(resource, 0.0)
        if resource.startswith(ACCELERATOR_RESOURCE):
            counts.append(math.inf if have > 0 else 0)
        else:
            counts.append(math.floor(have / amount + 1e-9) if amount > 0 else math.inf)
    count = min(counts)
    return 0 if count == 0 else int(min(count, 10_000))


def fit_problems(request: TrialRequest, nodes: Sequence[NodeType], where: str, train_runtime: bool) -> list[str]:
    """Why the trials can never run on ``nodes`` (``where`` says what they are): no node type holds one trial,
    or (Train's runtime) no node has a trial-driver slot; empty when they can."""
    problems = []
    if not any(trials_per_node(request, node) for node in nodes if not node.head or node.resources.get("CPU")):
        listed = "; ".join(node.describe() for node in nodes) or "none"
        fix = (
            "lower --worker-cpus/--data-cpus, --gpus-per-trial or fix --accelerator-type to fit a node type"
            if request.gpus
            else "lower --worker-cpus/--data-cpus, or add nodes with more CPUs"
        )
        problems.append(f"a trial needs {request.describe()} on one node, and no {where} holds it: {listed}; {fix}")
    if train_runtime and not any(node.resources.get(DRIVER_RESOURCE, 0) >= 1 for node in nodes):
        problems.append(
            f"no {where} has the '{DRIVER_RESOURCE}' resource the trials' Tune functions run on; start the head with "
            f"ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 64}}' (cluster.yaml does this)"
        )
    return problems


def check_fit(request: TrialRequest, nodes: Sequence[NodeType], where: str, train_runtime: bool) -> None:
    """:func:`fit_problems` raised as one error, before Tune starts (exit 2, nothing started)."""
    problems = fit_problems(request, nodes, where, train_runtime)
    if problems:
        raise RayexpError(
            "the trials cannot run on this cluster, nothing was started:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def node_types(config: Mapping) -> list[NodeType]:
    """The node types of an autoscaler config (``cluster.yaml``, or the one a head was started with)."""
    types = config.get("available_node_types") or {}
    if not types:
        raise RayexpError("the cluster config has no available_node_types")
    head_type = config.get("head_node_type")
    out = []
    for name, spec in types.items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        machine = (spec.get("node_config") or {}).get("machineType") or (spec.get("node_config") or {}).get(
            "InstanceType"
        )
        memory = resources.get("memory")
        memory_gb = memory / 1e9 if memory else MACHINE_MEMORY_GB.get(machine or "")
        head = name == head_type
        max_workers = 1 if head else int(spec.get("max_workers", config.get("max_workers", 0)))
        out.append(NodeType(name, resources, max_workers, memory_gb, head))
    return out


def live_node_types(nodes: Sequence[Mapping]) -> list[NodeType]:
    """``ray.nodes()``'s alive nodes as one-node types (a cluster without an autoscaler has only those)."""
    out = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = {k: float(v) for k, v in node.get("Resources", {}).items()}
        head = "node:__internal_head__" in resources
        label = (
            f"{'head' if head else 'node'} {node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', ''))[:8]})"
        )
        out.append(NodeType(label, resources, None, resources.get("memory", 0) / 1e9 or None, head))
    return out


def monitor_config_path(gcs_address: str, proc: Path = Path("/proc")) -> Path | None:
    """The autoscaling config of the cluster at ``gcs_address``, from its autoscaler's command line on this machine
    (the head, where a sweep's driver runs), else ``~/ray_bootstrap_config.yaml`` when ``ray up`` wrote one; None
    for a cluster without an autoscaler."""
    port = gcs_address.rpartition(":")[2]
    try:
        entries = list(proc.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(
            w.endswith("autoscaler/_private/monitor.py") or w.endswith("autoscaler/v2/monitor.py") for w in words
        ):
            continue
        options = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--") and "=" in w)
        if options.get("gcs-address", "").rpartition(":")[2] == port and options.get("autoscaling-config"):
            return Path(options["autoscaling-config"]).expanduser()
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    return bootstrap if bootstrap.is_file() else None


def load_config(path: str | Path) -> dict:
    """An autoscaler config file (YAML or JSON), or an error naming the file."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as exc:
        raise RayexpError(f"--check-cluster {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise RayexpError(f"--check-cluster {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise RayexpError(f"--check-cluster {path}: not a cluster config (no mapping at its top)")
    return config


def head_start_resources(config: Mapping) -> dict[str, float]:
    """The custom resources the head's ``ray start`` gives it (``--resources='{…}'``), which override the head
    type's: the running head has what its start command says."""
    start = " ".join(str(c) for c in config.get("head_start_ray_commands") or [])
    found = re.search(r"--resources='(\{[^']*\})'", start)
    if not found:
        return {}
    import json

    try:
        return {k: float(v) for k, v in json.loads(found.group(1)).items()}
    except (ValueError, AttributeError):
        return {}


def cluster_report(
    request: TrialRequest, config: Mapping, train_runtime: bool, max_concurrent: int | None = None
) -> tuple[list[str], list[str]]:
    """``(lines, problems)`` for ``--check-cluster``: for each node type whether a trial fits and how many per
    node, how many trials run at once at ``max_workers``, and the head's memory rule; the problems are
    :func:`fit_problems`' and the head rule's."""
    types = node_types(config)
    head = next((t for t in types if t.head), None)
    if head is not None and (extra := head_start_resources(config)):
        head = NodeType(head.name, {**head.resources, **extra}, 1, head.memory_gb, True)
        types = [head if t.head else t for t in types]
    lines = [f"a trial needs {request.describe()} on one node (its training worker and, beside it, its decoding)"]
    at_once = 0
    for t in types:
        if t.head and not t.resources.get("CPU"):
            slots = t.resources.get(DRIVER_RESOURCE, 0)
            lines.append(f"  {t.describe()}: the head, no CPU for tasks; {slots:g} trial-driver slots")
            continue
        per = trials_per_node(request, t)
        count = t.max_workers or 0
        lines.append(
            f"  {t.describe()}: "
            + (f"{per} trial(s) per node, up to {count} nodes: {per * count} at once" if per else "holds no trial")
        )
        at_once += per * count
    limit = int(config.get("max_workers", at_once) or 0)
    workers = [t for t in types if not t.head]
    if workers and all(trials_per_node(request, t) == trials_per_node(request, workers[0]) for t in workers):
        at_once = min(at_once, limit * trials_per_node(request, workers[0]))
    if train_runtime and head is not None:
        at_once = min(at_once, int(head.resources.get(DRIVER_RESOURCE, 0)))
    if max_concurrent:
        at_once = min(at_once, max_concurrent)
    lines.append(f"trials at once at max_workers ({limit}): {at_once}")
    problems = fit_problems(request, types, "node type of the file", train_runtime)
    if head is not None and at_once:
        need = HEAD_GB_PER_TRIAL * at_once + HEAD_SERVICES_GB
        if head.memory_gb is None:
            lines.append(f"head memory: unknown machine type; it needs about {2 * need:.1f} GB (twice {need:.1f})")
        else:
            holds = need <= head.memory_gb / 2
            lines.append(
                f"head memory: {HEAD_GB_PER_TRIAL} GB x {at_once} trials + {HEAD_SERVICES_GB:g} GB = {need:.1f} GB, "
                f"{'within' if holds else 'over'} half of the head's {head.memory_gb:g} GB"
            )
            if not holds:
                problems.append(
                    f"the head's {head.memory_gb:g} GB holds {HEAD_GB_PER_TRIAL} GB x {at_once} running trials + "
                    f"{HEAD_SERVICES_GB:g} GB = {need:.1f} GB over half its memory: a larger head machine type, or "
                    "fewer trials at once (max_workers, --max-concurrent)"
                )
    return lines, problems
