"""EuroSAT (RGB): 27,000 Sentinel-2 patches of 64x64 in 10 land-cover classes.

``EuroSAT.zip`` holds ``2750/<Class>/<Class>_<n>.jpg``. There is no official split: stratified 70/30 with
a fixed seed, which gives the paper's 18,900 / 8,100 exactly. The JPEGs are RGB and smaller than the
training size, so the writer stores them byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, find_or_extract, source_checksums
from rayexp.data.records import Source
from rayexp.data.sources.folder import class_folder_records

DATASETS = ("eurosat",)
ARCHIVE = "EuroSAT.zip"
IMAGES = "2750"
# torchvision's EuroSAT download (torchgeo's mirror of the original http://madm.dfki.de/files/sentinel/EuroSAT.zip,
# pinned to a revision) and the md5 torchvision verifies it against.
URL = "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
CHECKSUMS = {ARCHIVE: "md5:c8fa014336c82ac7804f0398fcb19387"}
SUFFIXES = (".jpg", ".jpeg")
TEST_FRACTION = 0.3


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[ARCHIVE])]


def local_help(name: str) -> str:
    return (
        f"download {ARCHIVE} (RGB version; https://github.com/phelber/EuroSAT, or {URL}) and pass --source "
        f"the archive, the folder holding it, or the extracted {IMAGES}/ folder"
    )


def _images_folder(root: Path, work: Path) -> tuple[Path, bool]:
    """The ``2750`` folder of class folders, and whether it came from the verified archive."""
    if (root / "AnnualCrop").is_dir():  # --source is the extracted 2750/ itself
        return root, False
    folder = find_or_extract(root, work, ARCHIVE, IMAGES, URL, CHECKSUMS[ARCHIVE])
    return folder / IMAGES, folder == work


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    images, from_archive = _images_folder(Path(root), Path(work))
    classes, records = class_folder_records(images, SUFFIXES, f"{IMAGES}/", f"{IMAGES}/<Class>/<Class>_<n>.jpg")
    checksums = source_checksums(from_archive, ARCHIVE, CHECKSUMS[ARCHIVE], [r.image for r in records], images, IMAGES)
    return Source(
        classes=classes,
        records=records,
        split_rule="stratified 70/30, fixed seed",
        test_fraction=TEST_FRACTION,
        checksums=checksums,
    )
