"""Backbones: a registry of specs and one entry point, ``create_backbone(name, num_classes, pretrained)``."""

from rayexp.backbones.registry import (
    REGISTRY,
    BackboneSpec,
    count_parameters,
    create_backbone,
    get_head,
    get_spec,
    list_backbones,
)
from rayexp.backbones.weights import find_weights_file, load_pretrained_state_dict, weights_status

__all__ = [
    "REGISTRY",
    "BackboneSpec",
    "count_parameters",
    "create_backbone",
    "find_weights_file",
    "get_head",
    "get_spec",
    "list_backbones",
    "load_pretrained_state_dict",
    "weights_status",
]
