"""CUB-200-2011 from a tiny CUB_200_2011.tgz in Caltech's layout: 1-based ids and classes, official split."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import cub200
from rayexp.errors import RayexpError

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# (image id, class id, is_train, (height, width)); ids deliberately not in class order.
IMAGES = [
    (1, 2, 1, (40, 60)),
    (2, 1, 0, (50, 50)),
    (3, 3, 1, (300, 400)),
    (4, 1, 1, (45, 30)),
    (5, 2, 0, (40, 60)),
    (6, 3, 0, (30, 30)),
    (7, 1, 1, (40, 40)),
    (8, 2, 1, (60, 40)),
]


def _rel(image_id: int, class_id: int) -> str:
    return f"{CLASSES[class_id - 1]}/{CLASSES[class_id - 1].split('.')[1]}_{image_id:04d}_{100 + image_id}.jpg"


def _jpeg(size, value, mode="RGB") -> bytes:
    shape = (*size, 3) if mode == "RGB" else size
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def _members(drop=None) -> dict[str, bytes]:
    base = "CUB_200_2011"
    members = {
        "attributes.txt": b"1 has_bill_shape::curved\n",  # the real archive has this beside the folder
        f"{base}/README": b"CUB-200-2011\n",
        f"{base}/images.txt": "".join(f"{i} {_rel(i, c)}\n" for i, c, _, _ in IMAGES).encode(),
        f"{base}/image_class_labels.txt": "".join(f"{i} {c}\n" for i, c, _, _ in IMAGES).encode(),
        f"{base}/train_test_split.txt": "".join(f"{i} {t}\n" for i, _, t, _ in IMAGES).encode(),
        f"{base}/classes.txt": "".join(f"{k} {name}\n" for k, name in enumerate(CLASSES, 1)).encode(),
    }
    for i, c, _, size in IMAGES:
        members[f"{base}/images/{_rel(i, c)}"] = _jpeg(size, 20 * i, "L" if i == 6 else "RGB")
    if drop:
        del members[f"{base}/{drop}"]
    return members


def _tgz(folder, drop=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in _members(drop).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _trust(monkeypatch, archive):
    monkeypatch.setitem(cub200.CHECKSUMS, "cub200", "md5:" + file_digest(archive, "md5"))


def test_official_split_and_labels_from_the_archive(tmp_path, monkeypatch):
    _trust(monkeypatch, _tgz(tmp_path / "src"))
    manifest = prepare("cub200", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [2, 2, 1] and manifest["splits"]["test"]["class_counts"] == [
        1,
        1,
        1,
    ]
    assert manifest["source_checksums"] == {"CUB_200_2011.tgz": cub200.CHECKSUMS["cub200"]}
    assert manifest["image"]["encoding"] == "jpeg"

    for split, flag in (("train", 1), ("test", 0)):
        table = read_split(tmp_path / "data", "cub200", split)
        expected = {f"images/{_rel(i, c)}": c - 1 for i, c, t, _ in IMAGES if t == flag}
        assert dict(zip(table["id"].to_pylist(), table["label"].to_pylist())) == expected
        shapes = {i: decode_image(d).shape for i, d in zip(table["id"].to_pylist(), table["image"].to_pylist())}
        for i, c, t, (h, w) in IMAGES:
            if t == flag:
                # stored at most the training size (256) on the shorter side, never upscaled
                assert shapes[f"images/{_rel(i, c)}"] == ((256, 341, 3) if (h, w) == (300, 400) else (h, w, 3))


def test_extracted_folder_works(tmp_path):
    with tarfile.open(_tgz(tmp_path / "tgz")) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    one = prepare("cub200", tmp_path / "one", source=tmp_path / "src", workers=1, quiet=True)
    two = prepare("cub200", tmp_path / "two", source=tmp_path / "src" / "CUB_200_2011", workers=1, quiet=True)
    assert one["splits"] == two["splits"] and one["splits"]["train"]["rows"] == 5
    listed = tmp_path / "src" / "CUB_200_2011" / "train_test_split.txt"
    assert one["source_checksums"]["CUB_200_2011/train_test_split.txt"] == "sha256:" + file_digest(listed)


def test_wrong_checksum_is_refused(tmp_path):
    _tgz(tmp_path / "src")
    with pytest.raises(
        RayexpError, match=r"checksum mismatch for .*CUB_200_2011.tgz: expected md5 97eceeb196236b17998738112f37df78"
    ):
        prepare("cub200", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert not (tmp_path / "data" / "cub200").exists()


def test_missing_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        RayexpError,
        match=r"expected CUB_200_2011.tgz or its extracted CUB_200_2011/images.txt in .*empty \(download it from https://data.caltech.edu/",
    ):
        prepare("cub200", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    _trust(monkeypatch, _tgz(tmp_path / "a", drop=f"images/{_rel(3, 3)}"))
    with pytest.raises(
        RayexpError, match=r"images.txt lists 003.Sooty_Albatross/Sooty_Albatross_0003_103.jpg, but .* does not exist"
    ):
        prepare("cub200", tmp_path / "data", source=tmp_path / "a", workers=1, quiet=True)
    _trust(monkeypatch, _tgz(tmp_path / "b", drop="train_test_split.txt"))
    with pytest.raises(RayexpError, match=r"expected train_test_split.txt at .*CUB_200_2011/train_test_split.txt"):
        prepare("cub200", tmp_path / "data", source=tmp_path / "b", workers=1, quiet=True)


def test_remote_file():
    (remote,) = cub200.remote_files("cub200")
    assert remote.filename == "CUB_200_2011.tgz" and remote.checksum == "md5:97eceeb196236b17998738112f37df78"
