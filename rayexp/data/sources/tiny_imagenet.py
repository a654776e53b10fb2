"""Tiny ImageNet (cs231n): the official 100,000 training images, and the official validation set as test.

The official test images carry no labels, so the 10,000 labelled validation images are the test split,
as in the paper. Labels follow the order of ``wnids.txt``.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, file_digest, locate_dataset_folder
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("tiny_imagenet",)

ARCHIVE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# cs231n publishes no checksum; this is the archive's md5 as the Avalanche library's TinyImagenet checks it.
CHECKSUMS = {"tiny_imagenet": "md5:90528d7ca1a48142e341f4ef8d21d0de"}
JPEG_SUFFIXES = (".jpeg", ".jpg")


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
    folder, from_archive = locate_dataset_folder(root, work, ARCHIVE, FOLDER, "wnids.txt", URL, checksum)
    wnids = _lines(folder / "wnids.txt", folder)
    index = {wnid: i for i, wnid in enumerate(wnids)}

    records: list[SourceRecord] = []
    for wnid in wnids:
        images_dir = folder / "train" / wnid / "images"
        images = (
            sorted(p for p in images_dir.glob("*") if p.suffix.lower() in JPEG_SUFFIXES) if images_dir.is_dir() else []
        )
        if not images:
            raise RayexpError(f"expected training images of {wnid} in {images_dir}; is {folder} complete?")
        records += [SourceRecord(p, index[wnid], str(p.relative_to(folder)), split="train") for p in images]

    annotations = folder / "val" / "val_annotations.txt"
    for n, line in enumerate(_lines(annotations, folder), 1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise RayexpError(f"{annotations} line {n}: expected tab-separated file, wnid, x, y, w, h; got {line!r}")
        filename, wnid = fields[0], fields[1]
        if wnid not in index:
            raise RayexpError(f"{annotations} line {n}: class {wnid!r} is not in wnids.txt")
        image = folder / "val" / "images" / filename
        if not image.is_file():
            raise RayexpError(f"{annotations} line {n} names {filename}, but {image} does not exist")
        records.append(SourceRecord(image, index[wnid], f"val/images/{filename}", split="test"))

    if from_archive and checksum:
        checksums = {ARCHIVE: checksum}
    else:
        checksums = {
            f"{FOLDER}/{rel}": "sha256:" + file_digest(folder / rel) for rel in ("wnids.txt", "val/val_annotations.txt")
        }
    return Source(
        classes=wnids, records=records, split_rule="official train; official val as test", checksums=checksums
    )
