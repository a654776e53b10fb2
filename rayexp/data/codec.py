"""The image codec of the shards: a source's image stored as preparation stores it, and a stored one decoded,
with the errors named after the record. What is done to the pixels is :mod:`rayexp.data.imagefile`, shared with
training and the served model.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rayexp.data.imagefile import JPEG_QUALITY, ImageFileError, ImageTooLargeError, stored_bytes, stored_size
from rayexp.errors import RayexpError

__all__ = ["JPEG_QUALITY", "CorruptImageError", "decode_image", "encode_image", "stored_size"]


class CorruptImageError(RayexpError):
    """An image a source yielded cannot be decoded."""


def encode_image(
    image: "Image.Image | np.ndarray | bytes", train_size: tuple[int, int], encoding: str, record_id: str
) -> tuple[bytes, tuple[int, int]]:
    """RGB, at most the training size, encoded as ``encoding``; returns the bytes and the stored (H, W)
    (:func:`rayexp.data.imagefile.stored_bytes`). A file that cannot or may not (too many pixels) be decoded is a
    :class:`CorruptImageError` naming ``record_id``."""
    try:
        return stored_bytes(image, train_size, encoding)
    except ImageTooLargeError as exc:
        raise CorruptImageError(
            f"image {record_id!r} is {exc}; shrink or remove that file, or pass --skip-corrupt"
        ) from None
    except ImageFileError as exc:
        raise CorruptImageError(
            f"image {record_id!r} cannot be decoded ({exc}); fix or remove that file, or pass --skip-corrupt"
        ) from None


def decode_image(data: bytes) -> np.ndarray:
    """HxWx3 uint8 array of an encoded shard image."""
    with Image.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))
