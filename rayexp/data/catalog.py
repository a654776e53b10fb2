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
    # The size of what --download (or the manual download) fetches, e.g. "345 MB" (1 MB = 10**6 bytes), from the
    # source cited beside each value in CATALOG (a checksum list, an LFS pointer or the source module itself, for
    # the very file(s) rayexp fetches); None where no such source was found (shown as "?": never guessed).
    download_size: str | None = None

    @property
    def images(self) -> int:
        """The paper's image count, train and test together."""
        return self.train + self.test


def _paper(name, title, domain, classes, train, test, source, split_rule, **kw) -> DatasetInfo:
    return DatasetInfo(name, title, domain, classes, train, test, source, split_rule, **kw)


_BREAKHIS = dict(input_size=BREAKHIS_SIZE, augment=False, balanced_accuracy=True, encoding="png")

# download_size values: 1 MB = 10**6 bytes. An exact byte count is cited where one is published for the very file(s)
# rayexp fetches (same URL, or the same checksum rayexp verifies); "Mila" = the git-annex keys (MD5E-s<bytes>--<md5>)
# in github.com/datasets-mila/datasets--<name>, whose md5 is the one rayexp's source module checks.
_BREAKHIS_SIZE = "1.6 GB"  # BreaKHis_v1.tar.gz, "about 1.6 GB" as rayexp/data/sources/breakhis.py states it

CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        # cifar-10-python.tar.gz: 170,498,071 bytes, Mila datasets--cifar10 (md5 c58f3010..., the URL rayexp uses);
        # the Toronto page (cs.toronto.edu/~kriz/cifar.html) lists the same file as "163 MB" (MiB).
        _paper(
            "cifar10",
            "CIFAR-10",
            "natural",
            10,
            50_000,
            10_000,
            "cifar",
            "official",
            encoding="png",
            download_size="170 MB",
        ),
        # cifar-100-python.tar.gz: 169,001,437 bytes, Mila datasets--cifar100 (md5 eb9058c3..., fetched from
        # www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, the URL rayexp uses).
        _paper(
            "cifar100",
            "CIFAR-100",
            "natural",
            100,
            50_000,
            10_000,
            "cifar",
            "official, fine labels",
            encoding="png",
            download_size="169 MB",
        ),
        # tiny-imagenet-200.zip: 248,100,043 bytes, Mila datasets--tinyimagenet (md5 90528d7c..., fetched from
        # http://cs231n.stanford.edu/tiny-imagenet-200.zip).
        _paper(
            "tiny_imagenet",
            "Tiny ImageNet",
            "natural",
            200,
            100_000,
            10_000,
            "tiny_imagenet",
            "official train; val as test",
            download_size="248 MB",
        ),
        # images.tar 793,579,520 + lists.tar 481,280 = 794,060,800 bytes, mostly images.tar: TFDS
        # tensorflow_datasets/url_checksums/stanford_dogs.txt (same URLs, the sha256s rayexp checks).
        _paper(
            "stanford_dogs",
            "Stanford Dogs",
            "natural",
            120,
            12_000,
            8_580,
            "stanford_dogs",
            "official lists",
            download_size="794 MB",
        ),
        # 102flowers.tgz 344,862,509 + imagelabels.mat 502 + setid.mat 14,989 = 344,878,000 bytes, mostly the
        # .tgz: TFDS url_checksums/oxford_flowers102.txt (same URLs) and Mila datasets--flowers102 (rayexp's md5s).
        _paper(
            "flowers102",
            "Flowers-102",
            "natural",
            102,
            2_040,
            6_149,
            "flowers102",
            "train+val vs test",
            download_size="345 MB",
        ),
        # CUB_200_2011.tgz: 1,150,585,339 bytes, Mila datasets--cub200 (md5 97eceeb1..., the one rayexp checks;
        # Mila fetched it from the Google Drive mirror, TFDS url_checksums/caltech_birds2011.txt gives the same size).
        _paper(
            "cub200",
            "CUB-200-2011",
            "natural",
            200,
            5_994,
            5_794,
            "cub200",
            "official",
            download_size="1.2 GB",
        ),
        _paper(
            "stanford_cars", "Stanford Cars", "natural", 196, 8_144, 8_041, "stanford_cars", "official", local_only=True
        ),
        # food-101.tar.gz: 4,996,278,331 bytes, TFDS tensorflow_datasets/url_checksums/food101.txt (same URL).
        _paper(
            "food101",
            "Food-101",
            "natural",
            101,
            75_750,
            25_250,
            "food101",
            "official",
            download_size="5.0 GB",
        ),
        # dtd-r1.0.1.tar.gz: 625,239,812 bytes, TFDS url_checksums/dtd.txt (same URL) and Mila datasets--dtd
        # (md5 fff73e50..., the one rayexp checks).
        _paper("dtd", "DTD", "texture", 47, 1_880, 1_880, "dtd", "partition 1", download_size="625 MB"),
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
        # UCMerced_LandUse.zip: 332,468,434 bytes, the LFS pointer of huggingface.co/datasets/torchgeo/ucmerced
        # (commit 7f39ac2, unchanged at rayexp's revision 7c5ef34); TFDS url_checksums/uc_merced.txt gives the same
        # size and sha256 for the original weegee.vision.ucmerced.edu file.
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
            download_size="332 MB",
        ),
        # EuroSAT.zip: 94,280,567 bytes, TFDS url_checksums/eurosat.txt (madm.dfki.de original, sha256 8ebea626...);
        # huggingface.co/datasets/torchgeo/eurosat's EuroSAT.zip (uploaded in c877bcd, rayexp's revision) has that
        # same sha256 in its LFS details ("94.3 MB").
        _paper(
            "eurosat",
            "EuroSAT (RGB)",
            "remote sensing",
            10,
            18_900,
            8_100,
            "eurosat",
            "stratified 70/30",
            download_size="94 MB",
        ),
        # Plant_leaf_diseases_dataset_without_augmentation.zip: 868,032,562 bytes, TFDS
        # url_checksums/plant_village.txt (same Mendeley file, the sha256 rayexp checks).
        _paper(
            "plantvillage",
            "PlantVillage",
            "plant",
            39,
            44_343,
            11_105,
            "plantvillage",
            "stratified 80/20",
            download_size="868 MB",
        ),
        _paper(
            "plantclef", "PlantCLEF (subset)", "plant", 20, 10_455, 1_135, "folder", "given folders", local_only=True
        ),
        # Galaxy10_DECals.h5: "2.5 GB" as rayexp/data/sources/galaxy10.py states it; astroNN's docs
        # (henrysky/astroNN docs/source/galaxy10.rst) give "Size: 2.54 GB" for the file with rayexp's sha256.
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
            download_size="2.5 GB",
        ),
        # The four BreakHis entries share one archive, BreaKHis_v1.tar.gz (_BREAKHIS_SIZE).
        _paper(
            "breakhis_40x",
            "BreakHis 40x",
            "medical",
            2,
            1_398,
            606,
            "breakhis",
            "by patient, ~70/30",
            download_size=_BREAKHIS_SIZE,
            **_BREAKHIS,
        ),
        _paper(
            "breakhis_100x",
            "BreakHis 100x",
            "medical",
            2,
            1_458,
            632,
            "breakhis",
            "by patient, ~70/30",
            download_size=_BREAKHIS_SIZE,
            **_BREAKHIS,
        ),
        _paper(
            "breakhis_200x",
            "BreakHis 200x",
            "medical",
            2,
            1_411,
            611,
            "breakhis",
            "by patient, ~70/30",
            download_size=_BREAKHIS_SIZE,
            **_BREAKHIS,
        ),
        _paper(
            "breakhis_400x",
            "BreakHis 400x",
            "medical",
            2,
            1_276,
            553,
            "breakhis",
            "by patient, ~70/30",
            download_size=_BREAKHIS_SIZE,
            **_BREAKHIS,
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
