"""The image codec of the shards: load a source's image upright, convert it to RGB, shrink and encode it
for storage, and decode a stored one.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rayexp.errors import RayexpError

JPEG_QUALITY = 95  # re-encoding a JPEG source at 95 keeps artefacts well below those already present

# What PIL raises for a bad or truncated file, or for one too large to decode safely (a decompression bomb:
# a few kilobytes that would decode to gigabytes; it is not an OSError). The warning is raised as an error by
# load_image, so that every image above Image.MAX_IMAGE_PIXELS is refused rather than decoded.
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how a camera image must be turned to be upright; 1 means as stored


class CorruptImageError(RayexpError):
    """An image a source yielded cannot be decoded."""


def stored_size(native: tuple[int, int], train_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) to store an image of ``native`` size at: min(native, training size), never upscaled.

    The image is scaled down, keeping its aspect ratio, until one side reaches the training size, so
    that the resize at training time (which ignores aspect ratio) still only ever shrinks it.
    """
    h, w = native
    scale = max(train_size[0] / h, train_size[1] / w)
    if scale >= 1.0:
        return (h, w)
    return (max(train_size[0], round(h * scale)), max(train_size[1], round(w * scale)))


def load_image(image: object) -> tuple["Image.Image", bytes | None]:
    """A record's image, upright and fully decoded as a PIL image, plus the file's bytes when they are
    exactly these pixels (None for an array or a PIL image, and for a file turned by its EXIF orientation).

    Accepts everything :class:`rayexp.data.records.SourceRecord` allows. The pixels are loaded here, not
    lazily, so that a truncated file fails now with one of :data:`DECODE_ERRORS`; so does a file of more
    than ``Image.MAX_IMAGE_PIXELS`` pixels, before it is decoded. Camera JPEGs often store the sensor's
    pixels plus an EXIF orientation; viewers turn them, so the class a person saw is of the turned image.
    """
    if callable(image) and not isinstance(image, Image.Image):
        image = image()
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        data: bytes | None = bytes(image)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
        pil.load()
    elif isinstance(image, np.ndarray):
        return Image.fromarray(image), None
    else:
        pil, data = image, None
    if pil.getexif().get(EXIF_ORIENTATION, 1) != 1:
        pil, data = ImageOps.exif_transpose(pil), None
    return pil, data


def to_rgb(pil: "Image.Image") -> "Image.Image":
    """The image in RGB; 16- and 32-bit integer images are stretched to 8 bits first (a plain convert clips them)."""
    if pil.mode == "RGB":
        return pil
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(pil, dtype=np.float64)
        span = max(array.max() - array.min(), 1.0)
        pil = Image.fromarray(((array - array.min()) * (255.0 / span)).astype(np.uint8))
    return pil.convert("RGB")


def _storable_as_is(pil: "Image.Image", data: bytes | None, train_size: tuple[int, int], encoding: str) -> bool:
    """Whether a file's bytes can be stored unchanged: a JPEG kept as JPEG, already RGB, upright and small enough."""
    # load_image gives no bytes for a file it turned upright; the orientation check says so here too
    return (
        data is not None
        and encoding == "jpeg"
        and pil.format == "JPEG"
        and pil.mode == "RGB"
        and pil.getexif().get(EXIF_ORIENTATION, 1) == 1
        and stored_size((pil.height, pil.width), train_size) == (pil.height, pil.width)
    )


def encode_image(
    image: "Image.Image | np.ndarray | bytes", train_size: tuple[int, int], encoding: str, record_id: str
) -> tuple[bytes, tuple[int, int]]:
    """RGB, at most the training size, encoded as ``encoding``; returns the bytes and the stored (H, W).

    A JPEG that is already RGB, upright and small enough is stored byte for byte, not re-encoded. A file
    PIL cannot or will not (too many pixels) decode is a :class:`CorruptImageError` naming ``record_id``.
    """
    try:
        pil, data = load_image(image)
        if _storable_as_is(pil, data, train_size, encoding):
            return data, (pil.height, pil.width)
        pil = to_rgb(pil)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CorruptImageError(
            f"image {record_id!r} is too large to decode safely ({exc}); "
            "shrink or remove that file, or pass --skip-corrupt"
        ) from None
    except DECODE_ERRORS as exc:
        raise CorruptImageError(
            f"image {record_id!r} cannot be decoded ({exc}); fix or remove that file, or pass --skip-corrupt"
        ) from None
    size = stored_size((pil.height, pil.width), train_size)
    if size != (pil.height, pil.width):
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    buffer = io.BytesIO()
    if encoding == "png":
        pil.save(buffer, format="PNG")
    elif encoding == "jpeg":
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return buffer.getvalue(), size


def decode_image(data: bytes) -> np.ndarray:
    """HxWx3 uint8 array of an encoded shard image."""
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))
