"""CUB-200-2011 (Caltech): 200 bird species, the official train/test split (5,994 / 5,794).

The list files key every image by a 1-based id: ``images.txt`` (id path), ``image_class_labels.txt``
(id class), ``train_test_split.txt`` (id is_train) and ``classes.txt`` (class name). Labels follow the
official class ids, so class ``k`` (1-based) is label ``k - 1``.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, file_digest, locate_dataset_folder
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("cub200",)

ARCHIVE = "CUB_200_2011.tgz"
FOLDER = "CUB_200_2011"
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
# The archive's md5 as the Avalanche library's CUB200 dataset checks it.
CHECKSUMS = {"cub200": "md5:97eceeb196236b17998738112f37df78"}
LIST_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[name])]


def local_help(name: str) -> str:
    return f"download {URL} and pass --source the archive, the folder holding it, or the extracted {FOLDER} folder"


def _table(path: Path) -> dict[int, str]:
    """``{id: rest of the line}`` of a space-separated list file keyed by an integer id."""
    if not path.is_file():
        raise RayexpError(f"expected {path.name} at {path}; is {path.parent} a complete {FOLDER} folder?")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value.strip():
            raise RayexpError(f"{path} line {n}: expected '<id> <value>', got {line!r}")
        table[int(key)] = value.strip()
    return table


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    checksum = CHECKSUMS[name]
    folder, from_archive = locate_dataset_folder(root, work, ARCHIVE, FOLDER, "images.txt", URL, checksum)
    images, labels, is_train, class_names = (_table(folder / f) for f in LIST_FILES)
    if sorted(class_names) != list(range(1, len(class_names) + 1)):
        raise RayexpError(f"{folder / 'classes.txt'}: class ids should be 1..{len(class_names)}")
    classes = [class_names[k] for k in sorted(class_names)]

    records: list[SourceRecord] = []
    for image_id, rel in sorted(images.items()):
        for table, file in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise RayexpError(f"image id {image_id} ({rel}) is in images.txt but not in {folder / file}")
        label = int(labels[image_id]) - 1
        if not 0 <= label < len(classes):
            raise RayexpError(
                f"{folder / 'image_class_labels.txt'}: image id {image_id} has class {label + 1}, outside "
                f"1..{len(classes)}"
            )
        path = folder / "images" / rel
        if not path.is_file():
            raise RayexpError(f"images.txt lists {rel}, but {path} does not exist")
        if is_train[image_id] not in ("0", "1"):
            raise RayexpError(
                f"{folder / 'train_test_split.txt'}: image id {image_id} has is_train {is_train[image_id]!r}, expected "
                "0 or 1"
            )
        records.append(
            SourceRecord(path, label, f"images/{rel}", split="train" if is_train[image_id] == "1" else "test")
        )

    if from_archive and checksum:
        checksums = {ARCHIVE: checksum}
    else:
        checksums = {f"{FOLDER}/{f}": "sha256:" + file_digest(folder / f) for f in LIST_FILES}
    return Source(classes=classes, records=records, split_rule="official (train_test_split.txt)", checksums=checksums)
