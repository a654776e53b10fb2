"""One trial's body, the same in both runtimes: plain PyTorch through :func:`rayexp.training.fit`, logged to
MLflow, against a :class:`rayexp.orchestrate.session.TrialSession`.

A deterministic error is recorded in the trial's MLflow run (FAILED, with the message) and the body returns,
so that neither Train nor Tune retries it; the sweep reads the run and reports the trial as errored once. Any
other error is raised, for the runtime to restart the trial from its last checkpoint.
"""

from __future__ import annotations

import io
import socket
import traceback
from dataclasses import asdict, replace

import ray
import torch

from rayexp import tracking, training
from rayexp.backbones import create_trial_model, get_spec
from rayexp.backbones.checkpoint import ORIGIN_PREFIX, Checkpoint, read_checkpoint
from rayexp.backbones.factory import model_normalization
from rayexp.data.batches import Normalizer, TrialBatches, augments, normalization
from rayexp.data.pipeline import trial_iterators
from rayexp.data.shards import dataset_location, verify_files
from rayexp.errors import RayexpError
from rayexp.export import save_best_weights
from rayexp.grid import TrialKey
from rayexp.orchestrate.artifacts import log_predictions, log_trial_artifacts, split_row_ids
from rayexp.orchestrate.context import TrialContext
from rayexp.orchestrate.failures import is_deterministic, record_failure
from rayexp.orchestrate.session import TrainSession, TrialSession


def train_worker(train_loop_config: dict) -> None:
    """The ``train_loop_per_worker`` of the trial's ``TorchTrainer`` (``--runtime train``): the body's config
    arrives as an object reference (see :func:`rayexp.orchestrate.driver._fit_trainer`)."""
    config = ray.get(train_loop_config["body"])
    location = config["context"].plan.settings.train_run(TrialKey.parse(config["key"]))
    run_trial(config, TrainSession(location, trial_iterators(config["datasets"], config["execution"])))


def run_trial(config: dict, session: TrialSession) -> None:
    """Train, evaluate and log one trial (see the module's docstring for its errors). ``config``: the trial's
    ``key``, ``context``, ``manifest``, ``train_rows``, its ``datasets`` and their ``execution`` options, and
    Tune's ``trial_id``."""
    key = TrialKey.parse(config["key"])
    try:
        _train(key, config, session)
    except (SystemExit, KeyboardInterrupt):
        raise  # Tune stopping the trial (a scheduler, a budget) or the driver going: not the trial's error
    except BaseException as exc:
        if session.chief:
            record_failure(config["context"], key, exc)
        if not is_deterministic(exc):
            raise
        traceback.print_exc()  # the whole story in the trial's log; the sweep reads the message from MLflow


def _model(
    key: TrialKey, context: TrialContext, n_classes: int, device: torch.device, checkpoint: Checkpoint | None
) -> torch.nn.Module:
    settings = context.plan.settings
    pretrained = context.plan.weights[key.backbone] == "pretrained"
    return create_trial_model(
        key.backbone,
        n_classes,
        key.seed,
        device,
        pretrained,
        settings.weights_dir,
        compile=settings.compile,
        checkpoint=checkpoint,
    )


def _checkpoint(key: TrialKey, context: TrialContext) -> Checkpoint | None:
    """The user's checkpoint ``key`` starts from (``--weights``), verified to be the file the preflight read."""
    origin = context.plan.weights[key.backbone]
    if not origin.startswith(ORIGIN_PREFIX):
        return None
    path = context.plan.settings.checkpoint_files()[key.backbone]
    found = read_checkpoint(path)
    if found.origin != origin:
        raise RayexpError(
            f"--weights {path}: the file changed since the sweep started (sha256 {found.sha256[:12]}, the sweep "
            f"read {origin.removeprefix(ORIGIN_PREFIX)[:12]}); start the sweep again to use the new file"
        )
    return found


def normalization_of(key: TrialKey, context: TrialContext, manifest: dict, checkpoint: Checkpoint | None) -> dict:
    """The normalisation ``key`` trains with, resolved: ``{"mode", "mean", "std"}`` (recorded, and served)."""
    mode = context.plan.settings.normalize
    mean, std = normalization(manifest, mode, model_normalization(get_spec(key.backbone), checkpoint))
    return {"mode": mode, "mean": list(mean), "std": list(std)}


def _resumed_checkpoint(key: TrialKey, identity: dict, session: TrialSession) -> dict | None:
    """The trial's last checkpoint when its runtime has one made from the same data and settings."""
    checkpoint = session.resume_from()
    if checkpoint is None:
        return None
    if checkpoint.get("identity") != identity:
        # Left by a training of other data or settings (a key retrained with --retrain-changed, or an older
        # rayexp): continuing it would report its old numbers under this run's fingerprints.
        print(
            f"[rayexp] {key}: the checkpoint in its run folder was made from other data or settings; training "
            "from the start",
            flush=True,
        )
        return None
    return checkpoint


def _batches(config: dict, key: TrialKey, batch_size: int, session: TrialSession, norm: dict) -> TrialBatches:
    context, manifest = config["context"], config["manifest"]
    settings = context.plan.settings
    return TrialBatches(
        {name: session.dataset(name) for name in config["datasets"]},
        batch_size=batch_size,
        seed=key.seed,
        normalize=Normalizer(norm["mean"], norm["std"], session.device),
        augment=augments(manifest, settings.augment),
        threads=context.resources.batch_threads(cached="cache" in config["datasets"]),
        shuffle_buffer=min(config["train_rows"], 1024),
    )


def _open_run(
    config: dict,
    key: TrialKey,
    cfg: training.TrainConfig,
    batch_size: int,
    identity: dict,
    session: TrialSession,
    weights: str,
    norm: dict,
) -> tuple[tracking.TrialRun, dict]:
    """The trial's MLflow run, opened (or reopened on a restart) under its cell's parent run, and its params."""
    context, manifest = config["context"], config["manifest"]
    plan, settings = context.plan, context.plan.settings
    device = session.device
    node = tracking.node_tags(
        node=socket.gethostname(),
        node_ip=ray.util.get_node_ip_address(),
        node_id=ray.get_runtime_context().get_node_id(),
        ray_trial_id=config["trial_id"],
        accelerator=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        runtime=session.runtime,
    )
    tags = tracking.trial_tags(
        str(key),
        key.backbone,
        key.dataset,
        key.fraction,
        key.seed,
        domain=manifest["domain"],
        selection=cfg.selection,
        code_version=plan.code_version,
        node=node,
        identity=identity,
        extra=plan.extra_tags,
    )
    test = manifest["splits"]["test"]
    params = tracking.trial_params(
        asdict(cfg),
        precision_resolved=training.resolve_precision(cfg.precision, device),
        batch_size=batch_size,
        weights=weights,
        input_size=manifest["input_size"],
        normalization=f"{norm['mode']}: mean {_rounded(norm['mean'])}, std {_rounded(norm['std'])}",
        augmented=augments(manifest, settings.augment),
        scheduler=settings.scheduler,
        train_rows=config["train_rows"],
        data_cache="cache" in config["datasets"],
        compile=settings.compile,
        test_rows=test["rows"],
        test_class_counts=test["class_counts"],
        num_classes=manifest["n_classes"],
        model_input=get_spec(key.backbone).fixed_input,
        runtime=session.runtime,
    )
    parent = context.cell_runs.get(tracking.cell_name(*key.cell))
    run = tracking.TrialRun.open(settings.tracking_uri, settings.experiment, str(key), tags, params, parent)
    return run, params


def _train(key: TrialKey, config: dict, session: TrialSession) -> None:
    context: TrialContext = config["context"]
    manifest = config["manifest"]
    settings = context.plan.settings
    device = session.device
    batch_size = context.plan.batch_size(key)  # the batch in its identity (fingerprint tags)
    identity = context.plan.identity(key)
    cfg = replace(settings.train, seed=key.seed)
    # What the preflight verified is what this trial reads: a shard replaced since is refused, named.
    verify_files(dataset_location(settings.data_dir, key.dataset), manifest)
    weights = _checkpoint(key, context)
    norm = normalization_of(key, context, manifest, weights)
    model = _model(key, context, manifest["n_classes"], device, weights)
    checkpoint = _resumed_checkpoint(key, identity, session)
    batches = _batches(config, key, batch_size, session, norm)
    run, params, test_ids = None, {}, {}
    if session.chief:
        label = weights_label(key.backbone, context.plan.weights[key.backbone], weights)
        run, params = _open_run(config, key, cfg, batch_size, identity, session, label, norm)
        test_ids = split_row_ids(settings.data_dir, key.dataset, "test")

    def on_epoch(metrics: dict, make_checkpoint) -> None:
        state = {**make_checkpoint(), "identity": identity}  # what it was trained from: resumed only for the same
        if run is not None:
            run.log_metrics(metrics, step=metrics["epoch"])
            if metrics["epochs_without_improvement"] == 0:  # a new best: a trial stopped from outside keeps it
                log_predictions(run, state["progress"]["best_test_predictions"], test_ids)
        session.report(metrics, state)

    val_batches = batches.evaluation("val") if cfg.selection == "val" else None
    final = training.fit(
        model,
        batches.train,
        batches.evaluation("test"),
        cfg,
        device,
        manifest["n_classes"],
        on_epoch,
        checkpoint,
        val_batches=val_batches,
    )
    if run is not None:
        _finish_run(run, config, params, key, model, final, test_ids, norm)
    # best_acc and epoch again, so that a scheduler sees the trial's last word.
    best = final.get("best_val_acc", final["best_test_acc"])
    session.report({**_scalars(final), "best_acc": best, "epoch": final["epochs_run"]})


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def weights_label(backbone: str, origin: str, checkpoint: Checkpoint | None) -> str:
    """What a run records as its ``weights`` param (and the report shows): the published weights' tag, the user's
    checkpoint by name and sha256, or ``random``."""
    if checkpoint is not None:
        return checkpoint.label
    return get_spec(backbone).weights_tag if origin == "pretrained" else "random"


def _scalars(final: dict) -> dict:
    """``fit``'s final metrics, less the confusion matrix, history, predictions and capped phases."""
    return {k: v for k, v in final.items() if k not in ("confusion", "history", "predictions", "capped")}


def _finish_run(
    run: tracking.TrialRun,
    config: dict,
    params: dict,
    key: TrialKey,
    model: torch.nn.Module,
    final: dict,
    test_ids: dict,
    norm: dict,
) -> None:
    """The run's artifacts (config, history, confusion matrix, test predictions, optionally the best weights),
    its capped phases, and its final metrics; the run is then FINISHED."""
    context: TrialContext = config["context"]
    logged = {
        "key": str(key),
        "params": params,
        "settings": asdict(context.plan.settings),
        "resources": asdict(context.resources),
        "manifest": config["manifest"],
        "normalization": norm,  # resolved: what the served model normalises with
    }
    log_trial_artifacts(run, str(key), logged, final["history"], final["confusion"], config["manifest"]["classes"])
    log_predictions(run, final["predictions"], test_ids)
    if context.plan.settings.log_models:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)  # fit() left the best weights in the model
        run.log_bytes(buffer.getvalue(), tracking.MODEL_ARTIFACT)
    if context.plan.settings.keep_best_weights:  # for sweeps/export.py and my_data.py's registered winner
        save_best_weights(context.plan.settings.train_run(key), run.run_id, model.state_dict())
    if final["capped"]:
        run.set_tags({tracking.CAPPED_TAG: ",".join(final["capped"])})
    run.finish(_scalars(final))
