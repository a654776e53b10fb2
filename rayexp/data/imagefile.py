"""One image file to the pixels a network sees, in one place for preparation, training and the served model.

Preparation turns a source's image into what a shard stores (:func:`stored_bytes`: upright by its EXIF
orientation, the first frame of an animation, 16-bit stretched to 8, RGB, shrunk to the training size, JPEG or
PNG); training decodes a stored image and resizes it to the input size (:func:`decode_stored`,
:func:`at_input_size`); the served model runs the same three on the image of a request (:func:`network_pixels`).
An image is therefore answered as it would have been trained on, whatever its format, by construction.

This module stands alone (PIL, NumPy, torch and torchvision; nothing of rayexp): every model rayexp registers
carries a copy of it, so that a server with MLflow alone decodes exactly as the trials did. Its errors are
:class:`ImageFileError` (a ``ValueError``) with a reason that can be shown to whoever sent the file.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

JPEG_QUALITY = 95  # re-encoding a JPEG source at 95 keeps artefacts well below those already present
EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how a camera image must be turned to be upright; 1 means as stored
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The most pixels an image may declare: PIL's own bomb limit (about 89 million), above which preparation has
# always refused a file. A few kilobytes can declare gigabytes of pixels; nothing that large is ever decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS

# What PIL raises for a bad or truncated file; the bomb warning is raised as an error by :func:`load_image`.
_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageFileError(ValueError):
    """An image that cannot be decoded, or that may not be: the reason says which and why."""


class ImageTooLargeError(ImageFileError):
    """An image that declares more pixels than may be decoded (a decompression bomb, or over a serving budget)."""


def png_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed PNG (a chunk cut short, a CRC that does not match, no IEND), or None.

    libpng (inside torchvision's decoder) crashes the whole process, a segfault, on a PNG it rejects; checking
    every chunk's CRC first (zlib's crc32, microseconds per image) turns any changed byte into an error that can
    be named, before any decoder sees the file.
    """
    if data[:8] != PNG_SIGNATURE:
        return "not a PNG signature"
    view, at = memoryview(data), 8
    while at + 12 <= len(data):
        length = int.from_bytes(view[at : at + 4], "big")
        end = at + 12 + length
        if end > len(data):
            return f"chunk at byte {at} runs past the end"
        if zlib.crc32(view[at + 4 : at + 8 + length]) != int.from_bytes(view[at + 8 + length : end], "big"):
            return f"CRC mismatch in the {bytes(view[at + 4 : at + 8]).decode('latin-1')!r} chunk at byte {at}"
        if view[at + 4 : at + 8] == b"IEND":
            return None
        at = end
    return "no IEND chunk (truncated)"


def _open_bytes(data: bytes, max_pixels: int) -> Image.Image:
    if data[:8] == PNG_SIGNATURE and (problem := png_problem(data)) is not None:
        raise ImageFileError(f"a damaged PNG ({problem})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"too large to decode safely ({exc})") from None
    except _PIL_ERRORS as exc:
        raise ImageFileError(f"not an image PIL can read ({exc})") from None
    if pil.width * pil.height > max_pixels:
        raise ImageTooLargeError(
            f"too large to decode safely: {pil.width}x{pil.height} is {pil.width * pil.height:,} pixels, "
            f"over the limit of {max_pixels:,}"
        )
    try:
        pil.load()  # the first frame of an animation; a truncated file fails here, not later
    except _PIL_ERRORS as exc:
        raise ImageFileError(f"cannot be decoded ({exc})") from None
    return pil


def load_image(image: object, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, bytes | None]:
    """An image, upright and fully decoded as a PIL image, plus the file's bytes when they are exactly these
    pixels (None for an array or a PIL image, and for a file turned by its EXIF orientation).

    Takes encoded bytes, a path, an ``H x W x 3`` (or ``H x W``) uint8 array, a PIL image, or a callable giving
    one of those. The pixels are loaded here, not lazily, so that a truncated file fails now; a file of more than
    ``max_pixels`` pixels fails before it is decoded. Camera JPEGs often store the sensor's pixels plus an EXIF
    orientation; viewers turn them, so the class a person saw is of the turned image. Raises
    :class:`ImageFileError`.
    """
    if callable(image) and not isinstance(image, Image.Image):
        image = image()
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        data: bytes | None = bytes(image)
        pil = _open_bytes(data, max_pixels)
    elif isinstance(image, np.ndarray):
        return Image.fromarray(image), None
    else:
        pil, data = image, None
    try:
        if pil.getexif().get(EXIF_ORIENTATION, 1) != 1:
            pil, data = ImageOps.exif_transpose(pil), None
    except _PIL_ERRORS as exc:  # an EXIF block that cannot be parsed
        raise ImageFileError(f"its EXIF data cannot be read ({exc})") from None
    return pil, data


def to_rgb(pil: Image.Image) -> Image.Image:
    """The image in RGB; 16- and 32-bit integer images are stretched to 8 bits first (a plain convert clips them)."""
    if pil.mode == "RGB":
        return pil
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(pil, dtype=np.float64)
        span = max(array.max() - array.min(), 1.0)
        pil = Image.fromarray(((array - array.min()) * (255.0 / span)).astype(np.uint8))
    return pil.convert("RGB")


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


def _storable_as_is(pil: Image.Image, data: bytes | None, train_size: tuple[int, int], encoding: str) -> bool:
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


def stored_bytes(
    image: object, train_size: tuple[int, int], encoding: str, max_pixels: int = MAX_PIXELS
) -> tuple[bytes, tuple[int, int]]:
    """What a shard stores for ``image``: RGB, at most the training size, encoded as ``encoding`` (``jpeg`` or
    ``png``); returns the bytes and their (H, W). A JPEG that is already RGB, upright and small enough is kept
    byte for byte, not re-encoded. Raises :class:`ImageFileError`."""
    if encoding not in ("jpeg", "png"):
        raise ValueError(f"unknown image encoding {encoding!r}")
    pil, data = load_image(image, max_pixels)
    if _storable_as_is(pil, data, train_size, encoding):
        return data, (pil.height, pil.width)
    try:
        pil = to_rgb(pil)
    except _PIL_ERRORS as exc:
        raise ImageFileError(f"cannot be converted to RGB ({exc})") from None
    size = stored_size((pil.height, pil.width), train_size)
    if size != (pil.height, pil.width):
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
    buffer = io.BytesIO()
    if encoding == "png":
        pil.save(buffer, format="PNG")
    else:
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), size


def decode_stored(data: bytes):
    """A stored (shard) image's bytes to a ``3 x H x W`` uint8 RGB tensor, with torchvision's decoders (about half
    the time PIL takes). A PNG's chunks are checked first: libpng would crash the process on a damaged one.
    Raises :class:`ImageFileError`."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if data[:8] == PNG_SIGNATURE and (problem := png_problem(data)) is not None:
        raise ImageFileError(f"a damaged PNG ({problem})")
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # libjpeg's errors
        raise ImageFileError(str(exc).splitlines()[0][:200]) from None


def at_input_size(chw, size: tuple[int, int]):
    """A ``3 x H x W`` uint8 image resized to the network's input ``size`` (H, W): bilinear with antialias, aspect
    ratio ignored, as the paper's protocol does; an image already that size is returned as it is."""
    from torchvision.transforms.v2.functional import resize

    height, width = int(size[0]), int(size[1])
    return chw if tuple(chw.shape[1:]) == (height, width) else resize(chw, [height, width], antialias=True)


def network_pixels(
    image: object,
    input_size: tuple[int, int],
    encoding: str,
    max_pixels: int = MAX_PIXELS,
    max_size: tuple[int, int] | None = None,
):
    """``image`` as the network saw its training images: stored as preparation stores it (shrunk towards
    ``max_size``, the manifest's, which is the input size unless told otherwise), decoded and resized as training
    does; a ``3 x h x w`` uint8 tensor at ``input_size``. Raises :class:`ImageFileError`."""
    data, _ = stored_bytes(image, tuple(max_size or input_size), encoding, max_pixels)
    return at_input_size(decode_stored(data), tuple(input_size))


def declared_pixels(data: bytes) -> int | None:
    """How many pixels an encoded image says it has, from its header alone (nothing is decoded), or None when PIL
    cannot read its header: a request's pixel budget is checked before any image of it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:
                return pil.width * pil.height
    except _PIL_ERRORS:
        return None
