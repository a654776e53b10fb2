"""Food-101 (ETH Zurich): 101 dishes, the official split of 750 training and 250 test images per class.

``meta/train.txt`` and ``meta/test.txt`` list ``<class>/<id>`` (no extension) for
``images/<class>/<id>.jpg``; labels follow the order of ``meta/classes.txt``.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, file_digest, locate_dataset_folder
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("food101",)

ARCHIVE = "food-101.tar.gz"
FOLDER = "food-101"
URL = "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
# torchvision.datasets.Food101's _MD5 for this archive.
CHECKSUMS = {"food101": "md5:85eeb15f3717b99a5da872d97d918f87"}
META_FILES = ("meta/classes.txt", "meta/train.txt", "meta/test.txt")


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[name])]


def local_help(name: str) -> str:
    return f"download {URL} and pass --source the archive, the folder holding it, or the extracted {FOLDER} folder"


def _lines(path: Path, folder: Path) -> list[str]:
    if not path.is_file():
        raise RayexpError(f"expected {path.name} at {path}; is {folder} a complete {FOLDER} folder?")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    checksum = CHECKSUMS[name]
    folder, from_archive = locate_dataset_folder(root, work, ARCHIVE, FOLDER, "meta/classes.txt", URL, checksum)
    classes = _lines(folder / "meta" / "classes.txt", folder)
    index = {c: i for i, c in enumerate(classes)}

    records: list[SourceRecord] = []
    seen: dict[str, str] = {}
    for split_name in ("train", "test"):
        listing = folder / "meta" / f"{split_name}.txt"
        for n, entry in enumerate(_lines(listing, folder), 1):
            class_name = entry.split("/", 1)[0]
            if class_name not in index or "/" not in entry:
                raise RayexpError(
                    f"{listing} line {n}: expected '<class>/<id>' with a class from classes.txt, got {entry!r}"
                )
            if entry in seen:
                raise RayexpError(f"{entry} is listed twice (in meta/{seen[entry]}.txt and meta/{split_name}.txt)")
            seen[entry] = split_name
            path = folder / "images" / f"{entry}.jpg"
            if not path.is_file():
                raise RayexpError(f"{listing} line {n} names {entry}, but {path} does not exist")
            records.append(SourceRecord(path, index[class_name], f"images/{entry}.jpg", split=split_name))

    if from_archive and checksum:
        checksums = {ARCHIVE: checksum}
    else:
        checksums = {f"{FOLDER}/{f}": "sha256:" + file_digest(folder / f) for f in META_FILES}
    return Source(
        classes=classes, records=records, split_rule="official (meta/train.txt vs meta/test.txt)", checksums=checksums
    )
