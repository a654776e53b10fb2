"""RSNA Pneumonia from a tiny stage_2_train_labels.csv and DICOM files written with pydicom."""

import io
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import rsna
from rayexp.errors import RayexpError

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SIZE = (20, 24)  # (H, W)


def _dicom(path, pixels, bits_stored=8, photometric="MONOCHROME2"):
    """A minimal valid DICOM file (explicit VR little endian, one grayscale frame)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.PatientID = path.stem
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _patient(i):
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def _source(root, n_negative=10, n_positive=10):
    """Patients 0..n-1: negatives have one row with empty box columns; positive k has 1 + k % 3 boxes.
    Patient i's image is filled with 10 * i. Returns (CSV rows, {patient: Target})."""
    lines, targets = ["patientId,x,y,width,height,Target"], {}
    for i in range(n_negative + n_positive):
        patient = _patient(i)
        if i < n_negative:
            lines.append(f"{patient},,,,,0")
            targets[patient] = 0
        else:
            lines += [f"{patient},{100 + b}.0,152.0,213.0,379.0,1" for b in range(1 + i % 3)]
            targets[patient] = 1
        _dicom(root / rsna.IMAGES / f"{patient}.dcm", np.full(SIZE, 10 * i, dtype=np.uint8))
    (root / rsna.LABELS).write_text("\n".join(lines) + "\n")
    return len(lines) - 1, targets


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    n_rows, targets = _source(root)
    return root, n_rows, targets


def test_one_row_per_patient(tmp_path, src):
    root, n_rows, targets = src
    manifest = prepare("rsna_pneumonia", tmp_path / "data", source=root, workers=1, quiet=True)
    assert manifest["splits"]["train"]["class_counts"] == [8, 8] and manifest["splits"]["test"]["class_counts"] == [
        2,
        2,
    ]
    assert manifest["source_checksums"] == {rsna.LABELS: "sha256:" + file_digest(root / rsna.LABELS)}
    assert any(f"{len(targets)} images" in note for note in manifest["notes"])
    rows = (
        read_split(tmp_path / "data", "rsna_pneumonia", "train").to_pylist()
        + read_split(tmp_path / "data", "rsna_pneumonia", "test").to_pylist()
    )
    assert sorted(r["id"] for r in rows) == sorted(targets)  # each patient once, whatever its boxes
    for row in rows:
        assert row["label"] == targets[row["id"]]
        pixels = decode_image(row["image"])
        assert pixels.shape == (*SIZE, 3) and (pixels == 10 * int(row["id"][:8], 16)).all()  # 8-bit: unchanged


def test_paper_keeps_every_csv_row(tmp_path, src):
    root, n_rows, targets = src
    manifest = prepare("rsna_pneumonia", tmp_path / "data", source=root, split="paper", workers=1, quiet=True)
    assert sum(manifest["splits"][s]["rows"] for s in ("train", "test")) == n_rows > len(targets)
    assert any("repeat the image" in note for note in manifest["notes"])
    ids = [
        i
        for s in ("train", "test")
        for i in read_split(tmp_path / "data", "rsna_pneumonia", s, columns=["id"])["id"].to_pylist()
    ]
    assert len(set(ids)) == n_rows and sum(i.startswith(_patient(11) + "#") for i in ids) == 3  # 1 + 11 % 3 boxes


def test_same_seed_same_split(tmp_path, src):
    root, _, _ = src
    ids = []
    for run in ("a", "b"):
        prepare("rsna_pneumonia", tmp_path / run, source=root, workers=1, quiet=True)
        ids.append(sorted(read_split(tmp_path / run, "rsna_pneumonia", "test", columns=["id"])["id"].to_pylist()))
    assert ids[0] == ids[1]


def test_kaggle_zip_and_its_digest(tmp_path, src):
    root, _, targets = src
    archive = tmp_path / rsna.ARCHIVE
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    manifest = prepare("rsna_pneumonia", tmp_path / "data", source=archive, workers=1, quiet=True)
    assert manifest["source_checksums"][rsna.ARCHIVE] == "sha256:" + file_digest(archive)
    assert manifest["splits"]["test"]["rows"] + manifest["splits"]["train"]["rows"] == len(targets)


def test_pixels_photometric_and_bit_depth(tmp_path):
    ramp = np.array([[0, 2048, 4095]], dtype=np.uint16)
    assert rsna.read_dicom(str(_dicom(tmp_path / "a.dcm", ramp, bits_stored=12))).tolist() == [[0, 128, 255]]
    inverted = rsna.read_dicom(
        str(_dicom(tmp_path / "b.dcm", np.array([[0, 55, 255]], dtype=np.uint8), photometric="MONOCHROME1"))
    )
    assert inverted.tolist() == [[255, 200, 0]]


def test_jpeg_compressed_dicom_decodes(tmp_path):
    path = _dicom(tmp_path / "c.dcm", np.full((16, 16), 77, dtype=np.uint8))
    ds = pydicom.dcmread(path)
    jpeg = io.BytesIO()
    Image.fromarray(np.full((16, 16), 77, dtype=np.uint8)).save(jpeg, format="JPEG", quality=95)
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    assert (rsna.read_dicom(str(path)) == 77).all()


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError,
        match=r"expected rsna-pneumonia-detection-challenge\.zip or its extracted stage_2_train_labels\.csv in .*empty",
    ):
        prepare("rsna_pneumonia", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    root = tmp_path / "partial"
    _source(root, 2, 2)
    (root / rsna.IMAGES / f"{_patient(3)}.dcm").unlink()
    with pytest.raises(RayexpError, match=rf"{_patient(3)}\.dcm is missing"):
        prepare("rsna_pneumonia", tmp_path / "data", source=root, workers=1, quiet=True)
    with pytest.raises(RayexpError, match="Kaggle login"):
        prepare("rsna_pneumonia", tmp_path / "data", download_files=True, workers=1, quiet=True)
