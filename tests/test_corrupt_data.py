"""Corrupt bytes inside a shard never hang or crash a sweep: a named error (shard, row id), one attempt,
the message in the summary and in the trial's FAILED MLflow run."""

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayexp import tracking
from rayexp.cli import SweepDefaults, main
from rayexp.data.imagefile import png_problem
from rayexp.data.pipeline import ShardDataError, decode_resize_batch
from rayexp.data.shards import MANIFEST, load_manifest, manifest_fingerprint
from rayexp.data.shards import file_sha256 as _file_sha256
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig
from tests.conftest import both_runtimes


def _png(seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((16, 16, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _flip(data: bytes, at: int, n: int = 6) -> bytes:
    raw = bytearray(data)
    raw[at : at + n] = bytes(b ^ 0x5A for b in raw[at : at + n])
    return bytes(raw)


def test_png_check_finds_every_kind_of_damage():
    good = _png()
    assert png_problem(good) is None
    assert "CRC mismatch in the 'IDAT' chunk" in png_problem(_flip(good, len(good) - 30))
    assert "no IEND" in png_problem(good[:-12]) or "runs past the end" in png_problem(good[:-12])
    assert png_problem(b"garbage") == "not a PNG signature"


def test_a_corrupt_png_raises_a_named_error_instead_of_crashing_the_process():
    """torchvision's decoder segfaults on a PNG libpng rejects; run in a child so a crash fails the test cleanly."""
    code = (
        "import numpy as np, sys\n"
        "from rayexp.data.pipeline import decode_resize_batch, ShardDataError\n"
        f"bad = {_flip(_png(), len(_png()) - 30)!r}\n"
        "batch = {'image': np.array([bad], dtype=object), 'label': np.array([0]), 'id': np.array(['c/7.png']),\n"
        "         'path': np.array(['/data/x/train/part-00000.parquet'])}\n"
        "try:\n    decode_resize_batch(batch, (8, 8), n_classes=2)\n"
        "except ShardDataError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "shard /data/x/train/part-00000.parquet, row id 'c/7.png': the image cannot be decoded "
        "(a damaged PNG (CRC mismatch" in done.stdout
    )


def test_a_label_outside_the_classes_is_refused_when_read():
    batch = {
        "image": np.array([_png()], dtype=object),
        "label": np.array([3]),
        "id": np.array(["r1"]),
        "path": np.array(["p.parquet"]),
    }
    with pytest.raises(ShardDataError, match=r"shard p.parquet, row id 'r1': label 3 is outside 0..2"):
        decode_resize_batch(batch, (8, 8), n_classes=3)
    assert decode_resize_batch({**batch, "label": np.array([2])}, (8, 8), n_classes=3)["image"].shape == (1, 8, 8, 3)


def corrupt_a_training_image(data_dir: Path, name: str = "digits") -> tuple[Path, str]:
    """Flip bytes inside one stored PNG of the first training part and make the manifest agree with the new
    file (as if the bytes were bad before the checksums were taken): preflight passes, decoding must not.
    Returns the shard and the row's id."""
    part = data_dir / name / "train" / "part-00000.parquet"
    table = pq.read_table(part)
    images = table["image"].to_pylist()
    images[3] = _flip(images[3], len(images[3]) - 30)
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(table, part, row_group_size=64, compression="none", write_statistics=True)
    path = data_dir / name / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["sha256"]["train/part-00000.parquet"] = _file_sha256(str(part))
    manifest["splits"]["train"]["bytes"]["train/part-00000.parquet"] = part.stat().st_size
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    path.write_text(json.dumps(manifest))
    return part, table["id"][3].as_py()


@pytest.mark.slow
def test_ray_data_pipeline_names_the_corrupt_row_within_a_minute(ray_local, digits_dir, tmp_path):
    from rayexp.data.pipeline import build_split_dataset

    shutil.copytree(digits_dir, tmp_path / "data")
    part, row_id = corrupt_a_training_image(tmp_path / "data")
    manifest = load_manifest(tmp_path / "data", "digits")
    start = time.perf_counter()
    with pytest.raises(Exception) as error:
        for _ in build_split_dataset(tmp_path / "data", manifest, "train", 1.0, (16, 16)).iter_batches(batch_size=256):
            pass
    assert time.perf_counter() - start < 60
    assert f"shard {part}, row id {row_id!r}: the image cannot be decoded" in str(error.value)


@pytest.mark.slow
@both_runtimes
def test_a_sweep_on_a_corrupt_shard_fails_once_with_the_message_in_summary_and_mlflow(
    runtime, ray_local, digits_dir, tmp_path, capsys
):
    shutil.copytree(digits_dir, tmp_path / "data")
    part, row_id = corrupt_a_training_image(tmp_path / "data")
    defaults = SweepDefaults(
        description="corrupt",
        settings=SweepSettings(
            experiment="corrupt",
            backbones=("shufflenet_v2_x2_0",),
            datasets=("digits",),
            fractions=(1.0,),
            seeds=(0,),
            train=TrainConfig(max_epochs=1, patience=1),
            batch_size=64,
        ),
        fallback_to_random_weights=True,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "--data-dir",
        str(tmp_path / "data"),
        "--storage",
        str(tmp_path / "storage"),
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "report"),
        "--runtime",
        runtime,
    ]
    start = time.perf_counter()
    assert main(defaults, argv) == 1
    assert time.perf_counter() - start < 180
    captured = capsys.readouterr()
    err = captured.err
    said = f"shard {part}, row id {row_id!r}: the image cannot be decoded"
    assert "shufflenet_v2_x2_0/digits/1.0/0 errored" in captured.out  # the console's line, in either runtime
    assert "1 trial(s) errored" in err and "shufflenet_v2_x2_0/digits/1.0/0: " in err and said in err
    assert "ray::ImplicitFunc.train()" not in err
    (row,) = tracking.fetch_trial_results(uri, "corrupt")
    assert row["status"] == "FAILED" and said in row["error"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(row["run_id"]).data.tags["attempts"] == "1"  # deterministic: never retried
