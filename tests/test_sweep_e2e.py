"""End to end: the sweep command line on a real local Ray instance, real MLflow, real checkpoints."""

import os
from pathlib import Path

import pytest
import torch

from rayexp import tracking
from rayexp.cli import SweepDefaults, main
from tests.conftest import plant_weights

DEFAULTS = SweepDefaults(
    description="test sweep",
    experiment="e2e",
    backbones=["mobilenet_v3_large", "shufflenet_v2_x2_0"],
    datasets=["digits"],
    fractions=[0.1],
    seeds=[0],
    max_epochs=2,
    patience=2,
    batch_size=64,
    fallback_to_random_weights=True,
)


def _argv(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--storage", str(tmp_path / "storage"),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "report"), *extra,
    ]


@pytest.mark.slow
def test_tiny_sweep_logs_runs_checkpoints_and_resumes_by_key(ray_local, digits_dir, tmp_path, capsys):
    planted = plant_weights(Path(os.environ["TORCH_HOME"]), "mobilenet_v3_large")
    assert main(DEFAULTS, _argv(tmp_path, digits_dir)) == 0
    out = capsys.readouterr()
    assert "NO PRETRAINED WEIGHTS for shufflenet_v2_x2_0" in out.err
    assert "| digits | 0.1 | mobilenet_v3_large |" in out.out

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
        state = torch.load(checkpoints[0], weights_only=False)
        assert state["progress"]["epoch"] == 4 and set(state) >= {"model", "best_model", "optimizer", "rng"}
    assert rows["mobilenet_v3_large/digits/0.1/0"]["weights"] == "IMAGENET1K_V2"
    assert rows["shufflenet_v2_x2_0/digits/0.1/0"]["weights"] == "random"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(rows["mobilenet_v3_large/digits/0.1/0"]["run_id"])
    assert run.data.tags["dataset"] == "digits" and run.data.tags["seed"] == "0" and run.data.params["batch_size"] == "64"
    assert (tmp_path / "report" / "summary.csv").read_text().count("\n") == 3
    # weights=IMAGENET1K_V2 means the worker loaded the planted file: with RAYEXP_OFFLINE=1 it cannot download.
    assert planted

    # The same sweep again: every key has a finished run, nothing trains, no run is added.
    assert main(DEFAULTS, _argv(tmp_path, digits_dir)) == 0
    assert "2 of 2 trials already finished" in capsys.readouterr().out
    assert len(tracking.fetch_trial_results(uri, "e2e")) == 2


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
    strict = SweepDefaults(**{**DEFAULTS.__dict__, "fallback_to_random_weights": False})
    assert main(strict, _argv(tmp_path, digits_dir, "--backbones", "resnet50", "swin_t")) == 2
    err = capsys.readouterr().err
    assert "pretrained weights cannot be had, nothing was started" in err
    assert "resnet50-11ad3fa6.pth" in err and "swin_t-704ceda3.pth" in err and "--weights-dir" in err
    assert not (tmp_path / "storage").exists()


@pytest.mark.slow
def test_asha_stops_a_clearly_worse_trial_early(ray_local, digits_dir, tmp_path, capsys):
    # From random init, ShuffleNetV2 learns digits within two epochs while MobileNetV3-Large's eval
    # accuracy stays at chance (its BatchNorm statistics lag): ASHA must stop MobileNet at a rung.
    argv = _argv(
        tmp_path, digits_dir, "--experiment", "asha", "--backbones", "shufflenet_v2_x2_0", "mobilenet_v3_large",
        "--fractions", "1.0", "--max-epochs", "4", "--patience", "4", "--no-dualopt",
        "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2",
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


@pytest.mark.slow
def test_selection_val_holds_out_training_rows_and_logs_both(ray_local, digits_dir, tmp_path):
    argv = _argv(
        tmp_path, digits_dir, "--experiment", "val", "--backbones", "shufflenet_v2_x2_0",
        "--max-epochs", "2", "--no-dualopt", "--selection", "val",
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
