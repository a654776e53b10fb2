"""CIFAR-10/100 from tiny archives in the Toronto pickle format: split, labels, pixel layout, verification."""

import io
import pickle
import tarfile

import numpy as np
import pytest

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import cifar
from rayexp.errors import RayexpError

# One marked pixel: (row, col) and its (R, G, B), placed in the flat planes by hand.
ROW, COL, RGB = 5, 21, (200, 100, 50)


def _planes(images: np.ndarray) -> np.ndarray:
    """N x 3072 rows from (N, 32, 32, 3) images, written out plane by plane, row by row."""
    rows = np.zeros((len(images), 3072), dtype=np.uint8)
    for n, image in enumerate(images):
        for channel in range(3):
            for r in range(32):
                rows[n, channel * 1024 + r * 32 : channel * 1024 + (r + 1) * 32] = image[r, :, channel]
    return rows


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _cifar10_archive(folder, drop=()):
    """cifar-10-python.tar.gz with byte keys: each batch holds one image per class (10 classes)."""
    rng = np.random.default_rng(1)
    names = [f"class{c}".encode() for c in range(10)]
    members, images = {}, {}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(10)]
        rows = _planes(imgs)
        if batch == "data_batch_3":  # image 4 is black but for the marked pixel
            rows[4] = 0
            for channel, value in enumerate(RGB):
                rows[4, channel * 1024 + ROW * 32 + COL] = value
            imgs[4] = 0
            imgs[4, ROW, COL] = RGB
        images[batch] = (imgs, labels)
        batch_dict = {b"batch_label": batch.encode(), b"labels": labels, b"data": rows, b"filenames": [b"x.png"] * 10}
        members[f"cifar-10-batches-py/{batch}"] = pickle.dumps(batch_dict, protocol=2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": names, b"num_cases_per_batch": 10, b"num_vis": 3072}, protocol=2
    )
    for name in drop:
        del members[f"cifar-10-batches-py/{name}"]
    folder.mkdir(parents=True, exist_ok=True)
    return _tar(folder / "cifar-10-python.tar.gz", members), images


def _cifar100_archive(folder):
    """cifar-100-python.tar.gz with str keys: 2 training and 1 test image per fine class."""
    rng = np.random.default_rng(2)
    members = {}
    for split, per_class in (("train", 2), ("test", 1)):
        fine = [c for c in range(100) for _ in range(per_class)]
        imgs = rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8)
        batch = {
            "filenames": ["x.png"] * len(fine),
            "batch_label": split,
            "fine_labels": fine,
            "coarse_labels": [c // 5 for c in fine],
            "data": _planes(imgs),
        }
        members[f"cifar-100-python/{split}"] = pickle.dumps(batch)
    members["cifar-100-python/meta"] = pickle.dumps(
        {
            "fine_label_names": [f"fine{c:03d}" for c in range(100)],
            "coarse_label_names": [f"coarse{c}" for c in range(20)],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    return _tar(folder / "cifar-100-python.tar.gz", members)


def _trust(monkeypatch, name, archive):
    monkeypatch.setitem(cifar.CHECKSUMS, name, "md5:" + file_digest(archive, "md5"))


def test_cifar10_official_split_labels_and_pixel_layout(tmp_path, monkeypatch):
    archive, images = _cifar10_archive(tmp_path / "src")
    _trust(monkeypatch, "cifar10", archive)
    manifest = prepare("cifar10", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["classes"] == [f"class{c}" for c in range(10)]
    assert (
        manifest["splits"]["train"]["class_counts"] == [5] * 10
        and manifest["splits"]["test"]["class_counts"] == [1] * 10
    )
    assert manifest["image"]["encoding"] == "png" and manifest["image"]["stored_max"] == [32, 32]
    assert load_manifest(tmp_path / "data", "cifar10")["source_checksums"] == {
        "cifar-10-python.tar.gz": cifar.CHECKSUMS["cifar10"]
    }

    train, test = read_split(tmp_path / "data", "cifar10", "train"), read_split(tmp_path / "data", "cifar10", "test")
    assert sorted(test["id"].to_pylist()) == [f"test_batch/{i}" for i in range(10)]
    assert not set(train["id"].to_pylist()) & set(test["id"].to_pylist())
    rows = {
        i: (img, lab)
        for i, img, lab in zip(train["id"].to_pylist(), train["image"].to_pylist(), train["label"].to_pylist())
    }
    for i in range(10):
        image, label = rows[f"data_batch_2/{i}"]
        assert label == images["data_batch_2"][1][i]
        assert np.array_equal(decode_image(image), images["data_batch_2"][0][i])  # PNG: lossless

    marked = decode_image(rows["data_batch_3/4"][0])
    assert marked.shape == (32, 32, 3)
    assert tuple(marked[ROW, COL]) == RGB  # R, G, B planes in order, rows not transposed
    assert tuple(marked[COL, ROW]) == (0, 0, 0)
    assert int(marked.sum()) == sum(RGB)


def test_cifar100_fine_labels_and_str_keys(tmp_path, monkeypatch):
    archive = _cifar100_archive(tmp_path / "src")
    _trust(monkeypatch, "cifar100", archive)
    # --source may name the archive itself.
    manifest = prepare("cifar100", tmp_path / "data", source=archive, workers=1, quiet=True)
    assert manifest["classes"][:2] == ["fine000", "fine001"] and manifest["n_classes"] == 100
    assert (
        manifest["splits"]["train"]["class_counts"] == [2] * 100
        and manifest["splits"]["test"]["class_counts"] == [1] * 100
    )
    test = read_split(tmp_path / "data", "cifar100", "test")
    by_id = dict(zip(test["id"].to_pylist(), test["label"].to_pylist()))
    assert by_id["test/0"] == 0 and by_id["test/57"] == 57


def test_wrong_checksum_is_refused_before_unpickling(tmp_path, monkeypatch):
    _cifar10_archive(tmp_path / "src")
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled an unverified archive"))
    with pytest.raises(
        RayexpError,
        match=r"checksum mismatch for .*cifar-10-python.tar.gz: expected md5 c58f30108f718f92721af3b95e74349a",
    ):
        prepare("cifar10", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert not (tmp_path / "data" / "cifar10").exists()


def test_extracted_folder_is_refused(tmp_path, monkeypatch):
    archive, _ = _cifar10_archive(tmp_path / "archive")
    _trust(monkeypatch, "cifar10", archive)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled an unverified folder"))
    for source in (tmp_path / "src", tmp_path / "src" / "cifar-10-batches-py"):
        with pytest.raises(
            RayexpError, match=r"extracted cifar-10-batches-py but not cifar-10-python.tar.gz.*checksum matched"
        ):
            prepare("cifar10", tmp_path / "data", source=source, workers=1, quiet=True)


def test_missing_archive_or_member_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError,
        match=r"expected cifar-10-python.tar.gz in .*empty \(download it from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz\)",
    ):
        prepare("cifar10", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    archive, _ = _cifar10_archive(tmp_path / "src", drop=("test_batch",))
    _trust(monkeypatch, "cifar10", archive)
    with pytest.raises(RayexpError, match=r"does not contain cifar-10-batches-py/test_batch"):
        prepare("cifar10", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)


def test_remote_files_are_the_published_archives():
    (ten,), (hundred,) = cifar.remote_files("cifar10"), cifar.remote_files("cifar100")
    assert (
        ten.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        and ten.checksum == "md5:c58f30108f718f92721af3b95e74349a"
    )
    assert hundred.filename == "cifar-100-python.tar.gz" and hundred.checksum == "md5:eb9058c3a382ffc7106e4002c42a8d85"
    assert "cifar-10-python.tar.gz" in cifar.local_help("cifar10")
