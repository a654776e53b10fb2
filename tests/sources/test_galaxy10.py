"""Galaxy10 DECals from a tiny Galaxy10_DECals.h5 written with h5py in the real layout."""

import functools
import pickle

import h5py
import numpy as np
import pytest

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import galaxy10
from rayexp.errors import RayexpError

PER_CLASS = 10
SIZE = 16


def _h5(folder):
    """10 images per class, 16x16 RGB; image i is filled with i so that ids can be checked against pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), PER_CLASS)
    images = np.zeros((len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(len(labels)):
        images[i] = i
    path = folder / galaxy10.FILENAME
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images, chunks=(1, SIZE, SIZE, 3))
        handle.create_dataset("ans", data=labels)
        handle.create_dataset("ra", data=np.zeros(len(labels)))
    return path


@pytest.fixture
def h5(tmp_path, monkeypatch):
    path = _h5(tmp_path / "src")
    monkeypatch.setitem(galaxy10.CHECKSUMS, galaxy10.FILENAME, "sha256:" + file_digest(path))
    return path


def test_stratified_90_10_with_lazy_images(tmp_path, h5):
    manifest = prepare("galaxy10", tmp_path / "data", source=h5.parent, workers=1, quiet=True)
    assert manifest["classes"][0] == "Disturbed Galaxies" and len(manifest["classes"]) == 10
    assert manifest["splits"]["train"]["class_counts"] == [9] * 10
    assert manifest["splits"]["test"]["class_counts"] == [1] * 10
    assert manifest["source_checksums"] == {galaxy10.FILENAME: galaxy10.CHECKSUMS[galaxy10.FILENAME]}
    assert manifest["image"]["stored_max"] == [SIZE, SIZE]  # min(native, 256): never upscaled
    table = read_split(tmp_path / "data", "galaxy10", "train")
    for image, label, record_id in zip(table["image"].to_pylist(), table["label"].to_pylist(), table["id"].to_pylist()):
        index = int(record_id.split("/")[1])
        assert label == index // PER_CLASS
        pixels = decode_image(image)
        assert pixels.shape == (SIZE, SIZE, 3) and (pixels == index).all()


def test_records_carry_a_picklable_one_image_loader(tmp_path, h5):
    source = galaxy10.load_source("galaxy10", h5.parent, tmp_path / "work")
    record = source.records[37]
    assert isinstance(record.image, functools.partial) and record.label == 3
    assert (pickle.loads(pickle.dumps(record.image))() == 37).all()


def test_same_seed_same_split(tmp_path, h5):
    ids = []
    for run in ("a", "b"):
        prepare("galaxy10", tmp_path / run, source=h5, workers=1, quiet=True)  # --source may be the file itself
        ids.append(sorted(read_split(tmp_path / run, "galaxy10", "test", columns=["id"])["id"].to_pylist()))
    assert ids[0] == ids[1] and len(ids[0]) == 10


def test_wrong_checksum_is_refused(tmp_path):
    path = _h5(tmp_path / "src")  # the published checksum, which the fixture cannot match
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("galaxy10", tmp_path / "data", source=path.parent, workers=1, quiet=True)
    with pytest.raises(RayexpError, match="not prepared"):
        load_manifest(tmp_path / "data", "galaxy10")


def test_missing_file_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match=r"expected Galaxy10_DECals\.h5 in .*empty.*zenodo"):
        prepare("galaxy10", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
