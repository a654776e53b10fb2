"""The offline demo: 2 small backbones x digits x fractions {0.1, 1.0} x seeds {0, 1, 2} = 12 trials.

Runs on a local Ray instance, CPU only, logs to a local MLflow store and prints the best-of-three table.
Asks for pretrained weights; when they cannot be had (offline, not cached) it says so loudly and trains
from random init, recorded as weights=random on every run.
"""

import sys

from rayexp.cli import SweepDefaults, main

DEMO = SweepDefaults(
    description=__doc__,
    experiment="demo",
    backbones=["mobilenet_v3_large", "shufflenet_v2_x2_0"],
    datasets=["digits"],
    fractions=[0.1, 1.0],
    seeds=[0, 1, 2],
    max_epochs=6,
    patience=3,
    batch_size=64,
    fallback_to_random_weights=True,
)

if __name__ == "__main__":
    sys.exit(main(DEMO))
