"""Galaxy10 DECals: 17,736 galaxy images (256x256 RGB, g/r/z bands) in one HDF5 file from Zenodo.

``Galaxy10_DECals.h5`` holds ``images`` (N, 256, 256, 3) uint8 and ``ans`` (the class id 0..9). The file
is 2.5 GB, so records carry a picklable loader that reads one image in the worker that encodes it
instead of the whole array. No official split: stratified 90/10 with the writer's fixed seed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import h5py
import numpy as np

from rayexp.data.download import RemoteFile, verify_checksum
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("galaxy10",)
FILENAME = "Galaxy10_DECals.h5"
URL = f"https://zenodo.org/records/10845026/files/{FILENAME}"
# SHA256 published in astroNN's Galaxy10 DECals documentation (and checked by astroNN.datasets.galaxy10).
CHECKSUMS = {FILENAME: "sha256:19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"}
# astroNN's documented class list, in class-id order.
CLASSES = [
    "Disturbed Galaxies",
    "Merging Galaxies",
    "Round Smooth Galaxies",
    "In-between Round Smooth Galaxies",
    "Cigar Shaped Smooth Galaxies",
    "Barred Spiral Galaxies",
    "Unbarred Tight Spiral Galaxies",
    "Unbarred Loose Spiral Galaxies",
    "Edge-on Galaxies without Bulge",
    "Edge-on Galaxies with Bulge",
]


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(URL, FILENAME, CHECKSUMS[FILENAME])]


def local_help(name: str) -> str:
    return f"download {FILENAME} (2.5 GB) from {URL} and pass --source the file or the folder holding it"


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime_ns: int):
    """One read-only handle per file and process: reopening the HDF5 file for every image is slow.

    ``mtime_ns`` is part of the key so that a replaced file is reopened. A compressed file's chunks may
    span several images; a 64 MiB chunk cache lets images read in order share a decompressed chunk.
    """
    return h5py.File(path, "r", rdcc_nbytes=64 << 20, rdcc_nslots=10007)


def read_image(path: str, index: int) -> np.ndarray:
    """Image ``index`` of the HDF5 file at ``path`` (module level, so that a partial of it pickles)."""
    return np.asarray(_open(path, os.stat(path).st_mtime_ns)["images"][index], dtype=np.uint8)


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    path = Path(root) / FILENAME
    if not path.is_file():
        raise RayexpError(
            f"expected {FILENAME} in {root} (download it from {URL}); point --source at the file or the folder holding "
            "it"
        )
    path = path.resolve()
    verify_checksum(path, CHECKSUMS[FILENAME])
    with h5py.File(path, "r") as handle:
        missing = [key for key in ("images", "ans") if key not in handle]
        if missing:
            raise RayexpError(f"{path} has no dataset {missing[0]!r}; is it Galaxy10_DECals.h5?")
        n_images, labels = handle["images"].shape[0], np.asarray(handle["ans"]).astype(np.int64).reshape(-1)
    if len(labels) != n_images:
        raise RayexpError(f"{path}: {n_images} images but {len(labels)} labels in 'ans'")
    records = [
        SourceRecord(image=functools.partial(read_image, str(path), i), label=int(labels[i]), id=f"galaxy10/{i:05d}")
        for i in range(n_images)
    ]
    return Source(
        classes=list(CLASSES),
        records=records,
        split_rule="stratified 90/10",
        test_fraction=0.1,
        checksums=dict(CHECKSUMS),
    )
