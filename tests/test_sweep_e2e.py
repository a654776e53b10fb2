"""End to end: the sweep command line on a real local Ray instance, real MLflow, real checkpoints."""

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from rayexp import tracking
from rayexp.cli import SweepDefaults, main
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig
from tests.conftest import both_runtimes, plant_weights

DEFAULTS = SweepDefaults(
    description="test sweep",
    settings=SweepSettings(
        experiment="e2e",
        backbones=("mobilenet_v3_large", "shufflenet_v2_x2_0"),
        datasets=("digits",),
        fractions=(0.1,),
        seeds=(0,),
        train=TrainConfig(max_epochs=2, patience=2),
        batch_size=64,
    ),
    fallback_to_random_weights=True,
)


def _predictions(client, run_id: str, folder: Path) -> list[dict]:
    """A run's test predictions artifact, as rows with int label and prediction."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    path = Path(client.download_artifacts(run_id, tracking.PREDICTIONS_ARTIFACT, str(folder)))
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["id", "label", "prediction"]
    return [{"id": r["id"], "label": int(r["label"]), "prediction": int(r["prediction"])} for r in rows]


def _assert_predictions_match(client, row: dict, data_dir: Path, folder: Path) -> None:
    """The artifact names every test image once, by id, and its accuracy is the run's best_test_acc."""
    from rayexp.data.shards import read_split

    predictions = _predictions(client, row["run_id"], folder)
    test = read_split(data_dir, "digits", "test", columns=["id", "label"])
    assert sorted(p["id"] for p in predictions) == sorted(test["id"].to_pylist())
    labels = dict(zip(test["id"].to_pylist(), test["label"].to_pylist()))
    assert all(labels[p["id"]] == p["label"] for p in predictions)
    assert sum(p["label"] == p["prediction"] for p in predictions) / len(predictions) == row["best_test_acc"]


def _argv(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--storage",
        str(tmp_path / "storage"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out",
        str(tmp_path / "report"),
        *extra,
    ]


@pytest.mark.slow
@both_runtimes
def test_tiny_sweep_logs_runs_checkpoints_and_resumes_by_key(runtime, ray_local, digits_dir, tmp_path, capsys):
    planted = plant_weights(Path(os.environ["TORCH_HOME"]), "mobilenet_v3_large")
    assert main(DEFAULTS, _argv(tmp_path, digits_dir, "--keep-checkpoints", "--runtime", runtime)) == 0
    out = capsys.readouterr()
    assert "NO PRETRAINED WEIGHTS for shufflenet_v2_x2_0" in out.err
    assert "| digits | 0.1 | mobilenet_v3_large |" in out.out
    assert "ui --backend-store-uri" in out.out and "then open http://127.0.0.1:5000/#/experiments/" in out.out

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = {r["key"]: r for r in tracking.fetch_trial_results(uri, "e2e")}
    assert set(rows) == {"mobilenet_v3_large/digits/0.1/0", "shufflenet_v2_x2_0/digits/0.1/0"}
    for key, row in rows.items():
        assert row["status"] == "FINISHED"
        history = tracking.metric_history(uri, row["run_id"], "test_acc")
        assert [step for step, _ in history] == [1, 2, 3, 4]  # DualOpt: 2 AdamW epochs (the cap), then 2 SGD
        assert [v for _, v in tracking.metric_history(uri, row["run_id"], "phase")] == [0, 0, 1, 1]
        assert row["best_test_acc"] == max(v for _, v in history)
        assert row["epochs_run"] == 4
        dirname = key.replace("/", "-")
        checkpoints = sorted((tmp_path / "storage" / "train_runs" / "e2e" / dirname).glob("checkpoint_*/checkpoint.pt"))
        assert len(checkpoints) == 1  # only the latest is kept; it holds last and best weights
        state = torch.load(checkpoints[0], weights_only=True)
        assert state["progress"]["epoch"] == 4 and set(state) >= {"model", "best_model", "optimizer", "rng"}
    assert rows["mobilenet_v3_large/digits/0.1/0"]["weights"] == "IMAGENET1K_V2"
    assert rows["shufflenet_v2_x2_0/digits/0.1/0"]["weights"] == "random"
    from mlflow.tracking import MlflowClient

    from rayexp.data.shards import load_manifest

    client = MlflowClient(uri)
    test_split = load_manifest(digits_dir, "digits")["splits"]["test"]
    for key, row in rows.items():
        _assert_predictions_match(client, row, digits_dir, tmp_path / "predictions" / key.replace("/", "-"))
        trial = client.get_run(row["run_id"])
        assert float(trial.data.params["test_majority_rate"]) == pytest.approx(
            max(test_split["class_counts"]) / test_split["rows"]
        )
        # The rows per class, for the balanced-accuracy chance test; read back in each result row.
        assert trial.data.params["test_class_rows"] == ",".join(map(str, test_split["class_counts"]))
        assert row["test_class_rows"] == trial.data.params["test_class_rows"]
        assert "AdamW" in trial.data.tags[tracking.CAPPED_TAG].split(",")  # 2 AdamW epochs can't exhaust patience 2
    run = client.get_run(rows["mobilenet_v3_large/digits/0.1/0"]["run_id"])
    assert (
        run.data.tags["dataset"] == "digits" and run.data.tags["seed"] == "0" and run.data.params["batch_size"] == "64"
    )
    assert run.data.tags["ray_trial_id"] and run.data.tags["node_ip"] and run.data.tags["accelerator"] == "cpu"
    assert run.data.params["runtime"] == runtime and run.data.tags["runtime"] == runtime
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "config.json",
        "history.csv",
        "confusion_matrix.png",
    }
    # Nested under its cell's parent, which holds the best of its seeds.
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["cell"] == "mobilenet_v3_large/digits/0.1"
    assert parent.info.run_name == "digits 10% mobilenet_v3_large"  # the fraction visible in MLflow's run list
    assert parent.data.tags["mlflow.note.content"].startswith("best of seeds ")  # the run page's description
    assert (
        parent.data.metrics["best_of_3"] == rows["mobilenet_v3_large/digits/0.1/0"]["best_test_acc"]
        and parent.data.metrics["n_seeds"] == 1
    )
    assert (tmp_path / "report" / "report.html").is_file()
    assert (tmp_path / "report" / "summary.csv").read_text().count("\n") == 3
    # weights=IMAGENET1K_V2 means the worker loaded the planted file: with RAYEXP_OFFLINE=1 it cannot download.
    assert planted

    # The same sweep again: every key has a finished run, nothing trains, no run is added.
    assert main(DEFAULTS, _argv(tmp_path, digits_dir, "--runtime", runtime)) == 0
    assert "2 of 2 trials already finished" in capsys.readouterr().out
    assert len(tracking.fetch_trial_results(uri, "e2e")) == 2

    # Another protocol, retrained in place: the key trains from the start, never from the old training's
    # finished checkpoint, which would report the old numbers under the new fingerprints.
    key = "shufflenet_v2_x2_0/digits/0.1/0"
    assert (
        main(
            DEFAULTS,
            _argv(
                tmp_path,
                digits_dir,
                *("--backbones", "shufflenet_v2_x2_0", "--max-epochs", "1", "--retrain-changed", "--runtime", runtime),
            ),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 trial(s) were run from other data or settings" in out and f"(runtime: {runtime})" in out
    (again,) = [r for r in tracking.fetch_trial_results(uri, "e2e") if r["key"] == key]
    assert again["run_id"] != rows[key]["run_id"] and again["epochs_run"] == 2
    assert [step for step, _ in tracking.metric_history(uri, again["run_id"], "test_acc")] == [1, 2]
    # The console: a line per epoch and per finished trial, no Tune tables or raw Train reports.
    assert f"[rayexp] {key}  AdamW epoch 1  loss " in out and f"[rayexp] {key} finished: 1/1 trials" in out
    assert "TrainingReport(" not in out and "Trial status" not in out and "╭" not in out
    # Finished without --keep-checkpoints: its checkpoints are gone; the other key's are kept.
    train_runs = tmp_path / "storage" / "train_runs" / "e2e"
    assert not (train_runs / key.replace("/", "-")).exists()
    assert list((train_runs / "mobilenet_v3_large-digits-0.1-0").glob("checkpoint_*/checkpoint.pt"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backbones", "resnet51"], r"unknown backbone 'resnet51'; known backbones: resnet50"),
        (["--datasets", "imagenet"], r"unknown dataset 'imagenet'; known datasets:"),
        (["--datasets", "cifar10"], r"cifar10: not prepared in .*; run: python datasets/prepare.py cifar10 --data-dir"),
        (["--fractions", "0"], r"fraction 0.0 is outside \(0, 1\]"),
        (["--fractions", "1.5"], r"fraction 1.5 is outside \(0, 1\]"),
    ],
)
def test_bad_input_fails_fast_naming_problem_and_fix(extra, message, digits_dir, tmp_path, capsys):
    assert main(DEFAULTS, _argv(tmp_path, digits_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "storage").exists()  # nothing was started


def test_full_grid_refuses_to_start_without_weights(digits_dir, tmp_path, capsys):
    strict = dataclasses.replace(DEFAULTS, fallback_to_random_weights=False)
    assert main(strict, _argv(tmp_path, digits_dir, "--backbones", "resnet50", "swin_t")) == 2
    err = capsys.readouterr().err
    assert "weights cannot be had or do not fit, nothing was started" in err
    assert "resnet50-11ad3fa6.pth" in err and "swin_t-704ceda3.pth" in err and "--weights-dir" in err
    assert not (tmp_path / "storage").exists()


@pytest.mark.slow
@both_runtimes
def test_asha_stops_a_clearly_worse_trial_early(runtime, ray_local, digits_dir, tmp_path, capsys):
    # From random init, ShuffleNetV2 learns digits within two epochs while MobileNetV3-Large's eval
    # accuracy stays at chance (its BatchNorm statistics lag): ASHA must stop MobileNet at a rung.
    argv = _argv(
        tmp_path,
        digits_dir,
        "--experiment",
        "asha",
        "--backbones",
        "shufflenet_v2_x2_0",
        "mobilenet_v3_large",
        "--fractions",
        "1.0",
        "--max-epochs",
        "4",
        "--patience",
        "4",
        "--no-dualopt",
        "--scheduler",
        "asha",
        "--grace-period",
        "1",
        "--reduction-factor",
        "2",
        "--runtime",
        runtime,
    )
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert "stopped early by the asha" in out and "mobilenet_v3_large/digits/1.0/0" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = {r["backbone"]: r for r in tracking.fetch_trial_results(uri, "asha")}
    assert rows["shufflenet_v2_x2_0"]["epochs_run"] == 4 and rows["shufflenet_v2_x2_0"]["stopped_by"] is None
    assert rows["mobilenet_v3_large"]["stopped_by"] == "asha" and rows["mobilenet_v3_large"]["epochs_run"] < 4
    assert all(r["status"] == "FINISHED" for r in rows.values())
    assert rows["shufflenet_v2_x2_0"]["best_test_acc"] > rows["mobilenet_v3_large"]["best_test_acc"] + 0.3
    from mlflow.tracking import MlflowClient

    # The stopped trial never finished by itself: its best epoch's predictions were logged when that epoch ended.
    _assert_predictions_match(MlflowClient(uri), rows["mobilenet_v3_large"], digits_dir, tmp_path / "stopped")


@pytest.mark.slow
def test_selection_val_holds_out_training_rows_and_logs_both(ray_local, digits_dir, tmp_path):
    argv = _argv(
        tmp_path,
        digits_dir,
        "--experiment",
        "val",
        "--backbones",
        "shufflenet_v2_x2_0",
        "--max-epochs",
        "2",
        "--no-dualopt",
        "--selection",
        "val",
    )
    assert main(DEFAULTS, argv) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (row,) = tracking.fetch_trial_results(uri, "val")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(row["run_id"])
    assert run.data.tags["selection"] == "val" and run.data.params["selection"] == "val"
    val = dict(tracking.metric_history(uri, row["run_id"], "val_acc"))
    test = dict(tracking.metric_history(uri, row["run_id"], "test_acc"))
    assert sorted(val) == sorted(test) == [1, 2]
    best = max(val, key=lambda e: (val[e], -e))
    assert row["best_test_acc"] == test[best] and run.data.metrics["best_val_acc"] == val[best]
    assert int(run.data.params["train_rows"]) < 149  # 10% of the 149 fraction rows held out for validation


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_logs_to_a_real_mlflow_server_over_http(ray_local, digits_dir, tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import REPO

    port = _free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        argv = _argv(
            tmp_path,
            digits_dir,
            "--experiment",
            "http",
            "--backbones",
            "shufflenet_v2_x2_0",
            "--max-epochs",
            "1",
            "--no-dualopt",
            "--keep-best-weights",
        )
        argv[argv.index("--tracking-uri") + 1] = uri
        assert main(DEFAULTS, argv) == 0
        (row,) = tracking.fetch_trial_results(uri, "http")
        assert row["status"] == "FINISHED" and row["parent_run_id"]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        assert client.get_run(row["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
        assert {a.path for a in client.list_artifacts(row["run_id"])} >= {
            "history.csv",
            "confusion_matrix.png",
            "config.json",
        }
        history = Path(client.download_artifacts(row["run_id"], "history.csv", str(tmp_path)))
        assert history.read_text().splitlines()[0].startswith("epoch,phase,")
        # the report is rebuilt from the server alone
        out = subprocess.run(
            [
                sys.executable,
                "sweeps/report.py",
                "--experiment",
                "http",
                "--tracking-uri",
                uri,
                "--out",
                str(tmp_path / "rebuilt"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "shufflenet_v2_x2_0" in (tmp_path / "rebuilt" / "summary.csv").read_text()
        assert (tmp_path / "rebuilt" / "report.html").is_file()
        # the trial registered as a servable model through the server (artifacts uploaded to it), and loaded back
        export = [sys.executable, "sweeps/export.py", "--experiment", "http", "--tracking-uri", uri]
        out = subprocess.run(
            [*export, "--key", row["key"], "--register", "http-model"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"Registered as http-model version 1 (trial {row['key']}" in out.stdout
        import mlflow
        import pandas as pd

        from rayexp.data.shards import read_split

        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model("models:/http-model/1")
        image = read_split(digits_dir, "digits", "test", columns=["image", "label"])["image"][0].as_py()
        (prediction,) = model.predict(pd.DataFrame({"image": [image]})).to_dict("records")
        assert prediction["label"] in [str(i) for i in range(10)] and len(prediction["probabilities"]) == 10
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@both_runtimes
def test_a_worker_killed_mid_trial_resumes_into_the_same_run(runtime, ray_local, digits_dir, tmp_path):
    import os
    import signal
    import threading
    import time

    from ray.util.state import list_actors

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    address = ray_local.get_runtime_context().gcs_address  # this session's instance, even beside others
    killed, errors = {}, []
    # The process that trains: Train's worker, or the light runtime's Tune trial function (its actor class is
    # ImplicitFunc, named wrap_function.<locals>.ImplicitFunc by the state API in some processes).
    trains = "RayTrainWorker" if runtime == "train" else "ImplicitFunc"

    def kill_after_first_epoch() -> None:
        # The process and the run are found first, so that the kill follows the first epoch's metric within a
        # poll (a light-runtime epoch here takes seconds).
        deadline, pid, run_id = time.time() + 240, None, None
        while time.time() < deadline and not killed:
            try:
                if pid is None:
                    alive = [
                        a
                        for a in list_actors(address=address, limit=10000)
                        if a.class_name.split(".")[-1] == trains and a.state == "ALIVE"
                    ]
                    pid = alive[0].pid if alive else None
                if run_id is None:
                    rows = tracking.fetch_trial_results(uri, "retry")
                    run_id = rows[0]["run_id"] if rows else None
                if pid and run_id and tracking.metric_history(uri, run_id, "test_acc"):
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
            except Exception as exc:  # the store or the state API not ready yet
                errors.append(repr(exc))
            time.sleep(0.2)

    # Light-runtime epochs on 10% last under a second: half the data gives the interruption time to land.
    fraction = "0.5" if runtime == "tune" else "0.1"
    thread = threading.Thread(target=kill_after_first_epoch, daemon=True)
    thread.start()
    argv = _argv(
        tmp_path,
        digits_dir,
        "--experiment",
        "retry",
        "--backbones",
        "shufflenet_v2_x2_0",
        "--fractions",
        fraction,
        "--max-epochs",
        "4",
        "--patience",
        "4",
        "--no-dualopt",
        "--runtime",
        runtime,
    )
    assert main(DEFAULTS, argv) == 0
    thread.join(timeout=5)
    assert "pid" in killed, f"the worker was never killed: {errors[-3:]}"
    rows = tracking.fetch_trial_results(uri, "retry")
    assert len(rows) == 1  # the retried trial continued its own run
    (row,) = rows
    assert row["status"] == "FINISHED" and row["epochs_run"] == 4
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(row["run_id"])
    assert run.data.tags["attempts"] == "2"
    history = (
        (Path(MlflowClient(uri).download_artifacts(row["run_id"], "history.csv", str(tmp_path))))
        .read_text()
        .splitlines()
    )
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]  # each epoch once: resumed, not redone


@pytest.mark.slow
@both_runtimes
def test_killed_driver_resumes_only_unfinished_keys(runtime, ray_local, digits_dir, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    extra = [
        "--experiment",
        "resume",
        "--backbones",
        "shufflenet_v2_x2_0",
        "--seeds",
        "0",
        "1",
        "--max-epochs",
        "3",
        "--patience",
        "3",
        "--no-dualopt",
        "--batch-size",
        "16",
        "--fractions",
        "0.1",
        "--worker-cpus",
        "1",
        "--data-cpus",
        "1",
        "--runtime",
        runtime,
    ]  # the same protocol both ways; one trial at a time, whatever the demo's own defaults
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The sweep's driver in a process of its own (with its own local Ray), killed mid-sweep like a Ctrl-C'd
    # or rebooted head: the whole process group goes, Ray's processes included.
    driver = subprocess.Popen(
        [sys.executable, "sweeps/demo.py", *_argv(tmp_path, digits_dir, *extra)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            try:
                status = tracking.trial_statuses(uri, "resume")
                second = [r for r in tracking.fetch_trial_results(uri, "resume") if r["seed"] == 1]
                if (
                    status.get("shufflenet_v2_x2_0/digits/0.1/0") == "FINISHED"
                    and second
                    and tracking.metric_history(uri, second[0]["run_id"], "test_acc")
                ):
                    break
            except Exception:  # the store is created by the driver a moment after it starts
                pass
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    assert tracking.trial_statuses(uri, "resume") == {
        "shufflenet_v2_x2_0/digits/0.1/0": "FINISHED",
        "shufflenet_v2_x2_0/digits/0.1/1": "RUNNING",
    }

    assert main(DEFAULTS, _argv(tmp_path, digits_dir, *extra)) == 2  # no silent mixing with the old sweep
    assert "pass --resume" in capsys.readouterr().err
    assert main(DEFAULTS, _argv(tmp_path, digits_dir, *extra, "--resume")) == 0
    out = capsys.readouterr().out
    assert "1 of 2 trials already finished" in out and "resuming 1 interrupted trial" in out
    rows = {r["seed"]: r for r in tracking.fetch_trial_results(uri, "resume")}
    assert len(rows) == 2 and all(r["status"] == "FINISHED" for r in rows.values())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(rows[0]["run_id"]).data.tags["attempts"] == "1"  # the finished key was not rerun
    assert client.get_run(rows[1]["run_id"]).data.tags["attempts"] == "2"
    history = Path(client.download_artifacts(rows[1]["run_id"], "history.csv", str(tmp_path))).read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]  # continued from its checkpoint


@pytest.mark.slow
def test_the_same_key_trained_in_either_runtime_gives_the_same_numbers(ray_local, digits_dir, tmp_path):
    # Streamed from the shards every epoch (--cache-gb 0), through both DualOpt phases: the runtime changes
    # where the trial's body runs, never what it computes.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = {}
    for runtime in ("tune", "train"):
        argv = _argv(
            tmp_path,
            digits_dir,
            *("--experiment", f"same-{runtime}", "--backbones", "shufflenet_v2_x2_0", "--max-epochs", "2"),
            *("--patience", "1", "--cache-gb", "0", "--runtime", runtime),
        )
        assert main(DEFAULTS, argv) == 0
        (rows[runtime],) = tracking.fetch_trial_results(uri, f"same-{runtime}")
    tune, train = rows["tune"], rows["train"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for row, runtime in ((tune, "tune"), (train, "train")):
        params = client.get_run(row["run_id"]).data.params
        assert params["data_cache"] == "False" and params["runtime"] == runtime
    for metric in ("train_loss", "test_acc", "phase"):
        assert tracking.metric_history(uri, tune["run_id"], metric) == tracking.metric_history(
            uri, train["run_id"], metric
        ), metric
    assert tune["best_test_acc"] == train["best_test_acc"] and tune["epochs_run"] == train["epochs_run"] >= 2
    assert _predictions(client, tune["run_id"], tmp_path / "tune") == _predictions(
        client, train["run_id"], tmp_path / "t"
    )
