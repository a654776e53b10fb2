"""A trial's network as an MLflow model in the trial's own run, and a version of it in the Model Registry.

The model is a pyfunc from code (``served_model.py``, copied into the model and run by MLflow when it is loaded or
served) with two artifacts, the exported network and the serving config (:mod:`rayexp.export`), a signature, an
input example and pinned requirements: loading it needs MLflow, torch, torchvision, numpy and pandas, not rayexp.
Works on any store with a registry: SQLite, or an ``mlflow server`` over HTTP (artifacts through the server).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rayexp.tracking.client import mlflow_client
from rayexp.tracking.schema import BEST_TEST_ACC_METRIC, DATA_TAG, EXPERIMENT_TAG, KEY_TAG, SERVED_MODEL

SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    key: str  # the trial key it was trained as
    accuracy: float | None  # that trial's best test accuracy

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    pixels = Array(Array(Array(DataType.long)))
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image", required=False), ColSpec(pixels, "pixels", required=False)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(DataType.long, "class_index"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]
        ),
    )


def _requirements() -> list[str]:
    import importlib.metadata as metadata

    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", "torch", "torchvision", "numpy", "pandas")]


def register_model(
    uri: str,
    run_id: str,
    network: Path,
    config: dict,
    name: str,
    tags: dict[str, str],
    example_image: bytes,
) -> RegisteredModel:
    """Log ``network`` with ``config`` as the run's served model and register it as a new version of ``name``,
    tagged with the experiment, trial key, test accuracy and data fingerprint (``tags``)."""
    import mlflow
    import pandas as pd

    client = mlflow_client(uri)
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="rayexp-model-") as tmp:
        config_path = Path(tmp) / "serving.json"
        config_path.write_text(json.dumps(config, indent=1))
        with mlflow.start_run(run_id=run_id):  # the trial's run, finished: it is closed again on the way out
            info = mlflow.pyfunc.log_model(
                name=SERVED_MODEL,
                python_model=str(SERVED_MODEL_CODE),
                artifacts={"network": str(network), "config": str(config_path)},
                signature=_signature(),
                input_example=pd.DataFrame({"image": [example_image]}),
                pip_requirements=_requirements(),
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    for tag in (EXPERIMENT_TAG, KEY_TAG, BEST_TEST_ACC_METRIC, DATA_TAG):
        if tags.get(tag) is not None:
            client.set_model_version_tag(name, version, tag, str(tags[tag]))
    accuracy = tags.get(BEST_TEST_ACC_METRIC)
    return RegisteredModel(name, version, run_id, str(tags[KEY_TAG]), None if accuracy is None else float(accuracy))
