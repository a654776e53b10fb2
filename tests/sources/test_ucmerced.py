"""UC Merced: a tiny UCMerced_LandUse.zip of TIFFs (one not 256x256), stratified 80/20 over sorted names."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.records import stratified_test_mask
from rayexp.data.shards import read_split
from rayexp.data.sources import ucmerced
from rayexp.errors import RayexpError

CLASSES = ["agricultural", "airplane", "tenniscourt"]
PER_CLASS = 5  # 4 train / 1 test
ODD = "Images/airplane/airplane03.tif"
ODD_SIZE = (247, 256)  # (H, W): like the few real images that are not 256x256


def _write_tree(folder: Path) -> list[str]:
    """UCMerced_LandUse/Images/<class>/<class>NN.tif, RGB TIFFs; returns the ids in sorted order."""
    rng = np.random.default_rng(0)
    ids = []
    for cls in CLASSES:
        (folder / "UCMerced_LandUse" / "Images" / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            rel = f"Images/{cls}/{cls}{i:02d}.tif"
            h, w = ODD_SIZE if rel == ODD else (256, 256)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / "UCMerced_LandUse" / rel)
            ids.append(rel)
    return ids


@pytest.fixture()
def archive(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    ids = _write_tree(tmp_path / "tree")
    path = tmp_path / "src" / ucmerced.ARCHIVE
    path.parent.mkdir()
    files = sorted((tmp_path / "tree").rglob("*"))
    random.Random(0).shuffle(files)  # member order must not matter
    with zipfile.ZipFile(path, "w") as zf:
        for file in files:
            zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
    monkeypatch.setitem(ucmerced.CHECKSUMS, ucmerced.ARCHIVE, "md5:" + file_digest(path, "md5"))
    return path, ids


def test_stratified_split_over_sorted_names(tmp_path, archive):
    path, ids = archive
    manifest = prepare("ucmerced", tmp_path / "data", source=path.parent, workers=1, quiet=True, seed=7)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [4, 4, 4]
    assert manifest["splits"]["test"]["class_counts"] == [1, 1, 1]
    assert manifest["source_checksums"] == {ucmerced.ARCHIVE: ucmerced.CHECKSUMS[ucmerced.ARCHIVE]}
    assert manifest["image"]["encoding"] == "png"
    # the test split is the writer's stratified mask over the records in sorted order
    labels = [CLASSES.index(i.split("/")[1]) for i in ids]
    expected = {i for i, t in zip(ids, stratified_test_mask(labels, 0.2, 7)) if t}
    test = read_split(tmp_path / "data", "ucmerced", "test").to_pydict()
    assert set(test["id"]) == expected
    for id_, label in zip(test["id"], test["label"]):
        assert CLASSES[label] == id_.split("/")[1]


def test_same_seed_same_split(tmp_path, archive):
    path, _ = archive
    a = prepare("ucmerced", tmp_path / "a", source=path, workers=1, quiet=True)
    b = prepare("ucmerced", tmp_path / "b", source=path.parent, workers=1, quiet=True)
    assert a["splits"] == b["splits"]
    assert (
        read_split(tmp_path / "a", "ucmerced", "test")["id"].to_pylist()
        == read_split(tmp_path / "b", "ucmerced", "test")["id"].to_pylist()
    )


def test_images_decode_at_native_size(tmp_path, archive):
    path, ids = archive
    manifest = prepare("ucmerced", tmp_path / "data", source=path.parent, workers=1, quiet=True)
    rows = {}
    for split in ("train", "test"):
        table = read_split(tmp_path / "data", "ucmerced", split).to_pydict()
        rows.update(zip(table["id"], table["image"]))
    assert sorted(rows) == sorted(ids)
    for id_, data in rows.items():
        assert decode_image(data).shape == ((*ODD_SIZE, 3) if id_ == ODD else (256, 256, 3))
    assert manifest["image"]["stored_min"] == [247, 256]
    # lossless: the stored pixels are the TIFF's
    original = np.asarray(Image.open(path.parent.parent / "tree" / "UCMerced_LandUse" / ODD))
    assert (decode_image(rows[ODD]) == original).all()


def test_extracted_folder_is_accepted(tmp_path):
    _write_tree(tmp_path / "src")
    for source in (tmp_path / "src", tmp_path / "src" / "UCMerced_LandUse"):
        manifest = prepare("ucmerced", tmp_path / "data", source=source, workers=1, quiet=True, force=True)
        assert manifest["splits"]["train"]["rows"] == 12
        (value,) = manifest["source_checksums"].values()
        assert value.startswith("sha256:")


def test_wrong_checksum_is_refused(tmp_path, archive, monkeypatch):
    path, _ = archive
    monkeypatch.setitem(ucmerced.CHECKSUMS, ucmerced.ARCHIVE, "md5:" + "0" * 32)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("ucmerced", tmp_path / "data", source=path.parent, workers=1, quiet=True)


def test_missing_archive_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match=r"UCMerced_LandUse\.zip.*UCMerced_LandUse/Images"):
        prepare("ucmerced", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)


def test_remote_files_are_published():
    (remote,) = ucmerced.remote_files("ucmerced")
    assert remote.filename == "UCMerced_LandUse.zip" and remote.checksum == "md5:5b7ec56793786b6dc8a908e8854ac0e4"
