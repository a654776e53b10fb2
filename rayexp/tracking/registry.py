"""A trial's network as an MLflow model linked to the trial's run, and a version of it in the Model Registry.

The model is a pyfunc from code (``served_model.py``, copied into the model and run by MLflow when it is loaded or
served) with three artifacts, the exported network, the serving config (:mod:`rayexp.export`) and the image decoder
the trials used (:mod:`rayexp.data.imagefile`), a signature, an input example and pinned requirements: loading it
needs MLflow, torch, torchvision, numpy, pandas and PIL, not rayexp. Works on any store with a registry: SQLite, or an
``mlflow server`` over HTTP (artifacts through the server).

The model is logged as the trial run's output without opening that run: a registration that fails (a registry
error, Ctrl-C) can never end a finished trial's run as FAILED or KILLED, so its result stands whatever happens here.
A registered name keeps one label set: a version with other classes is refused unless asked for, since clients of
``models:/<name>/latest`` would otherwise switch label sets without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rayexp.data import imagefile
from rayexp.errors import RayexpError
from rayexp.tracking.client import mlflow_client
from rayexp.tracking.schema import (
    BEST_TEST_ACC_METRIC,
    CLASSES_TAG,
    DATA_TAG,
    EXPERIMENT_TAG,
    KEY_TAG,
    N_CLASSES_TAG,
    SERVED_MODEL,
)

SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
# Stricter than any MLflow store (no '/', ':' or '%', not blank): also safe unquoted in a shell command or a URI.
NAME_CHARACTERS = "A-Za-z0-9._-"  # a regex character class's body
MODEL_NAME = re.compile(rf"[A-Za-z0-9][{NAME_CHARACTERS}]{{0,199}}")


def check_model_name(name: str) -> str:
    """``name`` when it can be a registered model's name everywhere rayexp prints it, else an error with the rule."""
    if not MODEL_NAME.fullmatch(name or ""):
        raise RayexpError(
            f"--register {name!r}: a registered model's name is 1 to 200 letters, digits, '.', '_' and '-', starting "
            "with a letter or digit (e.g. xrays-convnext_tiny)"
        )
    return name


def classes_digest(classes: Sequence[str]) -> str:
    """What tells two label sets apart: the class names in order (an index means the same class in both)."""
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()


def label_set_problem(uri: str, name: str, classes: Sequence[str]) -> str | None:
    """Why ``classes`` may not become a new version of ``name`` (its latest version has another label set), or
    None: no such model yet, the same classes, or a version an older rayexp registered without its classes."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    digest = latest.tags.get(CLASSES_TAG)
    if digest is None or digest == classes_digest(classes):
        return None
    n = latest.tags.get(N_CLASSES_TAG, "?")
    return (
        f"registered model {name!r} version {latest.version} classifies another label set ({n} classes; these "
        f"are {len(classes)}: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}), and clients of "
        f"models:/{name}/latest would switch label sets without a word: register under a new name "
        "(--register NAME), or pass --new-label-set to make it a version of this name anyway"
    )


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
    from mlflow.types.schema import AnyType, Array

    # Any, not binary and nested longs: MLflow's own coercion of those fails on a null or a mistyped value with a
    # message that names neither the row nor the fix; the model checks every row itself (served_model.py).
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "image", required=False), ColSpec(AnyType(), "pixels", required=False)]),
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

    names = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")
    return [f"{name}=={metadata.version(name)}" for name in names]


def register_model(
    uri: str,
    run_id: str,
    network: Path,
    config: dict,
    name: str,
    tags: dict[str, str],
    example_image: bytes,
    new_label_set: bool = False,
) -> RegisteredModel:
    """Log ``network`` with ``config`` as a model linked to the trial run ``run_id`` (which is not opened, and
    whose status cannot change here) and register it as a new version of ``name``, tagged with the experiment,
    trial key, test accuracy and data fingerprint (``tags``) and the label set. A name whose latest version has
    other classes is refused unless ``new_label_set``."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    check_model_name(name)
    if not new_label_set and (problem := label_set_problem(uri, name, config["classes"])):
        raise RayexpError(problem)
    client = mlflow_client(uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    with tempfile.TemporaryDirectory(prefix="rayexp-model-") as tmp:
        config_path = Path(tmp) / "serving.json"
        config_path.write_text(json.dumps(config, indent=1))
        artifacts = {"network": str(network), "config": str(config_path), "imagefile": imagefile.__file__}
        try:
            with _experiment(mlflow, experiment_id):
                info = Model.log(
                    artifact_path=None,
                    name=SERVED_MODEL,
                    flavor=mlflow.pyfunc,
                    run_id=run_id,  # linked to the trial's run, never opened: its status stays as it is
                    python_model=str(SERVED_MODEL_CODE),
                    artifacts=artifacts,
                    signature=_signature(),
                    input_example=pd.DataFrame({"image": [example_image]}),
                    pip_requirements=_requirements(),
                    registered_model_name=name,
                )
        except MlflowException as exc:
            raise RayexpError(f"registering {name!r} failed: {exc.message}") from None
    version = str(info.registered_model_version)
    version_tags = {
        **{tag: tags.get(tag) for tag in (EXPERIMENT_TAG, KEY_TAG, BEST_TEST_ACC_METRIC, DATA_TAG)},
        CLASSES_TAG: classes_digest(config["classes"]),
        N_CLASSES_TAG: len(config["classes"]),
    }
    for tag, value in version_tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, tag, str(value))
    accuracy = tags.get(BEST_TEST_ACC_METRIC)
    return RegisteredModel(name, version, run_id, str(tags[KEY_TAG]), None if accuracy is None else float(accuracy))


class _experiment:
    """The active experiment set to ``experiment_id`` for a block (MLflow files a logged model under the active
    one), and put back after: the caller's own choice is left alone."""

    def __init__(self, mlflow, experiment_id: str) -> None:
        self.mlflow, self.experiment_id = mlflow, experiment_id

    def __enter__(self) -> None:
        import mlflow.tracking.fluent as fluent

        self.before = (fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID"))
        self.mlflow.set_experiment(experiment_id=self.experiment_id)

    def __exit__(self, *exc) -> None:
        import mlflow.tracking.fluent as fluent

        fluent._active_experiment_id, env = self.before
        if env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = env
