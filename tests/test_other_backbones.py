"""Backbones beyond the paper's eleven: ``torchvision:<name>`` and ``timm:<name>``, resolved to the registry's spec,
their weights found where a user's run finds them (torch's cache, --weights-dir, huggingface_hub's cache), their
input-size rules checked by preflight (their real sweep on digits, to a registered model, is in
``tests/test_serving.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from rayexp import preflight
from rayexp.backbones import create_backbone, get_head, get_spec
from rayexp.backbones.weights import HF_FILE, cache_dir, find_weights_file, weights_status
from rayexp.cli import main
from rayexp.errors import RayexpError
from tests.test_sweep_e2e import DEFAULTS

TV, TIMM = "torchvision:mobilenet_v3_small", "timm:resnet18"


def test_any_source_resolves_to_the_registrys_spec():
    tv = get_spec(TV)
    assert (tv.origin, tv.params_m, tv.imagenet_top1, tv.head) == ("torchvision", 2.54, 67.668, "classifier.3")
    assert tv.weights_tag == "IMAGENET1K_V1" and tv.weights_file == "mobilenet_v3_small-047dcff4.pth"
    assert tv.url.startswith("https://download.pytorch.org/models/") and tv.batch_size == 512
    older = get_spec("torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V1")
    assert older.weights_tag == "IMAGENET1K_V1" and older.imagenet_top1 == 76.13  # not DEFAULT's 80.858

    tm = get_spec(TIMM)
    assert (tm.origin, tm.params_m, tm.imagenet_top1, tm.hub_id) == ("timm", 11.69, None, "timm/resnet18.a1_in1k")
    assert tm.weights_tag == "a1_in1k" and tm.weights_file == "resnet18.a1_in1k.safetensors"
    assert get_spec("timm:resnet18.tv_in1k").hub_id == "timm/resnet18.tv_in1k"
    # The name is the trial key's first field: no "/" in either source's names.
    assert "/" not in TV + TIMM + get_spec("timm:convnext_nano.in12k_ft_in1k").name


@pytest.mark.parametrize(
    "name, message",
    [
        ("timm:resnt18", "unknown timm model 'resnt18' in 'timm:resnt18'; did you mean resnet18"),
        ("torchvision:mobilenetv3", "did you mean mobilenet_v2, mobilenet_v3_small"),
        ("resnet51", "did you mean resnet50.*timm:<name>"),
        ("timm:resnet18.nope", "no pretrained tag 'nope' for resnet18; its tags: resnet18.a1_in1k"),
        ("torchvision:resnet50@ResNet50_Weights.V9", "has no member .*ResNet50_Weights.IMAGENET1K_V2"),
        ("torchvision:squeezenet1_0", "not a final Linear layer"),
    ],
)
def test_unknown_names_are_refused_with_close_names(name, message):
    with pytest.raises(RayexpError, match=message):
        get_spec(name)


def _published(name: str) -> dict[str, torch.Tensor]:
    """Random weights of the published model (its pretrained head), as a weight file holds them."""
    spec = get_spec(name)
    if spec.origin == "timm":
        import timm

        return timm.create_model(spec.builder, pretrained=False, num_classes=spec.pretrained_classes).state_dict()
    import torchvision.models

    return torchvision.models.get_model(spec.builder, weights=None).state_dict()


def _assert_loaded(model: torch.nn.Module, planted: dict, head_prefix: str) -> None:
    state = model.state_dict()
    body = [k for k in planted if not k.startswith(head_prefix)]
    assert body and all(torch.equal(state[k], planted[k]) for k in body)
    assert not any(torch.equal(state[k], planted[k]) for k in planted if k.startswith(head_prefix) and k in state)


def test_planted_weights_load_strictly_through_the_users_path(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    # torchvision: torch's cache, under the file name of its weights URL
    tv = get_spec(TV)
    assert not weights_status(tv).available and "mobilenet_v3_small-047dcff4.pth" in weights_status(tv).fix
    planted = _published(TV)
    cache_dir().mkdir(parents=True, exist_ok=True)
    torch.save(planted, cache_dir() / tv.weights_file)
    try:
        torch.manual_seed(0)
        _assert_loaded(create_backbone(TV, 10, pretrained=True), planted, "classifier.3.")
    finally:
        (cache_dir() / tv.weights_file).unlink()

    # timm: offline and nowhere is an error naming the file, the URL and where to put it
    tm = get_spec(TIMM)
    with pytest.raises(RayexpError, match=r"resnet18\.a1_in1k\.safetensors.*huggingface\.co/timm/resnet18\.a1_in1k"):
        create_backbone(TIMM, 10, pretrained=True)
    # ... found in huggingface_hub's cache, laid out as hf_hub_download leaves it (where timm keeps its weights)
    from huggingface_hub.constants import HF_HUB_CACHE

    assert HF_HUB_CACHE.startswith(os.environ["HF_HOME"])  # conftest's, never the user's
    repo = Path(HF_HUB_CACHE) / "models--timm--resnet18.a1_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    planted = _published(TIMM)
    save_file(planted, repo / "snapshots" / revision / HF_FILE)
    try:
        assert find_weights_file(tm) == repo / "snapshots" / revision / HF_FILE and weights_status(tm).available
        _assert_loaded(create_backbone(TIMM, 10, pretrained=True), planted, "fc.")
        # ... and from --weights-dir, under the spec's file name, before any cache
        other = {k: v + 1 if v.is_floating_point() else v for k, v in planted.items()}
        save_file(other, tmp_path / tm.weights_file)
        model = create_backbone(TIMM, 10, pretrained=True, weights_dir=str(tmp_path))
        _assert_loaded(model, other, "fc.")
        assert get_head(model, tm).out_features == 10
    finally:  # the cache is the session's: later tests train timm:resnet18 from random init
        shutil.rmtree(repo)


def test_a_fixed_size_vit_is_resized_a_dynamic_one_takes_256_and_a_patch_misfit_is_refused():
    x = torch.rand(2, 3, 256, 256)
    vit = create_backbone("torchvision:vit_b_16", 5, pretrained=False).eval()  # 224x224 only
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        assert torch.equal(vit(x), vit(resized))
    manifests = {"digits": {"input_size": [32, 32]}, "cifar10": {"input_size": [256, 256]}}
    assert preflight.input_size_notes(["torchvision:vit_b_16", TIMM], manifests) == [
        "torchvision:vit_b_16 takes 224x224 inputs only: its images of cifar10, digits are resized to that inside "
        "the model (its position embeddings are fixed)"
    ]
    assert not preflight.input_size_problems(["torchvision:vit_b_16"], manifests)

    tiny = get_spec("timm:vit_tiny_patch16_224")  # timm interpolates its position embeddings: any multiple of 16
    assert tiny.dynamic_size and tiny.fixed_input is None and tiny.multiple_of == 16
    with torch.no_grad():
        assert create_backbone(tiny.name, 5, pretrained=False)(x).shape == (2, 5)
    assert not preflight.input_size_problems([tiny.name], {"cifar10": {"input_size": [256, 256]}})

    problems = preflight.input_size_problems(["timm:vit_small_patch14_dinov2"], {"cifar10": {"input_size": [256, 256]}})
    assert problems == [
        "timm:vit_small_patch14_dinov2 cannot train on cifar10 at 256x256 (smallest side 32, both multiples of 14); "
        "fix: leave it out of --backbones for this dataset, or prepare the data at a size it takes "
        "(my_data.py --input-size)"
    ]


def test_list_backbones_shows_every_source(capsys):
    assert main(DEFAULTS, ["--list-backbones", "mobilenet_v3_s*"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:mobilenet_v3_small" in out and "2.5M" in out and "67.7" in out
    assert main(DEFAULTS, ["--list-backbones", "timm:resnet18.a1*"]) == 0
    assert "timm:resnet18.a1_in1k" in capsys.readouterr().out


def test_a_timm_name_without_timm_installed_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    with pytest.raises(
        RayexpError, match=r"timm backbones need timm, which is not installed: pip install 'rayexp\[timm\]'"
    ):
        get_spec("timm:resnet34")  # a name no other test resolved: get_spec caches its answers
