"""PlantVillage: a tiny Mendeley zip (Plant_leave_diseases_dataset_without_augmentation/<class>/*.JPG), 80/20."""

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
from rayexp.data.sources import plantvillage
from rayexp.errors import RayexpError

# Real folder names, including the space, the comma and the case that sorting must respect.
CLASSES = sorted(
    [
        "Apple___Apple_scab",
        "Background_without_leaves",
        "Cherry___Powdery_mildew",
        "Cherry___healthy",
        "Corn___Cercospora_leaf_spot Gray_leaf_spot",
        "Pepper,_bell___Bacterial_spot",
    ]
)
PER_CLASS = 5  # 4 train / 1 test
INNER = "Plant_leave_diseases_dataset_without_augmentation"


def _write_tree(folder: Path) -> list[str]:
    """<INNER>/<class>/image (N).JPG, 48x48 RGB JPEGs; returns the ids."""
    rng = np.random.default_rng(0)
    ids = []
    for cls in CLASSES:
        (folder / INNER / cls).mkdir(parents=True)
        for n in range(PER_CLASS):
            name = f"{n:08x}-leaf___RS_HL {n}.JPG"
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
                folder / INNER / cls / name, format="JPEG"
            )
            ids.append(f"{cls}/{name}")
    return ids


@pytest.fixture()
def archive(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    ids = _write_tree(tmp_path / "tree")
    path = tmp_path / "src" / plantvillage.ARCHIVE
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted((tmp_path / "tree").rglob("*")):
            zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
    monkeypatch.setitem(plantvillage.CHECKSUMS, plantvillage.ARCHIVE, "sha256:" + file_digest(path))
    return path, ids


def test_stratified_80_20(tmp_path, archive):
    path, ids = archive
    manifest = prepare("plantvillage", tmp_path / "data", source=path, workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert CLASSES.index("Cherry___Powdery_mildew") < CLASSES.index("Cherry___healthy")
    assert manifest["splits"]["train"]["class_counts"] == [4] * len(CLASSES)
    assert manifest["splits"]["test"]["class_counts"] == [1] * len(CLASSES)
    assert manifest["source_checksums"] == {plantvillage.ARCHIVE: plantvillage.CHECKSUMS[plantvillage.ARCHIVE]}
    seen = []
    for split in ("train", "test"):
        table = read_split(tmp_path / "data", "plantvillage", split).to_pydict()
        for id_, label, data in zip(table["id"], table["label"], table["image"]):
            assert CLASSES[label] == id_.split("/")[0]
            assert decode_image(data).shape == (48, 48, 3)
        seen += table["id"]
    assert sorted(seen) == sorted(ids)


def test_same_seed_same_split(tmp_path, archive):
    path, _ = archive
    a = prepare("plantvillage", tmp_path / "a", source=path.parent, workers=1, quiet=True)
    b = prepare("plantvillage", tmp_path / "b", source=path.parent, workers=1, quiet=True)
    assert a["splits"] == b["splits"]
    assert sorted(read_split(tmp_path / "a", "plantvillage", "test")["id"].to_pylist()) == sorted(
        read_split(tmp_path / "b", "plantvillage", "test")["id"].to_pylist()
    )


def test_extracted_folders_are_accepted(tmp_path):
    _write_tree(tmp_path / "src" / "Plant_leaf_diseases_dataset_without_augmentation")
    outer = tmp_path / "src" / "Plant_leaf_diseases_dataset_without_augmentation"
    for source in (tmp_path / "src", outer, outer / INNER):
        manifest = prepare("plantvillage", tmp_path / "data", source=source, workers=1, quiet=True, force=True)
        assert manifest["splits"]["test"]["rows"] == len(CLASSES)
        (value,) = manifest["source_checksums"].values()
        assert value.startswith("sha256:")


def test_wrong_checksum_is_refused(tmp_path, archive, monkeypatch):
    path, _ = archive
    monkeypatch.setitem(plantvillage.CHECKSUMS, plantvillage.ARCHIVE, "sha256:" + "0" * 64)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("plantvillage", tmp_path / "data", source=path.parent, workers=1, quiet=True)


def test_missing_archive_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError, match=r"Plant_leaf_diseases_dataset_without_augmentation\.zip or its extracted Plant_leave_"
    ):
        prepare("plantvillage", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)


def test_remote_files_are_published():
    (remote,) = plantvillage.remote_files("plantvillage")
    assert remote.filename == plantvillage.ARCHIVE
    assert remote.checksum == "sha256:ac3432453984d02a86197987e775a5429d0d59e7cc7c35bcf5a8f50349b90ff0"
    assert "tywbtsjrjv" in remote.url and "tywbtsjrjv" in plantvillage.local_help("plantvillage")
