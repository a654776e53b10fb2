"""A generic folder of images: PlantCLEF's subset and a user's own data.

Accepted layouts under ``--source``:

* ``<root>/<class>/*`` — one folder per class; split stratified (90/10 for PlantCLEF, 80/20 otherwise);
* ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (``val/`` counts as the test split when there
  is no ``test/``, as PlantCLEF's subset ships it) — the given split;
* a CSV file of ``path,label`` rows (an optional header, an optional third column ``split``), paths
  relative to the CSV's folder.

Class names are sorted folder names (or labels). An empty class folder is an error.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from rayexp.data.download import RemoteFile
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("plantclef",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def remote_files(name: str) -> list[RemoteFile]:
    return []


def local_help(name: str) -> str:
    if name == "plantclef":
        return (
            "PlantCLEF's 20-species subset used by the paper is not published: put its images in "
            "train/<species>/ and val/<species>/ folders (or one folder per species) and pass --source that folder"
        )
    return (
        "pass --source a folder of <class>/ images, a folder with train/ and test/ class folders, "
        "or a CSV of path,label"
    )


def _images(folder: Path, root: Path, skipped: list[str] | None = None, allow_outside: bool = False) -> list[Path]:
    """The image files under ``folder``; what is passed over (hidden, or another extension) is added to
    ``skipped``, and a file or folder whose link leads outside ``root`` is refused unless ``allow_outside``."""
    found, inside = [], root.resolve()
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if not allow_outside and not p.resolve().is_relative_to(inside):  # a link, of the file or a folder above
            raise RayexpError(
                f"{p} leads to {p.resolve()}, outside the source folder {root} (a link); copy the images in, or pass "
                "--allow-outside-paths"
            )
        relative = p.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            _skip(skipped, f"{relative} (hidden)")
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            _skip(skipped, f"{relative} (not an image extension: {', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            found.append(p)
    return found


def _skip(skipped: list[str] | None, what: str) -> None:
    if skipped is not None:
        skipped.append(what)


def _class_folders(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    folders = sorted(p for p in folder.iterdir() if p.is_dir())
    for hidden in (p for p in folders if p.name.startswith(".")):
        _skip(skipped, f"{hidden.name}/ (a hidden folder)")
    return [p for p in folders if not p.name.startswith(".")]


def _check_class_name(name: str, where: object) -> None:
    """A class name must print on one line: a newline or tab in it would break every table it appears in."""
    if not name or any(ch in name for ch in "\n\r\t") or not name.isprintable():
        raise RayexpError(f"{where}: class name {name!r} holds a control character (newline, tab, ...); rename it")


def class_folder_records(
    images: Path, suffixes: tuple[str, ...], id_prefix: str, what: str
) -> tuple[list[str], list[SourceRecord]]:
    """Sorted class folders under ``images`` and one record per image file with one of ``suffixes``.

    Shared by the sources whose archive is just a folder of class folders (EuroSAT, UC Merced,
    PlantVillage). Ids are ``<id_prefix><class>/<file>``; an empty class folder is an error.
    """
    class_dirs = _class_folders(images)
    if not class_dirs:
        raise RayexpError(f"{images} has no class folders; expected {what}")
    records: list[SourceRecord] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
        )
        if not files:
            raise RayexpError(
                f"class folder {class_dir} has no {'/'.join(suffixes)} images: an empty class is an error"
            )
        records += [SourceRecord(p, label, f"{id_prefix}{class_dir.name}/{p.name}") for p in files]
    return [p.name for p in class_dirs], records


def _encoding(paths: list[Path]) -> str:
    """JPEG sources stay JPEG; anything else (PNG, TIFF, BMP...) is stored losslessly."""
    jpeg = sum(p.suffix.lower() in (".jpg", ".jpeg") for p in paths)
    return "jpeg" if jpeg * 2 > len(paths) else "png"


def _from_csv(path: Path, *, allow_outside: bool = False) -> tuple[list[str], list[SourceRecord], str]:
    """Records from a CSV of ``path,label[,split]`` rows, paths relative to the CSV's folder.

    A CSV is often written by hand or by a script from another machine, so every path is checked once it is
    resolved (links included): it must lie under the CSV's folder unless ``allow_outside``, so a CSV cannot
    pull in files from anywhere on the disk, and one file may appear only once, since a file listed twice
    (under two labels, or a repeated row) would be trained on twice or leak between the splits. Line numbers
    in errors are the CSV's own; a UTF-8 byte order mark (as spreadsheet programs write) is accepted.
    """
    base = path.resolve().parent
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, row) for row in reader if row and not row[0].startswith("#")]
    if rows and [cell.strip().lower() for cell in rows[0][1][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise RayexpError(f"{path} has no rows of path,label")
    for line, row in rows:
        if len(row) < 2:
            raise RayexpError(f"{path} line {line}: expected path,label[,split], got {row!r}")
    for line, row in rows:
        _check_class_name(row[1], f"{path} line {line}")
    classes = sorted({row[1] for _, row in rows})
    index = {c: i for i, c in enumerate(classes)}
    records = []
    seen: dict[Path, tuple[int, str]] = {}
    for line, row in rows:
        image = (base / row[0]).resolve()
        if not allow_outside and not image.is_relative_to(base):
            raise RayexpError(
                f"{path} line {line}: image {row[0]!r} resolves to {image}, outside the CSV's folder {base}; "
                f"move the images under {base}, or pass --allow-outside-paths"
            )
        if not image.is_file():
            raise RayexpError(f"{path} line {line}: image {image} does not exist")
        if image in seen:
            first, label = seen[image]
            raise RayexpError(
                f"{path} lines {first} and {line} both list {image} (labels {label!r} and {row[1]!r}); "
                "a file may appear once: remove one of the rows"
            )
        seen[image] = (line, row[1])
        split = row[2].strip() if len(row) > 2 and row[2].strip() else None
        records.append(SourceRecord(image, index[row[1]], row[0], split="test" if split == "val" else split))
    rule = "given in the CSV" if all(r.split for r in records) else "stratified"
    return classes, records, rule


def content_checksum(records: list[SourceRecord]) -> dict[str, str]:
    """A checksum of what a folder holds (each file's id, label, split and the sha256 of its bytes), so a
    prepared copy can tell it still matches the folder. Content, never sizes or modification times: two class
    folders swapped after unzipping keep every name, size and mtime (``mv`` keeps mtimes) while every label
    changes, and that is a change of data."""
    digest = hashlib.sha256()
    for r in records:
        content = hashlib.sha256()
        with open(r.image, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{r.id}\0{r.label}\0{r.split}\0{content.hexdigest()}\n".encode())
    return {"content": digest.hexdigest()}


def load_source(name: str, root: Path, work: Path, split: str = "default", *, allow_outside: bool = False) -> Source:
    """The images under ``root`` in one of the layouts above; ``allow_outside`` lets a CSV's paths lie outside
    its folder (``--allow-outside-paths``)."""
    test_fraction = 0.1 if name == "plantclef" else 0.2
    csvs = [p for p in root.iterdir() if p.suffix.lower() == ".csv"] if root.is_dir() else []
    if len(csvs) == 1 and not _class_folders(root):
        classes, records, rule = _from_csv(csvs[0], allow_outside=allow_outside)
        return Source(
            classes,
            records,
            f"{rule} ({csvs[0].name})",
            test_fraction=test_fraction,
            encoding=_encoding([r.image for r in records]),
            checksums=content_checksum(records),
        )
    skipped: list[str] = []
    folders = {p.name: p for p in _class_folders(root, skipped)}
    test_name = "test" if "test" in folders else "val" if "val" in folders else None
    if "train" in folders and test_name:
        split_dirs = {"train": folders["train"], "test": folders[test_name]}
        rule = f"given folders (train vs {test_name})"
    else:
        split_dirs = {None: root}
        rule = f"one folder per class, stratified {round(100 * (1 - test_fraction))}/{round(100 * test_fraction)}"
    classes = sorted({c.name for d in split_dirs.values() for c in _class_folders(d, skipped if d != root else None)})
    for name_ in classes:
        _check_class_name(name_, root)
    if not classes:
        raise RayexpError(
            f"{root} has no class folders; expected <class>/ folders of images (or train/ and test/ with class "
            "folders, or a CSV of path,label)"
        )
    index = {c: i for i, c in enumerate(classes)}
    records: list[SourceRecord] = []
    for split_name, folder in split_dirs.items():
        for class_dir in _class_folders(folder):
            images = _images(class_dir, root, skipped, allow_outside)
            if not images:
                raise RayexpError(
                    f"class folder {class_dir} has no images: an empty class is an error; remove it or add images"
                )
            for image in images:
                records.append(
                    SourceRecord(image, index[class_dir.name], str(image.relative_to(root)), split=split_name)
                )
    return Source(
        classes,
        records,
        rule,
        test_fraction=test_fraction,
        encoding=_encoding([r.image for r in records]),
        checksums=content_checksum(records),
        skipped=skipped,
    )
