"""The generic folder source (a user's own data, PlantCLEF) and the preparation around every source."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rayexp.data.codec import decode_image
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest, read_split
from rayexp.data.sources import folder
from rayexp.errors import RayexpError
from tests.conftest import REPO


def _image(path, size=(40, 30), value=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt)


def _class_folders(root, per_class=(6, 4), suffix=".png"):
    for c, n in enumerate(per_class):
        for i in range(n):
            _image(root / f"class{c}" / f"{i}{suffix}", value=20 * c + i)
    return root


def test_class_folders_stratified_with_domain(tmp_path):
    src = _class_folders(tmp_path / "src", per_class=(10, 5))
    manifest = prepare("mydata", tmp_path / "data", source=src, domain="medical", workers=1, quiet=True)
    assert manifest["domain"] == "medical" and manifest["classes"] == ["class0", "class1"]
    assert manifest["splits"]["train"]["class_counts"] == [8, 4] and manifest["splits"]["test"]["class_counts"] == [
        2,
        1,
    ]
    assert manifest["image"]["encoding"] == "png"
    table = read_split(tmp_path / "data", "mydata", "train")
    assert decode_image(table["image"][0].as_py()).shape == (30, 40, 3)
    assert sorted(table["id"].to_pylist())[0] == "class0/0.png"


def test_train_test_folders_keep_the_given_split(tmp_path):
    _class_folders(tmp_path / "src" / "train", per_class=(3, 2), suffix=".jpg")
    _class_folders(tmp_path / "src" / "val", per_class=(1, 1), suffix=".jpg")
    manifest = prepare("plantclef", tmp_path / "data", source=tmp_path / "src", workers=1, quiet=True)
    assert manifest["splits"]["train"]["rows"] == 5 and manifest["splits"]["test"]["rows"] == 2
    assert manifest["image"]["encoding"] == "jpeg" and "given folders" in manifest["split_rule"]


def test_csv_of_path_label(tmp_path):
    _class_folders(tmp_path / "imgs", per_class=(5, 5))
    rows = ["path,label"] + [f"imgs/class{c}/{i}.png,{'cat' if c else 'dog'}" for c in range(2) for i in range(5)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    manifest = prepare("pets", tmp_path / "data", source=tmp_path / "labels.csv", workers=1, quiet=True)
    assert manifest["classes"] == ["cat", "dog"] and manifest["splits"]["train"]["rows"] == 8


def test_empty_class_and_missing_source_are_errors(tmp_path):
    src = _class_folders(tmp_path / "src")
    (src / "class2").mkdir()
    with pytest.raises(RayexpError, match=r"class folder .*class2 has no images"):
        prepare("mydata", tmp_path / "data", source=src, workers=1, quiet=True)
    with pytest.raises(RayexpError, match="does not exist"):
        prepare("mydata", tmp_path / "data", source=tmp_path / "nowhere", workers=1, quiet=True)
    with pytest.raises(RayexpError, match="unknown dataset 'mydata'"):
        prepare("mydata", tmp_path / "data", workers=1, quiet=True)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # nothing half-written, no scratch left


def test_corrupt_image_stops_or_is_skipped_and_listed(tmp_path):
    src = _class_folders(tmp_path / "src", per_class=(6, 6))
    (src / "class1" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(RayexpError, match=r"class1/broken.png.*--skip-corrupt"):
        prepare("mydata", tmp_path / "data", source=src, workers=1, quiet=True)
    assert not (tmp_path / "data" / "mydata").exists()
    manifest = prepare("mydata", tmp_path / "data", source=src, workers=1, skip_corrupt=True, quiet=True)
    assert [s["id"] for s in manifest["skipped_corrupt"]] == ["class1/broken.png"]
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 12


def test_parallel_preparation_writes_the_same_shards(tmp_path):
    src = _class_folders(tmp_path / "src", per_class=(40, 40))
    one = prepare("mydata", tmp_path / "one", source=src, workers=1, quiet=True)
    two = prepare("mydata", tmp_path / "two", source=src, workers=2, quiet=True)
    assert one["splits"] == two["splits"] and one["normalization"] == two["normalization"]
    assert read_split(tmp_path / "one", "mydata", "train").equals(read_split(tmp_path / "two", "mydata", "train"))


def test_prepare_cli_is_idempotent_and_lists(tmp_path):
    src = _class_folders(tmp_path / "src")
    cmd = [
        sys.executable,
        "datasets/prepare.py",
        "mydata",
        "--source",
        str(src),
        "--data-dir",
        str(tmp_path / "data"),
        "--workers",
        "1",
    ]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "mydata" in first.stdout and "train" in first.stdout and "mean" in first.stdout
    created = json.loads((tmp_path / "data" / "mydata" / "manifest.json").read_text())["created"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert load_manifest(tmp_path / "data", "mydata")["created"] == created
    listing = subprocess.run(
        [sys.executable, "datasets/prepare.py", "--list", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0 and "digits" in listing.stdout and "cifar10" in listing.stdout
    bad = subprocess.run(
        [sys.executable, "datasets/prepare.py", "imagenet", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown dataset 'imagenet'" in bad.stderr


def _csv_source(tmp_path, outside_row):
    """A folder with labels.csv and four images beside it, plus one image outside it listed by ``outside_row``
    ("absolute", "dotdot" or "symlink" inside the folder pointing out); returns the CSV's path."""
    src = tmp_path / "src"
    for i in range(4):
        _image(src / f"{i}.png", value=10 * i)
    outside = tmp_path / "elsewhere" / "out.png"
    _image(outside, value=200)
    if outside_row == "symlink":
        (src / "link.png").symlink_to(outside)
    path = {"absolute": str(outside), "dotdot": "../elsewhere/out.png", "symlink": "link.png"}[outside_row]
    rows = ["path,label", "0.png,cat", "1.png,cat", f"{path},dog", "2.png,dog", "3.png,cat"]
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    return src / "labels.csv", path


@pytest.mark.parametrize("outside_row", ["absolute", "dotdot", "symlink"])
def test_csv_paths_outside_its_folder_are_refused_unless_allowed(tmp_path, outside_row):
    csv_path, listed = _csv_source(tmp_path, outside_row)
    expected = (
        rf"labels.csv line 4: image '{re.escape(listed)}' resolves to .*elsewhere/out.png, outside the CSV's "
        r"folder .*src; move the images under .*src, or pass --allow-outside-paths"
    )
    with pytest.raises(RayexpError, match=expected):
        prepare("pets", tmp_path / "data", source=csv_path, workers=1, quiet=True)
    source = folder.load_source("pets", csv_path.parent, tmp_path / "work", allow_outside=True)
    assert source.classes == ["cat", "dog"] and len(source.records) == 5
    assert [r.id for r in source.records][2] == listed  # ids stay as the CSV gave them
    assert source.records[2].image == (tmp_path / "elsewhere" / "out.png").resolve()


@pytest.mark.parametrize("second", ["a.png,dog", "a.png,cat", "./sub/../a.png,cat", "alias.png,dog"])
def test_csv_listing_one_file_twice_is_refused_naming_both_lines(tmp_path, second):
    src = tmp_path / "src"
    _image(src / "a.png")
    _image(src / "b.png", value=50)
    (src / "sub").mkdir()
    (src / "alias.png").symlink_to(src / "a.png")
    (src / "labels.csv").write_text("\n".join(["path,label", "a.png,cat", "# a comment", "b.png,dog", second]) + "\n")
    with pytest.raises(RayexpError, match=r"labels.csv lines 2 and 5 both list .*a.png \(labels 'cat' and '(cat|dog)'"):
        prepare("pets", tmp_path / "data", source=src / "labels.csv", workers=1, quiet=True)


def test_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    _class_folders(tmp_path / "imgs", per_class=(5, 5))
    rows = ["path,label"] + [f"imgs/class{c}/{i}.png,{'cat' if c else 'dog'}" for c in range(2) for i in range(5)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    assert (tmp_path / "labels.csv").read_bytes().startswith(b"\xef\xbb\xbfpath,label\n")
    manifest = prepare("pets", tmp_path / "data", source=tmp_path / "labels.csv", workers=1, quiet=True)
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 10
    ids = [i for split in ("train", "test") for i in read_split(tmp_path / "data", "pets", split)["id"].to_pylist()]
    assert sorted(ids) == sorted(row.split(",")[0] for row in rows[1:])


def test_what_a_folder_passes_over_is_said_and_links_outside_it_are_refused(tmp_path):
    import os

    from rayexp.data.check import check_source

    root = _class_folders(tmp_path / "src")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / "class0" / "notes.txt").write_text("not an image")
    _image(root / "class0" / ".hidden.png")
    source = folder.load_source("mine", root, tmp_path / "work")
    assert sorted(source.skipped) == [
        ".git/ (a hidden folder)",
        "class0/.hidden.png (hidden)",
        "class0/notes.txt (not an image extension: " + ", ".join(sorted(folder.IMAGE_SUFFIXES)) + ")",
    ]
    check = check_source(source, name="mine", input_size=(32, 32), selection="test", workers=1)
    (skipped,) = [p for p in check.problems if p.kind == "skipped_files"]
    assert not skipped.serious and "3 file(s) or folder(s) are not read" in skipped.message
    assert any("split: train " in line and "(80/20)" in line for line in check.lines())
    # A link out of the folder (to a file, or a class folder that is a link) is refused, as a CSV's path is.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _image(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "class0" / "linked.png")
    with pytest.raises(RayexpError, match="linked.png leads to .*secret.png, outside the source folder"):
        folder.load_source("mine", root, tmp_path / "work")
    assert folder.load_source("mine", root, tmp_path / "work", allow_outside=True).records
    (root / "class0" / "linked.png").unlink()
    os.symlink(outside, root / "class2")
    with pytest.raises(RayexpError, match="outside the source folder"):
        folder.load_source("mine", root, tmp_path / "work")


def test_class_names_that_would_break_a_table_are_refused(tmp_path):
    root = _class_folders(tmp_path / "src")
    (root / "class1").rename(root / "hot\tdog")
    with pytest.raises(RayexpError, match="class name 'hot\\\\tdog' holds a control character"):
        folder.load_source("mine", root, tmp_path / "work")
    csv_path = tmp_path / "csv" / "labels.csv"
    _image(tmp_path / "csv" / "a.png")
    _image(tmp_path / "csv" / "b.png")
    csv_path.write_text('path,label\na.png,"cat\nfish"\nb.png,dog\n')
    with pytest.raises(RayexpError, match="line 3: class name 'cat\\\\nfish'"):
        folder.load_source("mine", tmp_path / "csv", tmp_path / "work")


def test_sizes_are_real_images_and_the_split_says_what_it_is(tmp_path):
    from rayexp.data.check import check_source

    root = tmp_path / "src"
    for name in ("a", "b"):
        _image(root / name / "wide.png", size=(200, 10))
        _image(root / name / "tall.png", size=(10, 200))
    check = check_source(folder.load_source("mine", root, tmp_path / "work"), name="mine", selection="test")
    assert check.sizes["max"] in ((10, 200), (200, 10)) and "200x200" not in "\n".join(check.lines())
    # Two images a class, "stratified 80/20" by rule: one each side, said as 50/50.
    assert any(line.strip().startswith("split: train 2 / test 2 (50/50)") for line in check.lines())
