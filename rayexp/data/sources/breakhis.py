"""BreakHis: 7,909 breast-tumour histology PNGs (700x460) from 82 patients at four magnifications.

``BreaKHis_v1.tar.gz`` (UFPR) unpacks to
``BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<subtype>/<patient>/<40X|100X|200X|400X>/``
``SOB_<B|M>_<subtype>-<year>-<slide>-<mag>-<seq>.png``. Labels: benign 0, malignant 1.

Default split: by patient (``<year>-<slide>``), ~70/30 of the patients stratified on the patient's class
with a fixed seed. The patients are drawn once from every magnification's images, so a patient is on
the same side at 40X, 100X, 200X and 400X, and no patient's images are on both sides. ``split="paper"``
is the paper's image-level stratified 70/30 per magnification, which puts a patient on both sides.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rayexp.data.catalog import get_dataset_info
from rayexp.data.download import RemoteFile, file_digest, find_or_extract
from rayexp.data.records import Source, SourceRecord, stratified_test_mask
from rayexp.errors import RayexpError

DATASETS = ("breakhis_40x", "breakhis_100x", "breakhis_200x", "breakhis_400x")
ARCHIVE = "BreaKHis_v1.tar.gz"
URL = "http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz"
PAGE = "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/"
BREAST = "BreaKHis_v1/histology_slides/breast"
CLASSES = ["benign", "malignant"]
TEST_FRACTION = 0.3
PATIENT_SEED = 0  # fixed, and independent of the magnification, so all four datasets agree
NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d+)-(?P<slide>[0-9A-Za-z]+)-(?P<mag>\d+)-(?P<seq>\d+)\.png$",
    re.IGNORECASE,
)


def magnification(name: str) -> str:
    """``breakhis_40x`` -> ``40``."""
    return name.removeprefix("breakhis_").removesuffix("x")


def remote_files(name: str) -> list[RemoteFile]:
    # UFPR publishes no checksum, so --download refuses and local_help applies.
    return [RemoteFile(URL, ARCHIVE, None)]


def local_help(name: str) -> str:
    return (
        f"download {ARCHIVE} (about 1.6 GB) from {URL} (see {PAGE}) and pass --source the archive, "
        "the folder holding it, or the folder it extracts to (holding BreaKHis_v1/)"
    )


def _breast_folder(root: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """The ``.../histology_slides/breast`` folder, and the digest of the archive if one was read."""
    root = Path(root)
    for candidate in (root / BREAST, root / "histology_slides" / "breast"):
        if candidate.is_dir():
            return candidate, {}
    base = find_or_extract(root, work, ARCHIVE, BREAST, URL)
    checksums = {ARCHIVE: "sha256:" + file_digest(root / ARCHIVE)} if (root / ARCHIVE).is_file() else {}
    return base / BREAST, checksums


def _parse(path: Path, breast: Path) -> tuple[int, str, str]:
    """(label, patient, magnification) of one image, checked against the folders it sits in."""
    match = NAME.match(path.name)
    if match is None:
        raise RayexpError(f"{path}: not a BreakHis file name (SOB_<B|M>_<subtype>-<year>-<slide>-<mag>-<seq>.png)")
    label = 0 if match["cls"].upper() == "B" else 1
    folder_class = path.relative_to(breast).parts[0]
    if folder_class != CLASSES[label] or path.parent.name.upper() != f"{match['mag']}X":
        raise RayexpError(
            f"{path}: its name says {CLASSES[label]} at {match['mag']}X but it is filed under "
            f"{folder_class}/.../{path.parent.name}"
        )
    return label, f"{match['year']}-{match['slide']}", match["mag"]


def patient_splits(patients: dict[str, int]) -> dict[str, str]:
    """Each patient's side: ~30% of the patients of each class (sorted by id, fixed seed) go to test."""
    ids = sorted(patients)
    mask = stratified_test_mask(np.array([patients[p] for p in ids]), TEST_FRACTION, PATIENT_SEED)
    return {p: "test" if test else "train" for p, test in zip(ids, mask)}


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    if name not in DATASETS:
        raise RayexpError(f"breakhis source reads {', '.join(DATASETS)}, not {name!r}")
    breast, checksums = _breast_folder(Path(root), Path(work))
    mag = magnification(name)
    images = sorted(
        p for p in breast.rglob("*") if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()
    )
    parsed = [(p, *_parse(p, breast)) for p in images]
    patients: dict[str, int] = {}
    for path, label, patient, _ in parsed:
        if patients.setdefault(patient, label) != label:
            raise RayexpError(
                f"patient {patient} has both benign and malignant images (e.g. {path}); the archive looks altered"
            )
    sides = patient_splits(patients)
    paper = split == "paper"
    records = [
        SourceRecord(
            image=path,
            label=label,
            id=path.relative_to(breast).as_posix(),
            split=None if paper else sides[patient],
            group=patient,
        )
        for path, label, patient, m in parsed
        if m == mag
    ]
    if not records:
        raise RayexpError(
            f"no {mag}X images under {breast}; expected <benign|malignant>/SOB/<subtype>/<patient>/{mag}X/*.png"
        )
    info = get_dataset_info(name)
    if paper:
        rule = "image-level stratified 70/30 (the paper's split)"
        notes = [
            f"image-level split as in the paper: a patient's {mag}X images fall on both sides, so the test "
            "split leaks patients seen in training",
        ]
    else:
        n_test = sum(side == "test" for side in sides.values())
        rule = (
            f"by patient, stratified on the patient's class: {len(sides) - n_test} patients train / {n_test} test, "
            "the same at every magnification"
        )
        notes = [
            "split by patient, not by image as in the paper: train/test counts differ from the paper's "
            f"{info.train}/{info.test}"
        ]
    if len(records) != info.train + info.test:
        notes.append(f"{len(records)} images at {mag}X where the paper's train+test is {info.train + info.test}")
    return Source(CLASSES, records, rule, test_fraction=TEST_FRACTION, checksums=checksums, notes=notes)
