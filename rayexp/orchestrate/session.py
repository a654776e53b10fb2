"""What a trial's body needs from the runtime it runs in, and its two adapters.

The body (:func:`rayexp.orchestrate.worker.run_trial`: model, data, :func:`rayexp.training.fit`, the MLflow
run) is written once against :class:`TrialSession`:

* :class:`TrainSession`: inside the one worker of a Ray Train ``TorchTrainer`` (``--runtime train``): Train
  places the worker (one GPU each), restarts it after a lost worker or node, and persists checkpoints.
* :class:`TuneSession`: inside the Tune trial function itself (``--runtime tune``), which holds the trial's
  CPUs and GPU through ``tune.with_resources``: no controller, worker group or helper actors to start, so a
  trial costs seconds instead of processes; Tune's trial-level ``FailureConfig`` restarts it.

Both keep their checkpoints in the trial's run folder (:mod:`.checkpoints`), so either resumes the other's.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Protocol

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch

from rayexp.orchestrate.checkpoints import (
    CHECKPOINT_FILE,
    load_latest_checkpoint,
    older_format,
    read_checkpoint_bytes,
    save_checkpoint,
)
from rayexp.safeload import CarriesCode
from rayexp.settings import TRAIN_RUNTIME, TUNE_RUNTIME


class TrialSession(Protocol):
    """One trial's link to its runtime."""

    runtime: str  # "train" or "tune": recorded on the trial's run
    device: torch.device  # where it trains: its own GPU, or the CPU
    chief: bool  # the process that writes the MLflow run (Train's rank 0; always, in Tune)

    def dataset(self, name: str):
        """The trial's Ray Data iterator ``name`` (``cache``, or ``train``/``test``/``val``)."""

    def resume_from(self) -> dict | None:
        """The checkpoint to continue from (the last one reported, or the run folder's newest), or None."""

    def report(self, metrics: dict, state: dict | None = None) -> None:
        """Report an epoch's ``metrics`` to Tune (its schedulers and stoppers), with ``state`` as its checkpoint."""


class TrainSession:
    """The trial as the one worker of a ``TorchTrainer``."""

    runtime = TRAIN_RUNTIME

    def __init__(self, location: str, iterators: dict) -> None:
        self.location, self.iterators = location, iterators  # Train persists its checkpoints in the run folder
        # A GPU assigned by Ray but not visible to this PyTorch (a logical GPU, a CPU build): the CPU.
        self.device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
        self.chief = ray.train.get_context().get_world_rank() == 0

    def dataset(self, name: str):
        return self.iterators[name]

    def resume_from(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:  # none in this Train run: a light-runtime attempt may have left one
            return load_latest_checkpoint(self.location, self.device)
        with checkpoint.as_directory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            try:
                return read_checkpoint_bytes(path.read_bytes(), str(path), self.device)
            except CarriesCode as exc:
                if not older_format(exc):
                    raise
                print(f"[rayexp] passing over {path}, written by an older rayexp: starting over", flush=True)
                return None

    def report(self, metrics: dict, state: dict | None = None) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class TuneSession:
    """The trial as the Tune trial function itself, holding the trial's CPUs and GPU."""

    runtime = TUNE_RUNTIME
    chief = True

    def __init__(self, location: str, iterators: dict) -> None:
        self.location, self.iterators = location, iterators
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, which PyTorch then numbers 0.
        on_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def dataset(self, name: str):
        return self.iterators[name]

    def resume_from(self) -> dict | None:
        return load_latest_checkpoint(self.location, self.device)

    def report(self, metrics: dict, state: dict | None = None) -> None:
        if state is not None:
            save_checkpoint(self.location, int(metrics["epoch"]), state)
        ray.tune.report(metrics)

    def release(self) -> None:
        """Give back what the finished trial held (its model, optimizer and cached images, and the GPU memory
        PyTorch keeps for reuse): Tune reuses this process for the next trial, which may need all of it."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
