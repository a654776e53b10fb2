"""Food-101 from a tiny food-101.tar.gz in ETH's layout: meta/ lists of class/id, official split."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import food101
from rayexp.errors import RayexpError

CLASSES = ["apple_pie", "baby_back_ribs", "baklava"]
TRAIN = ["apple_pie/1005649", "apple_pie/1011328", "baby_back_ribs/1004", "baklava/1006121", "baklava/1034361"]
TEST = ["apple_pie/101251", "baby_back_ribs/1005293", "baklava/1061830"]
BIG = "baklava/1034361"  # 384x512, as large as Food-101 images get


def _jpeg(entry: str) -> bytes:
    size = (384, 512) if entry == BIG else (60, 80)
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), len(entry) * 7 % 256, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _members(train=TRAIN, test=TEST, drop=None) -> dict[str, bytes]:
    members = {
        "food-101/README.txt": b"Food-101\n",
        "food-101/meta/classes.txt": "".join(f"{c}\n" for c in CLASSES).encode(),
        "food-101/meta/labels.txt": "".join(f"{c.replace('_', ' ').title()}\n" for c in CLASSES).encode(),
        "food-101/meta/train.txt": "".join(f"{e}\n" for e in train).encode(),
        "food-101/meta/test.txt": "".join(f"{e}\n" for e in test).encode(),
        "food-101/meta/train.json": json.dumps(
            {c: [e for e in train if e.startswith(c + "/")] for c in CLASSES}
        ).encode(),
    }
    for entry in dict.fromkeys(TRAIN + TEST):
        members[f"food-101/images/{entry}.jpg"] = _jpeg(entry)
    if drop:
        del members[f"food-101/{drop}"]
    return members


def _tgz(folder, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "food-101.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in _members(**kw).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _trust(monkeypatch, archive):
    monkeypatch.setitem(food101.CHECKSUMS, "food101", "md5:" + file_digest(archive, "md5"))
    return archive


def test_official_split_from_the_archive(tmp_path, monkeypatch):
    _trust(monkeypatch, _tgz(tmp_path / "src"))
    manifest = prepare("food101", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [2, 1, 2] and manifest["splits"]["test"]["class_counts"] == [
        1,
        1,
        1,
    ]
    assert manifest["source_checksums"] == {"food-101.tar.gz": food101.CHECKSUMS["food101"]}
    for split, entries in (("train", TRAIN), ("test", TEST)):
        table = read_split(tmp_path / "data", "food101", split)
        expected = {f"images/{e}.jpg": CLASSES.index(e.split("/")[0]) for e in entries}
        assert dict(zip(table["id"].to_pylist(), table["label"].to_pylist())) == expected
        for record_id, data in zip(table["id"].to_pylist(), table["image"].to_pylist()):
            assert decode_image(data).shape == ((256, 341, 3) if record_id == f"images/{BIG}.jpg" else (60, 80, 3))


def test_extracted_folder_works(tmp_path):
    with tarfile.open(_tgz(tmp_path / "tgz")) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    one = prepare("food101", tmp_path / "one", source=tmp_path / "src", workers=1, quiet=True)
    two = prepare("food101", tmp_path / "two", source=tmp_path / "src" / "food-101", workers=1, quiet=True)
    assert one["splits"] == two["splits"] and one["splits"]["test"]["rows"] == len(TEST)
    listed = tmp_path / "src" / "food-101" / "meta" / "test.txt"
    assert one["source_checksums"]["food-101/meta/test.txt"] == "sha256:" + file_digest(listed)


def test_wrong_checksum_is_refused(tmp_path):
    _tgz(tmp_path / "src")
    with pytest.raises(
        RayexpError, match=r"checksum mismatch for .*food-101.tar.gz: expected md5 85eeb15f3717b99a5da872d97d918f87"
    ):
        prepare("food101", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert not (tmp_path / "data" / "food101").exists()


def test_missing_and_inconsistent_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError,
        match=r"expected food-101.tar.gz or its extracted food-101/meta/classes.txt in .*empty \(download it from http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz\)",
    ):
        prepare("food101", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _trust(monkeypatch, _tgz(tmp_path / "a", drop="images/baklava/1061830.jpg"))
    with pytest.raises(
        RayexpError,
        match=r"test.txt line 3 names baklava/1061830, but .*food-101/images/baklava/1061830.jpg does not exist",
    ):
        prepare("food101", tmp_path / "data", source=tmp_path / "a", workers=1, quiet=True)
    _trust(monkeypatch, _tgz(tmp_path / "b", test=TEST + [TRAIN[0]]))
    with pytest.raises(RayexpError, match=r"apple_pie/1005649 is listed twice \(in meta/train.txt and meta/test.txt\)"):
        prepare("food101", tmp_path / "data", source=tmp_path / "b", workers=1, quiet=True)
    _trust(monkeypatch, _tgz(tmp_path / "c", drop="meta/test.txt"))
    with pytest.raises(RayexpError, match=r"expected test.txt at .*food-101/meta/test.txt"):
        prepare("food101", tmp_path / "data", source=tmp_path / "c", workers=1, quiet=True)


def test_remote_file():
    (remote,) = food101.remote_files("food101")
    assert (
        remote.url == "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
        and remote.checksum == "md5:85eeb15f3717b99a5da872d97d918f87"
    )
