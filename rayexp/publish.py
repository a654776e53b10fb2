"""From a finished trial to a registered, servable MLflow model: the winner of ``my_data.py``, or any key
(``sweeps/export.py``).

A trial's best weights come from its Train run folder (kept with ``--keep-best-weights``; ``my_data.py`` keeps
them until it has registered its winner) or, failing that, from its MLflow run (``--log-models``). Its config
artifact holds the dataset's manifest and the sweep's settings, so nothing but the tracking store is needed to
find them. The winner is the recommendation's first-ranked backbone, its best seed by the same rule as its score
(:func:`rayexp.results.best_seed_row`); no model is registered when no backbone beat chance.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from rayexp import tracking
from rayexp.data.shards import read_split
from rayexp.errors import RayexpError
from rayexp.export import export_network, load_best_weights, remove_best_weights, serving_config
from rayexp.grid import TrialKey
from rayexp.recommend import recommend
from rayexp.results import best_seed_row, current_results
from rayexp.settings import train_run_location
from rayexp.tracking.registry import NAME_CHARACTERS


def default_model_name(dataset: str, backbone: str) -> str:
    """``<dataset>-<backbone>``, in the characters a registered model's name takes everywhere
    (:data:`rayexp.tracking.registry.MODEL_NAME`): any other character becomes '-'."""
    return re.sub(f"[^{NAME_CHARACTERS}]", "-", f"{dataset}-{backbone}")[:200]


def _example_image(data_dir: str, dataset: str, size: Sequence[int]) -> bytes:
    """The first test image, as its shard holds it (JPEG or PNG bytes); a grey PNG when the shards are gone."""
    try:
        return read_split(data_dir, dataset, "test", columns=["image"])["image"][0].as_py()
    except (OSError, RayexpError, IndexError, ValueError):
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (int(size[1]), int(size[0])), (128, 128, 128)).save(buffer, format="PNG")
        return buffer.getvalue()


def _best_weights(uri: str, run_id: str, settings: dict, key: TrialKey) -> dict:
    state = load_best_weights(train_run_location(settings["storage"], settings["experiment"], key), run_id)
    if state is None and (logged := tracking.fetch_artifact(uri, run_id, tracking.MODEL_ARTIFACT)) is not None:
        state = torch.load(io.BytesIO(logged), map_location="cpu", weights_only=True)
    if state is None:
        raise RayexpError(
            f"trial {key}: its best weights were not kept (neither its run's best_weights.pt in its Train run "
            f"folder nor {tracking.MODEL_ARTIFACT} in its MLflow run); train the key again with --keep-best-weights "
            "(or --log-models): in a new --experiment, or after deleting its MLflow run"
        )
    return state


def register_trial(
    uri: str, experiment: str, key: str, name: str | None = None, new_label_set: bool = False
) -> tracking.RegisteredModel:
    """Log the finished trial ``key`` of ``experiment`` as a servable MLflow model linked to its run (which stays
    as it is, whatever happens) and register it as a new version of ``name`` (default ``<dataset>-<backbone>``);
    a name whose latest version has other classes is refused unless ``new_label_set``."""
    if name is not None:
        tracking.check_model_name(name)
    parsed = TrialKey.parse(key)
    record = tracking.trial_record(uri, experiment, key)
    if record is None or record["status"] != tracking.FINISHED:
        state = "no run" if record is None else f"a {record['status']} run"
        raise RayexpError(f"trial {key} has {state} in experiment {experiment!r}: only a finished trial is exported")
    raw = tracking.fetch_artifact(uri, record["run_id"], tracking.CONFIG_ARTIFACT)
    if raw is None:
        raise RayexpError(f"trial {key}: its run has no {tracking.CONFIG_ARTIFACT} (an older rayexp's run?)")
    config = json.loads(raw)
    settings, manifest = config["settings"], config["manifest"]
    state = _best_weights(uri, record["run_id"], settings, parsed)
    serving = serving_config(manifest, parsed.backbone, settings["normalize"], key, config.get("normalization"))
    (result,) = tracking.fetch_trial_results(uri, experiment, key=key) or [{}]
    tags = {
        tracking.EXPERIMENT_TAG: experiment,
        tracking.KEY_TAG: key,
        tracking.BEST_TEST_ACC_METRIC: result.get("best_test_acc"),
        tracking.DATA_TAG: manifest.get("fingerprint"),
    }
    example = _example_image(settings["data_dir"], manifest["name"], manifest["input_size"])
    with tempfile.TemporaryDirectory(prefix="rayexp-export-") as folder:
        network = export_network(parsed.backbone, state, serving, Path(folder))
        return tracking.register_model(
            uri,
            record["run_id"],
            network,
            serving,
            name or default_model_name(manifest["name"], parsed.backbone),
            tags,
            example,
            new_label_set=new_label_set,
        )


def winner_key(uri: str, experiment: str, dataset: str, domain: str, expected: Sequence[TrialKey]) -> str | None:
    """The recommendation's first-ranked backbone's best seed at its fraction, or None when no backbone learned
    (its cell is not above chance) or nothing finished."""
    results, _ = current_results(tracking.fetch_trial_results(uri, experiment))
    rec = recommend(results, dataset, domain, expected)
    top = next((r for r in rec.ranked if r.rank is not None), None)
    if top is None or (top.cell is not None and top.cell.above_chance is False):
        return None
    rows = [
        r
        for r in results
        if r["backbone"] == top.backbone
        and r["dataset"] == dataset
        and float(r["fraction"]) == rec.fraction
        and r.get("status") == tracking.FINISHED
    ]
    best = best_seed_row(rows)
    return best["key"] if best else None


def usage_lines(model: tracking.RegisteredModel, uri: str) -> list[str]:
    """What the registered model is, then the commands that load it, serve it and call it (the recommendation
    page, the console and the README show these)."""
    acc = "" if model.accuracy is None else f", test accuracy {100 * model.accuracy:.1f}%"
    load = (  # double quotes inside: the whole goes in single quotes for the shell
        f"import mlflow, pandas; mlflow.set_tracking_uri({json.dumps(uri)}); "
        f"m = mlflow.pyfunc.load_model({json.dumps(model.uri)}); "
        'print(m.predict(pandas.DataFrame({"image": [open("image.jpg", "rb").read()]})))'
    )
    return [
        f"Registered as {model.name} version {model.version} (trial {model.key}{acc}), in the MLflow store {uri}. "
        "Load it, serve it and call it (with the virtualenv active: . .venv/bin/activate):",
        f"python -c {shlex.quote(load)}",
        f"MLFLOW_TRACKING_URI={shlex.quote(uri)} mlflow models serve -m {shlex.quote(model.uri)} "
        "--env-manager local -p 5001",
        "curl -s localhost:5001/invocations -H 'Content-Type: application/json' "
        '-d "{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$(base64 -w0 image.jpg)\\"]]}}"',
    ]


def retry_command(uri: str, experiment: str, key: str, name: str | None, new_label_set: bool = False) -> str:
    """The ``sweeps/export.py`` command that registers ``key`` again, as it was asked for, quoted for a shell."""
    words = ["python", "sweeps/export.py", "--tracking-uri", uri, "--experiment", experiment, "--key", key]
    words += ["--register", name] if name else []
    words += ["--new-label-set"] if new_label_set else []
    return shlex.join(words)


def forget_best_weights(storage: str, experiment: str, keys: Sequence[TrialKey]) -> None:
    """Remove the kept best weights of ``keys`` (once the winner is registered, the registry holds its own)."""
    for key in keys:
        remove_best_weights(train_run_location(storage, experiment, key))
