"""The served model: an MLflow pyfunc that takes images and returns labels.

MLflow copies this file into every model rayexp registers ("models from code") and runs it when the model is loaded
or served, so it stands alone: MLflow, torch, torchvision, numpy, pandas and PIL, never rayexp. Beside it the model
carries three artifacts: the network (a ``torch.export`` program, :mod:`rayexp.export`), the serving config
(classes, input size, the dataset's stored encoding, the trial's mean and std) and ``imagefile.py``, a copy of
:mod:`rayexp.data.imagefile`: an image is decoded, turned upright, converted, shrunk, stored, decoded and resized by
the very functions preparation and training used, so it is answered as the trials saw their images.

Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF, …; base64 text
in a JSON request) or a ``pixels`` column of ``H x W x 3`` uint8 arrays (nested lists in JSON), one of the two per
row. Output: one row per image with ``label`` (the class name), ``class_index`` and ``probabilities`` (in class
order). A request that cannot be answered (an image that cannot be decoded, a row with no image, a budget passed)
is refused as a whole with an error naming the row and the problem: HTTP 400 from ``mlflow models serve``.

Budgets, read from the server's environment on every request, so that no request can take the server's memory:

- ``RAYEXP_SERVE_MAX_PIXELS``: pixels one image may declare (default and ceiling: 89,478,485, PIL's limit, above
  which preparation refuses an image too);
- ``RAYEXP_SERVE_MAX_REQUEST_PIXELS``: pixels all images of a request may declare together (default 100 million),
  checked from the images' headers before any is decoded;
- ``RAYEXP_SERVE_MAX_REQUEST_MB``: encoded bytes of a request's images together (default 64).

Images are decoded one at a time and kept at the network's input size only; the network sees them in batches of
:data:`FORWARD_BATCH`; freed memory is handed back to the system after each request.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import importlib.util
import json
import os

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MAX_PIXELS_ENV = "RAYEXP_SERVE_MAX_PIXELS"
MAX_REQUEST_PIXELS_ENV = "RAYEXP_SERVE_MAX_REQUEST_PIXELS"
MAX_REQUEST_MB_ENV = "RAYEXP_SERVE_MAX_REQUEST_MB"
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
DEFAULT_MAX_REQUEST_MB = 64
FORWARD_BATCH = 32  # images per forward pass: bounds the activations' memory whatever the request's size
COLUMNS = ("image", "pixels")


class BadRequest(MlflowException):
    """A request the model cannot answer: MLflow's scoring server answers it with HTTP 400 and this message alone
    (no stack trace)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _budget(name: str, default: int, ceiling: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"the server's {name}={raw!r} is not a whole number; fix it where the server starts")
    if value <= 0:
        raise BadRequest(f"the server's {name}={raw!r} must be positive; fix it where the server starts")
    return value if ceiling is None else min(value, ceiling)


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return False


def _image_bytes(value, row: int) -> bytes:
    if isinstance(value, str):  # base64 text, as JSON carries bytes
        try:
            return base64.b64decode("".join(value.split()), validate=True)  # MLflow's own examples wrap lines
        except (binascii.Error, ValueError):
            raise BadRequest(f"row {row}: 'image' is text but not base64; send the file's bytes base64-encoded")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    kind = type(value).__name__
    raise BadRequest(f"row {row}: 'image' must be an encoded image's bytes (base64 in JSON), not {kind}")


def _pixel_array(value, row: int) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype == object:
        raise BadRequest(f"row {row}: 'pixels' must be H x W x 3 numbers (rows of equal length)")
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise BadRequest(f"row {row}: 'pixels' must be H x W x 3 (RGB), got shape {'x'.join(map(str, array.shape))}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise BadRequest(f"row {row}: 'pixels' must be numbers, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise BadRequest(f"row {row}: 'pixels' must be whole numbers 0..255 (uint8), not fractions")
    if array.min() < 0 or array.max() > 255:
        raise BadRequest(f"row {row}: 'pixels' must lie in 0..255 (uint8), found {array.min()}..{array.max()}")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _trim_memory() -> None:
    """Hand memory freed by a large request back to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """rayexp's fine-tuned backbone as a classifier of images."""

    def load_context(self, context) -> None:
        with open(context.artifacts["config"]) as handle:
            self.config = json.load(handle)
        spec = importlib.util.spec_from_file_location("rayexp_served_imagefile", context.artifacts["imagefile"])
        self.imagefile = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.imagefile)
        self.network = torch.export.load(context.artifacts["network"]).module()

    def _rows(self, model_input) -> list[tuple[str, object]]:
        """Each row's image, as ("image", bytes) or ("pixels", array)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        unknown = [str(c) for c in frame.columns if c not in COLUMNS]
        if unknown:
            raise BadRequest(
                f"unknown column(s) {', '.join(map(repr, unknown))}: send each image's encoded bytes in 'image' "
                "(base64 in JSON) or its H x W x 3 values in 'pixels'"
            )
        if len(frame) == 0 or not any(c in frame.columns for c in COLUMNS):
            raise BadRequest(
                "no image in the request (columns other than 'image' and 'pixels' are ignored): send each image's "
                "encoded bytes in 'image' (base64 in JSON) or its H x W x 3 values in 'pixels'"
            )
        rows = []
        for i in range(len(frame)):
            given = {c: frame[c].iloc[i] for c in COLUMNS if c in frame.columns and not _missing(frame[c].iloc[i])}
            if len(given) != 1:
                what = "no image" if not given else "both 'image' and 'pixels'"
                raise BadRequest(f"row {i}: {what}; give exactly one of 'image' (encoded bytes) or 'pixels'")
            ((column, value),) = given.items()
            rows.append((column, _image_bytes(value, i) if column == "image" else _pixel_array(value, i)))
        return rows

    def _check_budgets(self, rows: list[tuple[str, object]]) -> int:
        """Refuse a request over a budget, from the images' headers (nothing decoded); the per-image pixel limit."""
        max_pixels = _budget(MAX_PIXELS_ENV, self.imagefile.MAX_PIXELS, ceiling=self.imagefile.MAX_PIXELS)
        max_request_pixels = _budget(MAX_REQUEST_PIXELS_ENV, DEFAULT_MAX_REQUEST_PIXELS)
        max_bytes = _budget(MAX_REQUEST_MB_ENV, DEFAULT_MAX_REQUEST_MB) * 1_000_000
        encoded = sum(len(v) for c, v in rows if c == "image")
        if encoded > max_bytes:
            raise BadRequest(
                f"the request's images are {encoded / 1e6:.1f} MB together, over the server's {max_bytes / 1e6:.0f} "
                f"MB ({MAX_REQUEST_MB_ENV}); send fewer or smaller images per request"
            )
        total = 0
        for i, (column, value) in enumerate(rows):
            pixels = value.shape[0] * value.shape[1] if column == "pixels" else self.imagefile.declared_pixels(value)
            if pixels is None:
                continue  # no header PIL can read: decoding it says why, before anything else is decoded
            if pixels > max_pixels:
                raise BadRequest(
                    f"row {i}: the image declares {pixels:,} pixels, over the server's limit of {max_pixels:,} per "
                    f"image ({MAX_PIXELS_ENV}); send it smaller"
                )
            total += pixels
        if total > max_request_pixels:
            raise BadRequest(
                f"the request's {len(rows)} images declare {total:,} pixels together, over the server's "
                f"{max_request_pixels:,} ({MAX_REQUEST_PIXELS_ENV}); send fewer images per request"
            )
        return max_pixels

    def _inputs(self, rows: list[tuple[str, object]], max_pixels: int) -> torch.Tensor:
        """The network's normalised input: each image through :func:`imagefile.network_pixels`, as in training."""
        size, stored = tuple(self.config["input_size"]), self.config["stored"]
        images = []
        for i, (_, value) in enumerate(rows):
            try:
                images.append(
                    self.imagefile.network_pixels(
                        value, size, stored["encoding"], max_pixels, tuple(stored["max_size"])
                    )
                )
            except self.imagefile.ImageFileError as exc:
                raise BadRequest(f"row {i}: the image cannot be used: {exc}") from None
            except MemoryError:
                raise BadRequest(f"row {i}: the server ran out of memory decoding this image; send it smaller")
        mean = torch.tensor(self.config["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.config["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        return (torch.stack(images).float() - mean) / std

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            rows = self._rows(model_input)
            inputs = self._inputs(rows, self._check_budgets(rows))
            with torch.no_grad():
                logits = torch.cat([self.network(chunk) for chunk in inputs.split(FORWARD_BATCH)])
            probabilities = logits.float().softmax(dim=1)
        finally:
            _trim_memory()
        index = probabilities.argmax(dim=1).tolist()
        classes = self.config["classes"]
        return pd.DataFrame(
            {
                "label": [classes[i] for i in index],
                "class_index": index,
                "probabilities": [p.tolist() for p in probabilities],
            }
        )


mlflow.models.set_model(ImageClassifier())
