"""The paper's grid: 11 backbones x 20 datasets x fractions {1.0, 0.1, 0.01} x seeds {0, 1, 2} = 1,980 trials.

Never falls back to random weights: a preflight checks that every dataset is prepared and every weight
file can be had, and refuses to start otherwise.
"""

import sys

from rayexp.backbones import list_backbones
from rayexp.cli import SweepDefaults, main
from rayexp.data.catalog import PAPER_DATASETS
from rayexp.grid import PAPER_FRACTIONS, PAPER_SEEDS
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig

PAPER = SweepDefaults(
    description=__doc__,
    settings=SweepSettings(
        experiment="which-backbone",
        backbones=tuple(spec.name for spec in list_backbones()),
        datasets=tuple(PAPER_DATASETS),
        fractions=tuple(PAPER_FRACTIONS),
        seeds=tuple(PAPER_SEEDS),
        train=TrainConfig(max_epochs=100, patience=10),
    ),
    fallback_to_random_weights=False,
)

if __name__ == "__main__":
    sys.exit(main(PAPER))
