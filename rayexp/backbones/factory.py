"""Building backbones: one entry point, ``create_backbone(name, num_classes, pretrained)``, and head surgery,
for the registry's, torchvision's and timm's backbones alike."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from rayexp.backbones.checkpoint import Checkpoint, match_checkpoint
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

    extra = {}
    if spec.fixed_input:  # built for its weights' size, as torchvision's builder does when it is given the weights
        module = torchvision.models.get_model_builder(spec.builder).__module__.rsplit(".", 1)[-1]
        if module == "vision_transformer":  # e.g. vit_h_14's default (SWAG) weights are for 518x518, not 224
            extra = {"image_size": spec.fixed_input[0]}
        elif module == "maxvit":
            extra = {"input_size": tuple(spec.fixed_input)}
    return torchvision.models.get_model(spec.builder, weights=None, num_classes=spec.pretrained_classes, **extra)


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


def _head_keys(model: nn.Module, spec: BackboneSpec) -> set[str]:
    """The state-dict keys of the published head (what a user checkpoint's head may differ in)."""
    head = get_head(model, spec)
    name = next(n for n, m in model.named_modules() if m is head)
    return {f"{name}.{k}" if name else k for k in head.state_dict()}


def load_checkpoint(model: nn.Module, spec: BackboneSpec, checkpoint: Checkpoint) -> str:
    """Load a user's ``checkpoint`` into ``model`` (built with its published head), every tensor but the head's
    (:func:`rayexp.backbones.checkpoint.match_checkpoint`); how it was matched, in words."""
    head = _head_keys(model, spec)
    state, how = match_checkpoint(checkpoint, model.state_dict(), head)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - head or unexpected:  # match_checkpoint's rules make this unreachable; a guard, not a rule
        raise RayexpError(f"--weights {checkpoint.path.name}: {spec.name} would keep {sorted(set(missing) - head)}")
    return how


def check_checkpoint(spec: BackboneSpec, checkpoint: Checkpoint) -> str:
    """Whether a user's ``checkpoint`` fits ``spec``'s model, as a trial will load it (built on the meta device
    where it can be: shapes only, no memory); how it matches, in words, or a :class:`RayexpError`."""
    try:
        with torch.device("meta"):
            model = _build(spec)
    except (NotImplementedError, RuntimeError):  # regnets' init cannot run on the meta device
        model = _build(spec)
    return match_checkpoint(checkpoint, model.state_dict(), _head_keys(model, spec))[1]


def model_normalization(spec: BackboneSpec, checkpoint: Checkpoint | None = None) -> tuple[list[float], list[float]]:
    """The mean and std a backbone's weights were trained with (``--normalize model``): a user checkpoint's own
    ``mean``/``std`` when it gives them, else the backbone's published weights' (torchvision's weights
    transforms, timm's pretrained config, ImageNet's for the registry)."""
    if checkpoint is not None and checkpoint.mean is not None and checkpoint.std is not None:
        return list(checkpoint.mean), list(checkpoint.std)
    return list(spec.mean), list(spec.std)


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
    checkpoint: Checkpoint | None = None,
) -> nn.Module:
    """Build ``name`` with ImageNet weights, a user's ``checkpoint`` (which wins over ``pretrained``), or random
    init, and a fresh ``num_classes`` head.

    The published model is built first and the weights loaded strictly (a checkpoint: every tensor but the
    head's); only then is the head replaced, so nothing but the head differs from the model the weights were
    made for. The new head's init draws from torch's
    global RNG: seed it first to make the head depend on the trial's seed. A model that takes one input size
    only (``spec.fixed_input``: torchvision's ViTs, timm models without a dynamic size) resizes its input to it
    first, in a forward pre-hook, so its state dict stays the published one.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise RayexpError(f"num_classes must be at least 1, got {num_classes}")
    model = _build(spec)
    if checkpoint is not None:
        load_checkpoint(model, spec, checkpoint)
    elif pretrained and not spec.random_init:
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
    checkpoint: Checkpoint | None = None,
) -> nn.Module:
    """The model as a trial trains it, built the same way wherever one is (a trial, the GPU check): the new
    head's init seeded by ``seed``; the head computing in fp32 under autocast (:func:`rayexp.training.keep_fp32`:
    argmax and loss not rounded to bf16); on ``device``, channels-last; compiled in place when ``compile``, so
    that its state dict keeps its keys and checkpoints stay interchangeable."""
    seed_everything(seed)
    model = create_backbone(name, num_classes, pretrained=pretrained, weights_dir=weights_dir, checkpoint=checkpoint)
    keep_fp32(get_head(model, get_spec(name)))
    model = model.to(device, memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
