"""The Tune function of one trial: build its Ray Data pipeline, then run the trial's body in its runtime.

* ``train``: fit a one-worker ``TorchTrainer`` whose worker (:func:`rayexp.orchestrate.worker.train_worker`)
  reports each epoch back to Tune through ``TuneReportCallback`` (the Train V2 pattern; not ``Tuner(trainer)``).
* ``tune``: run the body here, in the Tune function, which holds the trial's CPUs and GPU.

A deterministic error (bad data, a bug) is recorded in the key's MLflow run, which exists even when the trial
failed before training, and the function returns: neither Tune's nor Train's FailureConfig retries it, and the
sweep reports the trial as errored from its run. Other errors are raised, for the runtime to retry.
"""

from __future__ import annotations

import os

import pyarrow
import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from rayexp import fingerprint, tracking
from rayexp.data.pipeline import build_trial_datasets, configure_data_context, trial_iterators
from rayexp.data.rows import trial_rows
from rayexp.data.shards import load_manifest
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.orchestrate.checkpoints import checkpoint_dirs, run_folder
from rayexp.orchestrate.context import TrialContext
from rayexp.orchestrate.failures import is_deterministic, record_failure
from rayexp.orchestrate.session import TuneSession
from rayexp.orchestrate.worker import run_trial, train_worker
from rayexp.settings import TRAIN_RUNTIME

MAX_FAILURES = 2  # a trial restarts this often after a lost worker or node (Train's or Tune's FailureConfig)


def trial_driver(config: dict, context: TrialContext) -> None:
    """One trial. ``config`` holds only the trial key (so Tune's tables stay readable); ``context``, the same
    for every trial, arrives through ``tune.with_parameters``. Errors: see the module's docstring."""
    key = TrialKey.parse(config["key"])
    try:
        _drive(key, context)
    except (SystemExit, KeyboardInterrupt):
        raise  # Tune stopping the trial
    except BaseException as exc:
        if not is_deterministic(exc):
            raise
        record_failure(context, key, exc)


def _manifest(key: TrialKey, context: TrialContext) -> dict:
    """The dataset's manifest, refused when it changed since the sweep's preflight."""
    data_dir = context.plan.settings.data_dir
    manifest = load_manifest(data_dir, key.dataset)
    expected = context.plan.data_fingerprints[key.dataset]
    if manifest["fingerprint"] != expected:
        raise RayexpError(
            f"dataset {key.dataset!r} changed while the sweep ran (fingerprint {fingerprint.short(expected)} when it "
            f"started, {fingerprint.short(manifest['fingerprint'])} now): do not prepare a dataset a sweep is using; "
            "run the sweep again once preparation is done"
        )
    return manifest


def _drive(key: TrialKey, context: TrialContext) -> None:
    settings, resources = context.plan.settings, context.resources
    manifest = _manifest(key, context)
    selection = settings.train.selection
    execution = configure_data_context(resources.data_cpus)  # before the datasets, which keep the context
    datasets, _ = build_trial_datasets(settings.data_dir, manifest, key.fraction, selection, resources.cache_bytes)
    config = {
        "key": str(key),
        "context": context,
        "manifest": manifest,
        "train_rows": trial_rows(key.fraction, selection)["train"].count(manifest),
        "datasets": datasets,
        "execution": execution,
        "trial_id": ray.tune.get_context().get_trial_id(),
    }
    if context.runtime == TRAIN_RUNTIME:
        _fit_trainer(key, context, config)
    else:
        session = TuneSession(settings.train_run(key), trial_iterators(config["datasets"], config["execution"]))
        try:
            run_trial(config, session)
        finally:
            session.release()
    # A deterministic error ended the body normally (so that it is not retried) and left the error in its FAILED
    # MLflow run: the trial ends here, errored; its checkpoints stay, for --retry-errored.
    status = (tracking.trial_record(settings.tracking_uri, settings.experiment, str(key)) or {}).get("status")
    if status == tracking.FAILED:
        return
    if status != tracking.FINISHED:
        raise RayexpError(f"trial {key} ended without finishing its MLflow run")
    if not settings.keep_checkpoints:
        remove_checkpoints(key, context)


def _fit_trainer(key: TrialKey, context: TrialContext, config: dict) -> None:
    """The trial's body as the one worker of a ``TorchTrainer`` (``--runtime train``).

    The body's config (with the trial's datasets) travels as one object reference: Train's controller and
    dataset manager then never unpickle rayexp's objects, which would import rayexp, torchvision and the decoder
    in each (seconds of CPU per trial); the worker builds its iterators as :func:`trial_iterators` does for the
    light runtime, which is what Train's ``DataConfig`` does for one worker and an unsplit dataset.
    """
    resources = context.resources
    # Train V2's controller polls its workers this often; the default 2 s adds up to ~4 s per trial at
    # start and finish. A local instance has no spot nodes, so no preemption-watcher actor either.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if context.local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    worker_resources = {"CPU": resources.worker_cpus, **({"GPU": resources.gpus} if resources.gpus else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"body": ray.put(config)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=1,
            use_gpu=resources.gpus > 0,
            resources_per_worker=worker_resources,
            accelerator_type=resources.accelerator_type or None,
        ),
        # One worker needs no collectives; gloo also runs where a "GPU" is only a logical resource.
        torch_config=TorchConfig(backend="gloo"),
        run_config=_train_run_config(key, context),
    )
    trainer.fit()


def remove_checkpoints(key: TrialKey, context: TrialContext) -> None:
    """Delete the Train run of a trial whose MLflow run is FINISHED: its checkpoints (model, best model,
    optimizer; 60-200 MB per trial of the demo) can no longer be resumed from, since a finished key never
    trains again; with ``--keep-best-weights`` its ``best_weights.pt`` stays. A failure only costs disk, so it
    is said and the trial stands."""
    location = context.plan.settings.train_run(key)
    try:
        filesystem, path = run_folder(location)
        if not context.plan.settings.keep_best_weights:
            filesystem.delete_dir(path)
            return
        for info in checkpoint_dirs(filesystem, path):
            filesystem.delete_dir(info.path)
    except (OSError, pyarrow.ArrowException) as exc:
        print(f"[rayexp] {key}: could not delete its checkpoints in {location}: {exc}", flush=True)


def _train_run_config(key: TrialKey, context: TrialContext) -> ray.train.RunConfig:
    return ray.train.RunConfig(
        # Named after the trial, so a restored trial finds its Train run and checkpoints again.
        name=key.dirname,
        storage_path=context.plan.settings.train_run(key).rpartition("/")[0],
        callbacks=[TuneReportCallback()],
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
        # Per-report INFO lines would drown Tune's progress table, which shows the same numbers.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )
