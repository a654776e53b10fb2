"""EuroSAT (RGB): 27,000 Sentinel-2 patches of 64x64 in 10 land-cover classes.

``EuroSAT.zip`` holds ``2750/<Class>/<Class>_<n>.jpg``. There is no official split: stratified 70/30 with
a fixed seed, which gives the paper's 18,900 / 8,100 exactly. The JPEGs are RGB and smaller than the
training size, so the writer stores them byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, find_or_extract, tree_digest
from rayexp.data.shards import Source, SourceRecord
from rayexp.errors import RayexpError

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
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise RayexpError(f"{images} has no class folders; expected {IMAGES}/<Class>/<Class>_<n>.jpg")
    records = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        if not files:
            raise RayexpError(f"EuroSAT class folder {class_dir} has no .jpg images")
        records += [SourceRecord(p, label, f"{IMAGES}/{class_dir.name}/{p.name}") for p in files]
    if from_archive:
        checksums = {ARCHIVE: CHECKSUMS[ARCHIVE]}
    else:
        checksums = {f"{IMAGES}/ ({len(records)} images)": tree_digest([r.image for r in records], images)}
    return Source(
        classes=[p.name for p in class_dirs],
        records=records,
        split_rule="stratified 70/30, fixed seed",
        test_fraction=TEST_FRACTION,
        checksums=checksums,
    )
