"""Preparation against hostile input and a hostile machine: decompression bombs, EXIF rotation, a killed
``prepare.py`` (its workers and its leftover folders), a deleted manifest, a full or read-only disk, bad
arguments and a one-class source. Each failure must be a :class:`RayexpError` that names the thing and the fix."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from rayexp.data.catalog import DatasetInfo
from rayexp.data.check import check_source
from rayexp.data.codec import CorruptImageError, decode_image
from rayexp.data.preparation import prepare
from rayexp.data.records import Source, SourceRecord
from rayexp.data.scratch import leftover_name
from rayexp.data.shards import read_split
from rayexp.data.writer import write_dataset
from rayexp.errors import RayexpError
from tests.conftest import REPO


def _info(name: str = "tiny", size=(16, 16), encoding: str = "png") -> DatasetInfo:
    return DatasetInfo(name, name, "test", 3, 0, 0, "test", "test", input_size=size, augment=False, encoding=encoding)


def _records(per_class=(5, 5, 5), size=(12, 10), seed: int = 0) -> list[SourceRecord]:
    rng = np.random.default_rng(seed)
    return [
        SourceRecord(rng.integers(0, 255, (*size, 3), dtype=np.uint8), label, f"c{label}/{i}")
        for label, n in enumerate(per_class)
        for i in range(n)
    ]


def _source(records, classes=("a", "b", "c")) -> Source:
    return Source(list(classes), records, "test", test_fraction=0.3)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def _tree_digest(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _folder(root: Path, per_class=(6, 6), size=(20, 16)) -> Path:
    """A user's image folder: one sub-folder per class of small PNGs."""
    rng = np.random.default_rng(1)
    for c, n in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _prepare_main():
    spec = importlib.util.spec_from_file_location("prepare_cli", REPO / "datasets" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# 1. decompression bombs ---------------------------------------------------------------------------


def test_decompression_bomb_is_a_corrupt_image_naming_it_and_can_be_skipped(tmp_path):
    bomb = _png(Image.new("P", (30000, 30000)))
    assert len(bomb) < 200_000  # tiny on disk, 900 megapixels decoded
    records = _records() + [SourceRecord(bomb, 1, "c1/bomb.png")]
    with pytest.raises(CorruptImageError, match=r"'c1/bomb.png'.*--skip-corrupt"):
        write_dataset(tmp_path, _info(), _source(records))
    assert _listing(tmp_path) == []
    manifest = write_dataset(tmp_path, _info(), _source(records), skip_corrupt=True)
    assert [s["id"] for s in manifest["skipped_corrupt"]] == ["c1/bomb.png"]
    assert sum(m["rows"] for m in manifest["splits"].values()) == 15
    check = check_source(_source(records), workers=1, quiet=True)
    assert [p.files for p in check.problems if p.kind == "unreadable"] == [["c1/bomb.png"]]


def test_images_above_the_pixel_limit_are_refused_not_decoded(tmp_path, monkeypatch):
    # Between MAX_IMAGE_PIXELS and twice it PIL only warns and decodes; preparation refuses it too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    records = _records() + [SourceRecord(_png(Image.new("RGB", (40, 40))), 2, "c2/big.png")]
    with pytest.raises(CorruptImageError, match=r"'c2/big.png'"):
        write_dataset(tmp_path, _info(), _source(records))
    assert _listing(tmp_path) == []


# 2. EXIF orientation -------------------------------------------------------------------------------


def test_exif_rotated_jpeg_is_stored_upright(tmp_path):
    h, w = 24, 48
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 128)], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    upright = np.rot90(pixels, k=-1)
    assert np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).shape == upright.shape
    records = [SourceRecord(data, c, f"{c}/{split}", split) for c in range(2) for split in ("train", "test")]
    write_dataset(tmp_path, _info(size=(64, 64), encoding="jpeg"), Source(["a", "b"], records, "given"))
    for split in ("train", "test"):
        for stored in read_split(tmp_path, "tiny", split)["image"].to_pylist():
            assert stored != data  # never passed through byte for byte
            image = decode_image(stored)
            assert image.shape == (w, h, 3)
            assert np.abs(image.astype(int) - upright.astype(int)).mean() < 4


# 3. workers die with a killed prepare.py ----------------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found |= {int(x) for x in task.read_text().split()}
        except OSError:
            pass
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented zombie is dead even if nobody reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the worker processes")
def test_pool_workers_die_when_prepare_is_killed(tmp_path):
    n = 1600  # slow enough to decode that the pool is still busy when the parent is killed
    yy, xx = np.mgrid[0:n, 0:n]
    noise = np.random.default_rng(0).integers(0, 255, (n, n))
    one = tmp_path / "one.jpg"
    Image.fromarray(np.stack([(xx + yy) % 256, xx % 256, noise], -1).astype(np.uint8)).save(one, quality=90)
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(150):
            os.link(one, tmp_path / "src" / c / f"{i}.jpg")
    cmd = [
        sys.executable,
        "datasets/prepare.py",
        "mytest",
        "--source",
        str(tmp_path / "src"),
        "--data-dir",
        str(tmp_path / "data"),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 15
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = {p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)}
            time.sleep(0.05)
        if len(workers) < 2:
            err = proc.stderr.read().decode() if proc.poll() is not None else ""
            pytest.fail(f"no pool workers seen (prepare.py exit {proc.poll()}): {err}")
        time.sleep(0.3)  # let the workers finish starting (their initializer runs before the first job)
        assert proc.poll() is None, "prepare.py finished before it could be killed: make the images bigger"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if _running(p)], "pool workers outlived their killed parent"
    finally:
        for p in [proc.pid, *workers]:
            if _running(p):
                os.kill(p, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()


# 4. leftovers of a killed run ----------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_runs_are_removed_those_of_live_runs_kept(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    dead, live = _dead_pid(), os.getpid()
    planted = {}
    for kind in ("partial", "old", "work"):
        for who, pid in (("dead", dead), ("live", live)):
            folder = data / leftover_name(kind, "mine", pid)
            (folder / "train").mkdir(parents=True)
            (folder / "train" / "part-00000.parquet").write_bytes(b"half")
            planted[kind, who] = folder
    other = data / leftover_name("partial", "other", dead)  # another dataset's: not this run's business
    other.mkdir()
    prepare("mine", data, source=_folder(tmp_path / "src"), workers=1, quiet=True)
    assert (data / "mine" / "manifest.json").is_file()
    for (kind, who), folder in planted.items():
        assert folder.exists() == (who == "live"), (kind, who, folder.name)
    assert other.exists()
    # write_dataset on its own cleans up too
    again = data / leftover_name("partial", "mine", dead)
    again.mkdir()
    write_dataset(data, _info("mine"), _source(_records()), force=True)
    assert not again.exists() and planted["partial", "live"].exists()


# 5. a dataset folder without its manifest ------------------------------------------------------


def test_a_folder_without_manifest_is_not_prepared_and_is_replaced(tmp_path, digits_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "digits", data / "digits")
    (data / "digits" / "manifest.json").unlink()
    (data / "digits" / "stray.txt").write_text("from the broken copy")
    manifest = prepare("digits", data, workers=1, quiet=True)
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 1797
    assert (data / "digits" / "manifest.json").is_file() and not (data / "digits" / "stray.txt").exists()
    assert "no manifest.json" in capsys.readouterr().err
    assert _listing(data) == ["digits"]


# 6. a full or read-only disk -----------------------------------------------------------------------


def _os_error_is_reported(exc: RayexpError, folder: Path, reason: str, fix: str) -> None:
    text = str(exc)
    assert str(folder) in text and reason in text and fix in text, text
    assert "\n" not in text


def test_disk_full_is_a_named_error_and_keeps_the_prepared_copy(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip()}); needs root in a mount namespace")
    try:
        write_dataset(data, _info(), _source(_records()))
        before = _tree_digest(data / "tiny")
        big = _source(_records(per_class=(100, 100, 100), size=(64, 64)))
        with pytest.raises(RayexpError) as caught:
            write_dataset(data, _info(size=(64, 64)), big, force=True)
        _os_error_is_reported(caught.value, data, "No space left on device", "free")
        assert _listing(data) == ["tiny"]
        assert _tree_digest(data / "tiny") == before
    finally:
        subprocess.run(["umount", str(data)], check=False)


def _make_read_only(folder: Path, how: str) -> list[str] | None:
    """Make ``folder`` unwritable even for root (who ignores chmod); returns the undo command, or None."""
    if how == "chattr":
        frozen = (
            shutil.which("chattr")
            and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        )
        return ["chattr", "-i", str(folder)] if frozen else None
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        return None
    if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], check=False)
        return None
    return ["umount", str(folder)]


@pytest.mark.parametrize("how, reason", [("chattr", "Operation not permitted"), ("bind", "Read-only file system")])
def test_read_only_data_dir_is_a_named_error_and_keeps_the_prepared_copy(tmp_path, how, reason):
    data = tmp_path / "data"
    src = _folder(tmp_path / "src")
    prepare("mine", data, source=src, workers=1, quiet=True)
    before = _tree_digest(data / "mine")
    undo = _make_read_only(data, how)
    if undo is None:
        pytest.skip(f"cannot make a folder read-only for root with {how} here (needs chattr / mount privileges)")
    try:
        with pytest.raises(RayexpError) as caught:
            prepare("mine", data, source=src, force=True, workers=1, quiet=True)
        _os_error_is_reported(caught.value, data, reason, "writable")
        with pytest.raises(RayexpError) as caught:
            write_dataset(data, _info("mine"), _source(_records()), force=True)
        _os_error_is_reported(caught.value, data, reason, "writable")
    finally:
        subprocess.run(undo, check=False)
    assert _listing(data) == ["mine"]
    assert _tree_digest(data / "mine") == before


def test_unwritable_data_dir_under_proc_is_a_named_error(tmp_path):
    """Works without root tricks: nothing can be created under /proc."""
    with pytest.raises(RayexpError) as caught:
        prepare("mine", "/proc/rayexp-data", source=_folder(tmp_path / "src"), workers=1, quiet=True)
    assert "/proc/rayexp-data" in str(caught.value) and "--data-dir" in str(caught.value)


# 7. bad arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--seed", "-1", "--seed"),
        ("--seed", str(2**32), "--seed"),
        ("--workers", "0", "--workers"),
        ("--workers", "-2", "--workers"),
    ],
)
def test_bad_seed_or_workers_is_a_named_error_before_anything_is_written(tmp_path, capsys, option, value, words):
    main = _prepare_main()
    src = _folder(tmp_path / "src")
    code = main(["mine", "--source", str(src), "--data-dir", str(tmp_path / "data"), f"{option}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prepare: error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()
    with pytest.raises(RayexpError, match=words):
        prepare("mine", tmp_path / "data", source=src, **{option.lstrip("-"): int(value)}, quiet=True)
    assert not (tmp_path / "data").exists()


# 8. too few classes ------------------------------------------------------------------------------


def test_one_class_is_refused_naming_the_dataset_and_the_fix(tmp_path):
    records = _records(per_class=(8,))
    with pytest.raises(RayexpError, match=r"'tiny'.*at least one more class"):
        write_dataset(tmp_path, _info(), _source(records, classes=["a"]))
    with pytest.raises(RayexpError, match=r"'tiny'.*only class 'a'.*at least one more class"):
        write_dataset(tmp_path, _info(), _source(records, classes=["a", "b"]))
    with pytest.raises(RayexpError, match=r"'tiny'.*classes with no images: c\b"):
        write_dataset(tmp_path, _info(), _source([r for r in _records() if r.label != 2]))
    assert _listing(tmp_path) == []


def test_prepare_cli_refuses_a_one_class_folder(tmp_path, capsys):
    src = _folder(tmp_path / "src", per_class=(6,))
    code = _prepare_main()(["mine", "--source", str(src), "--data-dir", str(tmp_path / "data"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prepare: error: ") and "one more class" in err, err
    assert _listing(tmp_path / "data") == []
