"""The MLflow run schema of a sweep: every tag, param, metric and artifact name its runs carry, defined once.

A sweep's experiment holds runs of four kinds, told apart by :data:`KIND_TAG`: a trial (one seed of one
cell), a cell (the parent run of a cell's seeds, holding the cell's summary), the summary (the report's
artifacts) and the lock (one sweep at a time; see :mod:`rayexp.tracking.lock`). A trial run taken out of
the results keeps its history as kind ``superseded``.

Pure names and dict builders: no mlflow, so that anything can import it cheaply.
"""

from __future__ import annotations

from typing import Mapping, Sequence

# --- Run kinds and nesting --------------------------------------------------------------------------------
KIND_TAG = "rayexp.kind"  # the run's kind: one of the *_KIND values below
TRIAL_KIND = "trial"
CELL_KIND = "cell"  # the parent of a cell's seeds
SUMMARY_KIND = "summary"  # the sweep's report
LOCK_KIND = "lock"
SUPERSEDED_KIND = "superseded"  # a trial run out of the results, kept for history
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
NOTE_TAG = "mlflow.note.content"  # a run's description in MLflow's UI: a cell's summary, readable at once

# MLflow's run statuses, as rayexp sets and reads them.
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"  # a trial that errored
KILLED = "KILLED"  # a trial that was interrupted

# --- Tags of a cell's parent run and of its trial runs ----------------------------------------------------
BACKBONE_TAG = "backbone"
DATASET_TAG = "dataset"
FRACTION_TAG = "fraction"  # repr() of the float
DOMAIN_TAG = "domain"
CELL_TAG = "cell"  # on a cell's parent run: its cell_name()
SEEDS_TAG = "seeds"  # on a cell's parent run: the seeds planned for it, comma-separated

# --- Tags of a trial run ----------------------------------------------------------------------------------
KEY_TAG = "key"  # the trial key, also the run's name
SEED_TAG = "seed"
ATTEMPTS_TAG = "attempts"  # how many times the run was opened
PROTOCOL_NAME_TAG = "protocol"
PAPER_PROTOCOL = "paper"  # the value of PROTOCOL_NAME_TAG
SELECTION_TAG = "selection"  # the monitored accuracy: test (the paper's) or val
CODE_VERSION_TAG = "code_version"
NODE_TAG = "node"  # where this attempt ran: host name, IP, Ray node id, Ray Tune trial id, accelerator
NODE_IP_TAG = "node_ip"
NODE_ID_TAG = "node_id"
RAY_TRIAL_TAG = "ray_trial_id"
ACCELERATOR_TAG = "accelerator"
RUNTIME_TAG = "runtime"  # the attempt's: "train" (a Ray Train worker) or "tune" (the Tune trial function)
# What a trial run was produced from (see rayexp.fingerprint): a finished run counts only for the same values.
DATA_TAG = "data_fingerprint"
CLASSES_TAG = "classes_sha256"  # on a registered model version: its label set (class names in order), hashed
N_CLASSES_TAG = "n_classes"  # on a registered model version
PROTOCOL_TAG = "protocol_fingerprint"
SETTINGS_TAG = "protocol_settings"  # the settings behind the protocol fingerprint, as JSON, to say what changed
WEIGHTS_TAG = "weights_origin"  # pretrained | random
BATCH_TAG = "batch_size_resolved"
# How it ended.
ERROR_TAG = "error"  # a failed trial's error message, shown in the sweep's summary
CAPPED_TAG = "capped"  # the DualOpt phases (AdamW, SGD) that ended at --max-epochs, not by patience
STOPPED_TAG = "stopped_by"  # who stopped a trial before its protocol ended: a scheduler or a budget
SUPERSEDED_TAG = "superseded_because"  # on a superseded run: why its key was trained again

# --- Params of a trial run (besides every field of rayexp.training.TrainConfig) ---------------------------
SELECTION_PARAM = "selection"  # a TrainConfig field; older runs have no selection tag
PRECISION_PARAM = "precision_resolved"
OPTIMIZER_PARAM = "optimizer"
BATCH_SIZE_PARAM = "batch_size"
WEIGHTS_PARAM = "weights"  # the pretrained weights' name, or "random"
INPUT_SIZE_PARAM = "input_size"
MODEL_INPUT_PARAM = "model_input_size"  # what the network sees: input_size, or its one size (resized inside it)
RESIZE_PARAM = "resize"
NORMALIZATION_PARAM = "normalization"
AUGMENTATION_PARAM = "augmentation"
SCHEDULER_PARAM = "scheduler"
TRAIN_ROWS_PARAM = "train_rows"
DATA_CACHE_PARAM = "data_cache"
CHANNELS_LAST_PARAM = "channels_last"
COMPILE_PARAM = "compile"
TEST_ROWS_PARAM = "test_rows"
TEST_MAJORITY_PARAM = "test_majority_rate"  # the share of the test split's largest class: chance level
TEST_CLASS_ROWS_PARAM = "test_class_rows"  # the test split's rows per class, comma-separated: balanced chance
NUM_CLASSES_PARAM = "num_classes"
RUNTIME_PARAM = "runtime"  # the first attempt's runtime (MLflow never changes a param; the tag has each attempt's)

# --- Metrics of a trial run -------------------------------------------------------------------------------
# Per epoch (step = epoch), among those rayexp.training.fit reports:
TEST_ACC_METRIC = "test_acc"
VAL_ACC_METRIC = "val_acc"
EPOCH_SECONDS_METRIC = "epoch_seconds"
TRAIN_IMAGES_PER_S_METRIC = "train_images_per_s"
TEST_IMAGES_PER_S_METRIC = "test_images_per_s"
# Final (step 0), when the trial ends:
BEST_TEST_ACC_METRIC = "best_test_acc"
BEST_TEST_BALANCED_ACC_METRIC = "best_test_balanced_acc"
BEST_VAL_ACC_METRIC = "best_val_acc"  # only when the selection is val
BEST_EPOCH_METRIC = "best_epoch"
EPOCHS_RUN_METRIC = "epochs_run"
TRAIN_SECONDS_METRIC = "train_seconds"

# --- Metrics of a cell's parent run: its summary over seeds -----------------------------------------------
BEST_OF_3_METRIC = "best_of_3"
MEAN_METRIC = "mean"
STD_METRIC = "std"
N_SEEDS_METRIC = "n_seeds"

# --- Artifacts --------------------------------------------------------------------------------------------
PREDICTIONS_ARTIFACT = "test_predictions.csv"  # id,label,prediction of the best epoch's test pass
PREDICTIONS_HEADER = ("id", "label", "prediction")  # its first row
CONFIG_ARTIFACT = "config.json"  # the trial's resolved config
HISTORY_ARTIFACT = "history.csv"  # the per-epoch metrics
CONFUSION_ARTIFACT = "confusion_matrix.png"  # the best epoch's
MODEL_ARTIFACT = "model/best_weights.pt"  # with --log-models
SERVED_MODEL = "served_model"  # the MLflow model a registered trial run holds (rayexp.tracking.registry)
# A registered version's tags (besides KEY_TAG, DATA_TAG and BEST_TEST_ACC_METRIC's name)
EXPERIMENT_TAG = "experiment"
SUMMARY_RUN_NAME = "report"
REPORT_ARTIFACTS = "report"  # the summary run's folder of the report
RECOMMENDATION_ARTIFACTS = "recommendation"  # the summary run's folder of the recommendation

# --- The lock run (rayexp.tracking.lock) ------------------------------------------------------------------
LOCK_RUN_NAME = "sweep-lock"
HOLDER_PARAM_PREFIX = "holder."  # params holder.1, holder.2, ...: who took each generation, as JSON
RETIRED_HOLDER = "retired"  # holder.1 of a lock run that lost the race to be the experiment's lock run


def holder_param(generation: int) -> str:
    return f"{HOLDER_PARAM_PREFIX}{generation}"


def heartbeat_tag(generation: int) -> str:
    """The holder of ``generation`` refreshes it with the time (seconds since the epoch)."""
    return f"heartbeat.{generation}"


def released_tag(generation: int) -> str:
    return f"released.{generation}"


# --- Builders ---------------------------------------------------------------------------------------------


def cell_name(backbone: str, dataset: str, fraction: float) -> str:
    """The name (and :data:`CELL_TAG`) of a cell's parent run."""
    return f"{backbone}/{dataset}/{fraction!r}"


def cell_run_name(backbone: str, dataset: str, fraction: float) -> str:
    """The name a cell's parent run shows in MLflow's run list, which cuts long names at the end: the dataset
    and fraction first (``digits 10% shufflenet_v2_x2_0``), so the 10% and 100% cells do not look alike."""
    return f"{dataset} {100 * fraction:g}% {backbone}"


def cell_note(metrics: Mapping[str, float]) -> str:
    """A cell's summary as its run's description (:data:`NOTE_TAG`), shown first in MLflow's run page."""
    spread = f" ± {100 * metrics[STD_METRIC]:.2f}" if STD_METRIC in metrics else ""
    return (
        f"best of seeds {100 * metrics[BEST_OF_3_METRIC]:.2f}% · mean {100 * metrics[MEAN_METRIC]:.2f}{spread}% · "
        f"{int(metrics[N_SEEDS_METRIC])} seed(s) finished"
    )


def key_tags(backbone: str, dataset: str, fraction: float, seed: int) -> dict[str, str]:
    """The tags naming a trial's cell and seed: what a run made for a trial that failed early carries."""
    return {BACKBONE_TAG: backbone, DATASET_TAG: dataset, FRACTION_TAG: repr(fraction), SEED_TAG: str(seed)}


def node_tags(
    node: str, node_ip: str, node_id: str, ray_trial_id: str, accelerator: str, runtime: str
) -> dict[str, str]:
    """Where and how an attempt of a trial runs: for :func:`trial_tags`' ``node``."""
    return {
        NODE_TAG: node,
        NODE_IP_TAG: node_ip,
        NODE_ID_TAG: node_id,
        RAY_TRIAL_TAG: ray_trial_id,
        ACCELERATOR_TAG: accelerator,
        RUNTIME_TAG: runtime,
    }


def trial_tags(
    key: str,
    backbone: str,
    dataset: str,
    fraction: float,
    seed: int,
    *,
    domain: str,
    selection: str,
    code_version: str,
    node: Mapping[str, str],
    identity: Mapping[str, str],
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The tags of a trial's run. ``node``: :func:`node_tags`; ``identity``: its fingerprints
    (:func:`rayexp.fingerprint.trial_identity`); ``extra``: the sweep's own tags (they win)."""
    return {
        KEY_TAG: key,
        BACKBONE_TAG: backbone,
        DATASET_TAG: dataset,
        DOMAIN_TAG: domain,
        FRACTION_TAG: repr(fraction),
        SEED_TAG: str(seed),
        PROTOCOL_NAME_TAG: PAPER_PROTOCOL,
        SELECTION_TAG: selection,
        CODE_VERSION_TAG: code_version,
        **node,
        **identity,
        **extra,
    }


def trial_params(
    train_config: Mapping[str, object],
    *,
    precision_resolved: str,
    batch_size: int,
    weights: str,
    input_size: Sequence[int],
    normalization: str,
    augmented: bool,
    scheduler: str,
    train_rows: int,
    data_cache: bool,
    compile: bool,
    test_rows: int,
    test_class_counts: Sequence[int],
    num_classes: int,
    model_input: Sequence[int] | None = None,
    runtime: str,
) -> dict[str, object]:
    """The params of a trial's run: ``train_config`` (``asdict(TrainConfig)``, whose ``dualopt`` names the
    optimizer) and how the trial was set up. ``weights``: the pretrained weights' name, or ``"random"``;
    ``test_class_counts``: the test split's rows per class; ``model_input``: the one size a backbone takes, when
    its images are resized to it inside the model (a ViT with fixed position embeddings); ``runtime``: what
    ran the trial (``--runtime``), which does not change its results."""
    return {
        **train_config,
        PRECISION_PARAM: precision_resolved,
        OPTIMIZER_PARAM: "DualOpt (AdamW, then SGD)" if train_config["dualopt"] else "AdamW",
        BATCH_SIZE_PARAM: batch_size,
        WEIGHTS_PARAM: weights,
        INPUT_SIZE_PARAM: "x".join(map(str, input_size)),
        MODEL_INPUT_PARAM: "x".join(map(str, model_input or input_size)),
        RESIZE_PARAM: "bilinear, antialias, aspect ratio ignored",
        NORMALIZATION_PARAM: normalization,
        AUGMENTATION_PARAM: "TrivialAugmentWide" if augmented else "none",
        SCHEDULER_PARAM: scheduler,
        TRAIN_ROWS_PARAM: train_rows,
        DATA_CACHE_PARAM: data_cache,
        CHANNELS_LAST_PARAM: True,
        COMPILE_PARAM: compile,
        TEST_ROWS_PARAM: test_rows,
        TEST_MAJORITY_PARAM: max(test_class_counts) / test_rows,
        TEST_CLASS_ROWS_PARAM: _class_rows_param(test_class_counts),
        NUM_CLASSES_PARAM: num_classes,
        RUNTIME_PARAM: runtime,
    }


PARAM_LIMIT = 6000  # characters MLflow keeps of a param's value


def _class_rows_param(counts: Sequence[int]) -> str:
    """The test split's rows per class, comma-separated; empty (balanced chance then unknown) past MLflow's
    limit on a param, some thousand classes."""
    text = ",".join(str(int(n)) for n in counts)
    return text if len(text) <= PARAM_LIMIT else ""
