"""CIFAR-10 and CIFAR-100 from the Toronto "python version" archives; the official train/test split.

Each batch is a pickled dict (byte keys from Python 2, str keys from a re-pickle) whose ``data`` is an
N x 3072 uint8 array: the 1024 red values of a 32x32 image in row-major order, then green, then blue.

Unpickling can run arbitrary code, so the pickles are read only straight out of the original archive,
and only after its published checksum matched on the same open file handle. An extracted folder is
refused: nothing says its pickles are the published ones.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayexp.data.download import RemoteFile
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("cifar10", "cifar100")

ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
URLS = {name: f"https://www.cs.toronto.edu/~kriz/{archive}" for name, archive in ARCHIVES.items()}
# The md5s published on https://www.cs.toronto.edu/~kriz/cifar.html (torchvision's tgz_md5 too).
CHECKSUMS = {
    "cifar10": "md5:c58f30108f718f92721af3b95e74349a",
    "cifar100": "md5:eb9058c3a382ffc7106e4002c42a8d85",
}


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": _Layout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URLS[name], ARCHIVES[name], CHECKSUMS[name])]


def local_help(name: str) -> str:
    return (
        f"download {URLS[name]} ({ARCHIVES[name]}, {CHECKSUMS[name]}) and pass --source the archive or the "
        "folder holding it; the extracted folder is not accepted (pickles are loaded only from the verified archive)"
    )


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _unpickle(data: bytes, member: str) -> dict[str, object]:
    """A batch dict with str keys, whichever Python pickled it."""
    # latin1 is how Python 3 reads Python 2 pickles of numpy arrays; byte keys stay bytes.
    loaded = pickle.loads(data, encoding="latin1")
    if not isinstance(loaded, dict):
        raise RayexpError(f"{member} is not a pickled dict (got {type(loaded).__name__}); is it the right archive?")
    return {_text(key): value for key, value in loaded.items()}


def _read_verified(archive: Path, checksum: str, wanted: set[str]) -> dict[str, bytes]:
    """The named members' bytes, read from ``archive`` only once its checksum matched.

    Hashing and reading use one open handle, so the bytes unpickled are the bytes verified.
    """
    algorithm, _, expected = checksum.partition(":")
    with open(archive, "rb") as handle:
        digest = hashlib.new(algorithm)
        while block := handle.read(1 << 20):
            digest.update(block)
        if digest.hexdigest() != expected.lower():
            raise RayexpError(
                f"checksum mismatch for {archive}: expected {algorithm} {expected}, got {digest.hexdigest()}; "
                "the file is corrupt or not the published one: delete it and download it again "
                "(its pickles are never loaded unverified)"
            )
        handle.seek(0)
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=handle, mode="r:*") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    found[name] = tf.extractfile(member).read()
    missing = sorted(wanted - set(found))
    if missing:
        raise RayexpError(f"{archive} does not contain {', '.join(missing)}; is it the right archive?")
    return found


def _images(batch: dict[str, object], member: str) -> np.ndarray:
    """(N, 32, 32, 3) uint8 from the N x 3072 plane-major rows."""
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise RayexpError(f"{member}: 'data' should be an N x 3072 uint8 array, got {data.dtype} {data.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    layout, archive_name, checksum = LAYOUTS[name], ARCHIVES[name], CHECKSUMS[name]
    archive = root / archive_name
    if not archive.is_file():
        if (root / layout.folder).exists() or (root.name == layout.folder):
            raise RayexpError(
                f"found an extracted {layout.folder} but not {archive_name} in {root}: CIFAR's pickles are loaded only "
                f"from the original archive after its checksum matched; put {archive_name} there (download "
                f"{URLS[name]})"
            )
        raise RayexpError(
            f"expected {archive_name} in {root} (download it from {URLS[name]}); point --source at it or the folder "
            "holding it"
        )
    members = {f"{layout.folder}/{m}" for m in (*layout.train, *layout.test, layout.meta)}
    found = _read_verified(archive, checksum, members)

    meta_member = f"{layout.folder}/{layout.meta}"
    names = _unpickle(found[meta_member], meta_member).get(layout.names_key)
    if not names:
        raise RayexpError(f"{meta_member} has no {layout.names_key!r}; is it the right archive?")
    classes = [_text(n) for n in names]

    records: list[SourceRecord] = []
    for split_name, batches in (("train", layout.train), ("test", layout.test)):
        for batch_name in batches:
            member = f"{layout.folder}/{batch_name}"
            batch = _unpickle(found[member], member)
            if layout.label_key not in batch:
                raise RayexpError(f"{member} has no {layout.label_key!r} key; is it the right archive?")
            images, labels = _images(batch, member), [int(v) for v in batch[layout.label_key]]
            if len(labels) != len(images):
                raise RayexpError(f"{member}: {len(images)} images but {len(labels)} labels")
            records += [
                SourceRecord(image=images[i], label=labels[i], id=f"{batch_name}/{i}", split=split_name)
                for i in range(len(images))
            ]
    rule = "official (data_batch_1..5 vs test_batch)" if name == "cifar10" else "official (train vs test), fine labels"
    return Source(classes=classes, records=records, split_rule=rule, checksums={archive_name: checksum})
