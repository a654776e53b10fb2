"""Ray at the edges: the only module that imports ray.tune and ray.train.

Ray Tune enumerates the grid: each trial is a Tune function (:func:`trial_driver`) that builds the trial's
Ray Data pipeline and fits a Ray Train ``TorchTrainer`` with one worker (:func:`train_worker`), which
reports each epoch back to Tune through ``TuneReportCallback`` (the Train V2 pattern; not
``Tuner(trainer)``). The worker trains with :mod:`rayexp.training` and logs to MLflow with
:mod:`rayexp.tracking`.

Resources, per trial: the Tune function holds no CPU, only one unit of the custom resource
``rayexp_trial_driver``; the Train worker holds ``worker_cpus`` (and one GPU when the cluster has GPUs);
the Ray Data tasks that decode get ``data_cpus``, kept free by bounding concurrency. Without that
reserve, trial actors can hold every CPU and Ray Data waits forever without an error.
"""

from __future__ import annotations

import io
import os
import re
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayexp import fingerprint
from rayexp.backbones import get_spec
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey

DRIVER_RESOURCE = "rayexp_trial_driver"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class SweepConfig:
    """Everything a sweep needs; the ``settings`` half travels to every trial."""

    keys: list[TrialKey]
    experiment: str
    data_dir: str
    storage: str
    tracking_uri: str
    weights: dict[str, str]  # backbone -> "pretrained" | "random"
    weights_dir: str | None = None
    address: str | None = None
    max_epochs: int = 100
    patience: int = 10
    batch_size: int | None = None  # None: the backbone's registry default
    precision: str = "auto"
    selection: str = "test"
    dualopt: bool = True
    normalize: str = "dataset"
    augment: bool = True  # TrivialAugmentWide where the dataset's protocol has it
    scheduler: str = "fifo"
    grace_period: int = 5
    reduction_factor: int = 2
    trial_time_budget_s: float | None = None
    trial_epoch_budget: int | None = None
    budget_device_hours: float | None = None  # the whole sweep: device-hours (GPU-hours; CPU-hours without GPUs)
    budget_epochs: int | None = None  # the whole sweep: epochs summed over trials
    device: str = "auto"  # auto: GPUs when the cluster has some now; gpu: always (autoscaling clusters); cpu
    worker_cpus: float | None = None  # None: 2 with a GPU, 1 without
    data_cpus: float | None = None  # None: 10 with a GPU (12 vCPU per A100), 1 without
    gpus_per_trial: float = 1.0
    accelerator_type: str | None = None
    max_concurrent: int | None = None
    cache_gb: float | None = None  # None: 4 GB per trial on CPU, 32 GB on a GPU node (most of the 20 datasets at 100%)
    compile: bool = False  # torch.compile each trial's model
    max_failures: int = 2
    resume: bool = False
    retry_errored: bool = False
    log_models: bool = False
    cell_runs: dict[str, str] = field(default_factory=dict)  # cell name -> parent MLflow run id
    num_cpus: int | None = None  # for a local Ray instance; None: all cores
    code_version: str = ""
    extra_tags: dict[str, str] = field(default_factory=dict)
    data_fingerprints: dict[str, str] = field(default_factory=dict)  # dataset -> its manifest's fingerprint
    retrain_changed: bool = False  # retrain keys whose runs were made from other data or settings

    def protocol(self) -> dict:
        """The protocol settings every trial's results depend on (:func:`rayexp.fingerprint.protocol_settings`)."""
        return fingerprint.protocol_settings(
            max_epochs=self.max_epochs,
            patience=self.patience,
            precision=self.precision,
            selection=self.selection,
            dualopt=self.dualopt,
            normalize=self.normalize,
            augment=self.augment,
        )

    def identity(self, key: TrialKey) -> dict[str, str]:
        """The fingerprint tags ``key``'s run gets in this sweep."""
        batch = self.batch_size or get_spec(key.backbone).batch_size
        return fingerprint.trial_identity(
            self.data_fingerprints[key.dataset], self.protocol(), self.weights[key.backbone], batch
        )

    def cpus(self, use_gpu: bool) -> tuple[float, float]:
        """(training worker CPUs, Ray Data CPUs) per trial."""
        worker = self.worker_cpus if self.worker_cpus is not None else (2.0 if use_gpu else 1.0)
        data = self.data_cpus if self.data_cpus is not None else (10.0 if use_gpu else 1.0)
        return worker, data

    def trial_settings(self, use_gpu: bool) -> dict:
        worker_cpus, data_cpus = self.cpus(use_gpu)
        return {
            "experiment": self.experiment,
            "local": not self.address,
            "data_dir": str(self.data_dir),
            "storage": self.storage,
            "tracking_uri": self.tracking_uri,
            "weights": self.weights,
            "weights_dir": self.weights_dir,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "selection": self.selection,
            "dualopt": self.dualopt,
            "normalize": self.normalize,
            "augment": self.augment,
            "scheduler": self.scheduler,
            "worker_cpus": worker_cpus,
            "gpus_per_trial": self.gpus_per_trial if use_gpu else 0,
            "accelerator_type": self.accelerator_type,
            "data_cpus": data_cpus,
            "cache_gb": self.cache_gb if self.cache_gb is not None else (32.0 if use_gpu else 4.0),
            "compile": self.compile,
            "max_failures": self.max_failures,
            "log_models": self.log_models,
            "cell_runs": self.cell_runs,
            "code_version": self.code_version,
            "extra_tags": self.extra_tags,
            "protocol": self.protocol(),
            "data_fingerprints": self.data_fingerprints,
        }


def batch_threads(worker_cpus: float, data_cpus: float, cached: bool) -> int:
    """Threads that augment and normalise a trial's batches: the worker's CPUs, plus the trial's data CPUs
    once its images are cached (Ray Data has nothing left to decode then)."""
    return max(1, int(worker_cpus + (data_cpus if cached else 0)))


# Errors that come out the same every time they are retried: bad data or settings, a bug, a batch that does
# not fit (never halved). They fail the trial at once; Train's FailureConfig retries only the rest (a lost
# worker or node, a storage hiccup).
DETERMINISTIC_ERRORS = (
    RayexpError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    AssertionError,
    ZeroDivisionError,
    NotImplementedError,
)
# torch.OutOfMemoryError (without importing torch here), and Ray Data's wrapper of an error a map function raised
DETERMINISTIC_NAMES = ("OutOfMemoryError", "UserCodeException")
# How a rayexp error raised in a Ray task reads once it crossed processes: Ray keeps the remote traceback as
# text, and the original exception (with its type) is not always kept beside it.
RAYEXP_ERROR_LINE = re.compile(r"^rayexp\.[\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it: Python's chain and the ``cause`` Ray's task errors carry."""
    out: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return out


def _rayexp_text(e: BaseException) -> str | None:
    """The message of a rayexp error named in ``e``'s (remote) traceback text, if any."""
    found = RAYEXP_ERROR_LINE.findall(str(e))
    return found[-1].strip() if found else None


def is_deterministic(exc: BaseException) -> bool:
    return any(
        isinstance(e, DETERMINISTIC_ERRORS) or type(e).__name__ in DETERMINISTIC_NAMES or _rayexp_text(e)
        for e in _causes(exc)
    )


def error_message(exc: BaseException) -> str:
    """The message a person needs from an error that crossed Ray: a rayexp error's own words, else the
    innermost error with a message (``ValueError: ...``), never only ``ray::ImplicitFunc.train()``."""
    for e in _causes(exc):
        if isinstance(e, RayexpError) and not type(e).__module__.startswith("ray."):
            return str(e)
        if text := _rayexp_text(e):
            return text
    for e in reversed(_causes(exc)):
        if not type(e).__module__.startswith("ray.") and str(e).strip():
            return f"{type(e).__name__}: {e}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _record_failure(s: dict, key: TrialKey, exc: BaseException) -> str:
    """Mark the key's MLflow run FAILED with the error's message (creating the run if the trial never
    opened it); returns the message."""
    from rayexp import tracking

    message = error_message(exc)
    try:
        parent = s["cell_runs"].get(tracking.cell_name(*key.cell))
        tags = {
            "backbone": key.backbone,
            "dataset": key.dataset,
            "fraction": repr(key.fraction),
            "seed": str(key.seed),
            **s["extra_tags"],
        }
        tracking.fail_trial_run(s["tracking_uri"], s["experiment"], str(key), message, tags, parent)
    except Exception as log_error:  # noqa: BLE001 - the trial's own error matters more than logging it
        print(f"[rayexp] could not record the failure of {key} in MLflow: {log_error}")
    return message


def train_worker(config: dict) -> None:
    """The Ray Train worker of one trial (:func:`_train`). A deterministic error is recorded in the trial's
    MLflow run (FAILED, with the message) and the worker returns, so that Train does not retry it; the trial
    driver reads the run and fails the trial once. Any other error is raised, for Train to restart the
    worker from its last checkpoint."""
    import traceback

    import ray.train

    key = TrialKey.parse(config["key"])
    try:
        _train(config)
    except BaseException as exc:
        if ray.train.get_context().get_world_rank() == 0:
            _record_failure(config["settings"], key, exc)
        if not is_deterministic(exc):
            raise
        traceback.print_exc()  # the whole story in the worker's log; the driver reads the message from MLflow


def _train(config: dict) -> None:
    """The trial's training: plain PyTorch via :func:`rayexp.training.fit`, logged to MLflow."""
    import ray.train
    import ray.train.torch
    import torch

    from rayexp import tracking, training
    from rayexp.backbones import create_backbone, get_head
    from rayexp.data.pipeline import Normalizer, TrialBatches, augments, normalization

    key = TrialKey.parse(config["key"])
    s = config["settings"]
    manifest = config["manifest"]
    spec = get_spec(key.backbone)
    # A GPU assigned by Ray but not visible to this PyTorch (a logical GPU, a CPU build) trains on the CPU.
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    batch_size = int(s["batch_size"] or spec.batch_size)
    identity = fingerprint.trial_identity(
        manifest["fingerprint"], s["protocol"], s["weights"][key.backbone], batch_size
    )
    cfg = training.TrainConfig(
        max_epochs=s["max_epochs"],
        patience=s["patience"],
        precision=s["precision"],
        selection=s["selection"],
        dualopt=s["dualopt"],
        seed=key.seed,
    )
    augment = augments(manifest, s["augment"])
    pretrained = s["weights"][key.backbone] == "pretrained"

    training.seed_everything(key.seed)  # seeds the new head's init
    model = create_backbone(key.backbone, manifest["n_classes"], pretrained=pretrained, weights_dir=s["weights_dir"])
    training.keep_fp32(get_head(model, spec))  # fp32 logits: argmax and loss not rounded to bf16
    model = model.to(device, memory_format=torch.channels_last)
    if s["compile"]:
        model.compile()  # in place: the state dict keeps its keys, so checkpoints stay interchangeable

    checkpoint = None
    ray_checkpoint = ray.train.get_checkpoint()
    if ray_checkpoint is not None:
        with ray_checkpoint.as_directory() as folder:
            # Our own checkpoint (it holds NumPy RNG state, which weights_only refuses), from the trial's storage.
            checkpoint = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        if checkpoint.get("identity") != identity:
            # Left by a training of other data or settings (a key retrained with --retrain-changed, or an older
            # rayexp): continuing it would report its old numbers under this run's fingerprints.
            print(
                f"[rayexp] {key}: the checkpoint in its Train run was made from other data or settings; training from the start",
                flush=True,
            )
            checkpoint = None

    cached = "cache" in config["datasets"]
    batches = TrialBatches(
        {name: ray.train.get_dataset_shard(name) for name in config["datasets"]},
        batch_size=batch_size,
        seed=key.seed,
        normalize=Normalizer(*normalization(manifest, s["normalize"]), device),
        augment=augment,
        threads=batch_threads(s["worker_cpus"], s["data_cpus"], cached),
        shuffle_buffer=min(config["train_rows"], 1024),
    )

    rank0 = ray.train.get_context().get_world_rank() == 0
    run = None
    test_ids: dict[tuple[int, int], str] = {}
    if rank0:
        tags = {
            "key": str(key),
            "backbone": key.backbone,
            "dataset": key.dataset,
            "domain": manifest["domain"],
            "fraction": repr(key.fraction),
            "seed": str(key.seed),
            "protocol": "paper",
            "selection": cfg.selection,
            "code_version": s["code_version"],
            "node": socket.gethostname(),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "ray_trial_id": config["trial_id"],
            "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            **identity,
            **s["extra_tags"],
        }
        params = {
            **asdict(cfg),
            "precision_resolved": training.resolve_precision(cfg.precision, device),
            "optimizer": "DualOpt (AdamW, then SGD)" if cfg.dualopt else "AdamW",
            "batch_size": batch_size,
            "weights": spec.weights_tag if pretrained else "random",
            "input_size": "x".join(map(str, manifest["input_size"])),
            "resize": "bilinear, antialias, aspect ratio ignored",
            "normalization": s["normalize"],
            "augmentation": "TrivialAugmentWide" if augment else "none",
            "scheduler": s["scheduler"],
            "train_rows": config["train_rows"],
            "data_cache": cached,
            "channels_last": True,
            "compile": s["compile"],
            "test_rows": manifest["splits"]["test"]["rows"],
            "test_majority_rate": max(manifest["splits"]["test"]["class_counts"]) / manifest["splits"]["test"]["rows"],
            "num_classes": manifest["n_classes"],
        }
        test_ids = split_row_ids(s["data_dir"], key.dataset, "test")
        parent = s["cell_runs"].get(tracking.cell_name(key.backbone, key.dataset, key.fraction))
        run = tracking.TrialRun.open(s["tracking_uri"], s["experiment"], str(key), tags, params, parent_run_id=parent)

    def on_epoch(metrics: dict, make_checkpoint) -> None:
        state = {**make_checkpoint(), "identity": identity}  # what it was trained from: resumed only for the same
        if run is not None:
            run.log_metrics(metrics, step=metrics["epoch"])
            if metrics["epochs_without_improvement"] == 0:  # a new best: a trial stopped from outside keeps it
                log_predictions(run, state["progress"]["best_test_predictions"], test_ids)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    final = training.fit(
        model,
        batches.train,
        batches.evaluation("test"),
        cfg,
        device,
        manifest["n_classes"],
        on_epoch,
        checkpoint,
        val_batches=batches.evaluation("val") if cfg.selection == "val" else None,
    )
    confusion, history = final.pop("confusion"), final.pop("history")
    predictions, capped = final.pop("predictions"), final.pop("capped")
    if run is not None:
        log_trial_artifacts(run, config, params, history, confusion, manifest["classes"])
        log_predictions(run, predictions, test_ids)
        if s["log_models"]:
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)  # fit() left the best weights in the model
            run.log_bytes(buffer.getvalue(), "model/best_weights.pt")
        if capped:
            run.set_tags({tracking.CAPPED_TAG: ",".join(capped)})
        run.finish(final)
    # best_acc and epoch again, so that a scheduler sees the trial's last word.
    ray.train.report(
        {**final, "best_acc": final.get("best_val_acc", final["best_test_acc"]), "epoch": final["epochs_run"]}
    )


def log_trial_artifacts(
    run, config: dict, params: dict, history: list[dict], confusion: list, classes: list[str]
) -> None:
    """The resolved config, the per-epoch history as CSV and the best epoch's confusion matrix as PNG."""
    import csv

    from rayexp.report import confusion_png

    run.log_dict(
        {"key": config["key"], "params": params, "settings": config["settings"], "manifest": config["manifest"]},
        "config.json",
    )
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)
        run.log_text(buffer.getvalue(), "history.csv")
    if confusion:
        run.log_bytes(confusion_png(confusion, classes, title=config["key"]), "confusion_matrix.png")


def split_row_ids(data_dir: str, dataset: str, split: str) -> dict[tuple[int, int], str]:
    """``(label, rank) -> id`` of every row of ``split``: the key that the evaluation's batches carry for
    each image, read from the shards' id, label and rank columns alone (no images)."""
    from rayexp.data.shards import read_split

    table = read_split(data_dir, dataset, split, columns=["id", "label", "rank"])
    return dict(zip(zip(table["label"].to_pylist(), table["rank"].to_pylist()), table["id"].to_pylist()))


def predictions_csv(predictions: dict, ids: dict[tuple[int, int], str]) -> str:
    """The test predictions as CSV text, header ``id,label,prediction``, one row per test image in the
    order it was evaluated.

    ``predictions`` is :func:`rayexp.training.evaluate`'s: lists ``label``, ``prediction`` and ``rank``;
    ``ids`` is :func:`split_row_ids`' of the same split. A row whose (label, rank) is not in ``ids``, or
    predictions that do not cover every row exactly once, raise RayexpError: a wrong id would silently
    pair another image with the prediction.
    """
    import csv

    if "rank" not in predictions:
        raise RayexpError("the test predictions carry no row ranks, so their images cannot be named")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "label", "prediction"])
    named = set()
    for label, prediction, rank in zip(
        predictions["label"], predictions["prediction"], predictions["rank"], strict=True
    ):
        row_id = ids.get((label, rank))
        if row_id is None:
            raise RayexpError(
                f"a test prediction's row (label {label}, rank {rank}) is not in the test split; no predictions were written"
            )
        named.add(row_id)
        writer.writerow([row_id, label, prediction])
    if len(named) != len(predictions["label"]) or len(named) != len(ids):
        raise RayexpError(
            f"the test predictions name {len(named)} distinct rows in {len(predictions['label'])} predictions, for a test split "
            f"of {len(ids)} rows; no predictions were written"
        )
    return buffer.getvalue()


def log_predictions(run, predictions: dict, ids: dict[tuple[int, int], str]) -> None:
    """Log the best epoch's test predictions as the run's :data:`rayexp.tracking.PREDICTIONS_ARTIFACT`,
    replacing an earlier epoch's; nothing when none are known (a checkpoint from before they were kept)."""
    from rayexp import tracking

    if predictions:
        run.log_text(predictions_csv(predictions, ids), tracking.PREDICTIONS_ARTIFACT)


def trial_driver(config: dict, settings: dict) -> None:
    """The Tune function of one trial: build its data pipeline and fit a one-worker TorchTrainer.

    ``config`` holds only the trial key (so Tune's tables stay readable); ``settings``, the same for every
    trial, arrives through ``tune.with_parameters``. A deterministic error (bad data, a bug) is recorded in
    the key's MLflow run, which exists even when the trial failed before training, and fails the trial once.
    """
    key = TrialKey.parse(config["key"])
    try:
        _drive(key, settings)
    except BaseException as exc:
        if isinstance(exc, RayexpError) or is_deterministic(exc):
            message = _record_failure(settings, key, exc)
            raise RayexpError(message) from None  # Tune does not retry a trial function (FailureConfig 0)
        raise


def _drive(key: TrialKey, s: dict) -> None:
    import ray.data
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayexp import tracking
    from rayexp.data.pipeline import build_trial_datasets, configure_data_context, split_rows
    from rayexp.data.shards import load_manifest

    # Train V2's controller polls its workers this often; the default 2 s adds up to ~4 s per trial at
    # start and finish. A local instance has no spot nodes, so no preemption-watcher actor either.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if s["local"]:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    manifest = load_manifest(s["data_dir"], key.dataset)
    if manifest["fingerprint"] != s["data_fingerprints"][key.dataset]:
        raise RayexpError(
            f"dataset {key.dataset!r} changed while the sweep ran (fingerprint {fingerprint.short(s['data_fingerprints'][key.dataset])} "
            f"when it started, {fingerprint.short(manifest['fingerprint'])} now): do not prepare a dataset a sweep is using; "
            "run the sweep again once preparation is done"
        )
    execution = configure_data_context(s["data_cpus"])
    datasets, cached = build_trial_datasets(s["data_dir"], manifest, key.fraction, s["selection"], s["cache_gb"] * 1e9)
    train_rows = split_rows(manifest, "train", key.fraction, part="train" if s["selection"] == "val" else "all")
    use_gpu = s["gpus_per_trial"] > 0
    worker_resources = {"CPU": s["worker_cpus"]}
    if use_gpu:
        worker_resources["GPU"] = s["gpus_per_trial"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "key": str(key),
            "settings": s,
            "manifest": manifest,
            "train_rows": train_rows,
            "datasets": list(datasets),
            "trial_id": ray.tune.get_context().get_trial_id(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=1,
            use_gpu=use_gpu,
            resources_per_worker=worker_resources,
            accelerator_type=s["accelerator_type"] or None,
        ),
        # One worker needs no collectives; gloo also runs where a "GPU" is only a logical resource.
        torch_config=TorchConfig(backend="gloo"),
        datasets=datasets,
        # One worker: its datasets are not split, so no per-dataset split-coordinator actor starts;
        # each pipeline runs in the worker's own process.
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=execution),
        run_config=ray.train.RunConfig(
            # Named after the trial, so a restored trial finds its Train run and checkpoints again.
            name=key.dirname,
            storage_path=f"{s['storage'].rstrip('/')}/train_runs/{s['experiment']}",  # a local folder or a bucket URI
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=s["max_failures"]),
            # Per-report INFO lines would drown Tune's progress table, which shows the same numbers.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
    # A worker that met a deterministic error ended its Train run normally (so Train would not retry it) and
    # left the error in its FAILED MLflow run; a run that did not finish is a failed trial either way.
    record = tracking.trial_record(s["tracking_uri"], s["experiment"], str(key))
    if record is None or record["status"] != "FINISHED":
        raise RayexpError(
            (record or {}).get("tags", {}).get(tracking.ERROR_TAG)
            or f"trial {key} ended without finishing its MLflow run"
        )


# Every trial starts a Train controller, a worker and a few helper actors, so a small machine runs more
# Python processes than it has cores, and Ray would kill idle task workers after 1 s above that count;
# the next trial's Ray Data tasks then pay for a fresh process and its imports again. Keep them.
LOCAL_RAY_CONFIG = {"num_workers_soft_limit": 16, "idle_worker_killing_time_threshold_ms": 300_000}


def _init_ray(cfg: SweepConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        total = cfg.num_cpus or os.cpu_count() or 1
        slots = max(1, int(total // sum(cfg.cpus(use_gpu=False))))
        # The dashboard stays on: Train V2 frees a finished trial's worker resources through it.
        ray.init(
            num_cpus=total, resources={DRIVER_RESOURCE: slots}, include_dashboard=True, _system_config=LOCAL_RAY_CONFIG
        )


def _keep_ray_data_stats_actor() -> None:
    """Create Ray Data's stats actor from this (the sweep's) process, so it lives as long as the sweep.

    Otherwise each trial's training worker creates it, owns it, and it dies with the worker: one more
    Python process started per trial. An optimisation only; a Ray without this private hook still works.
    """
    try:
        from ray.data._internal.stats import get_or_create_stats_actor

        get_or_create_stats_actor()
    except Exception:  # noqa: BLE001 - private API, best effort
        pass


def plan_concurrency(cfg: SweepConfig) -> tuple[int, bool]:
    """(trials that may run at once, whether trials use GPUs), from the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    drivers = resources.get(DRIVER_RESOURCE, 0)
    if drivers < 1:
        raise RayexpError(
            f"the Ray cluster at {cfg.address or 'local'} has no '{DRIVER_RESOURCE}' resource, which the "
            f"trial functions run on; start its head with ray start --head --resources='{{\"{DRIVER_RESOURCE}\": 64}}' "
            "(cluster.yaml does this)"
        )
    gpus = resources.get("GPU", 0)
    if cfg.device == "gpu":
        # GPU nodes may not exist yet: trials ask for them and the autoscaler adds nodes.
        limit = int(drivers) if gpus == 0 else min(int(drivers), max(1, int(gpus // cfg.gpus_per_trial)))
        use_gpu = True
    else:
        use_gpu = cfg.device == "auto" and gpus >= cfg.gpus_per_trial > 0
        by_cpu = int(resources.get("CPU", 0) // sum(cfg.cpus(use_gpu)))
        limit = min(int(drivers), max(1, by_cpu))
        if use_gpu:
            limit = min(limit, max(1, int(gpus // cfg.gpus_per_trial)))
    if cfg.max_concurrent:
        limit = min(limit, cfg.max_concurrent)
    return max(1, limit), use_gpu


def make_scheduler(cfg: SweepConfig):
    """FIFO (every trial runs its full protocol: a fair comparison) or ASHA per (dataset, fraction)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    if cfg.scheduler != "asha":
        raise RayexpError(f"--scheduler {cfg.scheduler!r}: use fifo or asha")

    class GroupedASHA(FIFOScheduler):
        """Asynchronous successive halving among the trials of one (dataset, fraction): backbones
        compete only with backbones on the same data."""

        def __init__(self) -> None:
            super().__init__()
            self.groups: dict[tuple[str, float], AsyncHyperBandScheduler] = {}

        def _asha(self, trial) -> AsyncHyperBandScheduler:
            key = TrialKey.parse(trial.config["key"])
            if (key.dataset, key.fraction) not in self.groups:
                self.groups[(key.dataset, key.fraction)] = AsyncHyperBandScheduler(
                    time_attr="epoch",
                    metric="best_acc",
                    mode="max",
                    max_t=2 * cfg.max_epochs,
                    grace_period=cfg.grace_period,
                    reduction_factor=cfg.reduction_factor,
                )
            return self.groups[(key.dataset, key.fraction)]

        def on_trial_add(self, controller, trial) -> None:
            self._asha(trial).on_trial_add(controller, trial)

        def on_trial_result(self, controller, trial, result: dict) -> str:
            return self._asha(trial).on_trial_result(controller, trial, result)

        def on_trial_complete(self, controller, trial, result: dict) -> None:
            self._asha(trial).on_trial_complete(controller, trial, result)

        def on_trial_remove(self, controller, trial) -> None:
            self._asha(trial).on_trial_remove(controller, trial)

        def on_trial_error(self, controller, trial) -> None:
            self._asha(trial).on_trial_error(controller, trial)

        def debug_string(self) -> str:
            stopped = sum(asha._num_stopped for asha in self.groups.values())
            return f"ASHA per (dataset, fraction): {len(self.groups)} groups, {stopped} trials stopped early"

    return GroupedASHA()


def update_cell_summary(uri: str, experiment: str, backbone: str, dataset: str, fraction: float) -> dict | None:
    """Summarise a cell's finished seeds of the current fingerprints on its parent run; returns the metrics."""
    from rayexp import tracking
    from rayexp.results import current_results, summarize

    # Only this cell's runs: called after every trial, it must not read the whole sweep each time.
    rows, _ = current_results(
        tracking.fetch_trial_results(uri, experiment, backbone=backbone, dataset=dataset, fraction=repr(fraction))
    )
    (summary,) = summarize(rows) or [None]
    if summary is None or summary.n_seeds == 0:
        return None
    metrics = {"best_of_3": summary.best_of_3, "mean": summary.mean, "n_seeds": summary.n_seeds}
    if summary.std is not None:
        metrics["std"] = summary.std
    return metrics if tracking.log_cell_summary(uri, experiment, backbone, dataset, fraction, metrics) else None


def _cell_summary_callback_class():
    import ray.tune

    class CellSummaryCallback(ray.tune.Callback):
        """Updates a cell's parent run (best of three, mean, std) as soon as one of its seeds finishes."""

        def __init__(self, uri: str, experiment: str) -> None:
            self.uri, self.experiment = uri, experiment

        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            key = TrialKey.parse(trial.config["key"])
            try:
                update_cell_summary(self.uri, self.experiment, *key.cell)
            except Exception as exc:  # a summary is rebuilt at the end anyway; never stop the sweep for it
                print(f"[rayexp] could not update the summary of {key.cell}: {exc}")

    return CellSummaryCallback


def CellSummaryCallback(uri: str, experiment: str):  # noqa: N802 - a factory that keeps ray out of import time
    return _cell_summary_callback_class()(uri, experiment)


def _sweep_stopper_class():
    import ray.tune

    class SweepStopper(ray.tune.Stopper):
        """Per-trial budgets (seconds, epochs) and the sweep's own: device-hours and epochs summed over all
        trials. When the sweep's budget is spent Tune stops the running trials and starts no more."""

        def __init__(
            self, trial_seconds=None, trial_epochs=None, device_hours=None, epochs=None, devices_per_trial=1.0
        ) -> None:
            self.trial_seconds, self.trial_epochs = trial_seconds, trial_epochs
            self.device_seconds = device_hours * 3600 if device_hours else None
            self.epochs, self.devices_per_trial = epochs, devices_per_trial
            self.used_seconds, self.used_epochs = 0.0, 0
            self.spent_at: float | None = None  # the timestamp of the result that spent the budget

        def __call__(self, trial_id: str, result: dict) -> bool:
            if "train_loss" in result:  # an epoch's report, not the trial's closing one
                self.used_epochs += 1
                self.used_seconds += result.get("time_this_iter_s", 0.0) * self.devices_per_trial
                if self.spent_at is None and self.stop_all():
                    self.spent_at = result.get("timestamp")
                    print(
                        f"[rayexp] the sweep's budget is spent ({self.used_epochs} epochs, {self.used_seconds / 3600:.3f} device-hours): stopping"
                    )
            return bool(
                (self.trial_seconds and result.get("time_total_s", 0.0) >= self.trial_seconds)
                or (self.trial_epochs and result.get("epoch", 0) >= self.trial_epochs)
            )

        def stop_all(self) -> bool:
            return bool(
                (self.device_seconds is not None and self.used_seconds >= self.device_seconds)
                or (self.epochs is not None and self.used_epochs >= self.epochs)
            )

    return SweepStopper


def make_stop(cfg: SweepConfig, use_gpu: bool = False):
    """Tune's stopping criteria: per-trial budgets (seconds, epochs) and the sweep's budget (device-hours,
    epochs summed over trials); None when there is none."""
    if not any((cfg.trial_time_budget_s, cfg.trial_epoch_budget, cfg.budget_device_hours, cfg.budget_epochs)):
        return None
    return _sweep_stopper_class()(
        trial_seconds=cfg.trial_time_budget_s,
        trial_epochs=cfg.trial_epoch_budget,
        device_hours=cfg.budget_device_hours,
        epochs=cfg.budget_epochs,
        devices_per_trial=cfg.gpus_per_trial if use_gpu else 1.0,
    )


def preflight_cluster(cfg: SweepConfig, datasets: list[str]) -> None:
    """On a cluster, before any trial: every alive node must read the datasets, find the weights and reach MLflow."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayexp.backbones.weights import OFFLINE_ENV
    from rayexp.preflight import node_problems

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    check = ray.remote(num_cpus=0)(node_problems)
    pretrained = sorted(b for b, w in cfg.weights.items() if w == "pretrained")
    args = (cfg.data_dir, datasets, pretrained, cfg.weights_dir, cfg.tracking_uri, os.environ.get(OFFLINE_ENV) == "1")
    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args)
        for n in nodes
    }
    problems = [f"  - node {node}: {p}" for node, ref in refs.items() for p in ray.get(ref, timeout=300)]
    if problems:
        raise RayexpError("nodes of the cluster cannot run the sweep, nothing was started:\n" + "\n".join(problems))
    print(f"[rayexp] preflight passed on {len(nodes)} nodes")


def stale_runs(cfg: SweepConfig, records: dict[str, dict]) -> dict[str, list[str]]:
    """Keys of this sweep whose existing run was made from other data or settings: ``{key: [changes]}``."""
    return {
        str(key): found
        for key in cfg.keys
        if str(key) in records and (found := fingerprint.changes(records[str(key)]["tags"], cfg.identity(key)))
    }


def select_trials(cfg: SweepConfig) -> tuple[list[TrialKey], int]:
    """The keys to train now, from their MLflow runs.

    A run counts only for the same data and protocol (:mod:`rayexp.fingerprint`): when any key's run was
    made from other data or settings the sweep stops here, naming what changed, unless
    ``retrain_changed`` (those runs are then superseded and their keys trained again). Otherwise finished
    keys are never trained again; errored keys only with ``retry_errored``; interrupted keys (a run that
    never ended: the driver was killed) only with ``resume``, so a new sweep never silently mixes with an
    old one.
    """
    from rayexp import tracking

    records = tracking.trial_records(cfg.tracking_uri, cfg.experiment)
    stale = stale_runs(cfg, records)
    if stale and not cfg.retrain_changed:
        reasons = sorted({reason for changes in stale.values() for reason in changes})
        raise RayexpError(
            f"{len(stale)} trial(s) of MLflow experiment {cfg.experiment!r} were run from other data or settings than "
            f"this sweep's (e.g. {next(iter(stale))}):\n"
            + "\n".join(f"  - {r}" for r in reasons)
            + f"\nNothing was started. Their results would not be comparable with new ones: start a new experiment "
            f"(--experiment {cfg.experiment}-2), or retrain those keys here with --retrain-changed (their old runs are "
            "kept in MLflow, marked superseded and left out of the results)"
        )
    if stale:
        print(
            f"[rayexp] --retrain-changed: {len(stale)} trial(s) were run from other data or settings; training them again"
        )
        tracking.supersede_runs(
            cfg.tracking_uri, [records[k]["run_id"] for k in stale], "; ".join(next(iter(stale.values())))
        )
        records = {k: v for k, v in records.items() if k not in stale}
    status = {k: v["status"] for k, v in records.items()}
    keys = [str(k) for k in cfg.keys]
    finished = [k for k in keys if status.get(k) == "FINISHED"]
    errored = [k for k in keys if status.get(k) == "FAILED"]
    interrupted = [k for k in keys if k in status and status[k] not in ("FINISHED", "FAILED")]
    if finished:
        print(
            f"[rayexp] {len(finished)} of {len(keys)} trials already finished in MLflow experiment {cfg.experiment!r} "
            "from the same data and protocol; not training them again"
        )
    if cfg.retry_errored:
        todo = errored
        print(f"[rayexp] retrying {len(errored)} errored trial(s)")
    else:
        if interrupted and not cfg.resume:
            raise RayexpError(
                f"{len(interrupted)} trial(s) of experiment {cfg.experiment!r} were interrupted (their runs never ended, "
                f"e.g. {interrupted[0]}): pass --resume to continue them from their checkpoints, or choose a new --experiment"
            )
        if errored:
            print(
                f"[rayexp] {len(errored)} trial(s) errored in an earlier run and are left out (e.g. {errored[0]}); rerun them with --retry-errored"
            )
        todo = [k for k in keys if k not in finished and k not in errored]
        if interrupted:
            print(f"[rayexp] resuming {len(interrupted)} interrupted trial(s) from their checkpoints")
    return [TrialKey.parse(k) for k in todo], len(keys) - len(todo)


def run_sweep(cfg: SweepConfig) -> dict:
    """Run every key of ``cfg`` that has no finished MLflow run of the same data and protocol; returns what
    ran, what errored and what stopped. One sweep per experiment at a time (:func:`rayexp.tracking.acquire_sweep_lock`)."""
    from rayexp import tracking

    tracking.ensure_experiment(cfg.tracking_uri, cfg.experiment)
    with tracking.acquire_sweep_lock(cfg.tracking_uri, cfg.experiment, resume=cfg.resume):
        return _run_locked(cfg)


def _run_locked(cfg: SweepConfig) -> dict:
    import ray.tune

    from rayexp import tracking

    todo, skipped = select_trials(cfg)
    if not todo:
        return {"ran": [], "errored": [], "stopped": [], "not_started": [], "skipped": skipped}
    from rayexp.data.shards import load_manifest

    domains = {d: load_manifest(cfg.data_dir, d)["domain"] for d in sorted({k.dataset for k in todo})}
    planned: dict[tuple[str, str, float], list[int]] = {}
    for key in cfg.keys:
        planned.setdefault(key.cell, []).append(key.seed)
    cfg.cell_runs = tracking.ensure_cell_runs(
        cfg.tracking_uri, cfg.experiment, sorted({k.cell for k in todo}), domains, seeds=planned
    )
    _init_ray(cfg)
    if cfg.address:
        preflight_cluster(cfg, sorted(domains))
    _keep_ray_data_stats_actor()
    concurrency, use_gpu = plan_concurrency(cfg)
    if cfg.precision == "fp16" and not use_gpu:
        raise RayexpError(
            f"--precision fp16 needs a GPU, and the trials of this sweep run on the CPU (the cluster at {cfg.address} has no "
            "GPU now): use --precision bf16 or fp32, or --device gpu to wait for GPU nodes"
        )
    print(f"[rayexp] {len(todo)} trials, up to {concurrency} at a time, on {'GPU' if use_gpu else 'CPU'}")
    settings = cfg.trial_settings(use_gpu)
    stopper = make_stop(cfg, use_gpu)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(
            ray.tune.with_parameters(trial_driver, settings=settings), {"cpu": 0, DRIVER_RESOURCE: 1}
        ),
        param_space={"key": ray.tune.grid_search([str(k) for k in todo])},
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            scheduler=make_scheduler(cfg),
            trial_name_creator=lambda trial: trial.config["key"],
            trial_dirname_creator=lambda trial: TrialKey.parse(trial.config["key"]).dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=cfg.experiment,
            storage_path=cfg.storage,
            stop=stopper,
            callbacks=[CellSummaryCallback(cfg.tracking_uri, cfg.experiment)],
            # A trial function's error is deterministic (bad data, a bug): lost workers and nodes are retried
            # inside the trial, by Train's FailureConfig.
            failure_config=ray.tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    recorded = {
        k: v["tags"].get(tracking.ERROR_TAG)
        for k, v in tracking.trial_records(cfg.tracking_uri, cfg.experiment).items()
    }
    errored, stopped, not_started = [], [], []
    for result in grid:
        key, metrics = result.config["key"], result.metrics or {}
        if result.error is not None:
            errored.append((key, recorded.get(key) or error_message(result.error), result.path))
        elif not metrics:
            not_started.append(key)  # the sweep's budget was spent before it began
        else:
            reason = stop_reason(cfg, stopper, metrics)
            if tracking.close_stopped_run(cfg.tracking_uri, cfg.experiment, key, cfg.selection, reason=reason):
                stopped.append((key, metrics.get("epoch"), metrics.get("best_acc"), reason))
    for cell in sorted({k.cell for k in todo}):  # stopped trials were closed only now
        update_cell_summary(cfg.tracking_uri, cfg.experiment, *cell)
    return {
        "ran": [str(k) for k in todo],
        "errored": errored,
        "stopped": stopped,
        "not_started": not_started,
        "skipped": skipped,
    }


def stop_reason(cfg: SweepConfig, stopper, metrics: dict) -> str:
    """Who stopped a trial that did not finish its protocol: the sweep's budget when the trial was still
    reporting when it was spent, else the scheduler (ASHA), else a per-trial budget."""
    spent_at = getattr(stopper, "spent_at", None)
    if spent_at is not None and metrics.get("timestamp", 0) >= spent_at - 1:
        return "budget"
    return cfg.scheduler if cfg.scheduler != "fifo" else "budget"
