"""Stanford Cars (196 classes, official split 8,144 / 8,041), from a copy the user downloaded.

The original host (ai.stanford.edu/~jkrause/cars) is gone, so nothing is downloaded; ``--source``
points at a folder (or an archive, or a folder of archives) holding one of

* the devkit layout: ``cars_train_annos.mat`` (usually in ``devkit/``) and
  ``cars_test_annos_withlabels.mat``, each with a struct array ``annotations`` (fields ``bbox_x1``,
  ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class`` (1-based), ``fname``), ``devkit/cars_meta.mat``
  (``class_names``), and the images in ``cars_train/`` and ``cars_test/`` (Kaggle's extra nesting
  ``cars_train/cars_train/`` is fine);
* the all-in-one layout: ``cars_annos.mat`` (``annotations`` with ``relative_im_path``, ``class`` and
  ``test``; ``class_names``) beside ``car_ims/``;
* class folders ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (class names sorted).

The files may sit a few folders down (``stanford_cars/``, ``car_devkit/devkit/``), as the mirrors
ship them. No checksum is published for any mirror: the manifest records the sha256 of each
annotation file and archive read, so a run can be traced to its copy.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from rayexp.data.download import RemoteFile, file_digest, safe_extract
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("stanford_cars",)
TRAIN_ANNOS = "cars_train_annos.mat"
TEST_ANNOS = "cars_test_annos_withlabels*.mat"  # Kaggle downloads may add " (1)"
META = "cars_meta.mat"
ALL_ANNOS = "cars_annos.mat"
ARCHIVE_SUFFIXES = (".tgz", ".tar", ".tar.gz", ".zip")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
MAX_DEPTH = 4


def remote_files(name: str) -> list[RemoteFile]:
    return []


def local_help(name: str) -> str:
    return (
        "Stanford Cars' original host is gone, so download a copy by hand and pass --source the folder (or archive) "
        "holding it. "
        "Either (a) the devkit layout, as torchvision reads it "
        "(https://github.com/pytorch/vision/issues/7545#issuecomment-1631441616): "
        "the images from Kaggle https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset (cars_train/, "
        "cars_test/), "
        "the devkit https://github.com/pytorch/vision/files/11644847/car_devkit.tgz (devkit/cars_train_annos.mat, "
        "devkit/cars_meta.mat) "
        "and the test labels cars_test_annos_withlabels.mat (linked from that torchvision issue; "
        "devkit/cars_test_annos.mat has no labels), "
        "all in one folder; or (b) class folders train/<class>/ and test/<class>/, e.g. Kaggle "
        "https://www.kaggle.com/datasets/cyizhuo/stanford-cars-by-classes-folder; or (c) cars_annos.mat beside "
        "car_ims/ (the original all-in-one release)"
    )


@dataclass
class _Scan:
    """What a breadth-first look a few folders down found: .mat files and folders by name, shallowest first."""

    mats: dict[str, Path] = field(default_factory=dict)
    dirs: dict[str, list[Path]] = field(default_factory=dict)
    archives: list[Path] = field(default_factory=list)

    def mat(self, pattern: str) -> Path | None:
        names = sorted(n for n in self.mats if fnmatch.fnmatch(n, pattern))
        return self.mats[names[0]] if names else None


def _scan(root: Path) -> _Scan:
    scan, level = _Scan(), [root]
    for depth in range(MAX_DEPTH + 1):
        below = []
        for folder in level:
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    scan.dirs.setdefault(entry.name, []).append(entry)
                    below.append(entry)
                elif entry.suffix == ".mat":
                    scan.mats.setdefault(entry.name, entry)
                elif depth == 0 and entry.name.lower().endswith(ARCHIVE_SUFFIXES):
                    scan.archives.append(entry)
        level = below
    return scan


def _load_mat(path: Path) -> dict:
    try:
        return loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError) as exc:
        raise RayexpError(f"{path} is not a readable MATLAB file ({exc})") from None


def _annotations(path: Path, name_field: str) -> np.ndarray:
    """The ``annotations`` struct array of ``path``, checked to carry ``class`` and ``name_field``."""
    mat = _load_mat(path)
    if "annotations" not in mat:
        raise RayexpError(f"{path} has no variable 'annotations'; is it a Stanford Cars annotation file?")
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    if "class" not in fields:
        raise RayexpError(
            f"{path} has no 'class' field: it is the unlabelled test file; get cars_test_annos_withlabels.mat "
            f"({local_help('stanford_cars')})"
        )
    if name_field not in fields:
        raise RayexpError(f"{path}: annotations have no {name_field!r} field (fields: {', '.join(fields)})")
    return annotations


def _class_names(path: Path) -> list[str]:
    mat = _load_mat(path)
    if "class_names" not in mat:
        raise RayexpError(f"{path} has no variable 'class_names'")
    return [str(c) for c in np.atleast_1d(mat["class_names"])]


def _labels(annotations: np.ndarray, n_classes: int, path: Path) -> list[int]:
    labels = [int(c) for c in annotations["class"]]
    if labels and (min(labels) < 1 or max(labels) > n_classes):
        raise RayexpError(f"{path}: class should be 1..{n_classes}, found {min(labels)}..{max(labels)}")
    return [c - 1 for c in labels]


def _image_dir(scan: _Scan, name: str, sample: str, annos: Path) -> Path:
    """The folder called ``name`` that holds ``sample`` (the mirrors nest ``cars_train/cars_train/``)."""
    for folder in scan.dirs.get(name, []):
        if (folder / sample).is_file():
            return folder
    raise RayexpError(
        f"no {name}/ folder holding {sample} (named in {annos}) found; put the {name} images beside the annotations"
    )


def _check_present(paths: list[Path], where: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise RayexpError(f"{len(missing)} image(s) named in {where} are missing, e.g. {missing[0]}")


def _devkit(scan: _Scan, train_annos: Path, test_annos: Path) -> tuple[list[str], list[SourceRecord], list[Path]]:
    meta = scan.mat(META)
    if meta is None:
        raise RayexpError(
            f"found {train_annos.name} but no {META} (class names) near it; it ships in devkit/ with {TRAIN_ANNOS}"
        )
    classes = _class_names(meta)
    records: list[SourceRecord] = []
    for split, annos, folder_name in (("train", train_annos, "cars_train"), ("test", test_annos, "cars_test")):
        annotations = _annotations(annos, "fname")
        fnames = [str(f) for f in annotations["fname"]]
        folder = _image_dir(scan, folder_name, fnames[0], annos)
        paths = [folder / f for f in fnames]
        _check_present(paths, str(annos))
        labels = _labels(annotations, len(classes), annos)
        records += [SourceRecord(p, k, f"{folder_name}/{f}", split=split) for p, f, k in zip(paths, fnames, labels)]
    return classes, records, [meta, train_annos, test_annos]


def _all_in_one(scan: _Scan, annos: Path) -> tuple[list[str], list[SourceRecord], list[Path]]:
    classes = _class_names(annos)
    annotations = _annotations(annos, "relative_im_path")
    if "test" not in (annotations.dtype.names or ()):
        raise RayexpError(f"{annos}: annotations have no 'test' field, so the official split is unknown")
    rels = [str(r).replace("\\", "/") for r in annotations["relative_im_path"]]
    bases = [annos.parent] + [d.parent for d in scan.dirs.get(rels[0].split("/")[0], [])]
    base = next((b for b in bases if (b / rels[0]).is_file()), None)
    if base is None:
        raise RayexpError(f"{rels[0]} (named in {annos}) not found beside it; extract car_ims.tgz next to {annos.name}")
    paths = [base / r for r in rels]
    _check_present(paths, str(annos))
    labels = _labels(annotations, len(classes), annos)
    splits = ["test" if int(t) else "train" for t in annotations["test"]]
    records = [SourceRecord(p, k, r, split=s) for p, r, k, s in zip(paths, rels, labels, splits)]
    return classes, records, [annos]


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(scan: _Scan) -> Path | None:
    """The shallowest folder holding both ``train/`` and ``test/`` folders of class folders."""
    for train in scan.dirs.get("train", []):
        test = train.parent / "test"
        if test.is_dir() and _class_folders(train) and _class_folders(test):
            return train.parent
    return None


def _folders(base: Path) -> tuple[list[str], list[SourceRecord]]:
    split_dirs = {"train": base / "train", "test": base / "test"}
    classes = sorted({c.name for d in split_dirs.values() for c in _class_folders(d)})
    index = {c: i for i, c in enumerate(classes)}
    records: list[SourceRecord] = []
    for split, folder in split_dirs.items():
        for class_dir in _class_folders(folder):
            images = sorted(
                p
                for p in class_dir.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not images:
                raise RayexpError(
                    f"class folder {class_dir} has no images: an empty class is an error; remove it or add images"
                )
            records += [
                SourceRecord(p, index[class_dir.name], p.relative_to(base).as_posix(), split=split) for p in images
            ]
    return classes, records


def _read(scan: _Scan) -> tuple[list[str], list[SourceRecord], list[Path], str] | None:
    """Classes, records, the annotation files read and the rule, from the first layout found; None if none."""
    train_annos, test_annos = scan.mat(TRAIN_ANNOS), scan.mat(TEST_ANNOS)
    if train_annos and test_annos:
        return (*_devkit(scan, train_annos, test_annos), f"official ({TRAIN_ANNOS} vs {test_annos.name})")
    if scan.mat(ALL_ANNOS) and "car_ims" in scan.dirs:
        return (*_all_in_one(scan, scan.mat(ALL_ANNOS)), f"official ('test' field of {ALL_ANNOS})")
    base = _split_folders(scan)
    if base is not None:
        return (*_folders(base), [], "official (train/ vs test/ class folders)")
    if train_annos:
        raise RayexpError(
            f"found {train_annos} but not cars_test_annos_withlabels.mat, which holds the test labels "
            f"(the devkit's cars_test_annos.mat has none); {local_help('stanford_cars')}"
        )
    return None


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    scan = _scan(root)
    found = _read(scan)
    archives: list[Path] = []
    if found is None and scan.archives:
        # Archives as downloaded (Kaggle's zip, car_devkit.tgz, cars_train.tgz...): extract them all.
        archives = scan.archives
        for archive in archives:
            safe_extract(archive, work / archive.name.split(".")[0])
        found = _read(_scan(work))
    if found is None:
        raise RayexpError(
            f"no Stanford Cars layout found in {root}: expected {TRAIN_ANNOS} with cars_test_annos_withlabels.mat, "
            f"{META} and cars_train/, cars_test/ images; or {ALL_ANNOS} beside car_ims/; or train/<class>/ and "
            "test/<class>/ folders. " + local_help(name)
        )
    classes, records, read, rule = found
    checksums = {p.name: "sha256:" + file_digest(p) for p in archives + read}
    return Source(classes, records, rule, checksums=checksums)
