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
from pathlib import Path
from typing import Sequence

from rayexp import tracking
from rayexp.cli import SweepDefaults, build_parser, check_common, guarded, print_outcome, resolve_location, sweep_config
from rayexp.errors import RayexpError
from rayexp.fingerprint import short
from rayexp.grid import TrialKey, expand_grid

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
    p = build_parser(defaults, with_datasets=False)
    g = p.add_argument_group("your data")
    g.add_argument(
        "--source",
        required=True,
        help="a folder of <class>/ images, a folder with train/ and test/ class folders, or a CSV of path,label[,split]",
    )
    g.add_argument(
        "--name", default=None, help="the dataset's name (default: from --source); the experiment is my-data-<name>"
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
        help="training resolution (the paper's 256x256)",
    )
    g.add_argument(
        "--accept-warnings",
        action="store_true",
        help="run despite serious data-check problems (unreadable files are then skipped)",
    )
    g.add_argument(
        "--allow-random-init",
        action="store_true",
        help="train from random init where pretrained weights cannot be had (recorded as weights=random)",
    )
    g.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="a CSV --source's image paths may lie outside the CSV's folder (by default they must not)",
    )
    g.add_argument(
        "--workers", type=int, default=None, help="processes for the data check and preparation (default: all cores)"
    )
    b = p.add_argument_group("budget mode (with --scheduler asha: successive halving across the backbones)")
    b.add_argument(
        "--budget-gpu-hours",
        type=float,
        default=None,
        help="stop the whole sweep once this many device-hours (GPU, or CPU without one) are spent",
    )
    b.add_argument(
        "--budget-epochs",
        type=int,
        default=None,
        help="stop the whole sweep once this many epochs, summed over trials, are run",
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
    return guarded(run, defaults, build_my_data_parser(defaults).parse_args(argv))


def run(defaults: SweepDefaults, args: argparse.Namespace) -> int:
    from rayexp.data import preparation
    from rayexp.data.check import check_source

    if (args.budget_gpu_hours is not None and args.budget_gpu_hours <= 0) or (
        args.budget_epochs is not None and args.budget_epochs < 1
    ):
        raise RayexpError("--budget-gpu-hours must be > 0 and --budget-epochs at least 1")
    check_common(args)
    name = args.name or dataset_name(args.source)
    chosen_experiment = bool(args.experiment)
    args.experiment = args.experiment or f"my-data-{name}"
    out_dir = Path(args.out or name).expanduser().resolve()
    keys = ordered_keys(args.backbones, name, args.fractions, args.seeds)
    if args.dry_run:
        print(
            f"{len(keys)} trials ({len(args.backbones)} backbones x {len(set(args.fractions))} fractions x {len(set(args.seeds))} seeds) on {name}"
        )
        for key in keys:
            print(key)
        return 0

    info, source = preparation.load_user_source(
        name, args.source, args.domain, tuple(args.input_size), allow_outside=args.allow_outside_paths
    )
    print(f"[rayexp] checking {len(source.records)} images of {name} in {args.source} ...", flush=True)
    check = check_source(
        source,
        name=name,
        seed=SPLIT_SEED,
        input_size=info.input_size,
        fractions=args.fractions,
        selection=args.selection,
        workers=args.workers,
    )
    lines = check.lines()
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_check.txt").write_text("\n".join(lines) + "\n")
    (out_dir / "data_check.json").write_text(json.dumps(check.to_dict(), indent=1))
    serious = check.serious()
    if serious and not args.accept_warnings:
        raise RayexpError(
            f"the data check found {len(serious)} serious problem(s) in {args.source} ({', '.join(p.kind for p in serious)}; "
            f"listed above and in {out_dir / 'data_check.txt'}): fix them, or pass --accept-warnings to run anyway. Nothing was trained."
        )
    if serious:
        print(f"[rayexp] --accept-warnings: going on despite {len(serious)} serious problem(s)", flush=True)

    data_dir = resolve_location(args.data_dir)
    manifest = preparation.prepare_user_source(
        info, source, data_dir, seed=SPLIT_SEED, skip_corrupt=args.accept_warnings, workers=args.workers
    )
    print(preparation.summary(manifest, data_dir), flush=True)
    if not chosen_experiment:
        args.experiment = experiment_for(
            tracking.resolve_tracking_uri(args.tracking_uri), args.experiment, manifest["fingerprint"]
        )

    cfg, tracking_uri = sweep_config(defaults, args, keys, [name], data_dir, fallback_to_random=args.allow_random_init)
    cfg.budget_device_hours, cfg.budget_epochs = args.budget_gpu_hours, args.budget_epochs
    cfg.extra_tags = {**cfg.extra_tags, "tool": "my_data"}

    from rayexp import recommend
    from rayexp.orchestrate import run_sweep

    outcome = run_sweep(cfg)
    check_record = {**check.to_dict(), "lines": lines}
    paths = recommend.build_recommendation(
        tracking_uri, args.experiment, name, manifest["domain"], out_dir, expected=keys, check=check_record
    )
    code = print_outcome(defaults, args, keys, tracking_uri, outcome, out_dir / "report")
    print(f"\n# Which backbone for {name}?\n{json.loads(paths['json'].read_text())['verdict']}")
    print(f"Recommendation: {paths['html']} (also recommendation.md, ranking.csv) in {out_dir}")
    return code
