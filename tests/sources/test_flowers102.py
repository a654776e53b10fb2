"""Flowers-102: 102flowers.tgz (jpg/image_NNNNN.jpg), imagelabels.mat and setid.mat, train+val vs test."""

import tarfile

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import flowers102
from rayexp.errors import RayexpError

N_CLASSES = 102
# Per class: one train, one val and two test images (every class must appear in both splits).
PER_CLASS = {"trnid": 1, "valid": 1, "tstid": 2}


def _flowers(folder):
    """jpg/, imagelabels.mat and setid.mat as Oxford publishes them; returns {split key: image numbers}."""
    rng = np.random.default_rng(0)
    per_image = sum(PER_CLASS.values())
    labels = np.repeat(np.arange(1, N_CLASSES + 1), per_image)
    order = rng.permutation(len(labels))  # images are not grouped by class in the real files either
    labels = labels[order]
    (folder / "jpg").mkdir(parents=True)
    for number, label in enumerate(labels, 1):
        size = (500, 400) if number == 1 else (24, 16)
        Image.fromarray(np.full((size[1], size[0], 3), label, dtype=np.uint8)).save(
            folder / "jpg" / f"image_{number:05d}.jpg"
        )
    sets = {key: [] for key in PER_CLASS}
    for c in range(1, N_CLASSES + 1):
        numbers = list(np.flatnonzero(labels == c) + 1)
        for key, n in PER_CLASS.items():
            sets[key] += [numbers.pop() for _ in range(n)]
    savemat(folder / "imagelabels.mat", {"labels": labels.reshape(1, -1).astype(np.uint8)})
    savemat(folder / "setid.mat", {key: np.array(sorted(v), dtype=np.uint16).reshape(1, -1) for key, v in sets.items()})
    return sets, labels


@pytest.fixture
def source(tmp_path, monkeypatch):
    """The three published files (the images as 102flowers.tgz) with the module's checksums set to theirs."""
    staged, src = tmp_path / "staged", tmp_path / "src"
    src.mkdir()
    sets, labels = _flowers(staged)
    with tarfile.open(src / "102flowers.tgz", "w:gz") as tf:
        tf.add(staged / "jpg", arcname="jpg")
    for name in ("imagelabels.mat", "setid.mat"):
        (src / name).write_bytes((staged / name).read_bytes())
    for name in flowers102.CHECKSUMS:
        monkeypatch.setitem(flowers102.CHECKSUMS, name, "md5:" + file_digest(src / name, "md5"))
    return src, sets, labels


def test_train_plus_val_against_test(source, tmp_path):
    src, sets, labels = source
    data = tmp_path / "data"
    manifest = prepare("flowers102", data, source=src, workers=1, quiet=True)
    assert manifest["classes"][:3] == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert len(manifest["classes"]) == N_CLASSES and manifest["classes"][-1] == "blackberry lily"
    assert manifest["splits"]["train"]["class_counts"] == [2] * N_CLASSES
    assert manifest["splits"]["test"]["class_counts"] == [2] * N_CLASSES
    assert manifest["source_checksums"] == dict(flowers102.CHECKSUMS)
    train = read_split(data, "flowers102", "train")
    test = read_split(data, "flowers102", "test")
    expected_train = {f"jpg/image_{n:05d}.jpg" for n in sets["trnid"] + sets["valid"]}
    assert set(train["id"].to_pylist()) == expected_train
    assert set(test["id"].to_pylist()) == {f"jpg/image_{n:05d}.jpg" for n in sets["tstid"]}
    for table in (train, test):
        for rel, label in zip(table["id"].to_pylist(), table["label"].to_pylist()):
            assert label == labels[int(rel[10:15]) - 1] - 1
    shapes = {
        i: decode_image(img).shape
        for i, img in zip(
            train["id"].to_pylist() + test["id"].to_pylist(), train["image"].to_pylist() + test["image"].to_pylist()
        )
    }
    assert shapes["jpg/image_00001.jpg"] == (256, 320, 3)
    assert shapes["jpg/image_00002.jpg"] == (16, 24, 3)


def test_extracted_jpg_folder_needs_no_archive(source, tmp_path):
    src, _, _ = source
    tarfile.open(src / "102flowers.tgz").extractall(src, filter="data")
    (src / "102flowers.tgz").unlink()
    manifest = prepare("flowers102", tmp_path / "data", source=src, workers=1, quiet=True)
    assert manifest["splits"]["test"]["rows"] == 2 * N_CLASSES
    assert set(manifest["source_checksums"]) == {"imagelabels.mat", "setid.mat"}


def test_wrong_checksums_are_refused(source, tmp_path, monkeypatch):
    src, _, _ = source
    for name in ("102flowers.tgz", "setid.mat"):
        with monkeypatch.context() as m:
            m.setitem(flowers102.CHECKSUMS, name, "md5:" + "0" * 32)
            with pytest.raises(RayexpError, match=f"checksum mismatch for .*{name}"):
                prepare("flowers102", tmp_path / "data", source=src, workers=1, quiet=True)
    assert not (tmp_path / "data" / "flowers102").exists()


def test_missing_files_are_named(source, tmp_path):
    src, _, _ = source
    (src / "imagelabels.mat").unlink()
    with pytest.raises(RayexpError, match=r"expected imagelabels.mat in .*src .*flowers/102/imagelabels.mat"):
        prepare("flowers102", tmp_path / "data", source=src, workers=1, quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match="expected 102flowers.tgz or its extracted jpg"):
        prepare("flowers102", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)


def test_remote_files_are_oxfords_with_torchvisions_md5s():
    remote = {r.filename: r for r in flowers102.remote_files("flowers102")}
    assert remote["102flowers.tgz"].url == "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"
    assert remote["setid.mat"].checksum == "md5:a5357ecc9cb78c4bef273ce3793fc85c"
    assert len(set(flowers102.CLASSES)) == N_CLASSES
