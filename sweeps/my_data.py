"""Which backbone for *my* data: one command from an image folder to a recommendation.

    python sweeps/my_data.py --source path/to/images --domain medical
    python sweeps/my_data.py --source path/to/images --budget-gpu-hours 4 --scheduler asha

``--source`` is a folder of ``<class>/`` images, a folder with ``train/`` and ``test/`` (or ``val/``)
class folders, or a CSV of ``path,label[,split]``. The command checks the data (class counts, sizes,
modes, unreadable files, duplicates across train and test) and stops on serious problems unless
``--accept-warnings``; prepares it (again only when the images changed); runs the backbones x seeds
(x ``--fractions``) on local Ray or ``--address``, selecting each trial's best epoch on a held-out
validation split; and writes the recommendation to ``--out`` (default: ``reports/my-data-<name>/``),
logged to MLflow like every sweep. The backbones' weights and the MLflow store are checked before any
image is read.
"""

import sys

from rayexp.backbones import list_backbones
from rayexp.cli import SweepDefaults
from rayexp.my_data import main
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig

MY_DATA = SweepDefaults(
    description=__doc__,
    settings=SweepSettings(
        experiment="",  # my-data-<name>
        backbones=tuple(spec.name for spec in list_backbones()),
        fractions=(1.0,),
        seeds=(0, 1, 2),
        train=TrainConfig(max_epochs=100, patience=10, selection="val"),
    ),
)

if __name__ == "__main__":
    sys.exit(main(MY_DATA))
