"""NEU surface defect database (Northeastern University): 6 classes of 300 grayscale 200x200 images.

No stable host, so the user points ``--source`` at a copy (a folder, or a .zip/.tar archive of it) in one
of two layouts:

* NEU-CLS, the original: a flat folder of ``Cr_1.bmp`` ... ``Sc_300.bmp``; the class is the part of the
  name before the last underscore, exactly (``PS`` pitted surface and ``Pa`` patches differ in case);
* NEU-DET, the detection release: ``NEU-DET/{train,validation}/images/<class>/*.jpg``.

Both become the same six classes (the NEU-DET folder names), and both are split the same way, stratified
200/100 per class with a fixed seed, as the paper does: NEU-DET's own train/validation folders are
pooled first. Grayscale becomes RGB in the writer.
"""

from __future__ import annotations

import re
from pathlib import Path

from rayexp.data.download import RemoteFile, file_digest, safe_extract, tree_digest
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("neu",)
PREFIXES = {
    "Cr": "crazing",
    "In": "inclusion",
    "Pa": "patches",
    "PS": "pitted_surface",
    "RS": "rolled-in_scale",
    "Sc": "scratches",
}
CLASSES = sorted(PREFIXES.values())
DET_SPLITS = ("train", "validation")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
TEST_FRACTION = 1 / 3  # 100 of each class's 300


def remote_files(name: str) -> list[RemoteFile]:
    return []


def local_help(name: str) -> str:
    return (
        "NEU surface defect database has no stable download: get NEU-CLS (1,800 BMPs named Cr_1.bmp ... Sc_300.bmp, "
        "from Northeastern University's Song Kechen page or a mirror) or NEU-DET "
        "(NEU-DET/{train,validation}/images/<class>/*.jpg, "
        "e.g. from Kaggle), extract it (a .rar must be unpacked first) and pass --source the folder or a .zip/.tar of "
        "it"
    )


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(base).parts)


def _bmps(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.suffix.lower() == ".bmp" and p.is_file() and _visible(p, base))


def _det_folder(base: Path) -> Path | None:
    """The folder holding ``train/images`` (NEU-DET itself), at or below ``base``."""
    for folder in [base, *sorted(p for p in base.rglob("*") if p.is_dir() and _visible(p, base))]:
        if (folder / "train" / "images").is_dir():
            return folder
    return None


def _flat_records(base: Path, files: list[Path]) -> list[SourceRecord]:
    records = []
    for path in files:
        prefix, sep, number = path.stem.rpartition("_")
        if not sep or prefix not in PREFIXES or not re.fullmatch(r"\d+", number):
            raise RayexpError(
                f"NEU image {path}: expected <prefix>_<n>.bmp with prefix one of {', '.join(PREFIXES)} (case matters); "
                "remove files that are not NEU images from the folder"
            )
        records.append(SourceRecord(path, CLASSES.index(PREFIXES[prefix]), path.relative_to(base).as_posix()))
    return records


def _det_records(base: Path, det: Path) -> list[SourceRecord]:
    records = []
    for split in DET_SPLITS:
        images = det / split / "images"
        if not images.is_dir():
            raise RayexpError(
                f"NEU-DET folder {det} has no {split}/images/ folder; expected {'/, '.join(DET_SPLITS)}/ with "
                "images/<class>/"
            )
        for class_dir in sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if class_dir.name not in CLASSES:
                raise RayexpError(f"NEU-DET class folder {class_dir} is not one of {', '.join(CLASSES)}")
            files = sorted(
                p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".bmp", ".png")
            )
            if not files:
                raise RayexpError(f"NEU-DET class folder {class_dir} has no images")
            label = CLASSES.index(class_dir.name)
            records += [SourceRecord(p, label, p.relative_to(base).as_posix()) for p in files]
    return records


def _candidates(root: Path, work: Path):
    """(folder to search, archive it came from or None): ``root`` first, then each archive in it, extracted."""
    yield root, None
    for n, archive in enumerate(sorted(p for p in root.iterdir() if _is_archive(p))):
        yield safe_extract(archive, work / f"neu-{n}"), archive


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    root, work = Path(root), Path(work)
    if not root.is_dir():
        raise RayexpError(f"NEU source {root} is not a folder; pass --source the folder or archive holding the images")
    for base, archive in _candidates(root, work):
        bmps = _bmps(base)
        det = None if bmps else _det_folder(base)
        if bmps or det:
            break
    else:
        raise RayexpError(
            f"no NEU images in {root}: expected a folder of Cr_1.bmp ... Sc_300.bmp (NEU-CLS) or "
            f"NEU-DET/train/images/<class>/*.jpg, or a .zip/.tar holding one. {local_help(name)}"
        )
    if bmps:
        records = _flat_records(base, bmps)
        layout, notes = "NEU-CLS (flat folder of BMPs)", []
    else:
        records = _det_records(base, det)
        layout = "NEU-DET (its train/validation folders pooled)"
        notes = [
            "NEU-DET's own train/validation folders (240/60 per class) are pooled and re-split 200/100 per class, as "
            "the paper does"
        ]
    if archive is not None:
        checksums = {archive.name: "sha256:" + file_digest(archive)}
    else:
        checksums = {f"{base.name}/ ({len(records)} images)": tree_digest([r.image for r in records], base)}
    return Source(
        classes=list(CLASSES),
        records=records,
        split_rule=f"{layout}: stratified 200/100 per class (test fraction 1/3), fixed seed",
        test_fraction=TEST_FRACTION,
        checksums=checksums,
        notes=notes,
    )
