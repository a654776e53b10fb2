"""What the paper's text says to use per domain: the prior a recommendation is shown beside.

The paper's tables were lost, so these are its written findings only (sections 7-9 of ``paper.md``),
with no numbers: the backbones it singles out as strong for a domain, those it warns against, and
the sentence that says so. A user's own measurements are what the recommendation rests on; the prior
says whether they agree with the paper.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prior:
    favoured: tuple[str, ...]
    cautioned: tuple[str, ...]
    evidence: str


GENERAL = Prior(
    favoured=("convnext_tiny", "efficientnet_v2_s", "regnet_y_3_2gf"),
    cautioned=("swin_t", "swin_v2_t", "resnet50"),
    evidence=(
        "Modern CNNs (ConvNeXt, EfficientNet, RegNet) excel across domains; transformers such as Swin do not "
        "perform well when the fine-tuning set is small; ResNet is no longer competitive in any domain."
    ),
)

PRIORS: dict[str, Prior] = {
    "natural": Prior(
        favoured=("convnext_tiny", "efficientnet_v2_s", "regnet_y_3_2gf"),
        cautioned=("swin_t", "swin_v2_t", "resnet50"),
        evidence=(
            "ConvNeXt-Tiny outperforms all other models on almost all natural image datasets (WaveMix wins "
            "CIFAR-10 and CIFAR-100); EfficientNetV2-S and RegNetY-3.2GF also perform well."
        ),
    ),
    "medical": Prior(
        favoured=("wavemix_192_16", "resnext50_32x4d", "regnet_y_3_2gf", "efficientnet_v2_s"),
        cautioned=("convnext_tiny", "swin_t", "swin_v2_t"),
        evidence=(
            "ConvNeXt and Swin perform poorly in the medical domain; WaveMix does well on histopathology across "
            "magnifications, ResNeXt tops RSNA, and RegNet and EfficientNet are recommended beyond natural images."
        ),
    ),
    "astronomy": Prior(
        favoured=("wavemix_192_16", "convnext_tiny"),
        cautioned=("swin_t", "swin_v2_t"),
        evidence="WaveMix outperforms all other models on galaxy morphology, well ahead of the second best, ConvNeXt.",
    ),
    "remote sensing": Prior(
        favoured=("convnext_tiny", "regnet_y_3_2gf", "wavemix_192_16", "resnext50_32x4d", "swin_v2_t"),
        cautioned=(),
        evidence=(
            "ConvNeXt and RegNet do well on remote sensing; SwinV2-Tiny is best on UC Merced, WaveMix and "
            "ResNeXt top EuroSAT."
        ),
    ),
    "plant": Prior(
        favoured=("convnext_tiny", "regnet_y_3_2gf", "densenet161", "efficientnet_v2_s"),
        cautioned=(),
        evidence=(
            "ConvNeXt, EfficientNet, DenseNet (top on PlantVillage) and RegNet lead on plants, "
            "at 100% and at 10% of the data."
        ),
    ),
    "texture": Prior(
        favoured=("convnext_tiny", "regnet_y_3_2gf"),
        cautioned=(),
        evidence="ConvNeXt and RegNet perform well on textures.",
    ),
    "surface defect": Prior(
        favoured=("convnext_tiny", "regnet_y_3_2gf"),
        cautioned=(),
        evidence="ConvNeXt and RegNet perform well on surface defects.",
    ),
    "handwriting": Prior(
        favoured=("wavemix_192_16",),
        cautioned=(),
        evidence=(
            "WaveMix is recommended for low-resolution images (state of the art on EMNIST); "
            "not one of the paper's domains."
        ),
    ),
}

LIGHTWEIGHT = (
    "For on-device models the paper prefers ShuffleNetV2 to MobileNetV3 (MobileNetV3 did better on medical images)."
)


def prior_for(domain: str) -> tuple[Prior, bool]:
    """The paper's prior for ``domain``, and whether it is specific to it (False: the general advice)."""
    if domain in PRIORS:
        return PRIORS[domain], True
    return GENERAL, False
