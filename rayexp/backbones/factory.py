"""Building backbones: one entry point, ``create_backbone(name, num_classes, pretrained)``, and head surgery,
for the registry's, torchvision's and timm's backbones alike."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rayexp.backbones.resolve import get_spec
from rayexp.backbones.specs import BackboneSpec
from rayexp.backbones.wavemix import wavemix_192_16
from rayexp.backbones.weights import load_pretrained_state_dict
from rayexp.errors import RayexpError
from rayexp.training import keep_fp32, seed_everything


def _build(spec: BackboneSpec) -> nn.Module:
    """The model as published: ``spec.pretrained_classes`` outputs, random init."""
    if spec.builder == "wavemix_192_16":
        return wavemix_192_16(num_classes=spec.pretrained_classes)
    if spec.origin == "timm":
        import timm

        extra = {"dynamic_img_size": True} if spec.dynamic_size else {}
        return timm.create_model(spec.builder, pretrained=False, num_classes=spec.pretrained_classes, **extra)
    # Lazy on purpose: torchvision.models costs about 1.6 s to import, and `import rayexp.backbones`
    # (which the CLI does to check backbone names) has never paid it.
    import torchvision.models

    return torchvision.models.get_model(spec.builder, weights=None, num_classes=spec.pretrained_classes)


def _head_name(model: nn.Module, spec: BackboneSpec) -> str:
    if spec.head:
        return spec.head
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RayexpError(f"{spec.name}: no final Linear layer to replace")
    return linears[-1]


def get_head(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    """The classifier that :func:`replace_head` made: the final Linear (timm: ``get_classifier()``)."""
    if spec.origin == "timm":
        return model.get_classifier()
    return model.get_submodule(_head_name(model, spec))


def replace_head(model: nn.Module, spec: BackboneSpec, num_classes: int) -> nn.Module:
    """Swap the final Linear for a fresh one with ``num_classes`` outputs (PyTorch's default init); timm models
    through their own ``reset_classifier``."""
    if spec.origin == "timm":
        model.reset_classifier(num_classes)
        return model
    name = _head_name(model, spec)
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    return model


def _resize_input(size: tuple[int, int], module: nn.Module, args: tuple) -> tuple | None:
    (images, *rest) = args
    if tuple(images.shape[-2:]) == size:
        return None
    resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (resized, *rest)


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool,
    weights_dir: str | None = None,
) -> nn.Module:
    """Build ``name`` with ImageNet weights (or random init) and a fresh ``num_classes`` head.

    The published model is built first and the weights loaded strictly; only then is the head replaced,
    so nothing but the head differs from the published model. The new head's init draws from torch's
    global RNG: seed it first to make the head depend on the trial's seed. A model that takes one input size
    only (``spec.fixed_input``: torchvision's ViTs, timm models without a dynamic size) resizes its input to it
    first, in a forward pre-hook, so its state dict stays the published one.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise RayexpError(f"num_classes must be at least 1, got {num_classes}")
    model = _build(spec)
    if pretrained:
        model.load_state_dict(load_pretrained_state_dict(spec, weights_dir), strict=True)
    if spec.fixed_input:
        model.register_forward_pre_hook(functools.partial(_resize_input, tuple(spec.fixed_input)))
    return replace_head(model, spec, num_classes)


def create_trial_model(
    name: str,
    num_classes: int,
    seed: int,
    device: torch.device,
    pretrained: bool,
    weights_dir: str | None = None,
    compile: bool = False,
) -> nn.Module:
    """The model as a trial trains it, built the same way wherever one is (a trial, the GPU check): the new
    head's init seeded by ``seed``; the head computing in fp32 under autocast (:func:`rayexp.training.keep_fp32`:
    argmax and loss not rounded to bf16); on ``device``, channels-last; compiled in place when ``compile``, so
    that its state dict keeps its keys and checkpoints stay interchangeable."""
    seed_everything(seed)
    model = create_backbone(name, num_classes, pretrained=pretrained, weights_dir=weights_dir)
    keep_fp32(get_head(model, get_spec(name)))
    model = model.to(device, memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
