"""The catalog of datasets: what each is, its domain, its training resolution and augmentation.

Counts are the paper's Table 3 (see ``shared/datasets.md``); the catalog lists all 20 paper datasets
plus ``digits``, the real images that ship inside scikit-learn and back the offline demo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rayexp.errors import RayexpError

PAPER_SIZE = (256, 256)
BREAKHIS_SIZE = (448, 672)  # (H, W)


@dataclass(frozen=True)
class DatasetInfo:
    """What the protocol needs to know about one dataset."""

    name: str
    title: str
    domain: str
    n_classes: int
    train: int
    test: int
    source: str  # name of the module under rayexp/data/sources that reads it
    split_rule: str
    input_size: tuple[int, int] = PAPER_SIZE  # (H, W) the model is trained at
    augment: bool = True  # TrivialAugmentWide on the training split
    local_only: bool = False  # needs a login or has no stable host: the user points --source at a copy
    balanced_accuracy: bool = False
    encoding: str = "jpeg"  # how shards store images: png for lossless sources
    # The size of what --download (or the manual download) fetches, as shared/datasets.md gives it; None where
    # it gives none (shown as "?": never guessed).
    download_size: str | None = None

    @property
    def images(self) -> int:
        """The paper's image count, train and test together."""
        return self.train + self.test


def _paper(name, title, domain, classes, train, test, source, split_rule, **kw) -> DatasetInfo:
    return DatasetInfo(name, title, domain, classes, train, test, source, split_rule, **kw)


_BREAKHIS = dict(input_size=BREAKHIS_SIZE, augment=False, balanced_accuracy=True, encoding="png")

CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        _paper("cifar10", "CIFAR-10", "natural", 10, 50_000, 10_000, "cifar", "official", encoding="png"),
        _paper(
            "cifar100", "CIFAR-100", "natural", 100, 50_000, 10_000, "cifar", "official, fine labels", encoding="png"
        ),
        _paper(
            "tiny_imagenet",
            "Tiny ImageNet",
            "natural",
            200,
            100_000,
            10_000,
            "tiny_imagenet",
            "official train; val as test",
        ),
        _paper("stanford_dogs", "Stanford Dogs", "natural", 120, 12_000, 8_580, "stanford_dogs", "official lists"),
        _paper("flowers102", "Flowers-102", "natural", 102, 2_040, 6_149, "flowers102", "train+val vs test"),
        _paper("cub200", "CUB-200-2011", "natural", 200, 5_994, 5_794, "cub200", "official"),
        _paper(
            "stanford_cars", "Stanford Cars", "natural", 196, 8_144, 8_041, "stanford_cars", "official", local_only=True
        ),
        _paper("food101", "Food-101", "natural", 101, 75_750, 25_250, "food101", "official"),
        _paper("dtd", "DTD", "texture", 47, 1_880, 1_880, "dtd", "partition 1"),
        _paper(
            "neu",
            "NEU surface defect",
            "surface defect",
            6,
            1_200,
            600,
            "neu",
            "stratified 200/100 per class",
            local_only=True,
            encoding="png",
        ),
        _paper(
            "ucmerced",
            "UC Merced Land Use",
            "remote sensing",
            21,
            1_680,
            420,
            "ucmerced",
            "stratified 80/20",
            encoding="png",
        ),
        _paper("eurosat", "EuroSAT (RGB)", "remote sensing", 10, 18_900, 8_100, "eurosat", "stratified 70/30"),
        _paper("plantvillage", "PlantVillage", "plant", 39, 44_343, 11_105, "plantvillage", "stratified 80/20"),
        _paper(
            "plantclef", "PlantCLEF (subset)", "plant", 20, 10_455, 1_135, "folder", "given folders", local_only=True
        ),
        _paper(
            "galaxy10",
            "Galaxy10 DECals",
            "astronomy",
            10,
            15_962,
            1_774,
            "galaxy10",
            "stratified 90/10",
            augment=False,
            encoding="png",
        ),
        _paper("breakhis_40x", "BreakHis 40x", "medical", 2, 1_398, 606, "breakhis", "by patient, ~70/30", **_BREAKHIS),
        _paper(
            "breakhis_100x", "BreakHis 100x", "medical", 2, 1_458, 632, "breakhis", "by patient, ~70/30", **_BREAKHIS
        ),
        _paper(
            "breakhis_200x", "BreakHis 200x", "medical", 2, 1_411, 611, "breakhis", "by patient, ~70/30", **_BREAKHIS
        ),
        _paper(
            "breakhis_400x", "BreakHis 400x", "medical", 2, 1_276, 553, "breakhis", "by patient, ~70/30", **_BREAKHIS
        ),
        _paper(
            "rsna_pneumonia",
            "RSNA Pneumonia",
            "medical",
            2,
            24_181,
            6_046,
            "rsna",
            "one row per patient, stratified 80/20",
            local_only=True,
            encoding="png",
        ),
        # The bundled demo dataset: 1,797 real 8x8 digits from scikit-learn. Trained at 32x32 so that a
        # CPU-only demo finishes in minutes; no augmentation (it would only slow the demo down).
        DatasetInfo(
            "digits",
            "scikit-learn digits",
            "handwriting",
            10,
            1_438,
            359,
            "digits",
            "stratified 80/20, seed 0",
            input_size=(32, 32),
            augment=False,
            encoding="png",
        ),
    ]
}

PAPER_DATASETS: tuple[str, ...] = tuple(name for name in CATALOG if name != "digits")


def get_dataset_info(name: str) -> DatasetInfo:
    """The catalog entry for ``name``, or an error listing the known names."""
    try:
        return CATALOG[name]
    except KeyError:
        raise RayexpError(f"unknown dataset {name!r}; known datasets: {', '.join(CATALOG)}") from None


def default_data_dir() -> Path:
    """Where prepared shards live: ``$RAYEXP_DATA_DIR``, else the repository's ``datasets/`` folder."""
    env = os.environ.get("RAYEXP_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "datasets"
