"""``sweeps/report.py`` on a name that is not there: it names the experiments the store has and creates nothing
(no report folder, no experiment, no SQLite file). The real command, on a real MLflow store."""

import subprocess
import sys
from pathlib import Path

from rayexp import tracking

REPO = Path(__file__).resolve().parents[1]


def _report(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "sweeps/report.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_mistyped_experiment_lists_the_existing_ones_and_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, "demo")
    done = _report("--experiment", "dem0", "--tracking-uri", uri, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "has no experiment 'dem0'; its experiments: demo" in done.stderr
    assert not (tmp_path / "out").exists()
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_experiment_by_name("dem0") is None


def test_a_store_that_is_not_there_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    done = _report("--experiment", "demo", "--tracking-uri", uri, "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "there is no MLflow store at" in done.stderr
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()
