"""Tiny ImageNet from a tiny tiny-imagenet-200.zip in the cs231n layout: official train, val as test."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import tiny_imagenet
from rayexp.errors import RayexpError

WNIDS = ["n02124075", "n01443537", "n09246464"]  # not sorted: labels must follow wnids.txt
TRAIN_PER_CLASS = 3
# (file, wnid) of the labelled validation images, as val_annotations.txt lists them.
VAL = [
    ("val_0.JPEG", "n09246464"),
    ("val_1.JPEG", "n02124075"),
    ("val_2.JPEG", "n01443537"),
    ("val_3.JPEG", "n02124075"),
]


def _jpeg(value: int, mode: str = "RGB") -> bytes:
    shape = (64, 64, 3) if mode == "RGB" else (64, 64)
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def _members(drop: str | None = None) -> dict[str, bytes | str]:
    base = "tiny-imagenet-200"
    members: dict[str, bytes | str] = {
        f"{base}/wnids.txt": "\n".join(WNIDS) + "\n",
        f"{base}/words.txt": "".join(f"{w}\tsomething\n" for w in WNIDS),
        f"{base}/test/images/test_0.JPEG": _jpeg(7),  # unlabelled: never used
    }
    for c, wnid in enumerate(WNIDS):
        members[f"{base}/train/{wnid}/{wnid}_boxes.txt"] = "".join(
            f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(TRAIN_PER_CLASS)
        )
        for i in range(TRAIN_PER_CLASS):
            # Some real Tiny ImageNet JPEGs are grayscale; the shards must still be RGB.
            members[f"{base}/train/{wnid}/images/{wnid}_{i}.JPEG"] = _jpeg(
                40 * c + i, "L" if (c, i) == (1, 2) else "RGB"
            )
    for i, (filename, _) in enumerate(VAL):
        members[f"{base}/val/images/{filename}"] = _jpeg(200 + i)
    members[f"{base}/val/val_annotations.txt"] = "".join(f"{f}\t{w}\t0\t1\t62\t63\n" for f, w in VAL)
    if drop:
        del members[f"{base}/{drop}"]
    return members


def _zip(folder, drop=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _members(drop).items():
            zf.writestr(name, data)
    return path


def _trust(monkeypatch, archive):
    monkeypatch.setitem(tiny_imagenet.CHECKSUMS, "tiny_imagenet", "md5:" + file_digest(archive, "md5"))


def test_official_train_and_val_as_test_from_the_zip(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "src")
    _trust(monkeypatch, archive)
    manifest = prepare("tiny_imagenet", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["classes"] == WNIDS
    assert manifest["splits"]["train"]["class_counts"] == [TRAIN_PER_CLASS] * 3
    assert manifest["splits"]["test"]["class_counts"] == [2, 1, 1]
    assert manifest["source_checksums"] == {"tiny-imagenet-200.zip": tiny_imagenet.CHECKSUMS["tiny_imagenet"]}
    assert manifest["image"]["stored_min"] == manifest["image"]["stored_max"] == [64, 64]

    test = read_split(tmp_path / "data", "tiny_imagenet", "test")
    assert dict(zip(test["id"].to_pylist(), test["label"].to_pylist())) == {
        f"val/images/{f}": WNIDS.index(w) for f, w in VAL
    }
    train = read_split(tmp_path / "data", "tiny_imagenet", "train")
    labels = dict(zip(train["id"].to_pylist(), train["label"].to_pylist()))
    assert (
        labels["train/n01443537/images/n01443537_2.JPEG"] == 1
        and labels["train/n09246464/images/n09246464_0.JPEG"] == 2
    )
    for data in train["image"].to_pylist() + test["image"].to_pylist():
        assert decode_image(data).shape == (64, 64, 3)


def test_extracted_folder_works_and_records_list_digests(tmp_path):
    archive = _zip(tmp_path / "zip")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "src")
    one = prepare("tiny_imagenet", tmp_path / "one", source=tmp_path / "src", workers=1, quiet=True)
    two = prepare(
        "tiny_imagenet", tmp_path / "two", source=tmp_path / "src" / "tiny-imagenet-200", workers=1, quiet=True
    )
    assert one["splits"] == two["splits"] and one["splits"]["test"]["rows"] == len(VAL)
    wnids = tmp_path / "src" / "tiny-imagenet-200" / "wnids.txt"
    assert load_manifest(tmp_path / "one", "tiny_imagenet")["source_checksums"][
        "tiny-imagenet-200/wnids.txt"
    ] == "sha256:" + file_digest(wnids)


def test_wrong_checksum_is_refused(tmp_path):
    _zip(tmp_path / "src")
    with pytest.raises(
        RayexpError,
        match=r"checksum mismatch for .*tiny-imagenet-200.zip: expected md5 90528d7ca1a48142e341f4ef8d21d0de",
    ):
        prepare("tiny_imagenet", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert not (tmp_path / "data" / "tiny_imagenet").exists()


def test_missing_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError, match=r"expected tiny-imagenet-200.zip or its extracted tiny-imagenet-200/wnids.txt in .*empty"
    ):
        prepare("tiny_imagenet", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _trust(monkeypatch, _zip(tmp_path / "a", drop="val/images/val_2.JPEG"))
    with pytest.raises(
        RayexpError, match=r"val_annotations.txt line 3 names val_2.JPEG, but .*val/images/val_2.JPEG does not exist"
    ):
        prepare("tiny_imagenet", tmp_path / "data", source=tmp_path / "a", workers=1, quiet=True)
    _trust(monkeypatch, _zip(tmp_path / "b", drop="val/val_annotations.txt"))
    with pytest.raises(
        RayexpError, match=r"expected val_annotations.txt at .*tiny-imagenet-200/val/val_annotations.txt"
    ):
        prepare("tiny_imagenet", tmp_path / "data", source=tmp_path / "b", workers=1, quiet=True)


def test_remote_file():
    (remote,) = tiny_imagenet.remote_files("tiny_imagenet")
    assert (
        remote.url == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
        and remote.checksum == "md5:90528d7ca1a48142e341f4ef8d21d0de"
    )
