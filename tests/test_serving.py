"""From recommendation to a served model, offline: ``my_data.py`` on a timm and a torchvision backbone registers
its winner in a real SQLite MLflow registry; a real ``mlflow models serve --env-manager local`` process on loopback
answers HTTP requests with what the same weights predict through rayexp's own evaluation path, and
``mlflow.pyfunc.load_model`` in a fresh process agrees."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayexp import tracking
from rayexp.backbones import create_backbone, get_spec
from rayexp.backbones.factory import model_normalization
from rayexp.data.batches import Normalizer, normalization
from rayexp.data.pipeline import decode_resize_batch
from rayexp.data.shards import load_manifest
from rayexp.errors import RayexpError
from rayexp.export import load_best_weights
from rayexp.grid import TrialKey
from rayexp.my_data import main
from rayexp.publish import register_trial
from rayexp.settings import train_run_location
from tests.test_my_data import DEFAULTS, _argv, digits_folder
from tests.test_served_model import model_server

TIMM, TV = "timm:resnet18", "torchvision:mobilenet_v3_small"


def _in_process(weights: dict, manifest: dict, images: list[bytes]) -> list[int]:
    """The class rayexp's own evaluation path gives each image: decode and resize as the pipeline does, normalise
    with the weights' own statistics (``--normalize model``, the default), the trained network."""
    model = create_backbone(TIMM, len(manifest["classes"]), pretrained=False)
    model.load_state_dict(weights)
    batch = decode_resize_batch({"image": np.array(images, dtype=object), "label": np.zeros(len(images))}, (32, 32))
    mean, std = normalization(manifest, "model", model_normalization(get_spec(TIMM)))
    inputs, _ = Normalizer(mean, std, torch.device("cpu"))({k: torch.from_numpy(v) for k, v in batch.items()})
    with torch.no_grad():
        return model.eval()(inputs).argmax(dim=1).tolist()


def _post(port: int, payload: dict) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


@pytest.mark.slow
def test_my_data_registers_the_winner_and_mlflow_serves_it(ray_local, tmp_path, capsys):
    folder = digits_folder(tmp_path / "digits_folder", n_train=600, n_test=100)
    extra = ["--backbones", TIMM, TV, "--seeds", "0", "--batch-size", "16", "--selection", "test"]
    argv = _argv(tmp_path, folder, *extra, "--register", "digits-model", "--keep-best-weights")
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", "my-data-digits_folder"
    key = f"{TIMM}/digits_folder/1.0/0"  # resnet18 learns digits in 4 epochs; mobilenet_v3_small stays at chance
    assert f"Registered as digits-model version 1 (trial {key}, test accuracy" in out
    assert "mlflow models serve -m models:/digits-model/1 --env-manager local" in out
    page = (tmp_path / "out" / "recommendation.md").read_text()
    assert "## Use the winner" in page and "models:/digits-model/1" in page
    # A timm and a torchvision backbone (issue 17), from random init, in the cost table and the ranking.
    runs = {r["backbone"]: r for r in tracking.fetch_trial_results(uri, experiment)}
    assert {b: r["weights"] for b, r in runs.items()} == {TIMM: "random", TV: "random"}
    with open(tmp_path / "out" / "report" / "cost.csv") as handle:
        cost = {r["backbone"]: (r["params_m"], r["imagenet_top1"]) for r in csv.DictReader(handle)}
    assert cost == {TV: ("2.54", "67.668"), TIMM: ("11.69", "")}  # timm publishes no ImageNet top-1
    with open(tmp_path / "out" / "ranking.csv") as handle:
        ranking = {r["backbone"]: (r["params_m"], r["imagenet_top1"]) for r in csv.DictReader(handle)}
    assert ranking == cost

    from mlflow.tracking import MlflowClient

    version = MlflowClient(uri).get_model_version("digits-model", "1")
    assert version.tags["key"] == key and version.tags["experiment"] == experiment
    manifest = load_manifest(tmp_path / "data", "digits_folder")
    assert version.tags["data_fingerprint"] == manifest["fingerprint"] and float(version.tags["best_test_acc"]) > 0.2

    images = sorted((folder / "test").glob("*/*.png"))[::10]
    encoded = [p.read_bytes() for p in images]
    train_run = train_run_location(str(tmp_path / "storage"), experiment, TrialKey.parse(key))
    assert load_best_weights(train_run, "another run of the key") is None  # never another run's weights
    weights = load_best_weights(train_run, tracking.fetch_trial_results(uri, experiment, key=key)[0]["run_id"])
    expected = _in_process(weights, manifest, encoded)
    assert len(set(expected)) > 1  # a network that learned something, not one answer for all

    with model_server(uri, "models:/digits-model/1") as (port, _):
        rows = [[base64.b64encode(data).decode()] for data in encoded]
        served = _post(port, {"dataframe_split": {"columns": ["image"], "data": rows}})
        assert [p["class_index"] for p in served] == expected
        assert [p["label"] for p in served] == [manifest["classes"][i] for i in expected]
        assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in served)
        pixels = [np.asarray(Image.open(p).convert("RGB")).tolist() for p in images[:2]]
        decoded = _post(port, {"dataframe_records": [{"pixels": x} for x in pixels]})
        assert [p["class_index"] for p in decoded] == expected[:2]

    # A fresh process with MLflow alone (no rayexp import) loads the registered version and agrees.
    script = (
        "import json, sys, mlflow, pandas\n"
        "model = mlflow.pyfunc.load_model('models:/digits-model/1')\n"
        "frame = pandas.DataFrame({'image': [open(p, 'rb').read() for p in sys.argv[1:]]})\n"
        "print(json.dumps(model.predict(frame)['class_index'].tolist()))\n"
        "assert 'rayexp' not in sys.modules\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script, *map(str, images)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == expected

    # Another version from the same kept weights, on demand; a key without kept weights is refused with the fix.
    assert register_trial(uri, experiment, key, "digits-model").version == "2"
    os.remove(Path(train_run_location(str(tmp_path / "storage"), experiment, TrialKey.parse(key))) / "best_weights.pt")
    with pytest.raises(RayexpError, match="best weights were not kept.*--keep-best-weights"):
        register_trial(uri, experiment, key)
