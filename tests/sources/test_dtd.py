"""DTD: a tiny dtd-r1.0.1.tar.gz in the real layout, partition 1 train vs test, val1 left out."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image, stored_size
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import dtd
from rayexp.errors import RayexpError

CLASSES = ["banded", "blotchy", "zigzagged"]
SIZES = [(300, 320), (480, 300), (640, 640)]  # (H, W) per image index, as DTD's 300..640


def _write_tree(folder: Path) -> dict[str, list[str]]:
    """dtd/images/<class>/<class>_000N.jpg and dtd/labels/{train,val,test}1.txt; returns the lists."""
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (folder / "dtd" / "images" / cls).mkdir(parents=True)
        for i in range(6):
            h, w = SIZES[i % 3]
            name = f"{cls}/{cls}_{i + 1:04d}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                folder / "dtd" / "images" / name, quality=90
            )
            lists[("train", "val", "test")[i // 2]].append(name)
    (folder / "dtd" / "labels").mkdir()
    for split, names in lists.items():
        (folder / "dtd" / "labels" / f"{split}1.txt").write_text("".join(n + "\n" for n in names))
    # another partition that must not be read
    (folder / "dtd" / "labels" / "train2.txt").write_text("".join(n + "\n" for n in lists["test"]))
    return lists


@pytest.fixture()
def archive(tmp_path, monkeypatch) -> tuple[Path, dict[str, list[str]]]:
    tree = tmp_path / "tree"
    lists = _write_tree(tree)
    src = tmp_path / "src"
    src.mkdir()
    path = src / dtd.ARCHIVE
    with tarfile.open(path, "w:gz") as tf:
        tf.add(tree / "dtd", arcname="dtd")
    monkeypatch.setitem(dtd.CHECKSUMS, dtd.ARCHIVE, "md5:" + file_digest(path, "md5"))
    return path, lists


def test_partition_one_from_archive(tmp_path, archive):
    path, lists = archive
    manifest = prepare("dtd", tmp_path / "data", source=path.parent, workers=1, quiet=True)
    assert load_manifest(tmp_path / "data", "dtd") == manifest
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["rows"] == 6 and manifest["splits"]["test"]["rows"] == 6
    assert manifest["splits"]["train"]["class_counts"] == [2, 2, 2]
    assert manifest["source_checksums"] == {dtd.ARCHIVE: dtd.CHECKSUMS[dtd.ARCHIVE]}
    assert any("val1.txt" in note for note in manifest["notes"])
    for split in ("train", "test"):
        table = read_split(tmp_path / "data", "dtd", split).to_pydict()
        assert sorted(table["id"]) == sorted(f"images/{n}" for n in lists[split])
        for id_, label in zip(table["id"], table["label"]):
            assert CLASSES[label] == id_.split("/")[1]
    # val1 images are in neither split
    ids = set(read_split(tmp_path / "data", "dtd", "train")["id"].to_pylist()) | set(
        read_split(tmp_path / "data", "dtd", "test")["id"].to_pylist()
    )
    assert not ids & {f"images/{n}" for n in lists["val"]}


def test_images_decode_at_stored_size(tmp_path, archive):
    path, _ = archive
    manifest = prepare("dtd", tmp_path / "data", source=path, workers=1, quiet=True)
    table = read_split(tmp_path / "data", "dtd", "test").to_pydict()
    for id_, data in zip(table["id"], table["image"]):
        index = int(Path(id_).stem.split("_")[1]) - 1
        expected = stored_size(SIZES[index % 3], tuple(manifest["input_size"]))
        assert decode_image(data).shape == (*expected, 3)
    assert manifest["image"]["stored_min"] == [256, 256]


def test_extracted_folder_is_accepted(tmp_path):
    lists = _write_tree(tmp_path / "src")
    for source in (tmp_path / "src", tmp_path / "src" / "dtd"):
        manifest = prepare("dtd", tmp_path / "data", source=source, workers=1, quiet=True, force=True)
        assert manifest["splits"]["test"]["rows"] == len(lists["test"])
        assert set(manifest["source_checksums"]) == {"dtd/labels/train1.txt", "dtd/labels/test1.txt"}


def test_wrong_checksum_is_refused(tmp_path, archive, monkeypatch):
    path, _ = archive
    monkeypatch.setitem(dtd.CHECKSUMS, dtd.ARCHIVE, "md5:" + "0" * 32)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("dtd", tmp_path / "data", source=path.parent, workers=1, quiet=True)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match=r"dtd-r1\.0\.1\.tar\.gz.*dtd/labels/train1\.txt"):
        prepare("dtd", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    lists = _write_tree(tmp_path / "src")
    (tmp_path / "src" / "dtd" / "images" / lists["test"][0]).unlink()
    with pytest.raises(RayexpError, match=lists["test"][0]):
        prepare("dtd", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)


def test_remote_files_are_the_published_archive():
    (remote,) = dtd.remote_files("dtd")
    assert remote.url == "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
    assert remote.filename == "dtd-r1.0.1.tar.gz" and remote.checksum == "md5:fff73e5086ae6bdbea199a49dfb8a4c1"
