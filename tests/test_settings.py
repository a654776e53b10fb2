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
    plan = SweepPlan(DEFAULTS.settings, (), {}, {})
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
