"""The data check on real image files in the layouts a user's folder source reads, no mocks."""

import functools
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp.data.check import check_source, min_train_images
from rayexp.data.preparation import prepare
from rayexp.data.records import Source, SourceRecord, assign_splits
from rayexp.data.sources import folder
from rayexp.errors import RayexpError


def _pixels(cls: str, i: int, size: int = 64) -> np.ndarray:
    """A visually separable image per class (solid / horizontal / vertical stripes), noisy per image."""
    rng = np.random.default_rng(1000 * ord(cls) + i)
    array = np.zeros((size, size, 3), dtype=np.uint8)
    pattern = {"a": (200, 30, 30), "b": (30, 30, 200), "c": (30, 200, 30)}[cls]
    array[:] = pattern
    if cls == "b":
        array[::8] = 255
    if cls == "c":
        array[:, ::8] = 255
    return np.clip(array + rng.integers(-20, 21, array.shape), 0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _load(root: Path, tmp_path: Path, name: str = "mydata") -> Source:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return folder.load_source(name, root, work, "default")


def _by_kind(check) -> dict:
    return {p.kind: p for p in check.problems}


def test_clean_class_folders_match_the_split_preparation_writes(tmp_path):
    root = tmp_path / "src"
    for cls, n in (("a", 10), ("b", 12), ("c", 8)):
        for i in range(n):
            _save(root / cls / f"{i}.png", _pixels(cls, i))
    source = _load(root, tmp_path)
    check = check_source(source, name="mydata", seed=3, input_size=(64, 64), workers=1, quiet=True)
    assert check.classes == ["a", "b", "c"] and check.problems == [] and check.serious() == []

    records = list(source.records)
    labels = np.array([r.label for r in records])
    splits = assign_splits("mydata", source, records, labels, 3)
    expected = {
        s: [sum(1 for r, t in zip(records, splits) if t == s and r.label == c) for c in range(3)]
        for s in ("train", "test")
    }
    assert check.counts == expected
    manifest = prepare("mydata", tmp_path / "data", source=root, seed=3, workers=1, quiet=True)
    assert {s: m["class_counts"] for s, m in manifest["splits"].items()} == check.counts
    assert check.sizes == {"min": (64, 64), "median": (64, 64), "max": (64, 64)} and check.modes == {"RGB": 30}

    at_paper_size = check_source(source, name="mydata", seed=3, workers=1, quiet=True)
    (small,) = at_paper_size.problems
    assert small.kind == "small_images" and not small.serious and len(small.files) == 30
    assert "most images (30 of 30, typically 64x64)" in small.message and "256x256" in small.message


@pytest.fixture()
def planted(tmp_path) -> Path:
    """train/ + test/ folders with one of every problem planted."""
    root = tmp_path / "src"
    for i in range(12):
        _save(root / "train" / "a" / f"{i}.png", _pixels("a", i))
        _save(root / "train" / "b" / f"{i}.png", _pixels("b", i))
    for i in range(3):
        _save(root / "test" / "a" / f"t{i}.png", _pixels("a", 100 + i))
        _save(root / "test" / "b" / f"t{i}.png", _pixels("b", 100 + i))
    _save(root / "train" / "c" / "0.png", _pixels("c", 0))
    _save(root / "test" / "c" / "t0.png", _pixels("c", 100))
    _save(root / "test" / "c" / "t1.png", _pixels("c", 101))
    # the same file under another name in test, and the same pixels as PNG in train and BMP in test
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "copy_of_0.png")
    same = _pixels("b", 50)
    _save(root / "train" / "b" / "same.png", same)
    _save(root / "test" / "b" / "same.bmp", same, "BMP")
    shutil.copy(root / "train" / "a" / "1.png", root / "train" / "a" / "1_again.png")
    # garbage bytes named .jpg, and a JPEG cut in half
    (root / "train" / "a" / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    buffer = io.BytesIO()
    Image.fromarray(_pixels("b", 60)).save(buffer, format="JPEG", quality=90)
    (root / "test" / "b" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _save(root / "train" / "b" / "gray.png", _pixels("b", 70)[..., 0], "PNG")
    _save(root / "train" / "b" / "tiny.png", _pixels("b", 80, size=32))
    return root


def test_planted_problems_are_found_and_named(planted, tmp_path):
    check = check_source(_load(planted, tmp_path), input_size=(64, 64), selection="val", workers=1, quiet=True)
    kinds = _by_kind(check)
    assert [p.kind for p in check.problems] == [
        "unreadable",
        "duplicate_across_splits",
        "class_too_small",
        "duplicate_within_split",
        "imbalance",
        "small_images",
        "mixed_modes",
    ]
    assert {p.kind for p in check.serious()} == {"unreadable", "duplicate_across_splits", "class_too_small"}

    assert sorted(kinds["unreadable"].files) == ["test/b/truncated.jpg", "train/a/garbage.jpg"]
    assert "--accept-warnings" in kinds["unreadable"].message
    assert sorted(kinds["duplicate_across_splits"].files) == [
        "test/a/copy_of_0.png",
        "test/b/same.bmp",
        "train/a/0.png",
        "train/b/same.png",
    ]
    assert sorted(kinds["duplicate_within_split"].files) == ["train/a/1.png", "train/a/1_again.png"]
    too_small = kinds["class_too_small"]
    assert sorted(too_small.files) == ["test/c/t0.png", "test/c/t1.png", "train/c/0.png"]
    assert (
        "'c' has 1 training and 2 test images" in too_small.message
        and "at least 2 training images" in too_small.message
    )
    assert kinds["imbalance"].files == ["train/c/0.png"] and "15:1" in kinds["imbalance"].message
    assert kinds["small_images"].files == ["train/b/tiny.png"] and "1 of 39" in kinds["small_images"].message
    assert kinds["mixed_modes"].files == ["train/b/gray.png"] and "converted to RGB" in kinds["mixed_modes"].message
    assert "no other class" not in kinds["mixed_modes"].message  # one grayscale image of 15 cannot tell the class

    # unreadable files are left out of the counts, as preparation with --skip-corrupt leaves them out
    assert check.counts == {"train": [13, 15, 1], "test": [4, 4, 2]}
    assert check.modes == {"RGB": 38, "L": 1}
    assert check.sizes == {"min": (32, 32), "median": (64, 64), "max": (64, 64)}

    with_test = check_source(_load(planted, tmp_path), input_size=(64, 64), selection="test", workers=1, quiet=True)
    assert "class_too_small" not in {p.kind for p in with_test.problems}
    assert {p.kind for p in with_test.serious()} == {"unreadable", "duplicate_across_splits"}


def test_a_small_fraction_needs_more_images_per_class(planted, tmp_path):
    check = check_source(
        _load(planted, tmp_path), input_size=(64, 64), fractions=(1.0, 0.1), selection="val", workers=1, quiet=True
    )
    too_small = [p for p in check.problems if p.kind == "class_too_small"]
    # a: 13 readable training images >= 11; b: 15; c: 1
    assert [p.message.split(" has")[0] for p in too_small] == ["class 'c'"]
    assert "at fraction 0.1" in too_small[0].message and "at least 11 training images" in too_small[0].message
    assert (min_train_images(0.1, "val"), min_train_images(0.01, "val"), min_train_images(1.0, "val")) == (11, 101, 2)
    assert min_train_images(0.01, "test") == 1


def test_csv_source_with_a_duplicate_across_splits(tmp_path):
    root = tmp_path / "csvsrc"
    rows = ["path,label,split"]
    for cls in ("a", "b"):
        for i in range(10):
            _save(root / "imgs" / cls / f"{i}.png", _pixels(cls, i))
            rows.append(f"imgs/{cls}/{i}.png,{cls},{'test' if i >= 8 else 'train'}")
    shutil.copy(root / "imgs" / "b" / "3.png", root / "imgs" / "b" / "also3.png")
    rows.append("imgs/b/also3.png,b,test")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    # as preparation hands a --source CSV file to the folder source: a folder holding a link to it
    link = tmp_path / "source"
    link.mkdir()
    (link / "labels.csv").symlink_to(root / "labels.csv")
    check = check_source(_load(link, tmp_path), input_size=(64, 64), workers=1, quiet=True)
    assert check.counts == {"train": [8, 8], "test": [2, 3]}
    (dupe,) = check.problems
    assert dupe.kind == "duplicate_across_splits" and dupe.serious
    assert sorted(dupe.files) == ["imgs/b/3.png", "imgs/b/also3.png"]


def test_report_lines_and_dict(planted, tmp_path):
    check = check_source(_load(planted, tmp_path), name="planted", input_size=(64, 64), workers=1, quiet=True)
    text = "\n".join(check.lines())
    assert text.startswith("data check of planted: 3 classes, 39 readable images")
    assert "3 serious problem(s), 4 warning(s)" in text and "15.0:1" in text and "modes: RGB 38, L 1" in text
    for problem in check.problems:
        assert f"[{problem.kind}] {problem.message}" in text
        for name in problem.files:
            assert f"      {name}\n" in text + "\n"
    d = check.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["problems"][0]["kind"] == "unreadable" and d["sizes"]["min"] == [32, 32]


def test_long_file_lists_are_cut_in_the_report(tmp_path):
    root = tmp_path / "src"
    for i in range(14):
        array = _pixels("a", i)
        _save(root / "train" / "a" / f"{i}.png", array)
        _save(root / "test" / "a" / f"{i}.png", array)
    _save(root / "train" / "b" / "0.png", _pixels("b", 0))
    _save(root / "train" / "b" / "1.png", _pixels("b", 1))
    _save(root / "test" / "b" / "0.png", _pixels("b", 2))
    check = check_source(_load(root, tmp_path), input_size=(64, 64), selection="test", workers=1, quiet=True)
    dupe = _by_kind(check)["duplicate_across_splits"]
    assert len(dupe.files) == 28 and dupe.message.startswith("14 image(s)")
    assert "      and 18 more" in check.lines()


def test_every_kind_of_record_image_is_loaded_and_hashed_by_pixels(tmp_path):
    array = _pixels("a", 0)
    png = _save(tmp_path / "x.png", array)
    records = [
        SourceRecord(array, 0, "array", "train"),
        SourceRecord(Image.fromarray(array), 0, "pil", "train"),
        SourceRecord(png, 0, "path", "train"),
        SourceRecord(png.read_bytes(), 0, "bytes", "train"),
        SourceRecord(functools.partial(Path.read_bytes, png), 0, "callable", "train"),
        SourceRecord(_pixels("b", 0), 1, "other", "train"),
        SourceRecord(_pixels("a", 1), 0, "t0", "test"),
        SourceRecord(_pixels("b", 1), 1, "t1", "test"),
    ]
    check = check_source(
        Source(["a", "b"], iter(records), "given"), input_size=(64, 64), selection="test", workers=1, quiet=True
    )
    (dupe,) = check.problems
    assert dupe.kind == "duplicate_within_split" and dupe.files == ["array", "pil", "path", "bytes", "callable"]
    assert check.counts == {"train": [5, 1], "test": [1, 1]}


def test_16_bit_images_are_stretched_not_clipped_before_hashing(tmp_path):
    rng = np.random.default_rng(0)
    records = [
        SourceRecord(
            Image.fromarray((1000 + rng.integers(0, 3000, (64, 64))).astype(np.uint16)), label, f"x{label}{i}", split
        )
        for label in (0, 1)
        for i, split in enumerate(("train", "train", "test"))
    ]
    check = check_source(
        Source(["a", "b"], records, "given"), input_size=(64, 64), selection="test", workers=1, quiet=True
    )
    assert check.problems == [] and check.modes == {"I;16": 6}


def test_a_class_without_test_images_and_a_mode_that_gives_the_class_away():
    records = [SourceRecord(_pixels("a", i), 0, f"a{i}", "train" if i < 6 else "test") for i in range(8)]
    records += [SourceRecord(_pixels("b", i)[..., 0], 1, f"b{i}", "train") for i in range(6)]
    check = check_source(
        Source(["a", "b"], records, "given"), input_size=(64, 64), selection="test", workers=1, quiet=True
    )
    kinds = _by_kind(check)
    assert (
        kinds["class_too_small"].serious
        and "class 'b' has 6 training and 0 test images; no test images" in kinds["class_too_small"].message
    )
    assert kinds["mixed_modes"].files == [f"b{i}" for i in range(6)]
    assert "most of class 'b' and no other class is non-RGB" in kinds["mixed_modes"].message


def test_a_generator_of_records_is_kept_for_preparation(tmp_path):
    records = [SourceRecord(_pixels(c, i), label, f"{c}{i}") for label, c in enumerate("ab") for i in range(5)]
    source = Source(["a", "b"], (r for r in records), "stratified", test_fraction=0.2)
    check_source(source, input_size=(64, 64), selection="test", workers=1, quiet=True)
    assert source.records == records


def test_parallel_check_reports_what_the_serial_one_does(tmp_path):
    root = tmp_path / "src"
    for cls in ("a", "b"):
        for i in range(36):
            _save(root / cls / f"{i}.png", _pixels(cls, i))
    shutil.copy(root / "a" / "0.png", root / "a" / "copy.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    source = _load(root, tmp_path)
    serial = check_source(source, input_size=(64, 64), workers=1, quiet=True)
    parallel = check_source(source, input_size=(64, 64), workers=2, quiet=True)
    assert parallel.to_dict() == serial.to_dict()
    assert {p.kind for p in serial.problems} >= {"unreadable"}


def test_empty_source_bad_label_and_bad_arguments_are_errors():
    with pytest.raises(RayexpError, match="no images"):
        check_source(Source(["a"], [], "given"), quiet=True)
    records = [SourceRecord(np.zeros((8, 8, 3), np.uint8), 2, "bad", "train")]
    with pytest.raises(RayexpError, match=r"'bad' has label 2, outside 0..1"):
        check_source(Source(["a", "b"], records, "given"), quiet=True)
    with pytest.raises(RayexpError, match="selection"):
        check_source(Source(["a"], records, "given"), selection="best", quiet=True)
    with pytest.raises(RayexpError, match="fractions"):
        check_source(Source(["a"], records, "given"), fractions=(0.0,), quiet=True)


def test_a_single_class_is_refused_not_reported_as_100_percent():
    records = [SourceRecord(_pixels("a", i), 0, f"a{i}") for i in range(10)]
    with pytest.raises(RayexpError, match=r"'one' has images of 1 class\(es\) \(a\): .* at least two; add a folder"):
        check_source(Source(["a"], records, "stratified", test_fraction=0.2), name="one", quiet=True)
    # Two classes listed, images of one only: the same.
    with pytest.raises(RayexpError, match="at least two"):
        check_source(Source(["a", "b"], records, "stratified", test_fraction=0.2), name="one", quiet=True)
