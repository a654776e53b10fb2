"""Backbone specs: pure data, one small frozen record per backbone, and the paper's eleven (the registry).

Figures are from torchvision's model cards (WaveMix's from its paper). The default
batch size is for one 80 GB A100 at 256x256 with mixed precision; it is fixed and recorded per backbone
rather than halved on out-of-memory, because a batch size that changes with the machine silently
changes the protocol between backbones. Backbones named ``torchvision:…`` or ``timm:…`` get the same record
from :mod:`rayexp.backbones.resolve`, which is also where any name is looked up.

This module does no I/O and imports neither torch nor torchvision: where a spec's weights come from is
:func:`rayexp.backbones.weights.weights_url`, building one is :func:`rayexp.backbones.factory.create_backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SUFFIX = "+random"  # "<name>+random": the same architecture, always from random init


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the sweep needs to know about one backbone."""

    name: str
    title: str
    builder: str  # torchvision.models builder, "wavemix_192_16" (ours), or timm's model name (with its tag)
    weights: str  # torchvision weights enum member "ResNet50_Weights.IMAGENET1K_V2", a URL, or timm's "arch.tag"
    weights_file: str  # file name in $TORCH_HOME/hub/checkpoints (or --weights-dir)
    imagenet_top1: float | None  # None where the source does not say (timm)
    params_m: float  # millions, at the pretrained head's classes
    family: str  # "CNN", "transformer", "token-mixer", or "other" when the source does not say
    head: str  # dotted path of the final Linear to replace, e.g. "fc", "classifier.3"; "" = found when built
    feature_dim: int | None  # in_features of that head (None: known once built)
    min_input: int  # smallest input side: the total stride, below which the last stage sees padding only
    batch_size: int  # default training batch for one 80 GB A100 at 256x256 (REGISTRY_INPUT), mixed precision
    origin: str = "registry"  # "registry" (the paper's eleven), "torchvision" or "timm"
    url: str | None = None  # where the weights come from, when not derived from ``weights`` (torchvision:, timm:)
    hub_id: str | None = None  # timm: the Hugging Face repository of the weights ("timm/resnet18.a1_in1k")
    pretrained_classes: int = 1000  # the published head's outputs (0: published without a head)
    fixed_input: tuple[int, int] | None = None  # the only input size the model takes: inputs are resized to it
    multiple_of: int = 1  # both input sides must be multiples of this (WaveMix's 32, a ViT's patch)
    dynamic_size: bool = False  # timm: built with dynamic_img_size=True (any multiple of the patch)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation its pretrained weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD
    random_init: bool = False  # "<name>+random": never loads weights (a baseline for the same architecture)

    @property
    def weights_tag(self) -> str:
        """Short name of the pretrained weights, recorded as the ``weights`` param of every run."""
        if self.random_init:
            return "random"
        return self.weights.rsplit(".", 1)[-1] if not self.weights.startswith("http") else self.weights_file


REGISTRY_INPUT = (256, 256)  # the input size the registry's batch sizes are for


def batch_size_at(batch_size: int, input_size: tuple[int, int] | list[int]) -> int:
    """A backbone's batch (its spec's, for :data:`REGISTRY_INPUT`) at ``input_size`` (H, W): the same where the
    input has no more pixels; for a larger input (BreakHis's 448x672, 4.6 times the pixels), the same pixels per
    batch, rounded down to a multiple of 8 (at least 8), because activation memory grows with the pixels and
    the registry's batch at 256x256 is what fits the card. Smaller inputs keep the batch: the protocol's batch
    does not grow with a dataset's image size."""
    pixels, registry = input_size[0] * input_size[1], REGISTRY_INPUT[0] * REGISTRY_INPUT[1]
    if pixels <= registry:
        return batch_size
    return max(8, batch_size * registry // pixels // 8 * 8)


def default_batch_size(params_m: float) -> int:
    """The training batch of a backbone outside the registry, from its size: the registry's values for its
    sizes (512 up to 8 M parameters, 256 up to 30 M), halved again for larger models. Fixed per backbone and
    recorded, like the registry's; ``--batch-size`` overrides it for every backbone of a sweep."""
    return 512 if params_m <= 8 else 256 if params_m <= 30 else 128 if params_m <= 100 else 64


_SPECS = [
    BackboneSpec(
        name="resnet50",
        title="ResNet-50",
        builder="resnet50",
        weights="ResNet50_Weights.IMAGENET1K_V2",
        weights_file="resnet50-11ad3fa6.pth",
        imagenet_top1=80.86,
        params_m=25.6,
        family="CNN",
        head="fc",
        feature_dim=2048,
        min_input=32,
        batch_size=256,
    ),
    BackboneSpec(
        name="wavemix_192_16",
        title="WaveMix-192/16 (level 3)",
        builder="wavemix_192_16",
        weights="https://huggingface.co/cloudwalker/wavemix/resolve/main/Saved_Models_Weights/ImageNet/wavemix_192_16_75.06.pth",
        weights_file="wavemix_192_16_75.06.pth",
        imagenet_top1=75.32,
        params_m=27.9,
        family="token-mixer",
        head="pool.2",
        feature_dim=192,
        min_input=32,
        batch_size=128,
        multiple_of=32,
    ),
    BackboneSpec(
        name="convnext_tiny",
        title="ConvNeXt-Tiny",
        builder="convnext_tiny",
        weights="ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        weights_file="convnext_tiny-983f1562.pth",
        imagenet_top1=82.52,
        params_m=28.6,
        family="CNN",
        head="classifier.2",
        feature_dim=768,
        min_input=32,
        batch_size=256,
    ),
    BackboneSpec(
        name="swin_t",
        title="Swin-T",
        builder="swin_t",
        weights="Swin_T_Weights.IMAGENET1K_V1",
        weights_file="swin_t-704ceda3.pth",
        imagenet_top1=81.47,
        params_m=28.3,
        family="transformer",
        head="head",
        feature_dim=768,
        min_input=32,
        batch_size=256,
    ),
    BackboneSpec(
        name="swin_v2_t",
        title="SwinV2-T",
        builder="swin_v2_t",
        weights="Swin_V2_T_Weights.IMAGENET1K_V1",
        weights_file="swin_v2_t-b137f0e2.pth",
        imagenet_top1=82.07,
        params_m=28.4,
        family="transformer",
        head="head",
        feature_dim=768,
        min_input=32,
        batch_size=192,
    ),
    BackboneSpec(
        name="efficientnet_v2_s",
        title="EfficientNetV2-S",
        builder="efficientnet_v2_s",
        weights="EfficientNet_V2_S_Weights.IMAGENET1K_V1",
        weights_file="efficientnet_v2_s-dd5fe13b.pth",
        imagenet_top1=84.23,
        params_m=21.5,
        family="CNN",
        head="classifier.1",
        feature_dim=1280,
        min_input=32,
        batch_size=192,
    ),
    BackboneSpec(
        name="densenet161",
        title="DenseNet-161",
        builder="densenet161",
        weights="DenseNet161_Weights.IMAGENET1K_V1",
        weights_file="densenet161-8d451a50.pth",
        imagenet_top1=77.14,
        params_m=28.7,
        family="CNN",
        head="classifier",
        feature_dim=2208,
        min_input=32,
        batch_size=128,
    ),
    BackboneSpec(
        name="mobilenet_v3_large",
        title="MobileNetV3-Large",
        builder="mobilenet_v3_large",
        weights="MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        weights_file="mobilenet_v3_large-5c1a4163.pth",
        imagenet_top1=75.27,
        params_m=5.5,
        family="CNN",
        head="classifier.3",
        feature_dim=1280,
        min_input=32,
        batch_size=512,
    ),
    BackboneSpec(
        name="regnet_y_3_2gf",
        title="RegNetY-3.2GF",
        builder="regnet_y_3_2gf",
        weights="RegNet_Y_3_2GF_Weights.IMAGENET1K_V2",
        weights_file="regnet_y_3_2gf-9180c971.pth",
        imagenet_top1=81.98,
        params_m=19.4,
        family="CNN",
        head="fc",
        feature_dim=1512,
        min_input=32,
        batch_size=256,
    ),
    BackboneSpec(
        name="resnext50_32x4d",
        title="ResNeXt-50 32x4d",
        builder="resnext50_32x4d",
        weights="ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
        weights_file="resnext50_32x4d-1a0047aa.pth",
        imagenet_top1=81.20,
        params_m=25.0,
        family="CNN",
        head="fc",
        feature_dim=2048,
        min_input=32,
        batch_size=256,
    ),
    BackboneSpec(
        name="shufflenet_v2_x2_0",
        title="ShuffleNetV2 2.0x",
        builder="shufflenet_v2_x2_0",
        weights="ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1",
        weights_file="shufflenetv2_x2_0-8be3c8ee.pth",
        imagenet_top1=76.23,
        params_m=7.4,
        family="CNN",
        head="fc",
        feature_dim=2048,
        min_input=32,
        batch_size=512,
    ),
]

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def list_backbones() -> list[BackboneSpec]:
    """The paper's eleven backbones, in the paper's order."""
    return list(REGISTRY.values())
