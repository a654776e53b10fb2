"""The commands' output piped into a reader that stops early (``--dry-run | head``): a quiet exit 0, no
BrokenPipeError traceback. Real processes, the pipe's reading end closed before they write."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _into_a_closed_pipe(*argv: str) -> tuple[int, str]:
    """Run ``python argv`` with its stdout a pipe whose reading end is already closed (so its very first write
    fails, however small the output); its exit code and stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, *argv], cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["sweeps/full_grid.py", "--dry-run"],  # ~50 kB: fails while printing
        ["sweeps/my_data.py", "--source", "no/such/folder", "--dry-run"],  # 33 lines: fails at the flush
        ["sweeps/demo.py", "--help"],
        ["datasets/prepare.py", "--list"],
    ],
)
def test_a_closed_pipe_ends_quietly_with_success(argv):
    code, err = _into_a_closed_pipe(*argv)
    assert code == 0 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_head_in_a_shell_pipeline_as_the_readme_shows_it():
    done = subprocess.run(
        f"set -o pipefail; {sys.executable} sweeps/full_grid.py --dry-run | head -1",
        shell=True,
        executable="/bin/bash",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("1980 trials") and done.stderr == "", done.stderr
