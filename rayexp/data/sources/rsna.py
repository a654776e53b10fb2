"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2): 26,684 chest radiographs as DICOM files.

Local only: the competition data needs a Kaggle login. ``stage_2_train_labels.csv`` has one row per
bounding box (``patientId,x,y,width,height,Target``; a patient without boxes has one row with empty box
columns and Target 0), and the images are ``stage_2_train_images/<patientId>.dcm``.

Default: one row per patient, label = max Target, stratified 80/20 with the writer's fixed seed.
``split="paper"`` keeps every CSV row (30,227), as the paper's counts do: a patient with three boxes is
three rows of the same image, which may land on both sides of the split.

Pixels: ``pixel_array`` scaled from the range its ``BitsStored`` allows (0..2^BitsStored-1, signed data
shifted up by 2^(BitsStored-1)) to 0..255, clipped, so the competition's 8-bit images pass unchanged;
MONOCHROME1 (white = 0) is inverted so that every image is stored as MONOCHROME2.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pydicom

from rayexp.data.download import RemoteFile, file_digest, find_or_extract
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("rsna_pneumonia",)
PAGE = "https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/data"
ARCHIVE = "rsna-pneumonia-detection-challenge.zip"
LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
CLASSES = ["no_lung_opacity", "lung_opacity"]  # Target 0 / 1, in the competition's terms


def remote_files(name: str) -> list[RemoteFile]:
    return []


def local_help(name: str) -> str:
    return (
        f"RSNA Pneumonia needs a Kaggle login: accept the competition rules at {PAGE}, download {ARCHIVE} "
        f"(e.g. `kaggle competitions download -c rsna-pneumonia-detection-challenge`) and pass --source the zip, "
        f"or the folder holding {LABELS} and {IMAGES}/"
    )


def to_uint8(dataset) -> np.ndarray:
    """The first frame of a DICOM dataset as uint8, 0..255, white = high (see the module docstring)."""
    array = dataset.pixel_array
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        array = array[0]
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)))
    values = array.astype(np.float64)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        values += 2.0 ** (bits - 1)
    values = np.clip(np.round(values * (255.0 / (2.0**bits - 1))), 0, 255).astype(np.uint8)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        values = 255 - values
    return values


def read_dicom(path: str) -> np.ndarray:
    """The image of one DICOM file (module level, so that a partial of it pickles to worker processes)."""
    return to_uint8(pydicom.dcmread(path))


def _rows(path: Path) -> list[tuple[str, int]]:
    """(patientId, Target) of every CSV row, in file order."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"patientId", "Target"} <= set(reader.fieldnames):
            raise RayexpError(f"{path}: expected the header {','.join(COLUMNS)}, got {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, 2):
            target = (row["Target"] or "").strip()
            if target not in ("0", "1") or not row["patientId"]:
                raise RayexpError(f"{path} line {line}: expected a patientId and Target 0 or 1, got {row}")
            rows.append((row["patientId"].strip(), int(target)))
    if not rows:
        raise RayexpError(f"{path} has no rows")
    return rows


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    root = Path(root)
    base = find_or_extract(root, Path(work), ARCHIVE, LABELS)
    labels_csv = base / LABELS
    rows = _rows(labels_csv)
    patients: dict[str, int] = {}
    for patient, target in rows:
        patients[patient] = max(patients.get(patient, 0), target)
    for patient in patients:
        if not (base / IMAGES / f"{patient}.dcm").is_file():
            raise RayexpError(
                f"{labels_csv} lists patient {patient} but {base / IMAGES / (patient + '.dcm')} is missing; is "
                f"{IMAGES}/ complete?"
            )

    def image(patient: str) -> functools.partial:
        return functools.partial(read_dicom, str((base / IMAGES / f"{patient}.dcm").resolve()))

    checksums = {LABELS: "sha256:" + file_digest(labels_csv)}
    if base != root and (root / ARCHIVE).is_file():
        checksums[ARCHIVE] = "sha256:" + file_digest(root / ARCHIVE)
    if split == "paper":
        records = [SourceRecord(image(p), t, f"{p}#{row}", group=p) for row, (p, t) in enumerate(rows)]
        rule = "every CSV row (one per box), stratified 80/20"
        notes = [
            f"all {len(rows)} CSV rows kept as in the paper: {len(rows) - len(patients)} rows repeat the image of a "
            "patient with several boxes, and copies of one image can fall on both sides of the split",
        ]
    else:
        records = [SourceRecord(image(p), t, p, group=p) for p, t in patients.items()]
        rule = "one row per patient (label = max Target), stratified 80/20"
        notes = [
            f"one row per patient: {len(patients)} images where the paper counts the {len(rows)} CSV rows (one per box)"
        ]
    return Source(CLASSES, records, rule, test_fraction=0.2, checksums=checksums, notes=notes)
