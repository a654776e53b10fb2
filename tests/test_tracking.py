import socket
import time

import pytest

from rayexp import tracking
from rayexp.errors import RayexpError


def test_tracking_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    assert tracking.resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_tracking_uri("runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    assert tracking.resolve_tracking_uri("http://head:5000") == "http://head:5000"


def test_unreachable_server_fails_fast_with_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    start = time.monotonic()
    with pytest.raises(RayexpError, match=rf"http://127.0.0.1:{port} does not answer.*mlflow server"):
        tracking.ensure_experiment(f"http://127.0.0.1:{port}", "x")
    assert time.monotonic() - start < 10


def test_one_run_per_key_continued_not_duplicated(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.ensure_experiment(uri, "exp")
    tags = {"backbone": "resnet50", "dataset": "digits", "domain": "d", "fraction": "0.1", "seed": "0"}
    run = tracking.TrialRun.open(uri, "exp", "resnet50/digits/0.1/0", tags, {"lr": 0.001})
    run.log_metrics({"test_acc": 0.5}, step=1)
    run.fail()  # e.g. the worker died
    again = tracking.TrialRun.open(uri, "exp", "resnet50/digits/0.1/0", tags, {"lr": 0.001, "batch_size": 64})
    assert again.run_id == run.run_id
    again.log_metrics({"test_acc": 0.6}, step=2)
    assert tracking.finished_keys(uri, "exp") == set()
    again.finish({"best_test_acc": 0.6})
    assert tracking.finished_keys(uri, "exp") == {"resnet50/digits/0.1/0"}
    (row,) = tracking.fetch_trial_results(uri, "exp")
    assert row["best_test_acc"] == 0.6 and row["fraction"] == 0.1 and row["status"] == "FINISHED"
    assert tracking.metric_history(uri, row["run_id"], "test_acc") == [(1, 0.5), (2, 0.6)]
