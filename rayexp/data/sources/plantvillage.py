"""PlantVillage, as Mendeley Data's "Plant leaf diseases dataset without augmentation" (Arun Pandian & Gopal, 2019).

``Plant_leaf_diseases_dataset_without_augmentation.zip`` holds one folder,
``Plant_leave_diseases_dataset_without_augmentation/`` (sic: "leave"), of 39 class folders: the 38
``<Crop>___<Disease>`` classes of PlantVillage plus ``Background_without_leaves``, 55,448 JPEGs of
256x256 in all. Some folder names hold spaces and commas (``Pepper,_bell___healthy``); they are kept as
they are. No official split: stratified 80/20 with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, find_or_extract, source_checksums
from rayexp.data.records import Source
from rayexp.data.sources.folder import class_folder_records

DATASETS = ("plantvillage",)
ARCHIVE = "Plant_leaf_diseases_dataset_without_augmentation.zip"
IMAGES = "Plant_leave_diseases_dataset_without_augmentation"
PAGE = "https://data.mendeley.com/datasets/tywbtsjrjv/1"
# Mendeley Data's file d5652a28-... of dataset tywbtsjrjv v1 (DOI 10.17632/tywbtsjrjv.1), the URL TensorFlow
# Datasets' plant_village downloads; the sha256 is the one TFDS records for it (868,032,562 bytes), which
# Mendeley's file metadata states too.
URL = "https://data.mendeley.com/public-files/datasets/tywbtsjrjv/files/d5652a28-c1d8-4b76-97f3-72fb80f94efc/file_downloaded"
CHECKSUMS = {ARCHIVE: "sha256:ac3432453984d02a86197987e775a5429d0d59e7cc7c35bcf5a8f50349b90ff0"}
SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_FRACTION = 0.2


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[ARCHIVE])]


def local_help(name: str) -> str:
    return (
        f"if the download is refused (Mendeley sometimes turns scripts away), open {PAGE} in a browser, download "
        f'{ARCHIVE} (not the augmented one; "Download All" gives a zip holding both) and pass --source that file, '
        f"the folder holding it, or its extracted {IMAGES}/ folder"
    )


def _images_folder(root: Path, work: Path) -> tuple[Path, bool]:
    """The folder of 39 class folders, and whether it came from the verified archive."""
    if (root / "Background_without_leaves").is_dir():  # --source is the class folders' parent itself
        return root, False
    nested = root / ARCHIVE.removesuffix(".zip")  # unzipped into a folder named after the zip
    if (nested / IMAGES).is_dir():
        return nested / IMAGES, False
    folder = find_or_extract(root, work, ARCHIVE, IMAGES, URL, CHECKSUMS[ARCHIVE])
    return folder / IMAGES, folder == work


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    images, from_archive = _images_folder(Path(root), Path(work))
    classes, records = class_folder_records(images, SUFFIXES, "", f"{IMAGES}/<Crop>___<Disease>/*.JPG")
    checksums = source_checksums(from_archive, ARCHIVE, CHECKSUMS[ARCHIVE], [r.image for r in records], images, IMAGES)
    return Source(
        classes=classes,
        records=records,
        split_rule="stratified 80/20, fixed seed",
        test_fraction=TEST_FRACTION,
        checksums=checksums,
    )
