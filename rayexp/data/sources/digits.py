"""scikit-learn's digits: 1,797 real 8x8 handwritten digits that ship inside the package (no network).

The bundled dataset of the demo and the end-to-end tests. No official split: stratified 80/20.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rayexp.data.download import RemoteFile
from rayexp.data.records import Source, SourceRecord

DATASETS = ("digits",)


def remote_files(name: str) -> list[RemoteFile]:
    return []


def local_help(name: str) -> str:
    return "digits ship inside scikit-learn: nothing to download"


def load_source(name: str, root: Path | None = None, work: Path | None = None, split: str = "default") -> Source:
    # scikit-learn takes about a second to import and only preparing digits needs it (the tests and the
    # benchmarks import this module at start, most of them without preparing), so it is imported when used.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; stretch to 0..255 grayscale.
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    records = [
        SourceRecord(image=images[i], label=int(bunch.target[i]), id=f"digits/{i:04d}") for i in range(len(images))
    ]
    return Source(
        classes=[str(c) for c in bunch.target_names],
        records=records,
        split_rule="stratified 80/20",
        test_fraction=0.2,
    )
