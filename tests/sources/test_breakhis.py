"""BreakHis from a tiny copy of the BreaKHis_v1 tree (folder and tar.gz), split by patient or by image."""

import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import breakhis
from rayexp.errors import RayexpError

SUBTYPES = {
    "B": [("A", "adenosis"), ("F", "fibroadenoma")],
    "M": [("DC", "ductal_carcinoma"), ("LC", "lobular_carcinoma")],
}
MAGS = ("40", "100", "200", "400")
FULL = (460, 700)  # (H, W) of the real images, used for each class's first 40X image
SMALL = (23, 35)


def _tree(root, per_class=10):
    """``per_class`` patients of each class; patient k has 2 + k % 3 images at each magnification, and the
    last malignant patient has no 400X images. Returns {patient: (class letter, images per magnification)}."""
    patients = {}
    for cls, subtypes in SUBTYPES.items():
        folder = "benign" if cls == "B" else "malignant"
        for k in range(per_class):
            code, subtype = subtypes[k % 2]
            patient = f"14-{cls}{1000 + k}AB"
            patients[patient] = (cls, 2 + k % 3)
            for mag in MAGS:
                if cls == "M" and k == per_class - 1 and mag == "400":
                    continue
                mag_dir = (
                    root
                    / "BreaKHis_v1/histology_slides/breast"
                    / folder
                    / "SOB"
                    / subtype
                    / f"SOB_{cls}_{code}_{patient}"
                    / f"{mag}X"
                )
                mag_dir.mkdir(parents=True, exist_ok=True)
                for seq in range(1, 3 + k % 3):
                    size = FULL if (mag, k, seq) == ("40", 0, 1) else SMALL
                    array = np.full((*size, 3), (k * 10, seq * 40, 200 if cls == "M" else 50), dtype=np.uint8)
                    Image.fromarray(array).save(mag_dir / f"SOB_{cls}_{code}-{patient}-{mag}-{seq:03d}.png")
    return patients


def _patient(record_id):
    """``..._<patient>/40X/SOB_B_A-14-B1000AB-40-001.png`` -> ``14-B1000AB``."""
    return "-".join(record_id.rsplit("/", 1)[1].split("-")[1:3])


def _sides(data_dir, name):
    sides = {}
    for split in ("train", "test"):
        table = read_split(data_dir, name, split, columns=["id", "label"])
        for record_id, label in zip(table["id"].to_pylist(), table["label"].to_pylist()):
            assert label == (0 if "/SOB_B_" in record_id else 1)
            sides.setdefault(_patient(record_id), set()).add(split)
    return sides


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("breakhis")
    return root, _tree(root)


def test_by_patient_same_patients_at_every_magnification(tmp_path, tree):
    root, patients = tree
    manifest = prepare("breakhis_40x", tmp_path / "data", source=root, workers=1, quiet=True)
    assert manifest["classes"] == ["benign", "malignant"] and "by patient" in manifest["split_rule"]
    at40 = _sides(tmp_path / "data", "breakhis_40x")
    assert all(len(s) == 1 for s in at40.values()), "a patient on both sides"
    assert set(at40) == set(patients)
    test_patients = {p for p, s in at40.items() if s == {"test"}}
    assert Counter(patients[p][0] for p in test_patients) == {"B": 3, "M": 3}  # 30% of 10 per class
    assert manifest["splits"]["test"]["rows"] == sum(patients[p][1] for p in test_patients)
    assert manifest["image"]["stored_max"] == [448, 682]  # 460x700 at min(native, 448x672)
    table = (
        read_split(tmp_path / "data", "breakhis_40x", "train").to_pylist()
        + read_split(tmp_path / "data", "breakhis_40x", "test").to_pylist()
    )
    shapes = {row["id"].rsplit("/", 1)[1]: decode_image(row["image"]).shape for row in table}
    assert shapes["SOB_B_A-14-B1000AB-40-001.png"] == (448, 682, 3) and shapes["SOB_B_A-14-B1000AB-40-002.png"] == (
        *SMALL,
        3,
    )

    prepare("breakhis_400x", tmp_path / "data", source=root, workers=1, quiet=True)
    at400 = _sides(tmp_path / "data", "breakhis_400x")
    assert len(at400) == len(patients) - 1 and all(len(s) == 1 for s in at400.values())
    assert all(at400[p] == at40[p] for p in at400)
    table = read_split(tmp_path / "data", "breakhis_400x", "train", columns=["image"])
    assert decode_image(table["image"][0].as_py()).shape == (*SMALL, 3)


def test_paper_mode_splits_images(tmp_path, tree):
    root, _ = tree
    manifest = prepare("breakhis_100x", tmp_path / "data", source=root, split="paper", workers=1, quiet=True)
    assert "image-level" in manifest["split_rule"] and any("leaks patients" in n for n in manifest["notes"])
    # 30 images per class (10 patients x 2..4): round(0.3 * 30) = 9 each, whatever the patients.
    assert manifest["splits"]["test"]["class_counts"] == [9, 9]
    assert any(len(s) == 2 for s in _sides(tmp_path / "data", "breakhis_100x").values())


def test_archive_is_extracted_and_its_digest_recorded(tmp_path, tree):
    root, _ = tree
    archive = tmp_path / breakhis.ARCHIVE
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root / "BreaKHis_v1", arcname="BreaKHis_v1")
    folder = prepare("breakhis_200x", tmp_path / "a", source=root, workers=1, quiet=True)
    packed = prepare("breakhis_200x", tmp_path / "b", source=archive, workers=1, quiet=True)
    assert packed["source_checksums"] == {breakhis.ARCHIVE: "sha256:" + file_digest(archive)}
    assert [packed["splits"][s]["class_counts"] for s in ("train", "test")] == [
        folder["splits"][s]["class_counts"] for s in ("train", "test")
    ]
    ids = [
        sorted(read_split(d, "breakhis_200x", "test", columns=["id"])["id"].to_pylist())
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert ids[0] == ids[1] and ids[0][0].startswith("benign/SOB/")


def test_missing_archive_and_download_without_checksum(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError,
        match=r"expected BreaKHis_v1\.tar\.gz or its extracted BreaKHis_v1/histology_slides/breast in .*empty",
    ):
        prepare("breakhis_40x", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    with pytest.raises(RayexpError, match="no published checksum"):
        prepare("breakhis_40x", tmp_path / "data", download_files=True, workers=1, quiet=True)
