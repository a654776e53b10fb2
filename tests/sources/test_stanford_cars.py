"""Stanford Cars from a user's copy: the devkit layout (.mat struct arrays), class folders, cars_annos.mat."""

import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from rayexp.data.codec import decode_image
from rayexp.data.download import file_digest
from rayexp.data.preparation import prepare
from rayexp.data.shards import read_split
from rayexp.data.sources import stanford_cars
from rayexp.errors import RayexpError

CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Volvo XC90 SUV 2007"]
TRAIN = [0, 0, 0, 1, 1, 2, 2, 2]  # 0-based class of cars_train/00001.jpg, 00002.jpg, ...
TEST = [0, 1, 1, 2, 2]
FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def _jpeg(path, value, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _struct(rows, fields):
    """A MATLAB 1 x N struct array (what scipy.io.savemat writes for a structured object array)."""
    array = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            value = row[f]
            array[0, i][f] = (
                value
                if isinstance(value, str)
                else np.array([[value]], dtype=np.uint16 if f.startswith("bbox") else np.uint8)
            )
    return array


def _annos(classes0, with_labels=True):
    rows = []
    for i, c in enumerate(classes0, 1):
        rows.append({"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 20, "class": c + 1, "fname": f"{i:05d}.jpg"})
    return _struct(rows, FIELDS if with_labels else [f for f in FIELDS if f != "class"])


def _names(names):
    cell = np.empty((1, len(names)), dtype=object)
    cell[0, :] = names
    return cell


def _devkit(root):
    """The layout torchvision documents, with Kaggle's nesting: cars_train/cars_train/, car_devkit/devkit/."""
    for folder, labels in (("cars_train", TRAIN), ("cars_test", TEST)):
        for i, c in enumerate(labels, 1):
            size = (500, 300) if (folder, i) == ("cars_train", 1) else (40, 30)
            _jpeg(root / folder / folder / f"{i:05d}.jpg", 40 * c + i, size)
    devkit = root / "car_devkit" / "devkit"
    devkit.mkdir(parents=True)
    savemat(devkit / "cars_meta.mat", {"class_names": _names(CLASSES)})
    savemat(devkit / "cars_train_annos.mat", {"annotations": _annos(TRAIN)})
    savemat(devkit / "cars_test_annos.mat", {"annotations": _annos(TEST, with_labels=False)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _annos(TEST)})
    return root


def _check_official(data, id_prefixes):
    for split, labels, prefix in (("train", TRAIN, id_prefixes[0]), ("test", TEST, id_prefixes[1])):
        table = read_split(data, "stanford_cars", split)
        got = dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))
        assert got == {f"{prefix}{i:05d}.jpg": c for i, c in enumerate(labels, 1)}
    return read_split(data, "stanford_cars", "train")


def test_devkit_layout(tmp_path):
    src = _devkit(tmp_path / "stanford_cars")
    data = tmp_path / "data"
    manifest = prepare("stanford_cars", data, source=src, workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [3, 2, 3]
    assert manifest["splits"]["test"]["class_counts"] == [1, 2, 2]
    assert manifest["split_rule"].startswith("official")
    assert manifest["source_checksums"]["cars_test_annos_withlabels.mat"] == "sha256:" + file_digest(
        src / "cars_test_annos_withlabels.mat"
    )
    assert set(manifest["source_checksums"]) == {
        "cars_meta.mat",
        "cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
    }
    train = _check_official(data, ("cars_train/", "cars_test/"))
    shapes = dict(zip(train["id"].to_pylist(), [decode_image(b).shape for b in train["image"].to_pylist()]))
    assert shapes["cars_train/00001.jpg"] == (256, 427, 3) and shapes["cars_train/00002.jpg"] == (30, 40, 3)


def test_devkit_as_a_downloaded_zip(tmp_path):
    staged = _devkit(tmp_path / "staged")
    archive = tmp_path / "stanford-cars-dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(staged.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(staged).as_posix())
    manifest = prepare("stanford_cars", tmp_path / "data", source=archive, workers=1, quiet=True)
    assert manifest["splits"]["train"]["rows"] == len(TRAIN) and manifest["splits"]["test"]["rows"] == len(TEST)
    assert manifest["source_checksums"][archive.name] == "sha256:" + file_digest(archive)


def test_class_folders_layout(tmp_path):
    src = tmp_path / "src"
    for split, labels in (("train", TRAIN), ("test", TEST)):
        for i, c in enumerate(labels, 1):
            _jpeg(src / "stanford_cars" / split / CLASSES[c] / f"{i:05d}.jpg", 40 * c + i)
    data = tmp_path / "data"
    manifest = prepare("stanford_cars", data, source=src, workers=1, quiet=True)
    assert manifest["classes"] == sorted(CLASSES)
    assert manifest["splits"]["train"]["class_counts"] == [3, 2, 3] and manifest["splits"]["test"]["class_counts"] == [
        1,
        2,
        2,
    ]
    test = read_split(data, "stanford_cars", "test")
    assert sorted(test["id"].to_pylist())[0] == f"test/{CLASSES[0]}/00001.jpg"
    assert all(i.split("/")[1] == CLASSES[k] for i, k in zip(test["id"].to_pylist(), test["label"].to_pylist()))
    assert decode_image(test["image"][0].as_py()).shape == (30, 40, 3)


def test_all_in_one_cars_annos(tmp_path):
    src = tmp_path / "src"
    rows = []
    for n, (c, is_test) in enumerate([(c, 0) for c in TRAIN] + [(c, 1) for c in TEST], 1):
        _jpeg(src / "car_ims" / f"{n:06d}.jpg", 40 * c + n)
        rows.append(
            {
                "relative_im_path": f"car_ims/{n:06d}.jpg",
                "bbox_x1": 1,
                "bbox_y1": 2,
                "bbox_x2": 30,
                "bbox_y2": 20,
                "class": c + 1,
                "test": is_test,
            }
        )
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    savemat(src / "cars_annos.mat", {"annotations": _struct(rows, fields), "class_names": _names(CLASSES)})
    manifest = prepare("stanford_cars", tmp_path / "data", source=src, workers=1, quiet=True)
    assert manifest["classes"] == CLASSES
    assert manifest["splits"]["train"]["class_counts"] == [3, 2, 3] and manifest["splits"]["test"]["class_counts"] == [
        1,
        2,
        2,
    ]
    test = read_split(tmp_path / "data", "stanford_cars", "test")
    assert sorted(test["id"].to_pylist())[0] == f"car_ims/{len(TRAIN) + 1:06d}.jpg"


def test_missing_test_labels_and_images_are_named(tmp_path):
    src = _devkit(tmp_path / "src")
    (src / "cars_test_annos_withlabels.mat").rename(tmp_path / "elsewhere.mat")
    with pytest.raises(RayexpError, match=r"not cars_test_annos_withlabels.mat.*cars_test_annos.mat has none"):
        prepare("stanford_cars", tmp_path / "data", source=src, workers=1, quiet=True)
    # The unlabelled test file passed off under the labelled name is caught too.
    savemat(src / "cars_test_annos_withlabels.mat", {"annotations": _annos(TEST, with_labels=False)})
    with pytest.raises(RayexpError, match="no 'class' field"):
        prepare("stanford_cars", tmp_path / "data", source=src, workers=1, quiet=True)
    (tmp_path / "elsewhere.mat").replace(src / "cars_test_annos_withlabels.mat")
    (src / "cars_test" / "cars_test" / "00003.jpg").unlink()
    with pytest.raises(
        RayexpError, match=r"1 image\(s\) named in .*cars_test_annos_withlabels.mat are missing, e.g. .*00003.jpg"
    ):
        prepare("stanford_cars", tmp_path / "data", source=src, workers=1, quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayexpError, match="no Stanford Cars layout found in .*empty.*kaggle"):
        prepare("stanford_cars", tmp_path / "data", source=tmp_path / "empty", workers=1, quiet=True)
    assert stanford_cars.remote_files("stanford_cars") == []
