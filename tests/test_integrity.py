"""Attacks on a sweep's inputs, each refused before Ray starts: tampered shards and manifests, bad values,
stale results, a second sweep into a running experiment. Real shards, a real MLflow store, the real CLI."""

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayexp import tracking
from rayexp.cli import SweepDefaults, main
from rayexp.data.shards import MANIFEST, load_manifest, manifest_fingerprint
from rayexp.errors import RayexpError
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig
from tests.test_sweep_e2e import _argv

DEFAULTS = SweepDefaults(
    description="integrity",
    settings=SweepSettings(
        experiment="attacks",
        backbones=("shufflenet_v2_x2_0",),
        datasets=("digits",),
        fractions=(0.1,),
        seeds=(0,),
        train=TrainConfig(max_epochs=1, patience=1),
        batch_size=16,
    ),
    fallback_to_random_weights=True,
)


@pytest.fixture()
def data(digits_dir, tmp_path) -> Path:
    """A private copy of the prepared digits, free to tamper with."""
    target = tmp_path / "data"
    shutil.copytree(digits_dir, target)
    return target


def _refused(tmp_path, data_dir, capsys, *extra: str) -> str:
    """Run the sweep CLI; assert it refused with exit code 2 before Ray started; return its stderr."""
    import ray

    ray_before = ray.is_initialized()  # other tests of the session may have started a local Ray already
    assert main(DEFAULTS, _argv(tmp_path, data_dir, *extra)) == 2
    assert ray.is_initialized() == ray_before and not (tmp_path / "storage").exists()
    return capsys.readouterr().err


def _rewrite_manifest(data_dir: Path, change, refingerprint: bool) -> None:
    path = data_dir / "digits" / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    if refingerprint:  # what a careful editor (or a bug in a tool) would do: the fingerprint alone proves nothing
        manifest["fingerprint"] = manifest_fingerprint(manifest)
    path.write_text(json.dumps(manifest))


def test_six_changed_bytes_in_a_train_shard_are_refused_naming_the_file(data, tmp_path, capsys):
    part = data / "digits" / "train" / "part-00000.parquet"
    # The attack measured on main: 6 bytes changed inside the label column's pages, the file's size unchanged.
    column = pq.ParquetFile(part).metadata.row_group(0).column(1)
    assert column.path_in_schema == "label"
    raw = bytearray(part.read_bytes())
    at = column.data_page_offset + column.total_compressed_size - 8
    raw[at : at + 6] = bytes(b ^ 0x06 for b in raw[at : at + 6])
    part.write_bytes(bytes(raw))
    err = _refused(tmp_path, data, capsys)
    assert "datasets missing or not as prepared, nothing was started" in err
    assert f"shard {part} does not match the checksum in its manifest" in err
    assert "python datasets/prepare.py digits --force" in err


def _forge_train_split(data: Path, tmp_path: Path) -> None:
    """The attack a careful forger makes: another split of the same images (seed 1) as the train shards, the
    manifest's sizes, checksums and fingerprint recomputed, so that every count and checksum agrees."""
    from rayexp.data.catalog import get_dataset_info
    from rayexp.data.shards import file_sha256
    from rayexp.data.sources import digits
    from rayexp.data.writer import write_dataset

    other = tmp_path / "other"
    write_dataset(other, get_dataset_info("digits"), digits.load_source("digits"), seed=1, row_group_rows=64)
    shutil.rmtree(data / "digits" / "train")
    shutil.copytree(other / "digits" / "train", data / "digits" / "train")
    forged = load_manifest(other, "digits")["splits"]["train"]

    def change(manifest: dict) -> None:
        train = manifest["splits"]["train"]
        assert forged["class_counts"] == train["class_counts"]  # the same per-class counts: only ids tell
        train.update(files=forged["files"], bytes=forged["bytes"])
        train["sha256"] = {f: file_sha256(str(data / "digits" / f)) for f in forged["files"]}

    _rewrite_manifest(data, change, refingerprint=True)


def test_a_forged_split_whose_manifest_was_recomputed_is_refused_by_its_ids(data, tmp_path, capsys):
    _forge_train_split(data, tmp_path)
    err = _refused(tmp_path, data, capsys)
    assert "image id(s) are in both the train and the test split" in err and "the splits overlap" in err


@pytest.mark.slow
def test_a_shard_swapped_after_the_preflight_is_refused_by_the_trial_that_would_read_it(ray_local, data, tmp_path):
    """The preflight verified the shards; the test shard is then replaced by another split's (seed 1): the trial
    checks the files it reads against the verified manifest and stops, named, before scoring anything."""
    from rayexp.cli import plan_sweep
    from rayexp.data.catalog import get_dataset_info
    from rayexp.data.sources import digits
    from rayexp.data.writer import write_dataset
    from rayexp.grid import expand_grid
    from rayexp.orchestrate import run_sweep

    settings = dataclasses.replace(
        DEFAULTS.settings,
        data_dir=str(data),
        storage=str(tmp_path / "storage"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="swapped",
    )
    keys = expand_grid(settings.backbones, settings.datasets, settings.fractions, settings.seeds)
    plan = plan_sweep(DEFAULTS, settings, keys)
    other = tmp_path / "other"
    write_dataset(other, get_dataset_info("digits"), digits.load_source("digits"), seed=1, row_group_rows=64)
    for part in (other / "digits" / "test").iterdir():
        shutil.copyfile(part, data / "digits" / "test" / part.name)
    outcome = run_sweep(plan)
    ((key, message, _),) = outcome["errored"]
    assert "it changed after preparation" in message and "/test/part-" in message
    (row,) = tracking.fetch_trial_results(settings.tracking_uri, "swapped")
    assert row["status"] == "FAILED" and row["best_test_acc"] is None  # nothing scored on the foreign split


def test_a_truncated_shard_is_refused(data, tmp_path, capsys):
    part = data / "digits" / "test" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    assert f"shard {part} has" in _refused(tmp_path, data, capsys)


@pytest.mark.parametrize(
    "change, refingerprint, said",
    [
        (
            lambda m: m["splits"]["train"].update(class_counts=[c * 10 for c in m["splits"]["train"]["class_counts"]]),
            False,
            "it was edited after preparation",
        ),
        (
            lambda m: m["splits"]["train"].update(class_counts=[c * 10 for c in m["splits"]["train"]["class_counts"]]),
            True,
            "rows but the class counts add up to",
        ),
        (
            lambda m: (
                m["splits"]["train"].update(class_counts=[c * 10 for c in m["splits"]["train"]["class_counts"]]),
                m["splits"]["train"].update(rows=sum(m["splits"]["train"]["class_counts"])),
            ),
            True,
            r"the manifest says \d+ rows, the shards hold 1438",
        ),
        (lambda m: m.update(n_classes=20), True, "n_classes is 20 but 10 classes are listed"),
        (lambda m: m.update(n_classes=5), True, "n_classes is 5 but 10 classes are listed"),
        (
            lambda m: (
                m.update(classes=m["classes"][:5], n_classes=5),
                [
                    s.update(class_counts=s["class_counts"][:5], rows=sum(s["class_counts"][:5]))
                    for s in m["splits"].values()
                ],
            ),
            True,
            r"the manifest says \d+ rows, the shards hold 1438",
        ),
        (lambda m: m.update(classes=["zero"], n_classes=1), True, "a classification benchmark needs at least two"),
        (lambda m: m.pop("fingerprint"), False, "edited after preparation"),
    ],
)
def test_a_tampered_manifest_is_refused(data, tmp_path, capsys, change, refingerprint, said):
    _rewrite_manifest(data, change, refingerprint)
    err = _refused(tmp_path, data, capsys)
    assert __import__("re").search(said, err), err


def test_an_invalid_manifest_is_a_named_error(data, tmp_path, capsys):
    (data / "digits" / MANIFEST).write_text('{"name": "digits", ')
    err = _refused(tmp_path, data, capsys)
    assert "manifest.json is not valid JSON" in err and "--force" in err


def test_verification_checks_every_split_and_is_fast(data):
    manifest = load_manifest(data, "digits")
    from rayexp.data.shards import verify_dataset

    start = time.perf_counter()
    verify_dataset(data / "digits", manifest)
    assert time.perf_counter() - start < 5
    with pytest.raises(RayexpError, match="is missing"):
        (data / "digits" / "test" / "part-00000.parquet").unlink()
        verify_dataset(data / "digits", manifest)


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--max-epochs", "0"], "--max-epochs 0: it must be >= 1"),
        (["--patience", "0"], "--patience 0: it must be >= 1"),
        (["--batch-size", "0"], "--batch-size 0: it must be >= 1"),
        (["--batch-size", "-4"], "--batch-size -4: it must be >= 1"),
        (["--seeds", "-1"], r"--seeds: seed -1 is outside 0..4294967295"),
        (["--seeds", str(2**32)], r"--seeds: seed 4294967296 is outside"),
        (["--precision", "fp16"], "--precision fp16 needs a GPU"),
        (["--cache-gb", "-1"], "--cache-gb -1.0: it must be >= 0"),
        (["--data-cpus", "0"], "--data-cpus 0.0: it must be > 0"),
        (["--storage", "/proc/rayexp-storage"], "--storage /proc/rayexp-storage is not a writable folder"),
        (
            ["--tracking-uri", "sqlite:////proc/rayexp/mlflow.db"],
            "the MLflow store sqlite:////proc/rayexp/mlflow.db cannot be created",
        ),
        (
            ["--selection", "val", "--fractions", "0.005"],
            r"digits at fraction 0.005: 10 class\(es\) have a single training row",
        ),
    ],
)
def test_bad_values_are_refused_before_ray_starts(data, tmp_path, capsys, extra, said):
    import re

    err = _refused(tmp_path, data, capsys, *extra)
    assert re.search(said, err), err


def test_all_bad_values_are_listed_at_once(data, tmp_path, capsys):
    err = _refused(tmp_path, data, capsys, "--max-epochs", "0", "--batch-size", "0", "--seeds", "-1")
    assert "--max-epochs 0" in err and "--batch-size 0" in err and "--seeds: seed -1" in err


def test_a_rerun_after_the_data_changed_stops_before_training(data, tmp_path, capsys):
    """A finished run of the key, made from other data (prepare --force on changed sources), is not taken as done."""
    from rayexp.grid import TrialKey

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    key = "shufflenet_v2_x2_0/digits/0.1/0"
    manifest = load_manifest(data, "digits")
    old = {"data_fingerprint": "sha256:" + "0" * 64}
    # A run as a sweep would write it with the same protocol, but of another data version.
    from rayexp.settings import SweepPlan

    cfg = SweepPlan(
        settings=dataclasses.replace(DEFAULTS.settings, data_dir=str(data), tracking_uri=uri),
        keys=(TrialKey.parse(key),),
        weights={"shufflenet_v2_x2_0": "random"},
        data_fingerprints={"digits": manifest["fingerprint"]},
        input_sizes={"digits": tuple(manifest["input_size"])},
    )
    tags = {**cfg.identity(TrialKey.parse(key)), **old}
    tracking.TrialRun.open(uri, "attacks", key, tags, {}).finish({"best_test_acc": 0.9})
    err = _refused(tmp_path, data, capsys)
    assert "1 trial(s) of MLflow experiment 'attacks' were run from other data or settings" in err
    assert "the data changed (fingerprint 000000000000 ->" in err and "--retrain-changed" in err
    # And another protocol: the same data, --max-epochs 2.
    tracking.supersede_runs(uri, [tracking.trial_records(uri, "attacks")[key]["run_id"]], "test")
    tracking.TrialRun.open(uri, "attacks", key, cfg.identity(TrialKey.parse(key)), {}).finish({"best_test_acc": 0.9})
    err = _refused(tmp_path, data, capsys, "--max-epochs", "2")
    assert "the protocol changed (max_epochs_per_phase 1 -> 2)" in err


def test_a_second_sweep_into_a_running_experiment_refuses_naming_the_holder(data, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, "attacks")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\nfrom rayexp import tracking\n"
                f"lock = tracking.acquire_sweep_lock({uri!r}, 'attacks')\nprint('held', flush=True)\ntime.sleep(120)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _refused(tmp_path, data, capsys)
        assert f"experiment 'attacks' is being swept by pid {holder.pid} on host" in err
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is recognised as left behind, and taken over only with --resume.
    err = _refused(tmp_path, data, capsys)
    assert "pass --resume" in err


def test_my_data_prepares_again_over_a_changed_or_old_copy(tmp_path, capsys):
    """The user's folder is the truth: a prepared copy whose shards changed (or of an older format) is
    prepared again, never trained on or refused."""
    from PIL import Image

    from rayexp.data.preparation import load_user_source, prepare_user_source
    from rayexp.data.shards import verify_dataset

    for label, colour in enumerate(((250, 0, 0), (0, 0, 250))):
        (tmp_path / "src" / f"c{label}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (colour[0], i * 20, colour[2])).save(tmp_path / "src" / f"c{label}" / f"{i}.png")
    info, source = load_user_source("mine", tmp_path / "src", None, (8, 8))
    first = prepare_user_source(info, source, tmp_path / "data", workers=1, quiet=True)
    part = tmp_path / "data" / "mine" / "train" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-10] + b"\0" * 10)
    again = prepare_user_source(info, source, tmp_path / "data", workers=1)
    assert "the prepared copy cannot be used" in capsys.readouterr().out and "does not match the checksum" not in str(
        again
    )
    verify_dataset(tmp_path / "data" / "mine", again)  # whole again
    assert again["fingerprint"] == first["fingerprint"]  # the same files give the same data fingerprint


def test_swapped_class_folders_with_the_same_names_sizes_and_mtimes_are_prepared_again(tmp_path, capsys):
    """Fixing two swapped class folders (as after unzipping: the same file names, sizes and modification times)
    changes every label: the change check compares content, never mtimes, so the old pixels under the old labels
    are not reused as the new data's."""
    import os

    from PIL import Image

    from rayexp.data.preparation import load_user_source, prepare_user_source

    src = tmp_path / "src"
    for name, colour in (("red", (250, 0, 0)), ("green", (0, 250, 0))):
        (src / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), colour).save(src / name / f"{i}.bmp")  # uncompressed: one size
    sizes = {p.stat().st_size for p in src.glob("*/*.bmp")}
    assert len(sizes) == 1  # one size for every file: only content tells them apart
    for p in src.glob("*/*.bmp"):
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    info, source = load_user_source("colours", src, None, (8, 8))
    first = prepare_user_source(info, source, tmp_path / "data", workers=1, quiet=True)
    os.rename(src / "red", src / "tmp")
    os.rename(src / "green", src / "red")
    os.rename(src / "tmp", src / "green")  # mv keeps every mtime: the listing is what it was, the pixels are not
    info, source = load_user_source("colours", src, None, (8, 8))
    again = prepare_user_source(info, source, tmp_path / "data", workers=1)
    assert "the images or settings changed since it was prepared; preparing again" in capsys.readouterr().out
    assert again["fingerprint"] != first["fingerprint"]


def test_one_pass_lists_every_missing_dataset_with_its_fix_and_every_missing_weight_file(data, tmp_path, capsys):
    """Missing datasets of both kinds and a missing weight file, all in one error, each with the fix that works:
    --download where the catalog can download it, --source with what to fetch where it cannot."""
    import ray

    strict = dataclasses.replace(DEFAULTS, fallback_to_random_weights=False)
    ray_before = ray.is_initialized()
    argv = _argv(tmp_path, data, "--datasets", "digits", "cifar10", "neu", "--backbones", "shufflenet_v2_x2_0")
    assert main(strict, argv) == 2
    err = capsys.readouterr().err
    assert "3 problems found, nothing was started" in err, err
    assert (
        f"cifar10: not prepared in {data}; run: python datasets/prepare.py cifar10 --data-dir {data} --download" in err
    )
    assert (
        f"neu: not prepared in {data}; fetch it by hand, then run: python datasets/prepare.py neu --data-dir {data} "
        "--source PATH" in err
    )
    assert "PATH: NEU surface defect database has no stable download" in err and "NEU-DET" in err
    assert "shufflenet_v2_x2_0: " in err.split("weights cannot be had or do not fit:\n")[1]
    assert "digits:" not in err  # the prepared one is fine
    # nothing started, nothing written: no storage, no MLflow store, no download folder
    assert ray.is_initialized() == ray_before
    assert not (tmp_path / "storage").exists() and not (tmp_path / "mlflow.db").exists()
    assert sorted(p.name for p in data.iterdir()) == ["digits"]


def test_one_pass_adds_the_tracking_store_to_the_same_error(data, tmp_path, capsys):
    err = _refused(
        tmp_path, data, capsys, "--datasets", "digits", "cifar100", "--tracking-uri", "sqlite:////proc/rayexp/m.db"
    )
    assert "cifar100: not prepared" in err and "--download" in err
    assert "the MLflow store sqlite:////proc/rayexp/m.db cannot be created" in err
    assert "2 problems found, nothing was started" in err and "digits:" not in err
