import socket
import time

import pytest

from rayexp import tracking
from rayexp.errors import RayexpError
from rayexp.tracking.schema import KIND_TAG, SUPERSEDED_KIND, SUPERSEDED_TAG


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
    tracking.fail_trial_run(uri, "exp", "resnet50/digits/0.1/0", "the worker died", tags, None)
    assert tracking.trial_statuses(uri, "exp") == {"resnet50/digits/0.1/0": "FAILED"}
    again = tracking.TrialRun.open(uri, "exp", "resnet50/digits/0.1/0", tags, {"lr": 0.001, "batch_size": 64})
    assert again.run_id == run.run_id
    assert tracking.ERROR_TAG not in tracking.trial_record(uri, "exp", "resnet50/digits/0.1/0")["tags"]
    again.log_metrics({"test_acc": 0.6}, step=2)
    assert tracking.trial_statuses(uri, "exp") == {"resnet50/digits/0.1/0": "RUNNING"}
    again.finish({"best_test_acc": 0.6})
    assert tracking.trial_statuses(uri, "exp") == {"resnet50/digits/0.1/0": "FINISHED"}
    (row,) = tracking.fetch_trial_results(uri, "exp")
    assert row["best_test_acc"] == 0.6 and row["fraction"] == 0.1 and row["status"] == "FINISHED"
    assert tracking.metric_history(uri, row["run_id"], "test_acc") == [(1, 0.5), (2, 0.6)]


def test_trial_selection_finished_errored_interrupted(tmp_path):
    from rayexp.grid import expand_grid
    from rayexp.orchestrate import select_trials

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    keys = expand_grid(["resnet50"], ["dtd"], [1.0], [0, 1, 2, 3])
    cfg = _plan(uri, keys, {"resnet50": "random"})
    runs = [tracking.TrialRun.open(uri, "exp", str(k), {"seed": str(k.seed), **cfg.identity(k)}, {}) for k in keys[:3]]
    runs[0].finish({"best_test_acc": 0.5})
    tracking.fail_trial_run(uri, "exp", str(keys[1]), "boom", {}, None)  # errored; runs[2] stays RUNNING: driver killed
    with pytest.raises(RayexpError, match=r"1 trial\(s\) of experiment 'exp' were interrupted .* pass --resume"):
        select_trials(cfg)
    cfg = _plan(uri, keys, {"resnet50": "random"}, resume=True)
    todo, skipped = select_trials(cfg)
    assert [k.seed for k in todo] == [2, 3] and skipped == 2  # errored left for --retry-errored
    cfg = _plan(uri, keys, {"resnet50": "random"}, resume=True, retry_errored=True)
    todo, _ = select_trials(cfg)
    assert [k.seed for k in todo] == [1]


def _plan(uri, keys, weights, fingerprints=None, train=None, **settings):
    """The plan of a sweep of ``keys`` into experiment 'exp' of ``uri``, with ``settings`` (``train``: the
    TrainConfig's changes)."""
    from rayexp.settings import SweepPlan, SweepSettings
    from rayexp.training import TrainConfig

    return SweepPlan(
        settings=SweepSettings(experiment="exp", tracking_uri=uri, train=TrainConfig(**(train or {})), **settings),
        keys=tuple(keys),
        weights=weights,
        data_fingerprints=fingerprints or {"dtd": "sha256:" + "a" * 64},
        input_sizes={"dtd": (256, 256)},
    )


def _finished_sweep(tmp_path, weights=None, data_fingerprints=None, **changes):
    """A finished 2-seed sweep in a real MLflow store, and the plan of a new sweep with ``changes``
    (``max_epochs``, ``selection`` and ``precision`` are the TrainConfig's)."""
    from rayexp.grid import expand_grid

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    keys = expand_grid(["resnet50"], ["dtd"], [1.0], [0, 1])
    old = _plan(uri, keys, {"resnet50": "pretrained"})
    for k in keys:
        tracking.TrialRun.open(uri, "exp", str(k), {"seed": str(k.seed), **old.identity(k)}, {}).finish(
            {"best_test_acc": 0.5}
        )
    train = {k: changes.pop(k) for k in ("max_epochs", "selection", "precision") if k in changes}
    new = _plan(uri, keys, weights or {"resnet50": "pretrained"}, data_fingerprints, train=train, **changes)
    return uri, new


@pytest.mark.parametrize(
    "changes, said",
    [
        (
            {"data_fingerprints": {"dtd": "sha256:" + "b" * 64}},
            r"the data changed \(fingerprint aaaaaaaaaaaa -> bbbbbbbbbbbb\)",
        ),
        ({"max_epochs": 4}, r"the protocol changed \(max_epochs_per_phase 100 -> 4\)"),
        ({"selection": "val", "precision": "bf16"}, r"precision 'auto' -> 'bf16', selection 'test' -> 'val'"),
        ({"batch_size": 7}, r"the batch size changed \(256 -> 7\)"),
        ({"weights": {"resnet50": "random"}}, r"the weights changed \(pretrained -> random\)"),
    ],
)
def test_a_rerun_with_other_data_or_protocol_stops_naming_the_change(tmp_path, changes, said):
    from rayexp.orchestrate import select_trials

    uri, cfg = _finished_sweep(tmp_path, **changes)
    with pytest.raises(RayexpError, match=said) as error:
        select_trials(cfg)
    assert "2 trial(s) of MLflow experiment 'exp' were run from other data or settings" in str(error.value)
    assert "--experiment exp-2" in str(error.value) and "--retrain-changed" in str(error.value)
    # Same data and protocol: the finished keys count and nothing trains.
    _, same = _finished_sweep(tmp_path / "again")
    assert select_trials(same) == ([], 2)


def test_retrain_changed_supersedes_the_old_runs_and_trains_again(tmp_path):
    from rayexp.orchestrate import select_trials

    uri, cfg = _finished_sweep(tmp_path, data_fingerprints={"dtd": "sha256:" + "b" * 64}, retrain_changed=True)
    todo, skipped = select_trials(cfg)
    assert [str(k) for k in todo] == ["resnet50/dtd/1.0/0", "resnet50/dtd/1.0/1"] and skipped == 0
    assert tracking.fetch_trial_results(uri, "exp") == []  # the old runs are out of every result
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("exp").experiment_id
    old = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = '{SUPERSEDED_KIND}'")
    assert len(old) == 2 and "the data changed" in old[0].data.tags[SUPERSEDED_TAG]


def test_a_run_without_fingerprints_is_not_taken_as_done(tmp_path):
    from rayexp.grid import expand_grid
    from rayexp.orchestrate import select_trials

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    (key,) = expand_grid(["resnet50"], ["dtd"], [1.0], [0])
    tracking.TrialRun.open(uri, "exp", str(key), {"seed": "0"}, {}).finish(
        {"best_test_acc": 0.9}
    )  # an older rayexp's run
    cfg = _plan(uri, [key], {"resnet50": "random"})
    with pytest.raises(RayexpError, match="records no fingerprint"):
        select_trials(cfg)


def test_a_sqlite_stores_artifacts_go_beside_it_not_into_the_working_directory(tmp_path, monkeypatch):
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default would be ./mlruns here
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run = tracking.TrialRun.open(uri, "exp", "resnet50/neu/1.0/0", {}, {})
    run.log_text("hello", "note.txt")
    assert [p.name for p in (tmp_path / "store" / "mlartifacts" / "exp").rglob("note.txt")] == ["note.txt"]
    assert not (elsewhere / "mlruns").exists()


def test_a_store_locked_longer_than_mlflows_own_wait_is_waited_out_in_one_line_per_wait(tmp_path, capsys):
    """Another process holds the SQLite store locked for 25 s, past MLflow's 20 s busy timeout: the call waits,
    says so in one line per wait, and succeeds, with no traceback (MLflow once printed ~330 lines for this)."""
    import sqlite3
    import subprocess
    import sys
    import time

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.ensure_experiment(uri, "exp")  # the store exists, with its tables
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(25); c.execute('COMMIT')",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    run = tracking.TrialRun.open(uri, "exp", "resnet50/neu/1.0/0", {"backbone": "resnet50"}, {"batch_size": 8})
    assert time.monotonic() - started >= 20 and holder.wait(timeout=60) == 0
    captured = capsys.readouterr()
    waits = [line for line in captured.out.splitlines() if "is locked by another process; waiting for it" in line]
    assert waits and len(waits) == len(captured.out.splitlines())  # a line per wait, and nothing else
    assert "Traceback" not in captured.err + captured.out and "database is locked" not in captured.err
    assert run.run_id and sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 1
