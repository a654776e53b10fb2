"""The two runtimes' shared parts without a sweep: the checkpoints of a trial's run folder, the runtime each
sweep gets, and what each trial's Tune function holds. Their end-to-end behaviour is in the tests marked
``both_runtimes`` (test_sweep_e2e, test_corrupt_data, test_cluster)."""

import io
import os
import time

import pytest
import torch

from rayexp.cli import SweepDefaults, main
from rayexp.orchestrate import DRIVER_RESOURCE
from rayexp.orchestrate.checkpoints import load_latest_checkpoint, save_checkpoint
from rayexp.orchestrate.context import TrialResources
from rayexp.orchestrate.failures import is_deterministic
from rayexp.orchestrate.resources import trial_function_resources
from rayexp.safeload import CarriesCode
from rayexp.settings import SweepSettings

CPU = torch.device("cpu")


def _state(epoch: int) -> dict:
    return {"progress": {"epoch": epoch}, "model": {"w": torch.full((2,), float(epoch))}}


def _plant_train_checkpoint(folder, data: bytes) -> None:
    """A checkpoint as Train persists it (``checkpoint_<time>/checkpoint.pt``), newer than any already there."""
    made = folder / "checkpoint_2026-11-30_17-40-00.000000"
    made.mkdir()
    (made / "checkpoint.pt").write_bytes(data)
    later = time.time() + 5
    os.utime(made / "checkpoint.pt", (later, later))


def test_the_run_folder_keeps_one_checkpoint_and_resumes_from_the_newest(tmp_path):
    folder = str(tmp_path / "train_runs" / "e" / "key")
    assert load_latest_checkpoint(folder, CPU) is None  # no folder yet: train from the start
    save_checkpoint(folder, 1, _state(1))
    save_checkpoint(folder, 2, _state(2))
    assert sorted(p.name for p in (tmp_path / "train_runs" / "e" / "key").iterdir()) == ["checkpoint_epoch-0002"]
    loaded = load_latest_checkpoint(folder, CPU)
    assert loaded["progress"]["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.full((2,), 2.0))
    save_checkpoint(folder, 2, _state(2))  # the same epoch again (a retried trial): replaced, still one
    assert len(list((tmp_path / "train_runs" / "e" / "key").iterdir())) == 1


def test_a_checkpoint_cut_short_is_never_resumed_from(tmp_path):
    # A node lost while writing epoch 3 leaves only the partial file: epoch 2's checkpoint is the one resumed.
    folder = tmp_path / "run"
    save_checkpoint(str(folder), 2, _state(2))
    (folder / "checkpoint_epoch-0003").mkdir()
    (folder / "checkpoint_epoch-0003" / "checkpoint.pt.partial").write_bytes(b"cut sh")
    assert load_latest_checkpoint(str(folder), CPU)["progress"]["epoch"] == 2


def test_a_checkpoint_train_was_cut_off_writing_is_passed_over_for_the_previous_one(tmp_path):
    # Train writes under the final name: a worker killed while it persisted leaves a torn checkpoint.pt, newer
    # than the last complete one (found in CI: resuming from it failed every retry of the trial).
    folder = tmp_path / "run"
    save_checkpoint(str(folder), 2, _state(2))
    complete = (folder / "checkpoint_epoch-0002" / "checkpoint.pt").read_bytes()
    _plant_train_checkpoint(folder, complete[: len(complete) // 2])
    assert load_latest_checkpoint(str(folder), CPU)["progress"]["epoch"] == 2


class _Planted:
    """What an attacker who can write the storage would plant: a pickle that runs code when loaded."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_planted_checkpoint_that_carries_code_is_refused_and_never_runs(tmp_path):
    # A shared bucket as --storage: anyone who can write it could plant checkpoint.pt in a trial's run folder.
    folder = tmp_path / "run"
    save_checkpoint(str(folder), 2, _state(2))
    marker = tmp_path / "the-code-ran"
    buffer = io.BytesIO()
    torch.save({**_state(9), "payload": _Planted(marker)}, buffer)
    _plant_train_checkpoint(folder, buffer.getvalue())
    with pytest.raises(CarriesCode, match="checkpoint .*checkpoint.pt: not a file of tensors .* names posix.mkdir"):
        load_latest_checkpoint(str(folder), CPU)
    assert not marker.exists()  # refused before anything of it ran, not passed over silently either
    assert is_deterministic(CarriesCode("x"))  # the trial fails once, named; never retried as if a node died


def test_a_checkpoint_an_older_rayexp_wrote_is_passed_over_not_loaded(tmp_path, capsys):
    # Before checkpoints were tensors only, NumPy's RNG state travelled as an array: such a file is not loaded (it
    # names numpy's reconstruction), and the trial starts over instead of failing.
    import numpy as np

    folder = tmp_path / "run"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save({**_state(5), "rng": {"numpy": np.random.get_state()}}, buffer)
    _plant_train_checkpoint(folder, buffer.getvalue())
    assert load_latest_checkpoint(str(folder), CPU) is None
    assert "an older rayexp wrote it with NumPy arrays" in capsys.readouterr().out


def test_a_trials_own_checkpoint_is_tensors_and_plain_data_only(tmp_path):
    from rayexp.training import TrainConfig, fit

    model = torch.nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    saved = []
    fit(
        model,
        lambda epoch: batches,
        lambda: batches,
        TrainConfig(max_epochs=1, patience=1),
        CPU,
        2,
        lambda metrics, make: saved.append(make()),
    )
    buffer = io.BytesIO()
    torch.save(saved[-1], buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # loads with no code at all
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["rng"]["numpy"]["keys"].dtype == torch.int64


def test_either_runtime_resumes_the_others_checkpoint(tmp_path):
    # Train persists checkpoint_<time>/checkpoint.pt in the same folder: the newest file wins, whoever wrote it.
    folder = tmp_path / "run"
    save_checkpoint(str(folder), 1, _state(1))
    buffer = io.BytesIO()
    torch.save(_state(3), buffer)
    _plant_train_checkpoint(folder, buffer.getvalue())
    assert load_latest_checkpoint(str(folder), CPU)["progress"]["epoch"] == 3
    save_checkpoint(str(folder), 4, _state(4))  # the light runtime continues: Train's older one goes
    assert [p.name for p in folder.iterdir()] == ["checkpoint_epoch-0004"]


def test_the_runtime_is_tune_on_a_laptop_and_train_on_a_cluster():
    assert SweepSettings().trial_runtime == "tune"
    assert SweepSettings(address="ray://head:10001").trial_runtime == "train"
    assert SweepSettings(address="auto", runtime="tune").trial_runtime == "tune"
    assert SweepSettings(runtime="train").trial_runtime == "train"


def test_an_unknown_runtime_is_refused_before_anything_starts(tmp_path, capsys):
    defaults = SweepDefaults(description="t", settings=SweepSettings(experiment="t"))
    with pytest.raises(SystemExit) as exit_info:
        main(defaults, ["--runtime", "local", "--storage", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "--runtime: invalid choice: 'local' (choose from 'train', 'tune')" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_what_each_trial_function_holds():
    gpu = TrialResources(worker_cpus=2, data_cpus=10, gpus=1, cache_bytes=0, accelerator_type="A100-80G")
    # Train: the function only drives the worker, from a head slot; the worker holds the CPUs and the GPU.
    assert trial_function_resources(gpu, "train") == {"cpu": 0, DRIVER_RESOURCE: 1}
    # Tune: the function trains, so it holds them itself, on a node with the accelerator asked for.
    assert trial_function_resources(gpu, "tune") == {"cpu": 2, "gpu": 1, "accelerator_type:A100-80G": 0.001}
    cpu = TrialResources(worker_cpus=1, data_cpus=1, gpus=0, cache_bytes=0, accelerator_type="A100-80G")
    assert trial_function_resources(cpu, "tune") == {"cpu": 1, "gpu": 0}
