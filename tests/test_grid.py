import subprocess
import sys

import pytest

from rayexp.errors import RayexpError
from rayexp.grid import TrialKey, expand_grid, format_fraction, validate_fraction
from tests.conftest import REPO


def test_key_text_and_round_trip():
    key = TrialKey("convnext_tiny", "cifar10", 0.1, 2)
    assert str(key) == "convnext_tiny/cifar10/0.1/2"
    assert TrialKey.parse(str(key)) == key
    assert key.dirname == "convnext_tiny-cifar10-0.1-2"
    assert str(TrialKey("resnet50", "dtd", 1.0, 0)) == "resnet50/dtd/1.0/0"
    assert format_fraction(0.01) == "0.01"


@pytest.mark.parametrize("text", ["a/b/0.1", "a/b/zero/1", "a/b/0.1/x", "a/b/0/1"])
def test_bad_keys_are_refused(text):
    with pytest.raises(RayexpError):
        TrialKey.parse(text)


def test_expand_grid_counts_order_and_dedup():
    keys = expand_grid(["resnet50", "swin_t"], ["dtd", "neu"], [1.0, 0.1, 0.1], [0, 1, 2])
    assert len(keys) == 2 * 2 * 2 * 3
    assert len(set(keys)) == len(keys)
    # the seeds of one cell are adjacent
    assert [k.seed for k in keys[:3]] == [0, 1, 2] and len({k.cell for k in keys[:3]}) == 1


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(RayexpError, match=r"outside \(0, 1\]"):
        validate_fraction(fraction)


def test_empty_grid_axis_is_refused():
    with pytest.raises(RayexpError, match="no seeds"):
        expand_grid(["resnet50"], ["dtd"], [1.0], [])


def test_full_grid_dry_run_prints_the_papers_1980_keys_without_ray():
    out = subprocess.run(
        [sys.executable, "sweeps/full_grid.py", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1980 trials (11 backbones x 20 datasets x 3 fractions x 3 seeds)")
    keys = [TrialKey.parse(line) for line in lines[1:]]
    assert len(keys) == 1980 == len(set(keys))
    assert "convnext_tiny/cifar10/0.1/2" in lines
    assert "Ray" not in out.stderr  # nothing started


def test_seeds_outside_numpys_range_are_refused():
    with pytest.raises(RayexpError, match=r"seed -1 is outside 0..4294967295"):
        expand_grid(["resnet50"], ["dtd"], [1.0], [0, -1])
    with pytest.raises(RayexpError, match=r"seed 4294967296 is outside"):
        expand_grid(["resnet50"], ["dtd"], [1.0], [2**32])
