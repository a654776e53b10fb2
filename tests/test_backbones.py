import dataclasses

import pytest
import torch

from rayexp.backbones import count_parameters, create_backbone, get_head, get_spec, list_backbones
from rayexp.backbones.weights import cache_dir, weights_status, weights_url
from rayexp.errors import RayexpError
from tests.conftest import plant_weights

NAMES = [spec.name for spec in list_backbones()]
PAPER_NAMES = {
    "resnet50",
    "wavemix_192_16",
    "convnext_tiny",
    "swin_t",
    "swin_v2_t",
    "efficientnet_v2_s",
    "densenet161",
    "mobilenet_v3_large",
    "regnet_y_3_2gf",
    "resnext50_32x4d",
    "shufflenet_v2_x2_0",
}


def test_registry_holds_the_papers_eleven():
    assert set(NAMES) == PAPER_NAMES


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_pure_data(name):
    spec = get_spec(name)
    assert spec.name == name
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        numbers = isinstance(value, tuple) and all(type(v) in (int, float) for v in value)  # mean, std, sizes
        assert type(value) in (str, int, float, bool, type(None)) or numbers, (field.name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    assert dataclasses.replace(spec) == spec and hash(dataclasses.replace(spec)) == hash(spec)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_protocol(name):
    spec = get_spec(name)
    model = create_backbone(name, 1000, pretrained=False)
    assert abs(count_parameters(model) / 1e6 - spec.params_m) / spec.params_m < 0.005
    assert get_head(model, spec).in_features == spec.feature_dim


@pytest.mark.parametrize("name", NAMES)
def test_new_head_forward_backward_only_head_changes(name):
    spec = get_spec(name)
    full = create_backbone(name, 1000, pretrained=False).state_dict()
    model = create_backbone(name, 7, pretrained=False)
    changed = {k for k, v in model.state_dict().items() if v.shape != full[k].shape}
    assert changed == {f"{spec.head}.weight", f"{spec.head}.bias"}
    model.train()
    logits = model(torch.randn(2, 3, spec.min_input, spec.min_input))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert get_head(model, spec).weight.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_path_loads_a_planted_file_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    planted = plant_weights(tmp_path, name)
    spec = get_spec(name)
    assert weights_status(spec, probe_network=False).available
    model = create_backbone(name, 5, pretrained=True)
    loaded = model.state_dict()
    head = {f"{spec.head}.weight", f"{spec.head}.bias"}
    for key, value in planted.items():
        if key not in head:
            assert torch.equal(loaded[key], value), key


def test_weights_url_names_the_file():
    for spec in list_backbones():
        assert weights_url(spec).rsplit("/", 1)[1] == spec.weights_file


def test_missing_weights_error_names_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_spec("resnet50")
    import rayexp.backbones.weights as w

    # a closed local port: the download fails at once, as it does offline
    monkeypatch.setattr(w, "weights_url", lambda s: "http://127.0.0.1:9/resnet50-11ad3fa6.pth")
    with pytest.raises(RayexpError) as err:
        create_backbone("resnet50", 10, pretrained=True)
    message = str(err.value)
    assert "resnet50-11ad3fa6.pth" in message and "http://127.0.0.1:9/" in message and str(cache_dir()) in message
    status = weights_status(spec)
    assert not status.available and "--weights-dir" in status.fix


def test_weights_dir_is_searched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    planted = plant_weights(tmp_path / "elsewhere", "mobilenet_v3_large")
    folder = tmp_path / "elsewhere" / "hub" / "checkpoints"
    model = create_backbone("mobilenet_v3_large", 1000, pretrained=True, weights_dir=str(folder))
    body = {k: v for k, v in planted.items() if not k.startswith("classifier.3.")}  # the head is always fresh
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(RayexpError, match="unknown backbone 'resnet51'.*resnet50"):
        create_backbone("resnet51", 10, pretrained=False)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_logits(name):
    spec = get_spec(name)
    model = create_backbone(name, 3, pretrained=False).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, spec.min_input, spec.min_input))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
