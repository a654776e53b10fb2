"""The offline demo: 2 backbones x digits x fractions {0.25, 0.5} x seeds {0, 1, 2} = 12 trials.

Runs on a local Ray instance, CPU only, logs to a local MLflow store and prints the best-of-three table.
Fractions 0.25 and 0.5 rather than the paper's 0.01, 0.1 and 1.0: from random init, in the few epochs a CPU
demo affords, 10% of the digits (143 images) leaves both backbones at chance, which teaches nothing, while
at 25% every cell is several times above it; 100% would double the demo's time. Each trial holds half a CPU
for training and half for its data, so two trials run at once on a 2-core machine.

Asks for pretrained weights; when they cannot be had (offline, not cached) it says so loudly and trains
from random init, recorded as weights=random on every run.

ShuffleNetV2 and RegNetY-3.2GF rather than MobileNetV3-Large: from random init, MobileNetV3's BatchNorm
(momentum 0.01) running statistics are still far off after the few hundred steps a CPU demo affords, so
its test accuracy sits at chance while its training accuracy climbs. With ImageNet weights it trains
like the others; ``--backbones mobilenet_v3_large`` runs it.
"""

import sys

from rayexp.cli import SweepDefaults, main
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig

DEMO = SweepDefaults(
    description=__doc__,
    settings=SweepSettings(
        experiment="demo",
        backbones=("shufflenet_v2_x2_0", "regnet_y_3_2gf"),
        datasets=("digits",),
        fractions=(0.25, 0.5),
        seeds=(0, 1, 2),
        train=TrainConfig(max_epochs=2, patience=2),
        batch_size=16,
        worker_cpus=0.5,
        data_cpus=0.5,
    ),
    fallback_to_random_weights=True,
)

if __name__ == "__main__":
    sys.exit(main(DEMO))
