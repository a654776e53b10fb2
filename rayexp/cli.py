"""The command line the sweeps share (``sweeps/demo.py``, ``sweeps/full_grid.py``).

Each sweep script only declares its defaults; this module parses, validates, runs the preflight,
starts the sweep and prints the report.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from rayexp import cluster_shape, options, preflight, report, tracking
from rayexp.backbones import canonical_name, get_spec, sweep_backbones
from rayexp.data.catalog import default_data_dir, get_dataset_info
from rayexp.data.shards import is_prepared, is_uri
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey, expand_grid, seed_problem
from rayexp.results import current_results, summarize
from rayexp.settings import GROUP_TITLES, TRAIN_RUNTIME, SweepPlan, SweepSettings
from rayexp.storage import storage_fault


@dataclass(frozen=True)
class SweepDefaults:
    """What distinguishes one sweep script from another: its help text and its default settings."""

    description: str
    settings: SweepSettings
    fallback_to_random_weights: bool = False
    extra_tags: dict[str, str] = field(default_factory=dict)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (unless unset, a switch, or said in the help already), and the sweep's docstring
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0 or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser(defaults: SweepDefaults, exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The sweep's command line: one argument per :class:`~rayexp.settings.SweepSettings` option (less
    ``exclude``), defaulting to the script's settings, and what only the command line has (--out, --dry-run)."""
    p = argparse.ArgumentParser(description=defaults.description, formatter_class=_HelpFormatter)
    options.add_arguments(p, defaults.settings, exclude=exclude, titles=GROUP_TITLES)
    p.add_argument("--out", default=None, help="report folder (default: reports/<experiment>)")
    p.add_argument("--dry-run", action="store_true", help="print the trial count and keys, start nothing")
    p.add_argument(
        "--list-backbones",
        nargs="?",
        const="*",
        metavar="PATTERN",
        help="list the backbones --backbones accepts (the registry, torchvision:, timm:), with parameters and "
        "ImageNet top-1, those matching PATTERN (e.g. 'timm:convnext*') if given, and exit",
    )
    p.add_argument(
        "--check-cluster",
        metavar="CLUSTER_YAML",
        help="check a Ray autoscaler config (e.g. an edited cluster.yaml) against this sweep's settings before "
        "`ray up`: whether a trial fits each node type, how many per node and at once, and the head's memory rule; "
        "starts nothing (exit 2 when a trial fits no node type)",
    )
    return p


def check_cluster(defaults: SweepDefaults, args: argparse.Namespace) -> int:
    """``--check-cluster``: the sweep's trial request against a cluster config's node types, with the code that
    checks a running cluster before Tune starts (:mod:`rayexp.cluster_shape`)."""
    config = cluster_shape.load_config(args.check_cluster)
    settings = settings_from(defaults, args)
    types = cluster_shape.node_types(config)
    use_gpu = settings.device == "gpu" or (settings.device == "auto" and any(t.resources.get("GPU") for t in types))
    lines, problems = cluster_shape.cluster_report(
        cluster_shape.trial_request(settings, use_gpu),
        config,
        settings.trial_runtime == TRAIN_RUNTIME,
        settings.max_concurrent,
    )
    print(f"{args.check_cluster}, for this sweep's settings (runtime {settings.trial_runtime}):")
    print("\n".join(lines))
    if problems:
        raise RayexpError(f"{args.check_cluster} cannot run this sweep:\n" + "\n".join(f"  - {p}" for p in problems))
    print(f"{args.check_cluster}: every trial fits")
    return 0


def print_backbones(pattern: str) -> int:
    """The ``--list-backbones`` table: every backbone's source, parameters, ImageNet top-1 (where its source
    knows it), default batch and input rule; timm's names alone when there are many (each is resolved, and its
    row filled, once the pattern narrows them to a few)."""
    from rayexp.backbones.resolve import list_available

    if not pattern.strip():  # an unset shell variable, most likely: listing everything would hide that
        raise RayexpError(
            f"--list-backbones: an empty pattern ({pattern!r}); give a pattern such as 'timm:convnext*', or none to "
            "list them all"
        )
    found = list_available(None if pattern == "*" else pattern)
    if not found:
        raise RayexpError(no_match(pattern))
    names = [x for x in found if isinstance(x, str)]
    if 0 < len(names) <= 20:
        found = [x for x in found if not isinstance(x, str)] + [get_spec(n) for n in names]
        names = []
    print(f"{'backbone':44} {'source':11} {'params':>8} {'top-1':>6} {'batch':>5}  input")
    for spec in (x for x in found if not isinstance(x, str)):
        top1 = f"{spec.imagenet_top1:.1f}" if spec.imagenet_top1 is not None else "-"
        rule = (
            f"{spec.fixed_input[0]}x{spec.fixed_input[1]} only (resized)"
            if spec.fixed_input
            else f"sides >= {spec.min_input}" + (f", multiples of {spec.multiple_of}" if spec.multiple_of > 1 else "")
        )
        print(f"{spec.name:44} {spec.origin:11} {spec.params_m:>7.1f}M {top1:>6} {spec.batch_size:>5}  {rule}")
    if names and pattern == "*":
        print(
            f"\ntimm: {len(names)} models with pretrained weights, named timm:<model>.<tag>; "
            "--list-backbones 'timm:convnext*' lists some (20 or fewer: with their rows)"
        )
    elif names:
        print(f"\n{len(names)} timm models (20 or fewer: with their rows):")
        print("\n".join(names))
    return 0


def no_match(pattern: str) -> str:
    """Why ``--list-backbones PATTERN`` listed nothing, and how to find the names: an empty table with exit 0
    reads as "no such backbones exist" where the pattern was at fault (or timm is missing)."""
    import importlib.util

    timm = "" if importlib.util.find_spec("timm") else "; timm's models are not listed: timm is not installed"
    return (
        f"no backbone matches {pattern!r} (a shell-style pattern, also matched inside names: 'convnext' finds every "
        f"name containing it){timm}; --list-backbones alone lists the registry and torchvision's, "
        "--list-backbones 'timm:*' timm's"
    )


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
    return guarded(_run, defaults, parse_quietly(build_parser(defaults), argv))


def stdout_closed() -> int:
    """Whoever read stdout went away (``--dry-run | head``): what is left to print goes nowhere, and the
    command ends quietly with success, as Unix tools do, rather than with a BrokenPipeError traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def parse_quietly(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; ``--help | head`` ends quietly too (its text is flushed here)."""
    try:
        return parser.parse_args(argv)
    except SystemExit:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            stdout_closed()
        raise


def guarded(
    run: Callable[[SweepDefaults, argparse.Namespace], int], defaults: SweepDefaults, args: argparse.Namespace
) -> int:
    """``run(defaults, args)`` (or the ``--list-backbones`` table), with a :class:`RayexpError` or a storage fault
    (:func:`rayexp.storage.storage_fault`) printed as one clear error and exit code 2, and a closed stdout
    (``| head``) ending quietly with exit code 0."""
    try:
        # `is not None`: `--list-backbones ''` is given too (and refused), never a sweep
        listing = getattr(args, "list_backbones", None)
        if listing is not None:
            code = print_backbones(listing)
        elif getattr(args, "check_cluster", None) is not None:
            code = check_cluster(defaults, args)
        else:
            code = run(defaults, args)
        sys.stdout.flush()  # here, where a closed pipe can be caught, not at the interpreter's exit
        return code
    except RayexpError as exc:
        print(f"rayexp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed()
    except OSError as exc:  # the storage failing outside a trial (Tune's own state, a report): named, no traceback
        if (fault := storage_fault(exc)) is None:
            raise
        print(f"rayexp: error: {fault}", file=sys.stderr)
        return 2


def resolve_location(location: str) -> str:
    """A bucket URI as given; a local path made absolute, so Ray's workers on any node read the same place."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def check_common(args: argparse.Namespace) -> None:
    """What every sweep checks before anything else, all problems at once: the passes asked for, the
    backbone names, and every value that would fail every trial the same way once Ray had started."""
    if args.resume and args.retry_errored:
        raise RayexpError(
            "--resume and --retry-errored are separate passes: continue the interrupted trials first, then retry "
            "the errored ones"
        )
    use_canonical_names(args)
    problems = options.problems(SweepSettings, args)
    problems += [p for p in [_fp16_needs_gpu(args)] if p]
    problems += [f"--seeds: {problem}" for problem in map(seed_problem, args.seeds) if problem]
    if problems:
        raise RayexpError("bad values, nothing was started:\n" + "\n".join(f"  - {p}" for p in problems))


def use_canonical_names(args: argparse.Namespace) -> None:
    """``--backbones`` as the sweep will name them, before any trial key is built: each name canonical (one line
    says so where it was rewritten), a name given twice kept once, two spellings of one network refused
    (:func:`rayexp.backbones.sweep_backbones`); and ``--weights BACKBONE=PATH`` named the same way, so that a
    checkpoint given under the spelling the user wrote still finds its backbone."""
    names, notes = sweep_backbones(args.backbones)
    for note in notes:
        print(f"[rayexp] {note}", flush=True)
    args.backbones = names
    if getattr(args, "checkpoints", None):
        args.checkpoints = [_canonical_checkpoint(value) for value in args.checkpoints]


def _canonical_checkpoint(value: str) -> str:
    """``BACKBONE=PATH`` with BACKBONE's canonical name; as given where BACKBONE is no backbone (the preflight
    names that one) or the value is malformed (:meth:`SweepSettings.checkpoint_files` refuses it)."""
    backbone, sep, path = value.partition("=")
    try:
        return f"{canonical_name(backbone)}{sep}{path}" if sep and backbone else value
    except RayexpError:
        return value


def _fp16_needs_gpu(args: argparse.Namespace) -> str | None:
    """fp16 with a grad scaler is the protocol's precision for GPUs without bf16; on the CPU every trial fails
    with it, so it is refused here (a cluster with --device gpu, or --address with GPUs, will have one)."""
    if args.precision != "fp16" or args.device == "gpu" or (args.address and args.device == "auto"):
        return None
    if args.device == "auto" and torch.cuda.is_available():
        return None
    return (
        "--precision fp16 needs a GPU and this sweep runs on the CPU: use bf16 or fp32 (or --device gpu on a "
        "cluster with GPUs)"
    )


def settings_from(defaults: SweepDefaults, args: argparse.Namespace) -> SweepSettings:
    """The settings of this run: the script's, with the command line's values (checked by :func:`check_common`),
    and local locations made absolute so Ray's workers on any node read the same place. The script's own
    ``--weights`` (the demo's packaged ImageNet file) apply only to the backbones the run has: ``--backbones``
    chosen without them leaves them out, where a ``--weights`` given for a backbone not in the sweep is refused."""
    settings = options.from_args(defaults.settings, args)
    if settings.checkpoints == defaults.settings.checkpoints:  # the script's own --weights: for its backbones only
        mine = tuple(c for c in settings.checkpoints if c.partition("=")[0] in settings.backbones)
        settings = replace(settings, checkpoints=mine)
    return replace(
        settings,
        data_dir=resolve_location(settings.data_dir or str(default_data_dir())),
        storage=resolve_location(settings.storage),
    )


def check_writable(location: str, option: str) -> None:
    """A local folder that exists and can be written to, or can be created (:func:`preflight.unwritable`);
    a bucket URI is left to its client."""
    if problem := preflight.unwritable(location):
        raise RayexpError(f"{option} {location} is not a writable folder ({problem}); choose one this user can write")


def _run(defaults: SweepDefaults, args: argparse.Namespace) -> int:
    check_common(args)
    settings = settings_from(defaults, args)
    for name in settings.datasets:
        if is_uri(settings.data_dir) or not is_prepared(settings.data_dir, name):
            get_dataset_info(name)  # a prepared dataset of one's own needs no catalog entry
    keys = expand_grid(settings.backbones, settings.datasets, settings.fractions, settings.seeds)
    if args.dry_run:
        print(
            f"{len(keys)} trials ({len(settings.backbones)} backbones x {len(settings.datasets)} datasets x "
            f"{len(set(settings.fractions))} fractions x {len(set(settings.seeds))} seeds)"
        )
        for key in keys:
            print(key)
        return 0
    plan = plan_sweep(defaults, settings, keys)
    # Imported here: Ray Tune/Train load in seconds, and --help, --dry-run and every preflight error need neither.
    from rayexp.orchestrate import run_sweep

    outcome = run_sweep(plan)
    return print_outcome(plan, outcome, Path(args.out or Path("reports") / settings.experiment))


def plan_sweep(
    defaults: SweepDefaults,
    settings: SweepSettings,
    keys: Sequence[TrialKey],
    fallback_to_random: bool | None = None,
    extra_tags: dict[str, str] | None = None,
) -> SweepPlan:
    """Preflight (storage, datasets, input sizes, validation rows, weights, the MLflow store), then the sweep's
    :class:`~rayexp.settings.SweepPlan`, its tracking URI resolved.

    Every check runs, whatever the others found, and all their problems are raised together as one error
    (each with its fix: for a missing dataset the command that prepares it); nothing starts on failure.
    """
    found = preflight.Problems()
    found.attempt(preflight.LOCATIONS, check_writable, settings.storage, "--storage")
    datasets = list(dict.fromkeys(k.dataset for k in keys))
    manifests, problems = preflight.dataset_problems(datasets, settings.data_dir)
    found.add(preflight.DATASETS, problems)
    found.add(preflight.INPUT_SIZES, preflight.input_size_problems(settings.backbones, manifests))
    found.add(
        preflight.SELECTION,
        preflight.selection_problems(keys, manifests, settings.train.selection),
        advice="use a larger fraction or --selection test",
    )
    fallback = defaults.fallback_to_random_weights if fallback_to_random is None else fallback_to_random
    checkpoints = found.attempt(preflight.WEIGHTS, settings.checkpoint_files) or {}
    weights, problems, random_init = preflight.weights_problems(
        settings.backbones, settings.weights_dir, fallback, checkpoints
    )
    found.add(preflight.WEIGHTS, problems)
    tracking_uri = tracking.resolve_tracking_uri(settings.tracking_uri)
    found.add(preflight.STORE, preflight.tracking_problems(tracking_uri))
    memory, memory_notes = preflight.trial_memory_check(settings, manifests)
    found.add(preflight.MEMORY, memory, advice=preflight.MEMORY_ADVICE)
    found.raise_if_any()
    tracking.ensure_experiment(tracking_uri, settings.experiment)  # creates it: only once everything else passed
    notes = preflight.input_size_notes(settings.backbones, manifests) + preflight.batch_size_notes(settings, manifests)
    for note in notes + memory_notes:
        print(f"[rayexp] note: {note}", flush=True)
    preflight.announce_random_init(random_init)
    return SweepPlan(
        settings=replace(
            settings,
            tracking_uri=tracking_uri,
            # absolute: a Train worker's working directory differs from the driver's
            checkpoints=tuple(f"{b}={Path(p).expanduser().resolve()}" for b, p in checkpoints.items()),
        ),
        keys=tuple(keys),
        weights=weights,
        data_fingerprints={name: manifest["fingerprint"] for name, manifest in manifests.items()},
        input_sizes={name: tuple(manifest["input_size"]) for name, manifest in manifests.items()},
        code_version=code_version(),
        extra_tags={**defaults.extra_tags, **(extra_tags or {})},
    )


def mlflow_hint(uri: str, experiment: str) -> str:
    """Where the sweep's runs are in MLflow's UI: the runs page of the experiment (MLflow 3 opens an
    experiment on its GenAI overview otherwise) and, for a local store, the command that serves it, with
    this environment's ``mlflow``."""
    runs = f"#/experiments/{tracking.ensure_experiment(uri, experiment)}/runs"
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {uri.rstrip('/')}/{runs}   (experiment {experiment!r})"
    beside = Path(sys.executable).parent / "mlflow"
    command = f"{beside if beside.is_file() else 'mlflow'} ui --backend-store-uri {uri}"
    return f"MLflow: {command}\n  then open http://127.0.0.1:5000/{runs}   (experiment {experiment!r})"


def print_outcome(plan: SweepPlan, outcome: dict, out_dir: Path) -> int:
    """Build the sweep's report, print its table, what stopped early and what errored; the exit code."""
    uri, experiment = plan.settings.tracking_uri, plan.settings.experiment
    out_dir = Path(out_dir).expanduser().resolve()
    paths = report.build_report(uri, experiment, out_dir, expected=plan.keys)
    rows, left_out = current_results(tracking.fetch_trial_results(uri, experiment))
    summaries = summarize(rows, expected=plan.keys)
    summaries = [s for s in summaries if (s.backbone, s.dataset, s.fraction) in {k.cell for k in plan.keys}]
    print("\n" + report.markdown_table(summaries))
    for note in left_out:
        print(f"Left out: {note}")
    print(f"Report: {paths['html']} (also report.md, summary.csv, figures) in {out_dir}")
    print(mlflow_hint(uri, experiment))
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
