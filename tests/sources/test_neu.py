"""NEU: both layouts (flat NEU-CLS BMPs, NEU-DET folders), one stratified 2:1 split per class."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import neu
from rayexp.errors import RayexpError

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
PER_CLASS = 6  # 4 train / 2 test, as 200 / 100 of the real 300
SIZE = 40  # the real images are 200x200; small keeps the test fast


def _gray(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), mode="L")


def _write_cls(folder: Path) -> None:
    """NEU-CLS: Cr_1.bmp ... Sc_6.bmp, 8-bit grayscale, in one flat folder."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in neu.PREFIXES:
        for i in range(1, PER_CLASS + 1):
            _gray(rng).save(folder / f"{prefix}_{i}.bmp")


def _write_det(folder: Path) -> None:
    """NEU-DET: {train,validation}/images/<class>/<class>_N.jpg (4 + 2 per class) beside annotations/."""
    rng = np.random.default_rng(1)
    n = 0
    for split, count in (("train", 4), ("validation", 2)):
        (folder / split / "annotations").mkdir(parents=True)
        for cls in CLASSES:
            (folder / split / "images" / cls).mkdir(parents=True)
            for _ in range(count):
                n += 1
                _gray(rng).save(folder / split / "images" / cls / f"{cls}_{n}.jpg", quality=90)
                (folder / split / "annotations" / f"{cls}_{n}.xml").write_text("<annotation/>")


def _splits(data_dir: Path) -> dict[str, dict]:
    return {s: read_split(data_dir, "neu", s).to_pydict() for s in ("train", "test")}


def test_flat_bmp_folder(tmp_path):
    _write_cls(tmp_path / "NEU surface defect database")
    manifest = prepare("neu", tmp_path / "data", source=tmp_path, workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [4] * 6
    assert manifest["splits"]["test"]["class_counts"] == [2] * 6
    assert "200/100" in manifest["split_rule"] and manifest["image"]["encoding"] == "png"
    (key,) = manifest["source_checksums"]
    assert manifest["source_checksums"][key].startswith("sha256:")
    splits = _splits(tmp_path / "data")
    # PS and Pa are different classes: the label is the exact prefix's class
    prefix_of = {v: k for k, v in neu.PREFIXES.items()}
    for table in splits.values():
        for id_, label, data in zip(table["id"], table["label"], table["image"]):
            assert id_.startswith("NEU surface defect database/")
            assert Path(id_).name.rpartition("_")[0] == prefix_of[CLASSES[label]]
            image = decode_image(data)
            assert image.shape == (SIZE, SIZE, 3)  # grayscale stored as RGB, not resized
            assert (image[..., 0] == image[..., 1]).all()
    assert Counter(splits["train"]["label"] + splits["test"]["label"]) == {c: PER_CLASS for c in range(6)}


def test_same_seed_same_split(tmp_path):
    _write_cls(tmp_path / "src")
    ids = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 5)):
        prepare("neu", tmp_path / run, source=tmp_path / "src", workers=1, quiet=True, seed=seed)
        ids[run] = sorted(read_split(tmp_path / run, "neu", "test")["id"].to_pylist())
    assert ids["a"] == ids["b"]
    assert ids["a"] != ids["c"]


def test_zip_of_the_flat_folder(tmp_path):
    _write_cls(tmp_path / "tree" / "NEU-CLS")
    path = tmp_path / "NEU-CLS.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted((tmp_path / "tree").rglob("*.bmp")):
            zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
    manifest = prepare("neu", tmp_path / "data", source=path, workers=1, quiet=True)
    assert manifest["splits"]["test"]["rows"] == 12
    assert list(manifest["source_checksums"]) == ["NEU-CLS.zip"]


def test_neu_det_folders_are_pooled_and_resplit(tmp_path):
    _write_det(tmp_path / "src" / "NEU-DET")
    manifest = prepare("neu", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [4] * 6
    assert manifest["splits"]["test"]["class_counts"] == [2] * 6
    assert "NEU-DET" in manifest["split_rule"] and manifest["notes"]
    splits = _splits(tmp_path / "data")
    ids = splits["train"]["id"] + splits["test"]["id"]
    assert len(ids) == 36 and all(i.startswith("NEU-DET/") for i in ids)
    assert {i.split("/")[1] for i in ids} == {"train", "validation"}
    for table in splits.values():
        for id_, label, data in zip(table["id"], table["label"], table["image"]):
            assert id_.split("/")[3] == CLASSES[label]
            assert decode_image(data).shape == (SIZE, SIZE, 3)
    # pointing at NEU-DET itself works too
    again = prepare("neu", tmp_path / "data2", source=tmp_path / "src" / "NEU-DET", workers=1, quiet=True)
    assert again["splits"]["test"]["rows"] == 12


def test_unknown_prefix_and_missing_images_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match="no NEU images in .*Cr_1.bmp"):
        prepare("neu", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _write_cls(tmp_path / "src")
    Image.new("L", (SIZE, SIZE)).save(tmp_path / "src" / "ps_7.bmp")  # lower-case: not a NEU class
    with pytest.raises(RayexpError, match="ps_7.bmp"):
        prepare("neu", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)


def test_local_only():
    assert neu.remote_files("neu") == []
    assert "NEU-DET" in neu.local_help("neu")
