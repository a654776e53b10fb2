"""What one trial receives, whole: the sweep's plan, its resources and its cell's parent run."""

from __future__ import annotations

from dataclasses import dataclass

from rayexp.settings import SweepPlan


@dataclass(frozen=True)
class TrialResources:
    """What each trial holds, resolved once for the sweep from its settings and whether trials use GPUs."""

    worker_cpus: float  # the training worker's (the Train worker, or the Tune function in the light runtime)
    data_cpus: float  # the trial's Ray Data decode tasks'
    gpus: float  # the training worker's; 0 on the CPU
    cache_bytes: float  # a trial's decoded images are kept in its worker's memory below this
    accelerator_type: str | None = None

    def batch_threads(self, cached: bool) -> int:
        """Threads that augment and normalise a trial's batches: the worker's CPUs, plus the trial's data CPUs
        once its images are cached (Ray Data has nothing left to decode then)."""
        return max(1, int(self.worker_cpus + (self.data_cpus if cached else 0)))


@dataclass(frozen=True)
class TrialContext:
    """The same for every trial of a sweep; passed to each through ``tune.with_parameters``."""

    plan: SweepPlan
    resources: TrialResources
    cell_runs: dict[str, str]  # cell name -> the MLflow run id of the cell's parent run
    local: bool  # a local Ray instance (no spot nodes, no preemption watcher)
    runtime: str  # what runs each trial's body: "train" (a one-worker TorchTrainer) or "tune" (the Tune function)
