"""``benchmarks/gpu_check.py``: its ``--smoke`` mode on the CPU, run as the GPU machine runs it (no Ray, no MLflow),
so that the check cannot rot between the rare sessions that have a GPU; and the arithmetic it sizes batches by."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayexp.backbones import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The script as ``python benchmarks/gpu_check.py ARGS``, with ``ray`` and ``mlflow`` made unimportable."""
    code = (
        "import runpy, sys; sys.modules.update(ray=None, mlflow=None); "
        f"sys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env or os.environ
    )


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_memory_fit_gives_the_largest_batch_under_the_limit():
    gpu_check = _module()
    fit = gpu_check.MemoryFit.through((64, 4e9 + 64 * 0.1e9), (32, 4e9 + 32 * 0.1e9))
    assert fit.static == pytest.approx(4e9) and fit.per_image == pytest.approx(0.1e9)
    assert fit.peak(256) == pytest.approx(29.6e9)
    assert fit.largest_batch(72e9) == 680  # (72 - 4) / 0.1 = 680, a multiple of 8
    assert fit.largest_batch(72.75e9) == 680  # 687 rounded down to a multiple of 8
    assert fit.largest_batch(3e9) == 0  # the model alone is over the limit


@pytest.mark.slow
def test_smoke_runs_every_part_on_the_cpu_without_ray_or_mlflow(tmp_path):
    proc = _run("--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # no partials
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["smoke"] and result["environment"]["device"].startswith("CPU")
    assert list(result["backbones"]) == list(REGISTRY)
    # Memory on the CPU is the process's peak RSS: numbers of the whole process, but the GPU run's memory fit and
    # its decisions run on them.
    assert result["environment"]["memory_measured"] == "peak RSS (VmHWM) of the process"
    for name, row in result["backbones"].items():
        assert "error" not in row, (name, row)
        for label, size in (("256x256", [32, 32]), ("breakhis", [32, 64])):
            m = row["sizes"][label]
            measured = m["measured"]
            assert m["size"] == size and m["batch"] == 4
            assert measured["train_images_per_s"] > 0 and measured["eval_images_per_s"] > 0, (name, label)
            assert measured["peak_bytes"] > 1e8 and m["predicted_peak_bytes"] > 1e8 and m["fits_limit"] is True
            assert m["memory_fit"]["static_bytes"] > 0 and isinstance(m["largest_batch_under_limit"], int)
        assert row["data_path"]["images"] == 8 and row["data_path"]["ratio"] > 0
        assert row["precision_steps"]["bf16"]["ok"], name
        assert len(row["precision_steps"]["fp16"]["losses"]) == 1  # run, but not judged: fp16 on a CPU
    resume = result["resume"]
    assert resume["epochs"] >= 3 and resume["exact"] and resume["whole_vs_whole"] == 0  # the CPU is deterministic
    assert list(result["compile"]) == ["resnet50", "convnext_tiny", "swin_t"]
    assert all(c["speedup"] > 0 and c["backend"] == "eager" for c in result["compile"].values())

    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in REGISTRY) and "## Exact resume" in table
    lines = proc.stdout.strip().splitlines()
    ratios = [line for line in lines if line.startswith("ratio ")]
    assert lines[-len(ratios) :] == ratios, "the ratio lines come last"
    assert ratios[-1].startswith("ratio data_path_real_vs_synthetic_min ")
    assert len(ratios) == len(REGISTRY) + 3 + 1


def test_without_a_gpu_it_asks_for_one_or_for_smoke(tmp_path):
    proc = _run("--out", str(tmp_path), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no CUDA device: run it on a GPU, or with --smoke on the CPU" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_an_unknown_backbone_or_a_file_for_out_is_refused_before_anything_runs(tmp_path):
    proc = _run("--smoke", "--backbones", "resnet5O", "--out", str(tmp_path))
    assert proc.returncode == 2 and "resnet5O" in proc.stderr and "resnet50" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()
    (tmp_path / "taken").write_text("a file")
    proc = _run("--smoke", "--out", str(tmp_path / "taken"))
    assert proc.returncode == 2 and f"--out {tmp_path / 'taken'} is a file: name a folder" in proc.stderr
