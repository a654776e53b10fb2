"""A sweep's settings, declared once, and the plan a sweep runs.

* :class:`SweepSettings`: what the user chose. Each field carries its default, flag, help and bound
  (:func:`rayexp.options.option`); the sweeps' command line is derived from them (:mod:`rayexp.cli`), and
  :class:`rayexp.training.TrainConfig` is nested whole. A sweep script declares its own defaults as one
  ``SweepSettings``.
* :class:`SweepPlan`: the settings plus what the preflight resolved before Ray starts: the trial keys, the
  weights each backbone starts from, each dataset's fingerprint, the code version. It travels to every trial
  whole, and answers what a trial's run must record to count as done (:meth:`SweepPlan.identity`).

Both are frozen: nothing changes them once built. What is derived while a sweep runs (each trial's
resources, the cells' parent runs) lives in :mod:`rayexp.orchestrate`. No Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rayexp import fingerprint
from rayexp.backbones import get_spec
from rayexp.backbones.specs import batch_size_at
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.options import nested, option
from rayexp.training import TrainConfig

# What runs each trial's body (rayexp.orchestrate.session): a one-worker Ray Train run, or the Tune trial function.
TRAIN_RUNTIME, TUNE_RUNTIME = RUNTIMES = ("train", "tune")

GROUP_TITLES = {
    "grid": "the grid",
    "where": "data, storage and tracking",
    "protocol": "training protocol (changing one retrains: it is part of the protocol fingerprint)",
    "schedule": "scheduling and budgets",
    "resources": "resources per trial",
    "passes": "passes over an existing experiment",
    "output": "console output",
}


def train_run_location(storage: str, experiment: str, key: TrialKey) -> str:
    """Where a trial's Train run is kept (checkpoints, and best_weights.pt with --keep-best-weights): a local
    folder or a bucket URI."""
    return f"{storage.rstrip('/')}/train_runs/{experiment}/{key.dirname}"


@dataclass(frozen=True)
class SweepSettings:
    """Every setting of a sweep; the command line is derived from these fields."""

    backbones: tuple[str, ...] = option(
        (),
        help="backbone names: the registry's, torchvision:<name> or timm:<name> (--list-backbones; README: Backbones)",
        many=True,
        group="grid",
    )
    datasets: tuple[str, ...] = option(
        (), help="dataset names (see: python datasets/prepare.py --list)", many=True, group="grid"
    )
    fractions: tuple[float, ...] = option(
        (1.0,), help="fractions of the training split, in (0, 1]", type=float, many=True, group="grid"
    )
    seeds: tuple[int, ...] = option(
        (0, 1, 2),
        help="seeds: one trial per seed in every (backbone, dataset, fraction) cell",
        type=int,
        many=True,
        group="grid",
    )

    experiment: str = option("rayexp", help="MLflow experiment and Tune run name", group="where")
    data_dir: str | None = option(
        None,
        help="folder of prepared datasets (default: $RAYEXP_DATA_DIR, else the repository's datasets/)",
        group="where",
    )
    storage: str = option("ray_results", help="Tune/Train storage: a local folder or a bucket URI", group="where")
    tracking_uri: str = option(
        "sqlite:///mlflow.db",
        help="MLflow store: sqlite:///FILE (a relative path is made absolute) or a server, http://HOST:5000",
        group="where",
    )
    address: str | None = option(None, help="Ray cluster address (default: a local Ray instance)", group="where")
    weights_dir: str | None = option(
        None,
        help="folder of pretrained weight files, for clusters without internet (default: $RAYEXP_WEIGHTS_DIR, then "
        "torch's cache, then the download)",
        group="where",
    )

    train: TrainConfig = nested(TrainConfig)
    batch_size: int | None = option(
        None, help="training batch (default: the backbone's own, from its spec)", type=int, minimum=1, group="protocol"
    )
    checkpoints: tuple[str, ...] = option(
        (),
        help="start BACKBONE from a checkpoint of your own (a state dict or safetensors, tensors only; README: Bring "
        "your own weights) instead of its published weights; repeatable",
        flag="--weights",
        many=True,
        repeat=True,
        metavar="BACKBONE=PATH",
        group="protocol",
    )
    normalize: str = option(
        "model",
        help="model: the mean/std each backbone's weights were trained with (README: Training protocol, measured); "
        "dataset: the training split's (from the manifest; the authors' code); imagenet: ImageNet's",
        choices=("dataset", "model", "imagenet"),
        group="protocol",
    )
    augment: bool = option(
        True,
        help="no TrivialAugmentWide, even on the datasets whose protocol has it (default: the protocol's choice)",
        negate=True,
        flag="--no-augment",
        group="protocol",
    )

    scheduler: str = option(
        "fifo",
        help="fifo: every trial runs its full protocol (a fair comparison); asha: budget mode, stops weak backbones "
        "early per (dataset, fraction)",
        choices=("fifo", "asha"),
        group="schedule",
    )
    grace_period: int = option(
        5, help="ASHA: epochs before a trial can be stopped", type=int, minimum=1, group="schedule"
    )
    reduction_factor: int = option(2, help="ASHA: keep the top 1/N at each rung", type=int, minimum=2, group="schedule")
    trial_time_budget: float | None = option(
        None, help="stop each trial after this many seconds", type=float, above=0, group="schedule"
    )
    trial_epoch_budget: int | None = option(
        None, help="stop each trial after this many epochs (both phases)", type=int, minimum=1, group="schedule"
    )
    budget_device_hours: float | None = option(
        None,
        help="stop the whole sweep once this many device-hours (GPU, or CPU without one) are spent",
        flag="--budget-gpu-hours",
        type=float,
        above=0,
        group="schedule",
    )
    budget_epochs: int | None = option(
        None,
        help="stop the whole sweep once this many epochs, summed over trials, are run",
        type=int,
        minimum=1,
        group="schedule",
    )
    max_concurrent: int | None = option(
        None, help="cap on trials running at once", type=int, minimum=1, group="schedule"
    )

    device: str = option(
        "auto",
        help="auto: GPUs when the cluster has some now; gpu: always (an autoscaling cluster adds GPU nodes on demand)",
        choices=("auto", "gpu", "cpu"),
        group="resources",
    )
    runtime: str | None = option(
        None,
        help="what runs each trial: train, a one-worker Ray Train TorchTrainer (the default with --address: Train "
        "places and restarts its worker); tune, the Tune trial function itself (the default on a local Ray: seconds "
        "less per trial); the same results either way (README: Runtimes)",
        choices=RUNTIMES,
        group="resources",
    )
    worker_cpus: float | None = option(
        None,
        help="CPUs held by each trial's training worker (default 2 with a GPU, 1 without)",
        type=float,
        above=0,
        group="resources",
    )
    data_cpus: float | None = option(
        None,
        help="CPUs per trial for its Ray Data decode tasks (default 10 with a GPU: 12 vCPU per A100; 1 without)",
        type=float,
        above=0,
        group="resources",
    )
    gpus_per_trial: float = option(
        1.0,
        help="GPUs per trial; a fraction lets small (1%%) trials share a GPU",
        type=float,
        above=0,
        aliases=("--gpu-per-trial",),
        group="resources",
    )
    accelerator_type: str | None = option(
        None, help="run trials only on this accelerator (e.g. A100-80G)", group="resources"
    )
    cache_gb: float | None = option(
        None,
        help="decode a trial's images once into its worker's memory when they fit in this many GB (default 4, or 32 "
        "on GPUs; 0: decode every epoch)",
        type=float,
        minimum=0,
        group="resources",
    )
    compile: bool = option(
        False, help="torch.compile each trial's model (GPU; the first epoch pays the compilation)", group="resources"
    )
    log_models: bool = option(False, help="log each trial's best weights to MLflow (large)", group="resources")
    keep_checkpoints: bool = option(
        False,
        help="keep a finished trial's Train checkpoints (by default they are deleted once its MLflow run is "
        "FINISHED; an unfinished trial always keeps its own, to resume from)",
        group="resources",
    )
    keep_best_weights: bool = option(
        False,
        help="keep each finished trial's best weights (best_weights.pt in its Train run folder; its checkpoints "
        "still go) for sweeps/export.py; my_data.py keeps them until it has registered the winner",
        group="resources",
    )
    verbose: bool = option(
        False,
        help="show Ray's own output too: Tune's status tables, Train and Ray Data logs, the workers' prints "
        "(by default one line per epoch and per finished trial; Ray's output stays in its logs)",
        group="output",
    )

    resume: bool = option(
        False,
        help="continue an interrupted sweep: unfinished trials resume from their checkpoints (finished keys are "
        "always skipped)",
        group="passes",
    )
    retry_errored: bool = option(False, help="rerun only the trials that errored", group="passes")
    retrain_changed: bool = option(
        False,
        help="retrain, in this experiment, the keys whose runs were made from other data or settings (their old "
        "runs are kept, marked superseded); without it such a sweep stops",
        group="passes",
    )

    @property
    def trial_runtime(self) -> str:
        """``runtime``, or its default: ``train`` on a cluster (``address``), ``tune`` on a local instance."""
        return self.runtime or (TRAIN_RUNTIME if self.address else TUNE_RUNTIME)

    def train_run(self, key: TrialKey) -> str:
        """Where a trial's Train run is kept (:func:`train_run_location`)."""
        return train_run_location(self.storage, self.experiment, key)

    def protocol(self) -> dict:
        """The protocol settings every trial's results depend on (:func:`rayexp.fingerprint.protocol_settings`)."""
        t = self.train
        return fingerprint.protocol_settings(
            max_epochs=t.max_epochs,
            patience=t.patience,
            precision=t.precision,
            selection=t.selection,
            dualopt=t.dualopt,
            normalize=self.normalize,
            augment=self.augment,
        )

    def checkpoint_files(self) -> dict[str, str]:
        """``--weights``: backbone -> the path of its checkpoint; a malformed value is refused."""
        out: dict[str, str] = {}
        for value in self.checkpoints:
            backbone, sep, path = value.partition("=")
            if not sep or not backbone or not path:
                raise RayexpError(f"--weights {value!r}: expected BACKBONE=PATH, e.g. resnet50=radimagenet_resnet50.pt")
            if backbone in out:
                raise RayexpError(f"--weights: {backbone} is given two checkpoints ({out[backbone]} and {path})")
            out[backbone] = path
        return out

    def batch_size_for(self, backbone: str, input_size: tuple[int, int] | list[int]) -> int:
        """``--batch-size`` (for every backbone and dataset), else the backbone's default at the dataset's
        ``input_size`` (:func:`rayexp.backbones.specs.batch_size_at`)."""
        return self.batch_size or batch_size_at(get_spec(backbone).batch_size, input_size)


@dataclass(frozen=True)
class SweepPlan:
    """A sweep as it will run: its settings (locations resolved), its keys, and what the preflight resolved."""

    settings: SweepSettings
    keys: tuple[TrialKey, ...]
    weights: dict[str, str]  # backbone -> its weights origin: "pretrained", "random" or "checkpoint:sha256:<hex>"
    data_fingerprints: dict[str, str]  # dataset -> its manifest's fingerprint
    input_sizes: dict[str, tuple[int, int]]  # dataset -> its manifest's input size (H, W): the batch depends on it
    code_version: str = ""
    extra_tags: dict[str, str] = field(default_factory=dict)  # on every trial run (e.g. tool=my_data)

    def identity(self, key: TrialKey) -> dict[str, str]:
        """The fingerprint tags ``key``'s run gets in this sweep."""
        s = self.settings
        return fingerprint.trial_identity(
            self.data_fingerprints[key.dataset],
            s.protocol(),
            self.weights[key.backbone],
            self.batch_size(key),
        )

    def batch_size(self, key: TrialKey) -> int:
        """The batch ``key`` trains with: :meth:`SweepSettings.batch_size_for` at its dataset's input size."""
        return self.settings.batch_size_for(key.backbone, self.input_sizes[key.dataset])

    def planned_seeds(self) -> dict[tuple[str, str, float], list[int]]:
        """Each cell's seeds in this sweep."""
        planned: dict[tuple[str, str, float], list[int]] = {}
        for key in self.keys:
            planned.setdefault(key.cell, []).append(key.seed)
        return planned
