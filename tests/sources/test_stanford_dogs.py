"""Stanford Dogs: images.tar + lists.tar (train_list.mat, test_list.mat) in their real layout, split by the lists."""

import tarfile

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import stanford_dogs
from rayexp.errors import RayexpError

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02088094-Afghan_hound"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2
BIG = "n02088094-Afghan_hound/n02088094_0.jpg"  # larger than the 256x256 training size


def _cell(strings):
    """A MATLAB N x 1 cell array of char arrays, as scipy.io.savemat writes an object array."""
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def _write_list(path, files):
    labels = np.array([[BREEDS.index(f.split("/")[0]) + 1] for f in files], dtype=np.float64)  # 1-based, as published
    savemat(path, {"file_list": _cell(files), "annotation_list": _cell([f[:-4] for f in files]), "labels": labels})


def _extracted(folder):
    """Images/ and the list files as the two archives extract them; returns (train files, test files)."""
    train, test = [], []
    for c, breed in enumerate(BREEDS):
        synset = breed.split("-")[0]
        for i in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            rel = f"{breed}/{synset}_{i}.jpg"
            size = (400, 300) if rel == BIG else (40, 30)
            path = folder / "Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size[1], size[0], 3), 30 * c + i, dtype=np.uint8)).save(path, quality=95)
            (train if i < TRAIN_PER_CLASS else test).append(rel)
    _write_list(folder / "train_list.mat", train)
    _write_list(folder / "test_list.mat", test)
    _write_list(folder / "file_list.mat", train + test)
    return train, test


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """images.tar and lists.tar built like Stanford's, with the module's checksums set to theirs."""
    staged, src = tmp_path / "staged", tmp_path / "src"
    src.mkdir()
    train, test = _extracted(staged)
    with tarfile.open(src / "images.tar", "w") as tf:
        tf.add(staged / "Images", arcname="Images")
    with tarfile.open(src / "lists.tar", "w") as tf:
        for name in ("file_list.mat", "train_list.mat", "test_list.mat"):
            tf.add(staged / name, arcname=name)
    for name in ("images.tar", "lists.tar"):
        monkeypatch.setitem(stanford_dogs.CHECKSUMS, name, "sha256:" + file_digest(src / name))
    return src, train, test


def test_archives_give_the_official_lists(archives, tmp_path):
    src, train, test = archives
    data = tmp_path / "data"
    manifest = prepare("stanford_dogs", data, source=src, workers=1, quiet=True)
    assert manifest["classes"] == ["Chihuahua", "Japanese_spaniel", "Afghan_hound"]
    assert manifest["splits"]["train"]["class_counts"] == [TRAIN_PER_CLASS] * 3
    assert manifest["splits"]["test"]["class_counts"] == [TEST_PER_CLASS] * 3
    assert manifest["source_checksums"] == {n: stanford_dogs.CHECKSUMS[n] for n in ("lists.tar", "images.tar")}
    assert load_manifest(data, "stanford_dogs")["split_rule"].startswith("official lists")
    for split, files in (("train", train), ("test", test)):
        table = read_split(data, "stanford_dogs", split)
        assert sorted(table["id"].to_pylist()) == sorted(files)
        for rel, label in zip(table["id"].to_pylist(), table["label"].to_pylist()):
            assert label == BREEDS.index(rel.split("/")[0])
    table = read_split(data, "stanford_dogs", "train")
    shapes = {i: decode_image(img).shape for i, img in zip(table["id"].to_pylist(), table["image"].to_pylist())}
    assert shapes[BIG] == (256, 341, 3)  # shrunk to the training size, aspect kept
    assert shapes[train[0]] == (30, 40, 3)


def test_extracted_folder_is_read_and_its_lists_recorded(tmp_path):
    train, test = _extracted(tmp_path / "src")
    manifest = prepare("stanford_dogs", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["splits"]["train"]["rows"] == len(train) and manifest["splits"]["test"]["rows"] == len(test)
    assert set(manifest["source_checksums"]) == {"train_list.mat", "test_list.mat"}
    assert manifest["source_checksums"]["train_list.mat"] == "sha256:" + file_digest(
        tmp_path / "src" / "train_list.mat"
    )


def test_wrong_checksum_is_refused(archives, tmp_path, monkeypatch):
    src, _, _ = archives
    monkeypatch.setitem(stanford_dogs.CHECKSUMS, "lists.tar", "sha256:" + "0" * 64)
    with pytest.raises(RayexpError, match="checksum mismatch for .*lists.tar"):
        prepare("stanford_dogs", tmp_path / "data", source=src, workers=1, quiet=True)
    assert not (tmp_path / "data" / "stanford_dogs").exists()


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError, match=r"expected lists.tar or its extracted train_list.mat in .*empty .*ImageNetDogs/lists.tar"
    ):
        prepare("stanford_dogs", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _, test = _extracted(tmp_path / "src")
    (tmp_path / "src" / "Images" / test[0]).unlink()
    with pytest.raises(RayexpError, match=f"1 image.*missing.*{test[0]}"):
        prepare("stanford_dogs", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)


def test_remote_files_are_stanfords_with_published_checksums():
    remote = {r.filename: r for r in stanford_dogs.remote_files("stanford_dogs")}
    assert remote["images.tar"].url == "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar"
    assert all(r.checksum and r.checksum.startswith("sha256:") for r in remote.values())
