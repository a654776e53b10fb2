"""Building backbones: one entry point, ``create_backbone(name, num_classes, pretrained)``, and head surgery."""

from __future__ import annotations

from typing import Callable

from torch import nn

from rayexp.backbones.specs import BackboneSpec, get_spec
from rayexp.backbones.wavemix import wavemix_192_16
from rayexp.backbones.weights import load_pretrained_state_dict
from rayexp.errors import RayexpError


def _architecture(spec: BackboneSpec) -> Callable[..., nn.Module]:
    if spec.builder == "wavemix_192_16":
        return wavemix_192_16
    # Lazy on purpose: torchvision.models costs about 1.6 s to import, and `import rayexp.backbones`
    # (which the CLI does to check backbone names) has never paid it.
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
        model.load_state_dict(load_pretrained_state_dict(spec, weights_dir), strict=True)
    return replace_head(model, spec, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
