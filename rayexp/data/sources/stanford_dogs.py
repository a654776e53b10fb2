"""Stanford Dogs: ``images.tar`` and ``lists.tar`` from Stanford, split by the official lists.

``images.tar`` holds ``Images/<synset>-<breed>/<synset>_<n>.jpg``; ``lists.tar`` holds
``train_list.mat`` and ``test_list.mat`` (MATLAB: ``file_list``, a cell of paths relative to
``Images/``, and ``labels``, 1-based). The lists, not the folders, decide the split (12,000 / 8,580);
the class names are the breed part of each label's folder name, in label order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from rayexp.data.download import RemoteFile, file_digest, find_or_extract
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("stanford_dogs",)
BASE_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
# Published by TensorFlow Datasets (tensorflow_datasets/url_checksums/stanford_dogs.txt); Stanford
# publishes none.
CHECKSUMS = {
    "images.tar": "sha256:a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58",
    "lists.tar": "sha256:34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c",
}
LISTS = {"train": "train_list.mat", "test": "test_list.mat"}


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(BASE_URL + f, f, CHECKSUMS[f]) for f in ("images.tar", "lists.tar")]


def local_help(name: str) -> str:
    return (
        f"download images.tar and lists.tar from {BASE_URL} "
        "(http://vision.stanford.edu/aditya86/ImageNetDogs/main.html) "
        "and pass --source the folder holding them (or the folder where they were extracted: Images/ and "
        "train_list.mat, test_list.mat)"
    )


def _strings(cell: np.ndarray) -> list[str]:
    """The strings of a MATLAB cell array of char arrays, whatever shape loadmat gave it."""
    return [
        str(np.asarray(item).ravel()[0]) if np.asarray(item).size else ""
        for item in np.asarray(cell, dtype=object).ravel()
    ]


def read_list(path: Path) -> tuple[list[str], list[int]]:
    """(``file_list``, 1-based ``labels``) of one of the official list files."""
    try:
        mat = loadmat(path)
    except (ValueError, TypeError, OSError) as exc:
        raise RayexpError(f"{path} is not a readable MATLAB file ({exc}); is it the one from lists.tar?") from None
    for key in ("file_list", "labels"):
        if key not in mat:
            raise RayexpError(f"{path} has no variable {key!r}; is it the one from lists.tar?")
    files = _strings(mat["file_list"])
    labels = [int(v) for v in np.asarray(mat["labels"]).ravel()]
    if len(files) != len(labels):
        raise RayexpError(f"{path}: {len(files)} files but {len(labels)} labels")
    return files, labels


def _class_names(entries: list[tuple[str, int]], where: Path) -> list[str]:
    """Breed names in label order, from the folder each label's files live in."""
    folders: dict[int, str] = {}
    for rel, label in entries:
        folder = rel.replace("\\", "/").split("/")[0]
        if folders.setdefault(label, folder) != folder:
            raise RayexpError(
                f"{where}: label {label} is used for both {folders[label]}/ and {folder}/; the lists are inconsistent"
            )
    n = max(folders)
    missing = [k for k in range(1, n + 1) if k not in folders]
    if min(folders) < 1 or missing:
        raise RayexpError(f"{where}: labels should run 1..{n}; missing {missing[:5]}")
    return [folders[k].split("-", 1)[-1] for k in range(1, n + 1)]


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    lists = find_or_extract(root, work, "lists.tar", LISTS["train"], BASE_URL + "lists.tar", CHECKSUMS["lists.tar"])
    images = (
        find_or_extract(root, work, "images.tar", "Images", BASE_URL + "images.tar", CHECKSUMS["images.tar"]) / "Images"
    )
    checksums: dict[str, str] = {}
    if lists == work:
        checksums["lists.tar"] = CHECKSUMS["lists.tar"]
    if images.parent == work:
        checksums["images.tar"] = CHECKSUMS["images.tar"]

    entries: list[tuple[str, int, str]] = []
    for split_name, filename in LISTS.items():
        path = lists / filename
        if not path.is_file():
            raise RayexpError(
                f"expected {filename} beside {LISTS['train']} in {lists} (from lists.tar, {BASE_URL}lists.tar)"
            )
        if lists != work:
            checksums[filename] = "sha256:" + file_digest(path)
        files, labels = read_list(path)
        entries += [(f, k, split_name) for f, k in zip(files, labels)]

    classes = _class_names([(f, k) for f, k, _ in entries], lists)
    missing = [f for f, _, _ in entries if not (images / f).is_file()]
    if missing:
        raise RayexpError(
            f"{len(missing)} image(s) of the official lists are missing under {images}, e.g. {missing[0]}; is "
            "images.tar fully extracted?"
        )
    records = [SourceRecord(images / f, k - 1, f.replace("\\", "/"), split=s) for f, k, s in entries]
    return Source(classes, records, "official lists (train_list.mat vs test_list.mat)", checksums=checksums)
