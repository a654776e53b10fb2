"""A storage that cannot take a write (full, read-only), on a real filesystem of a few kilobytes: a named error,
never retried as if a node had died, and nothing half-written left behind."""

from __future__ import annotations

import errno

import pyarrow.fs
import pytest
import torch

from rayexp.export import save_best_weights
from rayexp.orchestrate.checkpoints import save_checkpoint
from rayexp.orchestrate.failures import error_message, is_deterministic
from rayexp.storage import StorageFault, storage_fault, write_whole

BIG = {"model": {"w": torch.zeros(64 * 1024)}}  # 256 KB: more than the filesystems below hold


def test_a_full_disk_is_a_named_error_and_leaves_no_partial_file(small_filesystem):
    full = small_filesystem("64k")
    with pytest.raises(StorageFault, match="the storage is full .*No space left on device.* writing .*checkpoint.pt"):
        save_checkpoint(str(full / "run"), 1, BIG)
    assert [p.name for p in full.rglob("*") if p.is_file()] == []  # the 41 MB .partial of the report: gone
    with pytest.raises(StorageFault, match="--storage; then run the same command with --resume"):
        save_best_weights(str(full / "kept"), "run-id", BIG["model"])
    assert [p.name for p in full.rglob("*") if p.is_file()] == []


def test_a_read_only_storage_is_a_named_error(small_filesystem):
    read_only = small_filesystem("64k", readonly=True)
    with pytest.raises(StorageFault, match="the storage is read-only"):
        write_whole(pyarrow.fs.LocalFileSystem(), str(read_only / "checkpoint.pt"), b"x" * 10)


def test_storage_faults_are_never_retried_and_read_as_words_after_crossing_processes():
    fault = OSError(errno.ENOSPC, "No space left on device", "/bucket/run/checkpoint.pt")
    assert is_deterministic(fault) and "the storage is full" in error_message(fault)
    assert "/bucket/run/checkpoint.pt" in error_message(fault)
    remote = RuntimeError("ray::ImplicitFunc.train() ... OSError: [Errno 122] Disk quota exceeded")
    assert is_deterministic(remote) and "over its quota" in str(storage_fault(remote))
    assert storage_fault(ConnectionResetError("a lost node")) is None and not is_deterministic(ConnectionResetError())


@pytest.mark.slow
def test_a_sweep_onto_a_full_disk_fails_each_trial_once_named_and_leaves_nothing_partial(
    ray_local, digits_dir, small_filesystem, tmp_path, capsys
):
    from rayexp import tracking
    from rayexp.cli import main
    from tests.test_integrity import DEFAULTS
    from tests.test_sweep_e2e import _argv

    storage = small_filesystem("2m")  # a trial's first checkpoint (weights and optimizer) is tens of MB
    argv = _argv(tmp_path, digits_dir, "--experiment", "full")
    argv[argv.index("--storage") + 1] = str(storage)
    assert main(DEFAULTS, argv) == 1
    err = capsys.readouterr().err
    assert "1 trial(s) errored" in err and "the storage is full (No space left on device)" in err, err
    assert "--resume" in err and "Traceback" not in err
    (row,) = tracking.fetch_trial_results(f"sqlite:///{tmp_path / 'mlflow.db'}", "full")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(row["run_id"])
    assert row["status"] == "FAILED" and run.data.tags["attempts"] == "1"  # never retried as if a node died
    assert not [p for p in storage.rglob("*.partial")]  # nothing half-written holds the disk full
    assert (tmp_path / "report" / "report.html").is_file()  # the summary and report still come out
