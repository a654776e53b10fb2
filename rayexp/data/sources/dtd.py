"""DTD, the Describable Textures Dataset (Oxford VGG): 47 classes of 120 images, ten official partitions.

``dtd-r1.0.1.tar.gz`` holds ``dtd/images/<class>/*.jpg`` and ``dtd/labels/{train,val,test}<k>.txt``
with lines ``<class>/<file>.jpg``. The paper's 1,880 / 1,880 are partition 1's ``train1.txt`` and
``test1.txt``; ``val1.txt`` (another 1,880) is left out, so every rayexp number is comparable with it.
"""

from __future__ import annotations

from pathlib import Path

from rayexp.data.download import RemoteFile, file_digest, locate_dataset_folder
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("dtd",)
ARCHIVE = "dtd-r1.0.1.tar.gz"
URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
# The md5 torchvision's DTD dataset verifies the same archive against.
CHECKSUMS = {ARCHIVE: "md5:fff73e5086ae6bdbea199a49dfb8a4c1"}
PARTITION = 1
LISTS = {"train": f"train{PARTITION}.txt", "test": f"test{PARTITION}.txt"}


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, ARCHIVE, CHECKSUMS[ARCHIVE])]


def local_help(name: str) -> str:
    return (
        f"download {ARCHIVE} from {URL} (or https://www.robots.ox.ac.uk/~vgg/data/dtd/) and pass --source "
        "the archive, the folder holding it, or the extracted dtd/ folder (with images/ and labels/)"
    )


def _read_list(path: Path) -> list[tuple[str, str]]:
    """(class, relative image path) per line of a partition list."""
    if not path.is_file():
        raise RayexpError(f"DTD list {path} is missing; the dtd/labels/ folder of {ARCHIVE} should hold it")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        cls, sep, file = line.partition("/")
        if not sep or not cls or not file or "/" in file:
            raise RayexpError(f"{path} line {n}: expected <class>/<file>.jpg, got {line!r}")
        entries.append((cls, line))
    return entries


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    base, from_archive = locate_dataset_folder(
        Path(root), Path(work), ARCHIVE, "dtd", f"labels/{LISTS['train']}", URL, CHECKSUMS[ARCHIVE]
    )
    lists = {s: _read_list(base / "labels" / f) for s, f in LISTS.items()}
    classes = sorted({cls for entries in lists.values() for cls, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for split_name, entries in lists.items():
        for cls, rel in entries:
            image = base / "images" / rel
            if not image.is_file():
                raise RayexpError(
                    f"DTD image {image} (listed in labels/{LISTS[split_name]}) is missing; re-extract {ARCHIVE}"
                )
            records.append(SourceRecord(image, index[cls], f"images/{rel}", split=split_name))
    if from_archive:
        checksums = {ARCHIVE: CHECKSUMS[ARCHIVE]}
    else:  # an extracted folder: fingerprint the lists that define the split
        checksums = {f"dtd/labels/{f}": "sha256:" + file_digest(base / "labels" / f) for f in LISTS.values()}
    return Source(
        classes=classes,
        records=records,
        split_rule=f"official partition {PARTITION}: labels/{LISTS['train']} vs labels/{LISTS['test']}",
        checksums=checksums,
        notes=[f"val{PARTITION}.txt (a third 40 images per class) is left out, as the paper's 1,880 / 1,880 imply"],
    )
