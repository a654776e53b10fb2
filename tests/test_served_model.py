"""The served model as hardened as training (issue 30), on a real MLflow SQLite registry and a real
``mlflow models serve`` process: every image format preparation accepts is answered exactly as the trials saw it
(identical uint8 tensors and probabilities, through the copy of the decoder the model carries), every bad request is
a 400 naming the row and the problem with the server still up after it, budgets bound a request's memory, and a
registration can never change the trial's run."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rayexp import publish, tracking
from rayexp.backbones import create_backbone
from rayexp.data import preparation
from rayexp.data.batches import Normalizer
from rayexp.data.pipeline import decode_resize_batch
from rayexp.data.shards import read_split
from rayexp.errors import RayexpError
from rayexp.export import export_network, serving_config
from tests.test_sweep_e2e import _free_port

BACKBONE = "torchvision:mobilenet_v3_small"
SIZE = (32, 32)


def _png(pil: Image.Image) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def _png48(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (48-bit), written by hand: PIL cannot write one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    h, w, _ = array.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _gradient(h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    ramp = np.linspace(0.3, 1.0, w)[None, :, None] * np.linspace(0.6, 1.0, h)[:, None, None]
    return (ramp * np.array(colour)[None, None, :]).astype(np.uint8)


def _formats(colour: tuple[int, int, int]) -> dict[str, bytes]:
    """One image in every format and mode preparation accepts, of one colour: the files a user's folder holds."""
    rgb = _gradient(30, 40, colour)
    pil = Image.fromarray(rgb)
    files = {"rgb.png": _png(pil), "grey.png": _png(pil.convert("L")), "palette.png": _png(pil.convert("P"))}
    files["rgba.png"] = _png(pil.convert("RGBA"))
    files["la.png"] = _png(pil.convert("LA"))
    files["grey16.png"] = _png(Image.fromarray((rgb[..., 0].astype(np.uint16) * 200 + 300)))
    files["rgb48.png"] = _png48(rgb.astype(np.uint16) * 257)
    out = io.BytesIO()
    pil.convert("CMYK").save(out, format="JPEG", quality=90)
    files["cmyk.jpg"] = out.getvalue()
    exif, out = Image.Exif(), io.BytesIO()
    exif[0x0112] = 6  # a phone held upright: stored on its side, turned by viewers
    pil.save(out, format="JPEG", quality=90, exif=exif)
    files["rotated.jpg"] = out.getvalue()
    out = io.BytesIO()
    Image.fromarray(_gradient(300, 400, colour)).save(out, format="JPEG", quality=90)
    files["large.jpg"] = out.getvalue()  # shrunk by preparation before it is stored
    out = io.BytesIO()
    frames = [pil.convert("P"), Image.fromarray(255 - rgb).convert("P")]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.gif"] = out.getvalue()
    for name, fmt in (("image.tif", "TIFF"), ("image.bmp", "BMP"), ("image.webp", "WEBP")):
        out = io.BytesIO()
        pil.save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        files[name] = out.getvalue()
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder of every format, prepared by rayexp's own preparation; a seeded network exported and registered
    as a model of that dataset in a real SQLite registry, linked to a finished run."""
    root = tmp_path_factory.mktemp("served")
    folder = root / "formats"
    for label, colour in (("red", (220, 40, 30)), ("blue", (30, 60, 220))):
        (folder / label).mkdir(parents=True)
        for name, data in _formats(colour).items():
            (folder / label / name).write_bytes(data)
    info, source = preparation.load_user_source("formats", folder, "custom", SIZE)
    manifest = preparation.prepare_user_source(info, source, root / "data", quiet=True, workers=1)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("formats", artifact_location=str(root / "artifacts"))
    run = client.create_run(experiment, run_name=f"{BACKBONE}/formats/1.0/0")
    client.set_terminated(run.info.run_id, "FINISHED")
    torch.manual_seed(0)
    model = create_backbone(BACKBONE, 2, pretrained=False).eval()
    resolved = {"mode": "dataset", **manifest["normalization"]}
    config = serving_config(manifest, BACKBONE, "dataset", run.info.run_name, resolved)
    network = export_network(BACKBONE, model.state_dict(), config, root / "network")
    tags = {tracking.KEY_TAG: run.info.run_name, tracking.EXPERIMENT_TAG: "formats"}
    example = (folder / "red" / "rgb.png").read_bytes()
    registered = tracking.register_model(uri, run.info.run_id, network, config, "formats-model", tags, example)
    return {
        "root": root,
        "folder": folder,
        "uri": uri,
        "run_id": run.info.run_id,
        "manifest": manifest,
        "model": model,
        "config": config,
        "network": network,
        "registered": registered,
        "example": example,
    }


def _trained_pixels(served: dict) -> dict[str, torch.Tensor]:
    """Every prepared image as training reads it: its shard row decoded and resized by the Ray Data pipeline's
    function, by row id (``<class>/<file>``)."""
    out = {}
    for split in served["manifest"]["splits"]:
        table = read_split(served["root"] / "data", "formats", split, columns=["id", "image", "label"])
        batch = {k: np.array(table[k].to_pylist(), dtype=object) for k in ("id", "image")}
        batch["label"] = np.array(table["label"].to_pylist())
        decoded = decode_resize_batch(batch, SIZE)
        out.update({i: torch.from_numpy(x) for i, x in zip(batch["id"], decoded["image"])})
    return out


def test_every_format_is_served_as_it_was_trained_on(served):
    import mlflow

    mlflow.set_tracking_uri(served["uri"])
    loaded = mlflow.pyfunc.load_model("models:/formats-model/1")
    classifier = loaded.unwrap_python_model()
    # The decoder the model runs is its own copy, beside its artifacts, not rayexp's module.
    from rayexp.data import imagefile

    assert classifier.imagefile is not imagefile and classifier.imagefile.__file__ != imagefile.__file__
    assert "/artifacts/" in classifier.imagefile.__file__.replace(os.sep, "/")
    trained = _trained_pixels(served)
    assert len(trained) == 28  # 14 formats x 2 classes, none skipped
    ids = sorted(trained)
    files = [(served["folder"] / i).read_bytes() for i in ids]
    stored = served["config"]["stored"]
    for i, data in zip(ids, files):
        pixels = classifier.imagefile.network_pixels(data, SIZE, stored["encoding"], max_size=stored["max_size"])
        assert torch.equal(pixels.permute(1, 2, 0), trained[i]), i
    # Predictions: the served model on the files == the network on the pipeline's tensors, normalised as a trial.
    predictions = loaded.predict(pd.DataFrame({"image": files}))
    config = served["config"]
    inputs, _ = Normalizer(config["mean"], config["std"], torch.device("cpu"))(
        {"image": torch.stack([trained[i] for i in ids]), "label": torch.zeros(len(ids))}
    )
    with torch.no_grad():
        expected = served["model"](inputs).softmax(dim=1)
    assert predictions["class_index"].tolist() == expected.argmax(dim=1).tolist()
    assert np.allclose(np.stack(predictions["probabilities"].to_numpy()), expected.numpy(), atol=1e-5)
    # Decoded pixels give what the same pixels as a lossless file give.
    rgb = np.asarray(Image.open(io.BytesIO(files[ids.index("red/rgb.png")])).convert("RGB"))
    by_pixels = loaded.predict(pd.DataFrame({"pixels": [rgb.tolist()]}))
    assert np.allclose(by_pixels["probabilities"][0], predictions["probabilities"][ids.index("red/rgb.png")])
    # A 16-bit image is stretched as training stretches it, not read as 0..255: what training saw.
    assert trained["red/grey16.png"].float().std() > 10


def test_registration_never_changes_the_trial_run(served):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(served["uri"])
    before = client.get_run(served["run_id"]).info
    assert before.status == "FINISHED"
    registered = served["registered"]
    version = client.get_model_version("formats-model", registered.version)
    assert version.tags[tracking.N_CLASSES_TAG] == "2" and version.run_id == served["run_id"]

    def register(name: str, config: dict | None = None, **kw):
        return tracking.register_model(
            served["uri"],
            served["run_id"],
            served["network"],
            config or served["config"],
            name,
            {tracking.KEY_TAG: "k"},
            served["example"],
            **kw,
        )

    for bad in ("colours/evil name", "", "a b", "it's", "m:1", "x%y", "-leading"):
        with pytest.raises(RayexpError, match="a registered model's name is 1 to 200 letters"):
            register(bad)
    # Another label set under the same name: refused, with the way out; then allowed when asked for.
    other = {**served["config"], "classes": ["blue", "green"]}
    with pytest.raises(RayexpError, match=r"another label set \(2 classes.*--register NAME.*--new-label-set"):
        register("formats-model", other)
    assert register("formats-model", other, new_label_set=True).version == "2"
    with pytest.raises(RayexpError, match="another label set"):  # v2 is now the latest, of the other classes
        register("formats-model")
    after = client.get_run(served["run_id"]).info
    assert (after.status, after.end_time) == (before.status, before.end_time)

    # sweeps/export.py with a bad name: a clear error before anything, no traceback, the run as it was.
    done = subprocess.run(
        [sys.executable, "sweeps/export.py", "--tracking-uri", served["uri"], "--experiment", "formats"]
        + ["--key", f"{BACKBONE}/formats/1.0/0", "--register", "colours/v2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "export: error: --register 'colours/v2': a registered model's name is" in done.stderr
    assert client.get_run(served["run_id"]).info.status == "FINISHED"


def test_printed_commands_survive_a_shell(tmp_path):
    uri = f"sqlite:///{tmp_path / 'my store' / 'mlflow.db'}"
    model = tracking.RegisteredModel("xrays-timm-resnet18", "3", "r", "timm:resnet18/xrays/1.0/0", 0.9)
    lines = publish.usage_lines(model, uri)
    assert shlex.split(lines[2])[:3] == [f"MLFLOW_TRACKING_URI={uri}", "mlflow", "models"]
    code = shlex.split(lines[1])[2]
    assert f"mlflow.set_tracking_uri({json.dumps(uri)})" in code and '"models:/xrays-timm-resnet18/3"' in code
    retry = publish.retry_command(uri, "my-data-x", "timm:resnet18+random/x/1.0/0", "x-v2", True)
    words = shlex.split(retry)
    assert words[words.index("--tracking-uri") + 1] == uri and words[-3:] == ["--register", "x-v2", "--new-label-set"]
    assert publish.default_model_name("xrays", "timm:resnet18+random") == "xrays-timm-resnet18-random"
    assert tracking.check_model_name(publish.default_model_name("a b", "torchvision:vit_b_16@X.Y"))


# The server, attacked -------------------------------------------------------------------------------------------


def _request(port: int, payload: dict | str, timeout: float = 120) -> tuple[int, dict]:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _images(*encoded: bytes) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(d).decode()] for d in encoded]}}


def _alive(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process of the server's process group (the CLI, uvicorn and its workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # the process group, after the state and the parent's pid
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


@contextlib.contextmanager
def model_server(uri: str, model: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """A real ``mlflow models serve --env-manager local`` of ``model`` on a free loopback port, up (its ``/ping``
    answers) for the block and stopped after: ``(port, the server process)``."""
    port = _free_port()
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # uvicorn
        **(env or {}),
    }
    server = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "models", "serve", "-m", model]
        + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _alive(port):
            assert server.poll() is None and time.monotonic() < deadline, "the model server did not come up"
            time.sleep(0.5)
        yield port, server
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _attacks(red: bytes) -> list[tuple[str, dict | str, str]]:
    """(what, request, what the 400's message must say) for every attack the issue found, and more."""
    png = red
    crc = bytearray(png)
    crc[len(png) - 20] ^= 0xFF  # the last IDAT chunk's CRC (or a byte it covers)
    idat = bytearray(png)
    at = png.index(b"IDAT") + 8
    idat[at] ^= 0x01
    bomb = _png(Image.new("P", (20000, 20000)))
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg, format="JPEG")
    return [
        ("a changed CRC byte", _images(bytes(crc)), "row 0: the image cannot be used: a damaged PNG (CRC mismatch"),
        ("a changed IDAT byte", _images(png, bytes(idat)), "row 1: the image cannot be used: a damaged PNG (CRC"),
        ("a truncated PNG", _images(png[: len(png) // 2]), "row 0: the image cannot be used: a damaged PNG"),
        ("a truncated JPEG", _images(jpeg.getvalue()[:300]), "row 0: the image cannot be used"),
        ("bytes of no image", _images(b"hello, world"), "row 0: the image cannot be used: not an image PIL can read"),
        ("a decompression bomb", _images(bomb), "row 0: the image cannot be used: too large to decode safely"),
        ("four bombs", _images(png, bomb, bomb, bomb), "row 1: the image cannot be used: too large to decode safely"),
        ("not base64", {"dataframe_split": {"columns": ["image"], "data": [["%%%"]]}}, "row 0: 'image' is text but"),
        ("a mistyped column", {"dataframe_split": {"columns": ["img"], "data": [["aGk="]]}}, "no image in the request"),
        ("a null image", {"dataframe_records": [{"image": base64.b64encode(png).decode()}, {"image": None}]}, "row 1"),
        (
            "image and pixels in one row",
            {"dataframe_records": [{"image": base64.b64encode(png).decode(), "pixels": [[[1, 2, 3]]]}]},
            "row 0: both 'image' and 'pixels'",
        ),
        ("ragged pixels", {"dataframe_records": [{"pixels": [[[1, 2, 3]], [[1, 2]]]}]}, "row 0: 'pixels' must be"),
        (
            "pixels of 4 channels",
            {"dataframe_records": [{"pixels": [[[1, 2, 3, 4]]]}]},
            "H x W x 3 (RGB), got shape 1x1x4",
        ),
        ("pixels over 255", {"dataframe_records": [{"pixels": [[[1, 2, 300]]]}]}, "must lie in 0..255"),
        ("pixels as text", {"dataframe_records": [{"pixels": [[["a", "b", "c"]]]}]}, "row 0: 'pixels' must be"),
        ("an empty request", {"dataframe_split": {"columns": ["image"], "data": []}}, "no image in the request"),
    ]


@pytest.mark.slow
def test_the_server_answers_every_attack_with_a_400_and_stays_up(served):
    budget = {"RAYEXP_SERVE_MAX_REQUEST_PIXELS": "60000000"}
    with model_server(served["uri"], "models:/formats-model/1", budget) as (port, server):
        files = sorted(served["folder"].glob("*/*"))
        status, body = _request(port, _images(*(p.read_bytes() for p in files)))
        assert status == 200 and len(body["predictions"]) == len(files) == 28
        red = (served["folder"] / "red" / "rgb.png").read_bytes()
        for what, payload, said in _attacks(red):
            started = time.monotonic()
            status, body = _request(port, payload)
            assert status == 400, (what, status, body)
            assert said in body["message"], (what, body["message"])
            assert "stack_trace" not in body and "Traceback" not in body["message"], what
            assert time.monotonic() - started < 20, what  # a bomb is refused from its header, not decoded
            assert _alive(port), f"the server died on {what}"

        # Budgets: a request over the pixel budget is refused before any image is decoded; one just under it is
        # answered, and the memory it took is given back.
        photo = io.BytesIO()
        Image.fromarray(_gradient(2500, 4000, (90, 160, 40))).save(photo, format="JPEG", quality=85)  # 10 MP
        status, body = _request(port, _images(*[photo.getvalue()] * 7))
        assert status == 400 and "declare 70,000,000 pixels together, over the server's 60,000,000" in body["message"]
        assert "RAYEXP_SERVE_MAX_REQUEST_PIXELS" in body["message"]
        # The memory a request of many camera images takes is given back (the 500 x 1 MP request left the
        # worker at 4.3 GB): fifty 1 MP JPEGs, 50 MP together, under the budget.
        small = io.BytesIO()
        Image.fromarray(_gradient(800, 1250, (90, 160, 40))).save(small, format="JPEG", quality=85)
        _request(port, _images(small.getvalue()))  # once, so that every lazy import and buffer is counted before
        baseline = _group_rss(server.pid)
        status, body = _request(port, _images(*[small.getvalue()] * 50))
        assert status == 200 and len(body["predictions"]) == 50
        grown = _group_rss(server.pid) - baseline
        print(f"server RSS {baseline / 1e6:.0f} MB before, {grown / 1e6:+.0f} MB after a 50 x 1 MP request")
        assert grown < 100e6  # each image decodes to 3 MB, one at a time; none of it is kept
        assert _alive(port)


# my_data.py: what could make a registration fail is said before anything is trained ---------------------------


def test_my_data_refuses_a_bad_name_or_a_clashing_label_set_before_training(served, tmp_path, capsys):
    from rayexp.my_data import main
    from tests.test_my_data import DEFAULTS, _argv, separable_folder

    folder = separable_folder(tmp_path / "colours", per_class=6)
    started = time.monotonic()
    assert main(DEFAULTS, _argv(tmp_path, folder, "--register", "colours/evil name")) == 2
    assert "--register 'colours/evil name': a registered model's name is" in capsys.readouterr().err
    assert main(DEFAULTS, _argv(tmp_path, folder, "--register", "")) == 2
    assert time.monotonic() - started < 10 and not (tmp_path / "data").exists()  # nothing read or prepared

    # formats-model classifies two colours; these images are three: refused after preparing, before any trial.
    argv = _argv(tmp_path, folder, "--register", "formats-model", "--tracking-uri", served["uri"])
    assert main(DEFAULTS, argv) == 2
    err = capsys.readouterr().err
    assert "registered model 'formats-model' version" in err and "--new-label-set" in err
    assert "Nothing was trained" in err
    from mlflow.tracking import MlflowClient

    assert MlflowClient(served["uri"]).get_experiment_by_name("my-data-colours") is None or not tracking.trial_records(
        served["uri"], "my-data-colours"
    )


def test_a_recommendation_of_other_images_is_never_written_over(tmp_path, capsys, monkeypatch):
    import argparse

    from rayexp.my_data import DATA_VERSION, _out_dir

    out = tmp_path / "reports" / "my-data-x"
    out.mkdir(parents=True)
    (out / DATA_VERSION).write_text(json.dumps({"data_fingerprint": "a" * 64}))
    default = argparse.Namespace(out=None)
    monkeypatch.chdir(tmp_path)
    assert _out_dir(default, "my-data-x", "a" * 64) == out  # the same images: the same folder
    other = _out_dir(default, "my-data-x", "b" * 64)
    assert (
        other != out and other.name.startswith("my-data-x-") and "holds the recommendation" in capsys.readouterr().out
    )
    with pytest.raises(RayexpError, match="holds the recommendation for other images.*choose another --out"):
        _out_dir(argparse.Namespace(out=str(out)), "my-data-x", "b" * 64)
    assert _out_dir(argparse.Namespace(out=str(tmp_path / "fresh")), "my-data-x", "b" * 64) == tmp_path / "fresh"
