"""Resources and concurrency: what each trial holds, how many run at once, and the local Ray instance.

Per trial, with ``--runtime train``, the Tune function holds no CPU, only one unit of the custom resource
``rayexp_trial_driver`` (the head's), and the Train worker holds ``worker_cpus`` (and a GPU share when the
cluster has GPUs); with ``--runtime tune`` the Tune function holds those itself, wherever they are. The Ray
Data tasks that decode get ``data_cpus``, kept free by bounding concurrency. Without that reserve, trial actors
can hold every CPU and Ray Data waits forever without an error.
"""

from __future__ import annotations

import logging
import os

import ray

from rayexp.cluster_shape import ACCELERATOR_RESOURCE, DRIVER_RESOURCE, trial_cpus
from rayexp.errors import RayexpError
from rayexp.orchestrate.context import TrialResources
from rayexp.settings import TRAIN_RUNTIME, SweepSettings

LIGHT_TRIALS_LIMIT = 64
RAY_LOGS = "/tmp/ray/session_latest/logs"  # Ray's default, on the head node


def local_ray_config(cpus: int) -> dict:
    """Ray's system config for a local instance of ``cpus`` cores.

    Every trial starts a Train controller, a worker and a few helper actors, so a small machine runs more Python
    processes than it has cores, and Ray would kill idle task workers after 1 s above that count; the next trial's
    Ray Data tasks then pay for a fresh process and its imports again: keep them. The raylet also prints "N PYTHON
    worker processes have been started …" on the console, past ``log_to_driver=False``, once there are 4x
    ``worker_maximum_startup_concurrency`` workers (default: the cores, so 8 on a laptop of 2): expected here, so
    raised to 3x the cores (the warning then means 24 on 2 cores), as SkyPilot does for the same reason.
    """
    return {
        "num_workers_soft_limit": 16,
        "idle_worker_killing_time_threshold_ms": 300_000,
        "worker_maximum_startup_concurrency": 3 * cpus,
    }


def trial_resources(settings: SweepSettings, use_gpu: bool) -> TrialResources:
    """Each trial's resources; the image cache defaults to 4 GB per trial on the CPU, 32 GB on a GPU node
    (most of the 20 datasets at 100%)."""
    worker, data = trial_cpus(settings, use_gpu)
    cache_gb = settings.cache_gb if settings.cache_gb is not None else (32.0 if use_gpu else 4.0)
    return TrialResources(
        worker_cpus=worker,
        data_cpus=data,
        gpus=settings.gpus_per_trial if use_gpu else 0.0,
        cache_bytes=cache_gb * 1e9,
        accelerator_type=settings.accelerator_type,
    )


def trial_function_resources(resources: TrialResources, runtime: str) -> dict[str, float]:
    """What each trial's Tune function holds: a trial-driver slot when it only drives a Train worker (which holds
    the trial's CPUs and GPU), else the trial's CPUs, GPU and accelerator type itself."""
    if runtime == TRAIN_RUNTIME:
        return {"cpu": 0, DRIVER_RESOURCE: 1}
    held = {"cpu": resources.worker_cpus, "gpu": resources.gpus}
    if resources.gpus and resources.accelerator_type:
        held[ACCELERATOR_RESOURCE + resources.accelerator_type] = 0.001
    return held


def init_ray(settings: SweepSettings) -> None:
    """Connect to ``--address``, or start a local instance with one trial-driver slot per trial that fits."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Without --verbose the workers' output (Train's per-report lines, Ray Data's, our own) and Ray's INFO and
    # WARNING lines (token auth, the dashboard's URL) stay in Ray's logs; errors still come through.
    quiet = {"log_to_driver": settings.verbose, "logging_level": logging.INFO if settings.verbose else logging.ERROR}
    if settings.address:
        ray.init(address=settings.address, **quiet)
    else:
        total = os.cpu_count() or 1
        slots = max(1, int(total // sum(trial_cpus(settings, use_gpu=False))))
        # The dashboard stays on: Train V2 frees a finished trial's worker resources through it.
        ray.init(
            num_cpus=total,
            resources={DRIVER_RESOURCE: slots},
            include_dashboard=True,
            _system_config=local_ray_config(total),
            **quiet,
        )
    if not settings.verbose:
        print(f"[rayexp] Ray's own output is in its logs ({RAY_LOGS}); --verbose shows it here", flush=True)


def plan_concurrency(settings: SweepSettings) -> tuple[int, bool]:
    """(trials that may run at once, whether trials use GPUs), from the cluster's resources."""
    resources = ray.cluster_resources()
    # Only Train's trial functions need the head's driver slots; light trials are bounded by CPUs and GPUs (and,
    # while an autoscaler has yet to add GPU nodes, by as many as cluster.yaml's head gives Train).
    drivers = resources.get(DRIVER_RESOURCE, 0) if settings.trial_runtime == TRAIN_RUNTIME else LIGHT_TRIALS_LIMIT
    if drivers < 1:
        raise RayexpError(
            f"the Ray cluster at {settings.address or 'local'} has no '{DRIVER_RESOURCE}' resource, which the trial "
            f"functions run on; start its head with ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 64}}' "
            "(cluster.yaml does this)"
        )
    gpus, per_trial = resources.get("GPU", 0), settings.gpus_per_trial
    if settings.device == "gpu":
        # GPU nodes may not exist yet: trials ask for them and the autoscaler adds nodes.
        limit = int(drivers) if gpus == 0 else min(int(drivers), max(1, int(gpus // per_trial)))
        use_gpu = True
    else:
        use_gpu = settings.device == "auto" and gpus >= per_trial > 0
        by_cpu = int(resources.get("CPU", 0) // sum(trial_cpus(settings, use_gpu)))
        limit = min(int(drivers), max(1, by_cpu))
        if use_gpu:
            limit = min(limit, max(1, int(gpus // per_trial)))
    if settings.max_concurrent:
        limit = min(limit, settings.max_concurrent)
    return max(1, limit), use_gpu
