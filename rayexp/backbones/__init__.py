"""Backbones: specs as data, pretrained weights, and one entry point, ``create_backbone``.

Layered like timm, each module importing only the ones above it:

- ``specs``: the :class:`BackboneSpec` record and the paper's eleven (the registry); pure data, no torch.
- ``resolve``: any name to its spec: the registry, ``torchvision:<name>``, ``timm:<name>``, and ``<name>+random``;
  each network's one name (``canonical_name``) and a sweep's backbone list checked for two spellings of one network
  (``sweep_backbones``).
- ``weights``: finding, checking, downloading and loading pretrained weights.
- ``checkpoint``: a user's own weight file (``--weights BACKBONE=PATH``): tensors only, unwrapped, matched to the
  model by name or by order, or refused; ``packaged``: ImageNet weights that ship inside a Python package.
- ``factory``: building a backbone and replacing its head (uses ``wavemix`` for WaveMix), and the model as a
  trial trains it.
"""

from rayexp.backbones.factory import count_parameters, create_backbone, create_trial_model, get_head
from rayexp.backbones.resolve import canonical_name, get_spec, known_spec, sweep_backbones
from rayexp.backbones.specs import REGISTRY, BackboneSpec, list_backbones
from rayexp.backbones.weights import find_weights_file, load_pretrained_state_dict, weights_status

__all__ = [
    "REGISTRY",
    "BackboneSpec",
    "canonical_name",
    "count_parameters",
    "create_backbone",
    "create_trial_model",
    "find_weights_file",
    "get_head",
    "get_spec",
    "known_spec",
    "list_backbones",
    "load_pretrained_state_dict",
    "sweep_backbones",
    "weights_status",
]
