"""Sweep settings declared once: the command line is derived from ``SweepSettings`` (TrainConfig nested), parses
back into the same frozen settings, and checks every value against the bound its field declares."""

import dataclasses

import pytest

from rayexp import options
from rayexp.cli import SweepDefaults, build_parser, settings_from
from rayexp.settings import SweepPlan, SweepSettings
from rayexp.training import TrainConfig

DEFAULTS = SweepDefaults(
    description="settings test",
    settings=SweepSettings(
        experiment="s",
        backbones=("resnet50",),
        datasets=("digits",),
        fractions=(0.1,),
        seeds=(0, 1),
        train=TrainConfig(max_epochs=3, patience=2),
        batch_size=8,
    ),
)


def _dests(parser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_every_option_of_the_settings_is_on_the_command_line_and_nothing_else_of_them():
    declared = {f.name for f, _ in options._options(SweepSettings)}
    assert {"max_epochs", "patience", "selection", "precision", "dualopt", "augment", "budget_device_hours"} <= declared
    assert declared <= _dests(build_parser(DEFAULTS))
    assert not {"lr", "seed", "train"} & _dests(build_parser(DEFAULTS))  # fixed protocol values stay off it
    assert "datasets" not in _dests(build_parser(DEFAULTS, exclude=("datasets",)))


def test_no_arguments_give_back_the_scripts_settings(tmp_path):
    args = build_parser(DEFAULTS).parse_args(["--data-dir", str(tmp_path), "--storage", str(tmp_path / "r")])
    settings = settings_from(DEFAULTS, args)
    assert dataclasses.replace(settings, data_dir=None, storage="ray_results") == DEFAULTS.settings


def test_flags_reach_their_fields_nested_ones_included(tmp_path):
    argv = ["--max-epochs", "7", "--no-dualopt", "--selection", "val", "--no-augment", "--gpu-per-trial", "0.5",
            "--budget-gpu-hours", "2", "--seeds", "4", "5", "--data-dir", str(tmp_path)]  # fmt: skip
    s = settings_from(DEFAULTS, build_parser(DEFAULTS).parse_args(argv))
    assert s.train == TrainConfig(max_epochs=7, patience=2, dualopt=False, selection="val")
    assert (s.augment, s.gpus_per_trial, s.budget_device_hours, s.seeds) == (False, 0.5, 2.0, (4, 5))
    assert s.data_dir == str(tmp_path.resolve())


def test_settings_and_plans_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.settings.batch_size = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.settings.train.max_epochs = 4
    plan = SweepPlan(DEFAULTS.settings, (), {}, {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.keys = ()


def test_every_bad_value_is_named_at_once_from_the_declared_bounds():
    args = build_parser(DEFAULTS).parse_args(
        ["--max-epochs", "0", "--cache-gb", "-1", "--data-cpus", "0", "--reduction-factor", "1", "--budget-epochs", "0"]
    )
    assert options.problems(SweepSettings, args) == [
        "--max-epochs 0: it must be >= 1",
        "--reduction-factor 1: it must be >= 2",
        "--budget-epochs 0: it must be >= 1",
        "--data-cpus 0.0: it must be > 0",
        "--cache-gb -1.0: it must be >= 0",
    ]


def test_a_dataset_larger_than_256x256_trains_at_the_same_pixels_per_batch():
    """The registry's batches are for 256x256: BreakHis (448x672, 4.6 times the pixels) gets each backbone's batch
    scaled down to a multiple of 8, in the run's identity (its fingerprint tags) as in the worker; ``--batch-size``
    holds everywhere; preflight says so before anything runs."""
    from rayexp import fingerprint, preflight
    from rayexp.backbones.specs import batch_size_at
    from rayexp.data.catalog import BREAKHIS_SIZE
    from rayexp.grid import TrialKey

    assert [batch_size_at(b, BREAKHIS_SIZE) for b in (512, 256, 192, 128)] == [104, 48, 40, 24]
    assert batch_size_at(256, (256, 256)) == batch_size_at(256, (32, 32)) == 256  # never larger for small images
    assert batch_size_at(16, (2048, 2048)) == 8  # at least 8

    settings = dataclasses.replace(DEFAULTS.settings, backbones=("resnet50", "mobilenet_v3_large"), batch_size=None)
    sizes = {"dtd": (256, 256), "breakhis_40x": tuple(BREAKHIS_SIZE)}
    plan = SweepPlan(settings, (), {"resnet50": "random"}, {d: "sha256:" + "a" * 64 for d in sizes}, sizes)
    batch = {d: plan.identity(TrialKey("resnet50", d, 1.0, 0))[fingerprint.BATCH_TAG] for d in sizes}
    assert batch == {"dtd": "256", "breakhis_40x": "48"}
    assert plan.batch_size(TrialKey("resnet50", "breakhis_40x", 1.0, 0)) == 48  # the worker's batch, the same
    assert settings.batch_size_for("resnet50", BREAKHIS_SIZE) == 48

    manifests = {d: {"input_size": list(size)} for d, size in sizes.items()}
    assert preflight.batch_size_notes(settings, manifests) == [
        "breakhis_40x trains at 448x672, more pixels than the 256x256 the default batches are for: the same pixels "
        "per batch instead (resnet50 256 -> 48, mobilenet_v3_large 512 -> 104)"
    ]
    explicit = dataclasses.replace(settings, batch_size=64)
    assert explicit.batch_size_for("resnet50", BREAKHIS_SIZE) == 64
    assert preflight.batch_size_notes(explicit, manifests) == []
