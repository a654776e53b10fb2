"""``sweeps/my_data.py``: from a user's image folder to a recommendation, in one command.

Check, prepare, sweep, recommend. The data check runs on the very split preparation writes, before any
shard is written or any GPU is held; the sweep is the shared sweep of :mod:`rayexp.cli` over one
dataset (selection on a held-out validation split by default); the recommendation is
:mod:`rayexp.recommend`'s, beside the sweep's usual report.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from rayexp import preflight, publish, recommend, tracking
from rayexp.cli import (
    SweepDefaults,
    build_parser,
    check_common,
    guarded,
    parse_quietly,
    plan_sweep,
    print_outcome,
    settings_from,
)
from rayexp.data import preparation
from rayexp.data.check import check_source
from rayexp.errors import RayexpError
from rayexp.fingerprint import short
from rayexp.grid import TrialKey, expand_grid
from rayexp.settings import SweepPlan, SweepSettings

SPLIT_SEED = 0  # the stratified split of a folder without train/ and test/: checked and written alike
KNOWN_DOMAINS = (
    "natural",
    "medical",
    "astronomy",
    "remote sensing",
    "plant",
    "texture",
    "surface defect",
    "handwriting",
)


def build_my_data_parser(defaults: SweepDefaults) -> argparse.ArgumentParser:
    p = build_parser(defaults, exclude=("datasets",))
    g = p.add_argument_group("your data")
    g.add_argument(
        "--source",
        help="(required) a folder of <class>/ images, a folder with train/ and test/ class folders, or a CSV of "
        "path,label[,split]",
    )
    g.add_argument(
        "--name",
        default=None,
        help="the dataset's name: letters, digits, '_' and '-' (default: from --source's folder or CSV name)",
    )
    g.add_argument(
        "--domain",
        default="custom",
        help=f"the domain, for the paper's prior ({', '.join(KNOWN_DOMAINS)}; anything else gets its general advice)",
    )
    g.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=[256, 256],
        metavar=("H", "W"),
        help="training resolution, height and width (default: 256 256, the paper's)",
    )
    g.add_argument(
        "--accept-warnings",
        action="store_true",
        help="go on despite SERIOUS data-check problems, which otherwise stop the run (the same image in train "
        "and test, a class too small to train or test on, unreadable files, which are then skipped): the "
        "accuracies may then be inflated or unreliable",
    )
    g.add_argument(
        "--allow-random-init",
        action="store_true",
        help="train from random init where pretrained weights cannot be had (recorded as weights=random; the "
        "numbers are then not ImageNet fine-tuning results); without it, missing weights stop the run before any "
        "image is read",
    )
    g.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="a CSV --source's image paths may lie outside the CSV's folder (by default they must not)",
    )
    g.add_argument(
        "--workers", type=int, default=None, help="processes for the data check and preparation (default: all cores)"
    )
    w = p.add_argument_group("the winner")
    w.add_argument(
        "--register",
        metavar="NAME",
        default=None,
        help="register the recommended backbone's best seed as a servable MLflow model under this name (default: "
        "<dataset>-<backbone>); none is registered when no backbone beat chance",
    )
    w.add_argument("--no-register", action="store_true", help="register no model")
    w.add_argument(
        "--new-label-set",
        action="store_true",
        help="register the winner as a new version of --register's name even though that name's latest version "
        "classifies other classes (by default refused before training: clients of models:/NAME/latest would "
        "switch label sets without a word)",
    )
    for action in p._actions:  # what differs from the sweeps' options of the same name
        if action.dest == "out":
            action.help = (
                "folder of the recommendation, the data check and the sweep's report/ (default: reports/<experiment>)"
            )
        elif action.dest == "experiment":
            action.help = (
                "MLflow experiment and Tune run name (default: my-data-<name>, or my-data-<name>-<fingerprint> once "
                "the images changed)"
            )
    return p


def dataset_name(source: str) -> str:
    """A dataset name from a folder or CSV path: letters, digits, '_' and '-'."""
    stem = Path(source).expanduser().resolve()
    stem = stem.parent.name if stem.suffix.lower() == ".csv" and stem.stem in ("labels", "data", "index") else stem.stem
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-") or "my_data"
    return name.lower()


def ordered_keys(
    backbones: Sequence[str], dataset: str, fractions: Sequence[float], seeds: Sequence[int]
) -> list[TrialKey]:
    """Seed-major order: every backbone gets its first seed (at the largest fraction) before any gets a
    second, so a budget that runs out leaves a ranking of all backbones, not three seeds of a few."""
    keys = expand_grid(backbones, [dataset], fractions, seeds)
    return sorted(keys, key=lambda k: (k.seed, -k.fraction, list(backbones).index(k.backbone)))


def experiment_for(uri: str, experiment: str, data_fingerprint: str) -> str:
    """``experiment``, or a new one named after the data's fingerprint when ``experiment`` holds runs of
    other data: the images changed, so the old results answer another question and must not be reused or
    mixed in. The same images again find their experiment again."""
    tracking.ensure_experiment(uri, experiment)
    found = {record["tags"].get(tracking.DATA_TAG) for record in tracking.trial_records(uri, experiment).values()}
    if not found or found == {data_fingerprint}:
        return experiment
    other = f"{experiment}-{short(data_fingerprint)[:8]}"
    print(
        f"[rayexp] experiment {experiment!r} holds results of other images than these (the folder changed): "
        f"this data's results go to experiment {other!r}",
        flush=True,
    )
    return other


def main(defaults: SweepDefaults, argv: Sequence[str] | None = None) -> int:
    return guarded(run, defaults, parse_quietly(build_my_data_parser(defaults), argv))


def run(defaults: SweepDefaults, args: argparse.Namespace) -> int:
    if not args.source:  # not argparse's required=True: --list-backbones needs no data
        raise RayexpError("--source is required: a folder of <class>/ images, train/ and test/ folders, or a CSV")
    check_common(args)
    if args.register is not None:
        if args.no_register:
            raise RayexpError("--register and --no-register contradict each other; give one")
        tracking.check_model_name(args.register)  # before anything is read or trained
    name = args.name or dataset_name(args.source)
    settings = settings_from(defaults, args)
    chosen_experiment = bool(settings.experiment)
    settings = replace(settings, experiment=settings.experiment or f"my-data-{name}", datasets=(name,))
    keep_weights = settings.keep_best_weights  # asked for: kept after the winner is registered too
    if not args.no_register:  # every finished trial's best weights, until the winner is known
        settings = replace(settings, keep_best_weights=True)
    keys = ordered_keys(settings.backbones, name, settings.fractions, settings.seeds)
    if args.dry_run:
        print(
            f"{len(keys)} trials ({len(settings.backbones)} backbones x {len(set(settings.fractions))} fractions x "
            f"{len(set(settings.seeds))} seeds) on {name}"
        )
        for key in keys:
            print(key)
        return 0
    # Before any image is read (checking and preparing take minutes on a large folder): what would stop
    # the sweep afterwards whatever the data, all at once.
    pending = preflight.before_data(settings, args.allow_random_init)  # weights: listed with the data check's
    uri = tracking.resolve_tracking_uri(settings.tracking_uri)
    # Held from before the check to the end: a second run with the same name would prepare the dataset again
    # under this one's trials, and write over its report.
    with tracking.acquire_sweep_lock(uri, settings.experiment, resume=settings.resume) as lock:
        return _locked(defaults, args, settings, name, keys, chosen_experiment, keep_weights, lock, pending)


DATA_VERSION = "data_version.json"  # beside a recommendation: the images it answers for


def _out_dir(args: argparse.Namespace, experiment: str, fingerprint: str | None = None) -> Path:
    """``--out``, else ``reports/<experiment>``: one folder per data version, as experiments are. A folder that
    holds the recommendation of other images (``fingerprint`` differs from its :data:`DATA_VERSION`) is never
    written over: ``--out`` is then refused, and the default becomes ``reports/<experiment>-<fingerprint>``."""
    out = Path(args.out or Path("reports") / experiment).expanduser().resolve()
    try:
        held = json.loads((out / DATA_VERSION).read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        held = None
    if fingerprint is None or held is None or held == fingerprint:
        return out
    if args.out:
        raise RayexpError(
            f"--out {out} holds the recommendation for other images (data fingerprint {short(held)}; these are "
            f"{short(fingerprint)}), which is never written over: choose another --out, or delete that folder"
        )
    other = out.with_name(f"{out.name}-{short(fingerprint)[:8]}")
    print(f"[rayexp] {out} holds the recommendation for other images: this one goes to {other}", flush=True)
    return other


def _locked(
    defaults: SweepDefaults,
    args: argparse.Namespace,
    settings: SweepSettings,
    name: str,
    keys: Sequence[TrialKey],
    chosen_experiment: bool,
    keep_weights: bool,
    lock: tracking.SweepLock,
    pending: preflight.Problems,
) -> int:
    """Everything after the lock of ``settings.experiment`` (the dataset's base experiment) is held: check,
    prepare, sweep (in the same lock, or the data version's own experiment's), register, recommend."""
    uri = tracking.resolve_tracking_uri(settings.tracking_uri)
    check, lines, manifest = check_and_prepare(args, settings, name, _out_dir(args, settings.experiment), pending)
    if not chosen_experiment:
        settings = replace(settings, experiment=experiment_for(uri, settings.experiment, manifest["fingerprint"]))
    out_dir = _out_dir(args, settings.experiment, manifest["fingerprint"])
    if not args.no_register:  # a name that cannot take this label set: said before anything is trained
        label_set_problems(uri, args, settings.backbones, manifest)
    write_check(out_dir, check, lines)
    plan = plan_sweep(
        defaults, settings, keys, fallback_to_random=args.allow_random_init, extra_tags={"tool": "my_data"}
    )
    # Imported here: Ray Tune/Train load in seconds, and the data check and every preflight error need neither.
    from rayexp.orchestrate import run_sweep

    outcome = run_sweep(plan, held=lock)
    uri = plan.settings.tracking_uri
    use = None if args.no_register else register_winner(plan, name, manifest["domain"], keys, args)
    if not keep_weights and (use is not None or args.no_register):
        publish.forget_best_weights(plan.settings.storage, plan.settings.experiment, keys)
    check_record = {**check.to_dict(), "lines": lines}
    paths = recommend.build_recommendation(
        uri, settings.experiment, name, manifest["domain"], out_dir, expected=keys, check=check_record, use=use or None
    )
    (out_dir / DATA_VERSION).write_text(
        json.dumps({"dataset": name, "data_fingerprint": manifest["fingerprint"], "experiment": settings.experiment})
    )
    code = print_outcome(plan, outcome, out_dir / "report")
    print(f"\n# Which backbone for {name}?\n{json.loads(paths['json'].read_text())['verdict']}")
    if use:
        print("\n# Use the winner\n" + "\n".join(use))
    print(f"Recommendation: {paths['html']} (also recommendation.md, ranking.csv) in {out_dir}")
    return code


def label_set_problems(uri: str, args: argparse.Namespace, backbones: Sequence[str], manifest: dict) -> None:
    """Refuse, before training, a registered name whose latest version classifies other classes than this data's:
    ``--register``'s, or the default name of every backbone that could win. ``--new-label-set`` allows it."""
    if args.new_label_set:
        return
    names = [args.register] if args.register else [publish.default_model_name(manifest["name"], b) for b in backbones]
    problems = [p for n in dict.fromkeys(names) if (p := tracking.label_set_problem(uri, n, manifest["classes"]))]
    if problems:
        raise RayexpError("; ".join(problems) + ". Nothing was trained.")


def register_winner(
    plan: SweepPlan, dataset: str, domain: str, keys: Sequence[TrialKey], args: argparse.Namespace
) -> list[str] | None:
    """Register the recommendation's winner (:func:`rayexp.publish.winner_key`) under ``--register``'s name; its
    usage lines, ``[]`` when no backbone learned, None when registering failed (said, with the command that
    retries it: the weights are kept for it, and the trial's results stand: registering never changes its run)."""
    uri, experiment = plan.settings.tracking_uri, plan.settings.experiment
    key = publish.winner_key(uri, experiment, dataset, domain, keys)
    if key is None:
        print(f"[rayexp] no model registered: no backbone learned on {dataset} (none is above chance)", flush=True)
        return []
    retry = publish.retry_command(uri, experiment, key, args.register, args.new_label_set)
    try:
        model = publish.register_trial(uri, experiment, key, args.register, args.new_label_set)
    except RayexpError as exc:  # e.g. a winner stopped by ASHA or a budget: it never saved its best weights
        print(f"[rayexp] could not register {key}: {exc}\n  retry: {retry}", flush=True)
        return None
    except Exception as exc:  # the sweep's results stand; the export can be retried from the kept weights
        print(f"[rayexp] could not register {key}: {type(exc).__name__}: {exc}\n  retry: {retry}", flush=True)
        return None
    return publish.usage_lines(model, uri)


DATA_CHECK = "the data check found serious problems, nothing was prepared or trained"


def write_check(out_dir: Path, check, lines: Sequence[str]) -> None:
    """The data check's ``data_check.txt`` and ``data_check.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_check.txt").write_text("\n".join(lines) + "\n")
    (out_dir / "data_check.json").write_text(json.dumps(check.to_dict(), indent=1))


def check_and_prepare(
    args: argparse.Namespace, settings, name: str, out_dir: Path, pending: preflight.Problems | None = None
) -> tuple:
    """The data check of ``--source`` (serious problems stop here unless ``--accept-warnings``, the check written
    to ``out_dir``, together with the ``pending`` problems the preflight found: weights), then its preparation:
    ``(check, its lines, the prepared manifest)``."""
    info, source = preparation.load_user_source(
        name, args.source, args.domain, tuple(args.input_size), allow_outside=args.allow_outside_paths
    )
    print(f"[rayexp] checking {len(source.records)} images of {name} in {args.source} ...", flush=True)
    check = check_source(
        source,
        name=name,
        seed=SPLIT_SEED,
        input_size=info.input_size,
        fractions=settings.fractions,
        selection=settings.train.selection,
        workers=args.workers,
    )
    lines = check.lines()
    print("\n".join(lines))
    serious = check.serious()
    found = pending or preflight.Problems()
    if serious and not args.accept_warnings:
        write_check(out_dir, check, lines)
        found.add(
            DATA_CHECK,
            [
                f"{len(serious)} serious problem(s) in {args.source} ({', '.join(p.kind for p in serious)}; listed "
                f"above and in {out_dir / 'data_check.txt'})"
            ],
            advice="fix them, or pass --accept-warnings to run anyway. Nothing was trained.",
        )
    found.raise_if_any()
    if serious:
        print(f"[rayexp] --accept-warnings: going on despite {len(serious)} serious problem(s)", flush=True)
    manifest = preparation.prepare_user_source(
        info, source, settings.data_dir, seed=SPLIT_SEED, skip_corrupt=args.accept_warnings, workers=args.workers
    )
    print(preparation.summary(manifest, settings.data_dir), flush=True)
    return check, lines, manifest
