"""Fine-tuning real ImageNet weights end to end, offline: the demo's sweep (the packaged EfficientNet-Lite0 file given
as a user's ``--weights`` checkpoint, beside the same network from random init) on a real local Ray, logged to a
real MLflow store; the report's paired verdict between the two; the pretrained trial registered and served by
MLflow's own pyfunc loader, predicting what the trial's own evaluation predicted on its test split."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pandas
import pytest

from rayexp import tracking
from rayexp.backbones.checkpoint import read_checkpoint
from rayexp.backbones.packaged import packaged_weights
from rayexp.cli import main
from rayexp.data.shards import read_split
from rayexp.publish import register_trial
from tests.conftest import REPO
from tests.test_sweep_e2e import _argv, _predictions

PRETRAINED = "timm:tf_efficientnet_lite0"
RANDOM = PRETRAINED + "+random"


def _demo():
    spec = importlib.util.spec_from_file_location("demo", REPO / "sweeps" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEMO


@pytest.mark.slow
def test_the_demo_fine_tunes_imagenet_weights_beside_random_init_and_serves_them(
    ray_local, digits_dir, tmp_path, capsys
):
    demo = _demo()
    assert demo.settings.backbones == (PRETRAINED, RANDOM) and demo.settings.normalize == "model"  # the default
    argv = _argv(tmp_path, digits_dir, "--experiment", "finetune", "--fractions", "0.1", "--keep-best-weights")
    assert main(demo, argv) == 0
    out = capsys.readouterr().out
    checkpoint = read_checkpoint(packaged_weights(PRETRAINED))
    label = f"checkpoint {checkpoint.path.name} (sha256:{checkpoint.sha256[:12]})"
    assert f"[rayexp] {PRETRAINED} starts from {label}: 294 tensors mapped by order" in out

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = tracking.fetch_trial_results(uri, "finetune")
    assert len(rows) == 6 and all(r["status"] == "FINISHED" for r in rows)
    assert {r["backbone"]: r["weights"] for r in rows} == {PRETRAINED: label, RANDOM: "random"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = {r["backbone"]: client.get_run(r["run_id"]).data for r in rows}
    assert (
        tags[PRETRAINED].tags["weights_origin"] == checkpoint.origin and tags[RANDOM].tags["weights_origin"] == "random"
    )
    assert tags[PRETRAINED].params["normalization"] == "model: mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]"
    # The printed table says which rows are pretrained.
    assert f"| digits | 0.1 | {PRETRAINED} |" in out and label in out and "| random |" in out

    # The report: the pretrained row leads, clearly, on the paired verdict over the same test images and seeds.
    report = (tmp_path / "report" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- digits at 0.1:"))
    assert f"**{PRETRAINED}**" in line and "a clear lead over every other backbone" in line, line
    assert "paired t over the same 359 test images x 3 seeds" in line
    assert "random-init baselines by design" in report and "**Warning**" not in report
    means = {b: sum(r["best_test_acc"] for r in rows if r["backbone"] == b) / 3 for b in (PRETRAINED, RANDOM)}
    assert means[PRETRAINED] > means[RANDOM] + 0.15, means

    # The pretrained trial, registered and loaded as MLflow serves it, predicts what the trial predicted.
    key = f"{PRETRAINED}/digits/0.1/0"
    model = register_trial(uri, "finetune", key, "digits-lite0")
    run_id = next(r["run_id"] for r in rows if r["key"] == key)
    expected = {p["id"]: p["prediction"] for p in _predictions(client, run_id, tmp_path / "predictions")}
    test = read_split(digits_dir, "digits", "test", columns=["id", "image"])
    import mlflow

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(model.uri).predict(pandas.DataFrame({"image": test["image"].to_pylist()}))
    assert served["class_index"].tolist() == [expected[i] for i in test["id"].to_pylist()]
    config = json.loads(Path(client.download_artifacts(run_id, "config.json", str(tmp_path))).read_text())
    assert config["normalization"] == {"mode": "model", "mean": [0.5] * 3, "std": [0.5] * 3}
    with open(tmp_path / "report" / "summary.csv") as handle:
        assert {r["backbone"] for r in csv.DictReader(handle)} == {PRETRAINED, RANDOM}
