"""Backbone names that cannot lie: the weights enum named must be the model's own, every spelling of one network
has one name (the trial key's and the MLflow runs'), two spellings of one network in a sweep are refused, and
``--list-backbones`` never starts a sweep nor lists nothing in silence. All through the real torchvision/timm
registries and the sweeps' real command lines (``--dry-run``: no Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rayexp.backbones import canonical_name, get_spec, sweep_backbones
from rayexp.cli import build_parser, check_common, main, settings_from
from rayexp.errors import RayexpError
from tests.conftest import REPO
from tests.test_sweep_e2e import DEFAULTS

RESNET50 = "torchvision:resnet50"


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "torchvision:resnet18@ResNet50_Weights.IMAGENET1K_V1",
            r"ResNet50_Weights is not the weights enum of resnet18; resnet18's is ResNet18_Weights: "
            r"ResNet18_Weights\.IMAGENET1K_V1",
        ),
        (
            "torchvision:resnet50@Garbage.IMAGENET1K_V2",
            r"Garbage is not the weights enum of resnet50; resnet50's is ResNet50_Weights: "
            r"ResNet50_Weights\.IMAGENET1K_V1, ResNet50_Weights\.IMAGENET1K_V2 \(DEFAULT is IMAGENET1K_V2\)",
        ),
        ("torchvision:resnet50@", r"no weights after '@'; name them as torchvision:resnet50@ResNet50_Weights\."),
        ("torchvision:resnet50@ResNet50_Weights.X.IMAGENET1K_V1", "ResNet50_Weights.X is not the weights enum"),
    ],
)
def test_a_weights_enum_other_than_the_models_own_is_refused(name, message):
    with pytest.raises(RayexpError, match=message):
        get_spec(name)
    with pytest.raises(RayexpError, match=message):
        canonical_name(name)


@pytest.mark.parametrize(
    "name, canonical",
    [
        (RESNET50, RESNET50),
        ("torchvision:resnet50@ResNet50_Weights.DEFAULT", RESNET50),
        ("torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V2", RESNET50),  # what DEFAULT points to
        ("torchvision:resnet50@DEFAULT", RESNET50),
        ("torchvision:resnet50@IMAGENET1K_V1", "torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1"),
        ("torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1", "torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1"),
        ("timm:resnet18.a1_in1k", "timm:resnet18"),  # timm's default tag for resnet18
        ("timm:resnet18.tv_in1k", "timm:resnet18.tv_in1k"),
        ("resnet50", "resnet50"),  # the registry's names are their own
        ("torchvision:resnet50@ResNet50_Weights.DEFAULT+random", "torchvision:resnet50+random"),
        ("torchvision:resnet50+random+random", "torchvision:resnet50+random"),
        # from random init the weights are never loaded, and V1's input rules are the default's: one network
        ("torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1+random", "torchvision:resnet50+random"),
        ("timm:resnet18.tv_in1k+random", "timm:resnet18.tv_in1k+random"),  # timm builds from the tag's config
    ],
)
def test_every_spelling_of_one_network_has_one_name(name, canonical):
    assert canonical_name(name) == canonical
    assert canonical_name(canonical) == canonical
    given, named = get_spec(name), get_spec(canonical)
    assert (given.builder, given.random_init) == (named.builder, named.random_init)
    if not given.random_init:
        assert (given.weights, given.weights_file) == (named.weights, named.weights_file)


def test_other_weights_of_one_architecture_stay_apart():
    v1 = canonical_name("torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1")
    assert v1 != canonical_name(RESNET50)
    assert get_spec(v1).imagenet_top1 == 76.13 and get_spec(RESNET50).imagenet_top1 == 80.858
    names, notes = sweep_backbones([RESNET50, v1, "timm:resnet18", "timm:resnet18.tv_in1k", "resnet50+random"])
    assert names == [RESNET50, v1, "timm:resnet18", "timm:resnet18.tv_in1k", "resnet50+random"] and notes == []


@pytest.mark.parametrize(
    "names, message",
    [
        (  # the registry's resnet50 is torchvision's resnet50 with its default weights
            ["resnet50", RESNET50],
            r"resnet50 and torchvision:resnet50 in --backbones train the same network \(resnet50 from "
            r"ResNet50_Weights\.IMAGENET1K_V2\): the sweep would train it twice under two names; drop one of them",
        ),
        (
            [RESNET50, "torchvision:resnet50@ResNet50_Weights.DEFAULT"],
            r"torchvision:resnet50 and torchvision:resnet50@ResNet50_Weights\.DEFAULT in --backbones are both "
            r"torchvision:resnet50 .*drop one of them",
        ),
        (
            ["resnet50+random", "torchvision:resnet50@IMAGENET1K_V1+random"],
            r"resnet50\+random and torchvision:resnet50@IMAGENET1K_V1\+random in --backbones train the same "
            r"network \(resnet50 from random init\)",
        ),
        (["timm:resnet18.a1_in1k", "timm:resnet18"], r"are both timm:resnet18 .*drop one of them"),
    ],
)
def test_two_spellings_of_one_network_are_refused_naming_both(names, message):
    with pytest.raises(RayexpError, match=message):
        sweep_backbones(names)


def test_every_bad_name_of_a_sweep_is_named_at_once():
    with pytest.raises(RayexpError) as info:
        sweep_backbones(["resnet51", "resnet50", RESNET50, "torchvision:resnet18@ResNet50_Weights.IMAGENET1K_V1"])
    message = str(info.value)
    assert message.startswith("--backbones, nothing was started:\n  - unknown backbone 'resnet51'")
    assert "resnet50 and torchvision:resnet50 in --backbones train the same network" in message
    assert "ResNet50_Weights is not the weights enum of resnet18" in message


def _dry_run(tmp_path, *extra: str) -> list[str]:
    return ["--storage", str(tmp_path / "storage"), "--dry-run", *extra]


def test_the_sweep_keys_its_trials_by_the_canonical_name_and_says_so(tmp_path, capsys):
    argv = _dry_run(tmp_path, "--backbones", "torchvision:resnet50@ResNet50_Weights.DEFAULT", "shufflenet_v2_x2_0")
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert (
        "[rayexp] torchvision:resnet50@ResNet50_Weights.DEFAULT is torchvision:resnet50 (the same weights); "
        "using that name\n" in out
    )
    assert "torchvision:resnet50/digits/0.1/0\n" in out and "@" not in out.split("using that name")[1]
    assert "2 trials (2 backbones" in out and not (tmp_path / "storage").exists()


def test_my_data_keys_its_trials_by_the_canonical_name(tmp_path, capsys):
    from rayexp.my_data import main as my_data_main
    from tests.test_my_data import DEFAULTS as MY_DATA

    argv = _dry_run(tmp_path, "--source", str(tmp_path / "photos"), "--backbones", "timm:resnet18.a1_in1k")
    assert my_data_main(MY_DATA, argv) == 0
    out = capsys.readouterr().out
    assert "timm:resnet18.a1_in1k is timm:resnet18 (the same weights); using that name" in out
    assert "timm:resnet18/photos/" in out and "timm:resnet18.a1_in1k/" not in out


def test_the_same_name_twice_trains_once_two_spellings_start_nothing(tmp_path, capsys):
    assert main(DEFAULTS, _dry_run(tmp_path, "--backbones", "resnet50", "resnet50")) == 0
    out = capsys.readouterr().out
    assert "[rayexp] resnet50 is given more than once in --backbones; it trains once" in out
    assert "1 trials (1 backbones" in out

    assert main(DEFAULTS, _dry_run(tmp_path, "--backbones", "resnet50", RESNET50)) == 2
    captured = capsys.readouterr()
    assert "resnet50 and torchvision:resnet50 in --backbones train the same network" in captured.err
    assert "drop one of them" in captured.err and "trials" not in captured.out


def test_a_checkpoint_given_under_another_spelling_still_finds_its_backbone(tmp_path):
    alias = "torchvision:resnet50@ResNet50_Weights.DEFAULT"
    args = build_parser(DEFAULTS).parse_args(["--backbones", alias, "--weights", f"{alias}=mine.pt"])
    check_common(args)
    settings = settings_from(DEFAULTS, args)
    assert settings.backbones == (RESNET50,) and settings.checkpoint_files() == {RESNET50: "mine.pt"}


def test_an_empty_list_pattern_is_refused_and_starts_no_sweep(tmp_path, capsys):
    # `--dry-run` beside it: before, '' counted as not given and the (dry) sweep ran and printed its trials
    assert main(DEFAULTS, _dry_run(tmp_path, "--list-backbones", "")) == 2
    captured = capsys.readouterr()
    assert "--list-backbones: an empty pattern ('')" in captured.err and "'timm:convnext*'" in captured.err
    assert "trials" not in captured.out


def test_a_pattern_that_matches_nothing_says_so_and_fails(capsys):
    assert main(DEFAULTS, ["--list-backbones", "xyz*"]) == 2
    captured = capsys.readouterr()
    assert "no backbone matches 'xyz*'" in captured.err and "--list-backbones alone lists" in captured.err
    assert captured.out == ""  # not a header over an empty table


def test_full_grid_with_an_empty_list_pattern_exits_2_without_a_sweep():
    """The hostile user's command, as typed: the paper's full sweep must never start from it."""
    done = subprocess.run(
        [sys.executable, "sweeps/full_grid.py", "--list-backbones", "", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "an empty pattern" in done.stderr and "trials" not in done.stdout
