"""The backbone registry: one small spec per backbone, one entry point to build any of them.

Figures are from ``shared/protocol.md`` (torchvision's model cards; WaveMix from the paper). The default
batch size is for one 80 GB A100 at 256x256 with mixed precision; it is fixed and recorded per backbone
rather than halved on out-of-memory, because a batch size that changes with the machine silently
changes the protocol between backbones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from rayexp.errors import RayexpError


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the sweep needs to know about one backbone."""

    name: str
    title: str
    builder: str  # torchvision.models builder, or "wavemix_192_16" (ours)
    weights: str  # torchvision weights enum member "ResNet50_Weights.IMAGENET1K_V2", or a URL
    weights_file: str  # file name in $TORCH_HOME/hub/checkpoints (or --weights-dir)
    imagenet_top1: float
    params_m: float  # millions, at 1000 classes
    family: str  # "CNN", "transformer" or "token-mixer"
    head: str  # dotted path of the final Linear to replace, e.g. "fc", "classifier.3"
    feature_dim: int  # in_features of that head
    min_input: int  # smallest input side: the total stride, below which the last stage sees padding only
    batch_size: int  # default training batch for one 80 GB A100 at 256x256, mixed precision

    @property
    def weights_url(self) -> str:
        from rayexp.backbones.weights import weights_url

        return weights_url(self)

    @property
    def weights_tag(self) -> str:
        """Short name of the pretrained weights, recorded as the ``weights`` param of every run."""
        return self.weights.rsplit(".", 1)[-1] if not self.weights.startswith("http") else self.weights_file


_SPECS = [
    BackboneSpec(
        "resnet50",
        "ResNet-50",
        "resnet50",
        "ResNet50_Weights.IMAGENET1K_V2",
        "resnet50-11ad3fa6.pth",
        80.86,
        25.6,
        "CNN",
        "fc",
        2048,
        32,
        256,
    ),
    BackboneSpec(
        "wavemix_192_16",
        "WaveMix-192/16 (level 3)",
        "wavemix_192_16",
        "https://huggingface.co/cloudwalker/wavemix/resolve/main/Saved_Models_Weights/ImageNet/wavemix_192_16_75.06.pth",
        "wavemix_192_16_75.06.pth",
        75.32,
        27.9,
        "token-mixer",
        "pool.2",
        192,
        32,
        128,
    ),
    BackboneSpec(
        "convnext_tiny",
        "ConvNeXt-Tiny",
        "convnext_tiny",
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "convnext_tiny-983f1562.pth",
        82.52,
        28.6,
        "CNN",
        "classifier.2",
        768,
        32,
        256,
    ),
    BackboneSpec(
        "swin_t",
        "Swin-T",
        "swin_t",
        "Swin_T_Weights.IMAGENET1K_V1",
        "swin_t-704ceda3.pth",
        81.47,
        28.3,
        "transformer",
        "head",
        768,
        32,
        256,
    ),
    BackboneSpec(
        "swin_v2_t",
        "SwinV2-T",
        "swin_v2_t",
        "Swin_V2_T_Weights.IMAGENET1K_V1",
        "swin_v2_t-b137f0e2.pth",
        82.07,
        28.4,
        "transformer",
        "head",
        768,
        32,
        192,
    ),
    BackboneSpec(
        "efficientnet_v2_s",
        "EfficientNetV2-S",
        "efficientnet_v2_s",
        "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
        "efficientnet_v2_s-dd5fe13b.pth",
        84.23,
        21.5,
        "CNN",
        "classifier.1",
        1280,
        32,
        192,
    ),
    BackboneSpec(
        "densenet161",
        "DenseNet-161",
        "densenet161",
        "DenseNet161_Weights.IMAGENET1K_V1",
        "densenet161-8d451a50.pth",
        77.14,
        28.7,
        "CNN",
        "classifier",
        2208,
        32,
        128,
    ),
    BackboneSpec(
        "mobilenet_v3_large",
        "MobileNetV3-Large",
        "mobilenet_v3_large",
        "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        "mobilenet_v3_large-5c1a4163.pth",
        75.27,
        5.5,
        "CNN",
        "classifier.3",
        1280,
        32,
        512,
    ),
    BackboneSpec(
        "regnet_y_3_2gf",
        "RegNetY-3.2GF",
        "regnet_y_3_2gf",
        "RegNet_Y_3_2GF_Weights.IMAGENET1K_V2",
        "regnet_y_3_2gf-9180c971.pth",
        81.98,
        19.4,
        "CNN",
        "fc",
        1512,
        32,
        256,
    ),
    BackboneSpec(
        "resnext50_32x4d",
        "ResNeXt-50 32x4d",
        "resnext50_32x4d",
        "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
        "resnext50_32x4d-1a0047aa.pth",
        81.20,
        25.0,
        "CNN",
        "fc",
        2048,
        32,
        256,
    ),
    BackboneSpec(
        "shufflenet_v2_x2_0",
        "ShuffleNetV2 2.0x",
        "shufflenet_v2_x2_0",
        "ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1",
        "shufflenetv2_x2_0-8be3c8ee.pth",
        76.23,
        7.4,
        "CNN",
        "fc",
        2048,
        32,
        512,
    ),
]

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, in the paper's order."""
    return list(REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The spec of ``name``, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise RayexpError(f"unknown backbone {name!r}; known backbones: {', '.join(REGISTRY)}") from None


def _architecture(spec: BackboneSpec) -> Callable[..., nn.Module]:
    if spec.builder == "wavemix_192_16":
        from rayexp.backbones.wavemix import wavemix_192_16

        return wavemix_192_16
    import torchvision.models

    return getattr(torchvision.models, spec.builder)


def get_head(model: nn.Module, spec: BackboneSpec) -> nn.Linear:
    """The final Linear layer named by ``spec.head``."""
    return model.get_submodule(spec.head)


def replace_head(model: nn.Module, spec: BackboneSpec, num_classes: int) -> nn.Module:
    """Swap the final Linear for a fresh one with ``num_classes`` outputs (PyTorch's default init)."""
    old = get_head(model, spec)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent_name, _, child = spec.head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    return model


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool,
    weights_dir: str | None = None,
) -> nn.Module:
    """Build ``name`` with ImageNet weights (or random init) and a fresh ``num_classes`` head.

    The 1000-class model is built first and the weights loaded strictly; only then is the head replaced,
    so nothing but the head differs from the published model. The new head's init draws from torch's
    global RNG: seed it first to make the head depend on the trial's seed.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise RayexpError(f"num_classes must be at least 1, got {num_classes}")
    model = _architecture(spec)(num_classes=1000)
    if pretrained:
        from rayexp.backbones.weights import load_pretrained_state_dict

        model.load_state_dict(load_pretrained_state_dict(spec, weights_dir), strict=True)
    return replace_head(model, spec, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
