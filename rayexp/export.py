"""A finished trial's model, made servable: its best weights kept, and the network exported with what serving needs.

The network is saved as a ``torch.export`` program (architecture and weights in one file, any batch size), so that
loading it needs torch alone: not rayexp, torchvision or timm, and no guess about how a backbone is built. Beside it
goes the serving config: class names, input size and the normalization the trial trained with, read from the
dataset's manifest. :mod:`rayexp.tracking.registry` logs both as an MLflow model (:mod:`rayexp.tracking.served_model`).
No Ray and no MLflow here.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow.fs
import torch

from rayexp.backbones import create_backbone
from rayexp.data.batches import normalization
from rayexp.errors import RayexpError
from rayexp.storage import write_whole

BEST_WEIGHTS = "best_weights.pt"


def save_best_weights(train_run: str, run_id: str, state_dict: dict) -> None:
    """Write a trial's best weights into its Train run folder (a local folder or a bucket), whole or not at all,
    with the MLflow run they belong to: a key trained again without keeping its weights must not be exported
    with the weights of its earlier run."""
    buffer = io.BytesIO()
    torch.save({"run_id": run_id, "model": state_dict}, buffer)
    filesystem, path = pyarrow.fs.FileSystem.from_uri(train_run)
    filesystem.create_dir(path, recursive=True)
    write_whole(filesystem, f"{path}/{BEST_WEIGHTS}", buffer.getvalue())


def load_best_weights(train_run: str, run_id: str) -> dict | None:
    """The best weights kept for MLflow run ``run_id``, or None when there are none (run without
    ``--keep-best-weights``, removed, or kept by another run of the key)."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(train_run)
    target = f"{path}/{BEST_WEIGHTS}"
    if filesystem.get_file_info(target).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(target) as handle:
        kept = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    return kept["model"] if kept.get("run_id") == run_id else None


def remove_best_weights(train_run: str) -> None:
    """Delete a trial's kept best weights (an unfinished trial's checkpoints beside them stay, to resume from)."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(train_run)
    target = f"{path}/{BEST_WEIGHTS}"
    if filesystem.get_file_info(target).type == pyarrow.fs.FileType.File:
        filesystem.delete_file(target)
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.Directory and not filesystem.get_file_info(
        pyarrow.fs.FileSelector(path)
    ):
        filesystem.delete_dir(path)  # nothing else was there: a finished trial's folder


def serving_config(manifest: dict, backbone: str, normalize: str, key: str, resolved: dict | None = None) -> dict:
    """What the served model needs besides the network: classes, input size, normalization, provenance.
    ``resolved``: the normalisation the trial recorded (``{"mode", "mean", "std"}``, in its config artifact),
    which ``--normalize model`` needs (an older trial's has none: its mode is computed again)."""
    if resolved is not None:
        mean, std = resolved["mean"], resolved["std"]
    else:
        mean, std = normalization(manifest, normalize)
    return {
        "key": key,
        "backbone": backbone,
        "dataset": manifest["name"],
        "classes": list(manifest["classes"]),
        "input_size": list(manifest["input_size"]),
        # how preparation stored the trial's images: a served image is stored the same way before it is decoded
        "stored": {"encoding": manifest["image"]["encoding"], "max_size": list(manifest["image"]["max_size"])},
        "mean": list(mean),
        "std": list(std),
        "normalize": normalize,
    }


def export_network(backbone: str, state_dict: dict, config: dict, out: Path) -> Path:
    """The trained network as a ``torch.export`` program in ``out`` (``network.pt2``), for any batch size."""
    model = create_backbone(backbone, len(config["classes"]), pretrained=False)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise RayexpError(f"the kept weights do not fit {backbone} with {len(config['classes'])} classes: {exc}")
    model.eval()
    height, width = config["input_size"]
    example = torch.zeros(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    os.makedirs(out, exist_ok=True)
    path = Path(out) / "network.pt2"
    torch.export.save(program, path)
    return path
