"""UC Merced Land Use: 21 classes of 100 aerial TIFFs, nominally 256x256 (a few are a little smaller).

``UCMerced_LandUse.zip`` holds ``UCMerced_LandUse/Images/<class>/<class>NN.tif``. There is no official
split: stratified 80/20 with a fixed seed, over the images in sorted order so that the split does not
depend on the order the filesystem lists them in. TIFFs are stored losslessly (PNG); images smaller than
256 are kept at their size, never upscaled.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, find_or_extract, source_checksums
from rayexp.data.records import Source
from rayexp.data.sources.folder import class_folder_records

DATASETS = ("ucmerced",)
ARCHIVE = "UCMerced_LandUse.zip"
IMAGES = "UCMerced_LandUse/Images"
# torchgeo's UCMerced mirror of the original (http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip),
# pinned to a revision, and the md5 torchgeo verifies it against.
URL = "https://hf.co/datasets/torchgeo/ucmerced/resolve/7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a/UCMerced_LandUse.zip"
CHECKSUMS = {ARCHIVE: "md5:5b7ec56793786b6dc8a908e8854ac0e4"}
SUFFIXES = (".tif", ".tiff")
TEST_FRACTION = 0.2


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[ARCHIVE])]


def local_help(name: str) -> str:
    return (
        f"download {ARCHIVE} from http://weegee.vision.ucmerced.edu/datasets/landuse.html (or {URL}) and pass --source "
        f"the archive, the folder holding it, or the extracted UCMerced_LandUse/ folder"
    )


def _images_folder(root: Path, work: Path) -> tuple[Path, bool]:
    """``UCMerced_LandUse/Images``, and whether it came from the verified archive."""
    if (root / "Images").is_dir():  # --source is the extracted UCMerced_LandUse/ itself
        return root / "Images", False
    folder = find_or_extract(root, work, ARCHIVE, IMAGES, URL, CHECKSUMS[ARCHIVE])
    return folder / IMAGES, folder == work


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    images, from_archive = _images_folder(Path(root), Path(work))
    classes, records = class_folder_records(images, SUFFIXES, "Images/", f"{IMAGES}/<class>/<class>NN.tif")
    checksums = source_checksums(from_archive, ARCHIVE, CHECKSUMS[ARCHIVE], [r.image for r in records], images, IMAGES)
    return Source(
        classes=classes,
        records=records,
        split_rule="stratified 80/20 over the images in sorted order, fixed seed",
        test_fraction=TEST_FRACTION,
        checksums=checksums,
    )
