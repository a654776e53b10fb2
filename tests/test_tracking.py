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


def test_trial_selection_finished_errored_interrupted(tmp_path):
    from rayexp.grid import expand_grid
    from rayexp.orchestrate import SweepConfig, select_trials

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    keys = expand_grid(["resnet50"], ["dtd"], [1.0], [0, 1, 2, 3])
    runs = [tracking.TrialRun.open(uri, "exp", str(k), {"seed": str(k.seed)}, {}) for k in keys[:3]]
    runs[0].finish({"best_test_acc": 0.5})
    runs[1].fail()  # errored; runs[2] stays RUNNING: its driver was killed
    cfg = SweepConfig(keys=keys, experiment="exp", data_dir="", storage="", tracking_uri=uri, weights={})
    with pytest.raises(RayexpError, match=r"1 trial\(s\) of experiment 'exp' were interrupted .* pass --resume"):
        select_trials(cfg)
    cfg.resume = True
    todo, skipped = select_trials(cfg)
    assert [k.seed for k in todo] == [2, 3] and skipped == 2  # errored left for --retry-errored
    cfg.retry_errored = True
    todo, _ = select_trials(cfg)
    assert [k.seed for k in todo] == [1]
