"""The command line the sweeps share (``sweeps/demo.py``, ``sweeps/full_grid.py``).

Each sweep script only declares its defaults; this module parses, validates, runs the preflight,
starts the sweep and prints the report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rayexp.backbones import get_spec
from rayexp.data.catalog import default_data_dir, get_dataset_info
from rayexp.data.shards import is_prepared, is_uri
from rayexp.errors import RayexpError
from rayexp.grid import expand_grid, seed_problem


@dataclass
class SweepDefaults:
    """What distinguishes one sweep script from another."""

    description: str
    experiment: str
    backbones: Sequence[str]
    datasets: Sequence[str]
    fractions: Sequence[float]
    seeds: Sequence[int]
    max_epochs: int
    patience: int
    batch_size: int | None = None
    selection: str = "test"
    fallback_to_random_weights: bool = False
    extra_tags: dict[str, str] = field(default_factory=dict)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the sweep's docstring as written."""


def build_parser(defaults: SweepDefaults, with_datasets: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=defaults.description, formatter_class=_HelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(defaults.backbones), help="backbone names (see README)")
    if with_datasets:
        p.add_argument(
            "--datasets",
            nargs="+",
            default=list(defaults.datasets),
            help="dataset names (python datasets/prepare.py --list)",
        )
    p.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=list(defaults.fractions),
        help="fractions of the training split, in (0, 1]",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=list(defaults.seeds))
    p.add_argument("--data-dir", default=str(default_data_dir()), help="folder of prepared datasets")
    p.add_argument(
        "--storage",
        default=str(Path("ray_results").resolve()),
        help="Tune/Train storage: a local folder or a bucket URI",
    )
    p.add_argument(
        "--tracking-uri",
        default="sqlite:///mlflow.db",
        help="MLflow tracking URI; relative SQLite paths are made absolute",
    )
    p.add_argument("--experiment", default=defaults.experiment, help="MLflow experiment and Tune run name")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=defaults.max_epochs,
        help="safety cap on epochs per DualOpt phase (AdamW, then SGD)",
    )
    p.add_argument("--patience", type=int, default=defaults.patience, help="epochs without improvement before stopping")
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="training batch (default: the backbone's registry value)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="auto: bf16/fp16 on GPU, fp32 on CPU",
    )
    p.add_argument(
        "--selection",
        default=defaults.selection,
        choices=["test", "val"],
        help="monitor test accuracy (the paper) or a held-out 10%% of the training rows",
    )
    p.add_argument("--no-dualopt", dest="dualopt", action="store_false", help="AdamW only: skip DualOpt's SGD phase")
    p.add_argument(
        "--normalize",
        default="dataset",
        choices=["dataset", "imagenet"],
        help="per-dataset mean/std from the manifest, or ImageNet's",
    )
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no TrivialAugmentWide even where the protocol has it",
    )
    p.add_argument(
        "--scheduler",
        default="fifo",
        choices=["fifo", "asha"],
        help="fifo: every trial runs its full protocol (a fair comparison); asha: budget mode, stops weak backbones early per (dataset, fraction)",
    )
    p.add_argument("--grace-period", type=int, default=5, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep the top 1/N at each rung")
    p.add_argument("--trial-time-budget", type=float, default=None, help="stop each trial after this many seconds")
    p.add_argument(
        "--trial-epoch-budget", type=int, default=None, help="stop each trial after this many epochs (both phases)"
    )
    p.add_argument(
        "--weights-dir",
        default=None,
        help="folder of pretrained weight files (air-gapped clusters); else $RAYEXP_WEIGHTS_DIR, then torch's cache",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "gpu", "cpu"],
        help="auto: GPUs when the cluster has some now; gpu: always (an autoscaling cluster adds GPU nodes on demand)",
    )
    p.add_argument(
        "--worker-cpus",
        type=float,
        default=None,
        help="CPUs held by each trial's training worker (default 2 with a GPU, 1 without)",
    )
    p.add_argument(
        "--data-cpus",
        type=float,
        default=None,
        help="CPUs per trial for its Ray Data decode tasks (default 10 with a GPU: 12 vCPU per A100; 1 without)",
    )
    p.add_argument(
        "--gpus-per-trial",
        "--gpu-per-trial",
        type=float,
        default=1.0,
        help="GPUs per trial; a fraction lets small (1%%) trials share a GPU",
    )
    p.add_argument("--accelerator-type", default=None, help="run trials only on this accelerator (e.g. A100-80G)")
    p.add_argument(
        "--cache-gb",
        type=float,
        default=None,
        help="decode a trial's images once into its worker's memory when they fit in this many GB (default 4, or 32 on GPUs; 0: decode every epoch)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each trial's model (GPU; the first epoch pays the compilation)",
    )
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--log-models", action="store_true", help="log each trial's best weights to MLflow (large)")
    p.add_argument("--out", default=None, help="report folder (default: reports/<experiment>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep: unfinished trials resume from their checkpoints (finished keys are always skipped)",
    )
    p.add_argument("--retry-errored", action="store_true", help="rerun only the trials that errored")
    p.add_argument(
        "--retrain-changed",
        action="store_true",
        help="retrain, in this experiment, the keys whose runs were made from other data or settings (their old runs are kept, marked superseded); without it such a sweep stops",
    )
    p.add_argument("--dry-run", action="store_true", help="print the trial count and keys, start nothing")
    return p


def code_version() -> str:
    """The git commit of this checkout (with -dirty for uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(defaults: SweepDefaults, argv: Sequence[str] | None = None) -> int:
    """Parse, validate, preflight, sweep, report. Returns the process exit code."""
    return guarded(_run, defaults, build_parser(defaults).parse_args(argv))


def guarded(
    run: Callable[[SweepDefaults, argparse.Namespace], int], defaults: SweepDefaults, args: argparse.Namespace
) -> int:
    """``run(defaults, args)``, with a :class:`RayexpError` printed as one clear line and exit code 2."""
    try:
        return run(defaults, args)
    except RayexpError as exc:
        print(f"rayexp: error: {exc}", file=sys.stderr)
        return 2


def resolve_location(location: str) -> str:
    """A bucket URI as given; a local path made absolute, so Ray's workers on any node read the same place."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def check_common(args: argparse.Namespace) -> None:
    """What every sweep checks before anything else, all problems at once: the passes asked for, the
    backbone names, and every value that would fail every trial the same way once Ray had started."""
    if args.resume and args.retry_errored:
        raise RayexpError(
            "--resume and --retry-errored are separate passes: continue the interrupted trials first, then retry the errored ones"
        )
    for name in args.backbones:
        get_spec(name)
    problems = [p for p in (check(args) for check in VALUE_CHECKS) if p]
    problems += [f"--seeds: {problem}" for problem in map(seed_problem, args.seeds) if problem]
    if problems:
        raise RayexpError("bad values, nothing was started:\n" + "\n".join(f"  - {p}" for p in problems))


def _at_least(option: str, attr: str, low: float, strict: bool = False, optional: bool = True):
    """A check that ``args.<attr>`` is ``>= low`` (``> low`` when strict); None always passes when optional."""

    def check(args: argparse.Namespace) -> str | None:
        value = getattr(args, attr, None)
        if value is None and optional:
            return None
        if value is None or value < low or (strict and value == low):
            return f"{option} {value}: it must be {'>' if strict else '>='} {low:g}"
        return None

    return check


def _fp16_needs_gpu(args: argparse.Namespace) -> str | None:
    """fp16 with a grad scaler is the protocol's precision for GPUs without bf16; on the CPU every trial fails
    with it, so it is refused here (a cluster with --device gpu, or --address with GPUs, will have one)."""
    if args.precision != "fp16" or args.device == "gpu" or (args.address and args.device == "auto"):
        return None
    import torch

    if args.device == "auto" and torch.cuda.is_available():
        return None
    return "--precision fp16 needs a GPU and this sweep runs on the CPU: use bf16 or fp32 (or --device gpu on a cluster with GPUs)"


VALUE_CHECKS = (
    _at_least("--max-epochs", "max_epochs", 1, optional=False),
    _at_least("--patience", "patience", 1, optional=False),
    _at_least("--batch-size", "batch_size", 1),
    _at_least("--grace-period", "grace_period", 1, optional=False),
    _at_least("--reduction-factor", "reduction_factor", 2, optional=False),
    _at_least("--trial-time-budget", "trial_time_budget", 0, strict=True),
    _at_least("--trial-epoch-budget", "trial_epoch_budget", 1),
    _at_least("--worker-cpus", "worker_cpus", 0, strict=True),
    _at_least("--data-cpus", "data_cpus", 0, strict=True),
    _at_least("--gpus-per-trial", "gpus_per_trial", 0, strict=True, optional=False),
    _at_least("--cache-gb", "cache_gb", 0),
    _at_least("--max-concurrent", "max_concurrent", 1),
    _fp16_needs_gpu,
)


def check_writable(location: str, option: str) -> None:
    """A local folder that exists and can be written to, or can be created: tried by writing a file into it
    or into its nearest existing parent, so nothing is left behind (a bucket URI is left to its client)."""
    if is_uri(location):
        return
    folder = Path(location)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rayexp-write-test-"):
            pass
    except OSError as exc:
        raise RayexpError(
            f"{option} {location} is not a writable folder ({exc.strerror or exc}); choose one this user can write"
        ) from None


def _run(defaults: SweepDefaults, args: argparse.Namespace) -> int:
    check_common(args)
    data_dir = resolve_location(args.data_dir)
    for name in args.datasets:
        if is_uri(data_dir) or not is_prepared(data_dir, name):
            get_dataset_info(name)  # a prepared dataset of one's own needs no catalog entry
    keys = expand_grid(args.backbones, args.datasets, args.fractions, args.seeds)
    if args.dry_run:
        print(
            f"{len(keys)} trials ({len(args.backbones)} backbones x {len(args.datasets)} datasets x {len(set(args.fractions))} fractions x {len(set(args.seeds))} seeds)"
        )
        for key in keys:
            print(key)
        return 0
    cfg, tracking_uri = sweep_config(defaults, args, keys, args.datasets, data_dir)
    from rayexp.orchestrate import run_sweep

    outcome = run_sweep(cfg)
    return print_outcome(
        defaults, args, keys, tracking_uri, outcome, Path(args.out or Path("reports") / args.experiment)
    )


def sweep_config(
    defaults: SweepDefaults,
    args: argparse.Namespace,
    keys: list,
    datasets: Sequence[str],
    data_dir: str,
    fallback_to_random: bool | None = None,
):
    """Preflight (datasets, input sizes, validation rows, weights, the MLflow store), then the sweep's
    :class:`~rayexp.orchestrate.SweepConfig` and the resolved tracking URI. Nothing starts on failure."""
    from rayexp import preflight, tracking

    check_writable(resolve_location(args.storage), "--storage")
    manifests = preflight.check_datasets(datasets, data_dir)
    preflight.check_input_sizes(args.backbones, manifests)
    preflight.check_selection(keys, manifests, args.selection)
    fallback = defaults.fallback_to_random_weights if fallback_to_random is None else fallback_to_random
    weights = preflight.resolve_weights(args.backbones, args.weights_dir, fallback)
    tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.ensure_experiment(tracking_uri, args.experiment)

    from rayexp.orchestrate import SweepConfig

    storage = resolve_location(args.storage)
    cfg = SweepConfig(
        keys=keys,
        experiment=args.experiment,
        data_dir=data_dir,
        storage=storage,
        tracking_uri=tracking_uri,
        weights=weights,
        weights_dir=args.weights_dir,
        address=args.address,
        max_epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        precision=args.precision,
        selection=args.selection,
        dualopt=args.dualopt,
        normalize=args.normalize,
        augment=args.augment,
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        trial_time_budget_s=args.trial_time_budget,
        trial_epoch_budget=args.trial_epoch_budget,
        device=args.device,
        accelerator_type=args.accelerator_type,
        worker_cpus=args.worker_cpus,
        data_cpus=args.data_cpus,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        cache_gb=args.cache_gb,
        compile=args.compile,
        log_models=args.log_models,
        resume=args.resume,
        retry_errored=args.retry_errored,
        retrain_changed=args.retrain_changed,
        code_version=code_version(),
        extra_tags=dict(defaults.extra_tags),
        data_fingerprints={name: manifest["fingerprint"] for name, manifest in manifests.items()},
    )
    return cfg, tracking_uri


def print_outcome(
    defaults: SweepDefaults, args: argparse.Namespace, keys: list, tracking_uri: str, outcome: dict, out_dir: Path
) -> int:
    """Build the sweep's report, print its table, what stopped early and what errored; the exit code."""
    from rayexp import report, tracking
    from rayexp.results import current_results

    out_dir = Path(out_dir).expanduser().resolve()
    paths = report.build_report(tracking_uri, args.experiment, out_dir, expected=keys)
    rows, left_out = current_results(tracking.fetch_trial_results(tracking_uri, args.experiment))
    summaries = report.summarize(rows, expected=keys)
    summaries = [s for s in summaries if (s.backbone, s.dataset, s.fraction) in {k.cell for k in keys}]
    print("\n" + report.markdown_table(summaries))
    for note in left_out:
        print(f"Left out: {note}")
    print(f"Report: {paths['html']} (also report.md, summary.csv, figures) in {out_dir}")
    print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri}   (experiment {args.experiment!r})")
    if outcome.get("stopped"):
        print(f"\n{len(outcome['stopped'])} trial(s) stopped early (their best so far is reported):")
        for key, epoch, acc, reason in outcome["stopped"]:
            print(f"  {key}: stopped early by the {reason} after epoch {epoch}, best monitored accuracy {acc}")
    if outcome.get("not_started"):
        print(f"\n{len(outcome['not_started'])} trial(s) never started: the sweep's budget was spent first")
    if outcome["errored"]:
        print(f"\n{len(outcome['errored'])} trial(s) errored:", file=sys.stderr)
        for key, message, path in outcome["errored"]:
            print(f"  {key}: {message}\n    logs: {path}", file=sys.stderr)
        return 1
    return 0
