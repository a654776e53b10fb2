"""EuroSAT: a tiny EuroSAT.zip (2750/<Class>/<Class>_<n>.jpg), stratified 70/30 with a fixed seed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import eurosat
from rayexp.errors import RayexpError

CLASSES = ["AnnualCrop", "Forest", "SeaLake"]
PER_CLASS = 10  # 7 train / 3 test


def _write_tree(folder: Path) -> dict[str, bytes]:
    """2750/<Class>/<Class>_<n>.jpg, 64x64 RGB JPEGs; returns each id's file bytes."""
    rng = np.random.default_rng(0)
    files = {}
    for cls in CLASSES:
        (folder / "2750" / cls).mkdir(parents=True)
        for n in range(1, PER_CLASS + 1):
            path = folder / "2750" / cls / f"{cls}_{n}.jpg"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
            files[f"2750/{cls}/{cls}_{n}.jpg"] = path.read_bytes()
    return files


@pytest.fixture()
def archive(tmp_path, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    files = _write_tree(tmp_path / "tree")
    path = tmp_path / "src" / eurosat.ARCHIVE
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted((tmp_path / "tree").rglob("*")):
            zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
    monkeypatch.setitem(eurosat.CHECKSUMS, eurosat.ARCHIVE, "md5:" + file_digest(path, "md5"))
    return path, files


def test_stratified_70_30(tmp_path, archive):
    path, files = archive
    manifest = prepare("eurosat", tmp_path / "data", source=path.parent, workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [7, 7, 7]
    assert manifest["splits"]["test"]["class_counts"] == [3, 3, 3]
    assert manifest["source_checksums"] == {eurosat.ARCHIVE: eurosat.CHECKSUMS[eurosat.ARCHIVE]}
    seen = {}
    for split in ("train", "test"):
        table = read_split(tmp_path / "data", "eurosat", split).to_pydict()
        for id_, label, data in zip(table["id"], table["label"], table["image"]):
            assert CLASSES[label] == id_.split("/")[1]
            assert decode_image(data).shape == (64, 64, 3)
            seen[id_] = data
    assert sorted(seen) == sorted(files)
    assert all(seen[i] == files[i] for i in files)  # small RGB JPEGs are stored byte for byte


def test_same_seed_same_split(tmp_path, archive):
    path, _ = archive
    test_ids = {}
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        prepare("eurosat", tmp_path / run, source=path, workers=1, quiet=True, seed=seed)
        test_ids[run] = sorted(read_split(tmp_path / run, "eurosat", "test")["id"].to_pylist())
    assert test_ids["a"] == test_ids["b"] != test_ids["c"]


def test_extracted_folder_is_accepted(tmp_path):
    _write_tree(tmp_path / "src")
    for source in (tmp_path / "src", tmp_path / "src" / "2750"):
        manifest = prepare("eurosat", tmp_path / "data", source=source, workers=1, quiet=True, force=True)
        assert manifest["splits"]["test"]["rows"] == 9
        (value,) = manifest["source_checksums"].values()
        assert value.startswith("sha256:")


def test_wrong_checksum_is_refused(tmp_path, archive, monkeypatch):
    path, _ = archive
    monkeypatch.setitem(eurosat.CHECKSUMS, eurosat.ARCHIVE, "md5:" + "f" * 32)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("eurosat", tmp_path / "data", source=path.parent, workers=1, quiet=True)


def test_missing_archive_and_empty_class_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match=r"EuroSAT\.zip or its extracted 2750"):
        prepare("eurosat", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _write_tree(tmp_path / "src")
    (tmp_path / "src" / "2750" / "Highway").mkdir()
    with pytest.raises(RayexpError, match="Highway has no .jpg/.jpeg images: an empty class is an error"):
        prepare("eurosat", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)


def test_remote_files_are_published():
    (remote,) = eurosat.remote_files("eurosat")
    assert remote.filename == "EuroSAT.zip" and remote.checksum == "md5:c8fa014336c82ac7804f0398fcb19387"
    assert remote.url.startswith("https://")
