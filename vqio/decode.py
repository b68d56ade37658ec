"""Image files -> uint8 RGB arrays: the one decoder of training, ``vq-train predict`` and the
service, so that a file gives the same pixels, and so the same codes, everywhere.

What a file becomes, (H, W, 3) uint8 RGB:
- the first frame of a multi-frame file (animated GIF, APNG);
- turned as its EXIF orientation says (what a viewer shows, not the sensor's layout);
- alpha (RGBA, LA, PA, a palette or gray/RGB ``transparency`` entry) composited over white;
- 16-bit gray divided by 257 (65535 -> 255) and rounded, not clipped as Pillow's
  ``convert("RGB")`` would; 16-bit RGB(A) PNGs are reduced to 8 bits by Pillow's decoder;
- gray, 1-bit, palette and CMYK converted with Pillow's ``convert("RGB")`` (embedded ICC
  profiles are not applied: pixels are taken as sRGB).

Sizes are checked from the header before a pixel is decompressed (Pillow's ``Image.open``
is lazy), so a 50,000 x 50,000 PNG of a few hundred bytes is refused at once. Every
failure is an ``ImageDecodeError`` (a ValueError) naming the image and the problem.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vqio.geometry import format_size

# A small set of well-trodden decoders; anything else Pillow could open is refused.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# File names looked for in folders (training data, predict); the formats above.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF tag 0x0112; values 5-8 include a 90-degree turn, which swaps height and width.
_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)
# What Pillow raises for files it cannot parse (besides its own subclasses of these).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)

DecodeErrorKind = Literal["empty", "unreadable", "too_large", "corrupt"]


class ImageDecodeError(ValueError):
    """A file that is not a usable image. ``kind``: ``empty`` (0 bytes), ``unreadable`` (not
    an image, or not an allowed format), ``too_large`` (over a size limit, refused before
    decoding), ``corrupt`` (truncated or damaged pixel data)."""

    def __init__(self, kind: DecodeErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: DecodeErrorKind = kind


def _open(source: bytes | Path, label: str, max_side: int | None = None) -> Image.Image:
    """A lazily opened image of an allowed format (only the header read, nothing decoded)."""
    try:
        empty = len(source) == 0 if isinstance(source, bytes) else source.stat().st_size == 0
    except OSError as exc:
        raise ImageDecodeError(
            "unreadable", f"{label} could not be read ({type(exc).__name__}: {exc})"
        ) from None
    if empty:
        raise ImageDecodeError("empty", f"{label} is empty (0 bytes); send an image file")
    try:
        return Image.open(
            io.BytesIO(source) if isinstance(source, bytes) else source, formats=ALLOWED_FORMATS
        )
    except Image.DecompressionBombError as exc:
        side = "" if max_side is None else f" The limit is {max_side} px per side."
        raise ImageDecodeError(
            "too_large", f"{label} refused before decoding: {exc}{side}"
        ) from None
    except UnidentifiedImageError:
        # Its message names a BytesIO object, nothing the sender can act on.
        raise ImageDecodeError(
            "unreadable",
            f"{label} is not a readable image (unknown or unsupported format); "
            f"allowed formats: {', '.join(ALLOWED_FORMATS)}",
        ) from None
    except _PILLOW_ERRORS as exc:
        raise ImageDecodeError(
            "unreadable",
            f"{label} is not a readable image ({type(exc).__name__}: {exc}); "
            f"allowed formats: {', '.join(ALLOWED_FORMATS)}",
        ) from None


def _check_size(img: Image.Image, label: str, max_side: int | None, max_pixels: int) -> None:
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageDecodeError("unreadable", f"{label} declares {format_size(height, width)} px")
    if max_side is not None and (width > max_side or height > max_side):
        raise ImageDecodeError(
            "too_large",
            f"{label} declares {format_size(height, width)} pixels; the limit is {max_side} px "
            "per side (refused before decoding)",
        )
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large",
            f"{label} declares {format_size(height, width)} = {width * height} pixels; the "
            f"limit is {max_pixels} pixels (a decompression-bomb guard; refused before decoding)",
        )


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any mode -> (H, W, 3) uint8 (see the module docstring for the rules)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255)
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    if any(band in ("A", "a") for band in img.getbands()) or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _decode(
    source: bytes | Path, label: str, max_side: int | None, max_pixels: int | None
) -> np.ndarray:
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    with _open(source, label, max_side) as img:
        _check_size(img, label, max_side, 2**62 if limit is None else int(limit))
        try:
            img.load()  # the first frame, fully: a truncated file fails here
            rgb = _to_rgb(ImageOps.exif_transpose(img))
        except _PILLOW_ERRORS as exc:
            raise ImageDecodeError(
                "corrupt",
                f"{label} could not be decoded, truncated or corrupt? "
                f"({type(exc).__name__}: {exc})",
            ) from None
    # Arrays viewing Pillow's buffer are read-only; torch wants memory it may own.
    return np.require(rgb, np.uint8, ["C", "W"])


def decode_image(
    data: bytes,
    *,
    label: str = "image",
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB, writable and C-contiguous.

    ``label`` names the image in errors (a path, ``files[0] (cat.png)``). ``max_side``:
    pixels per side at most (None: no limit); ``max_pixels``: pixels at most, default
    Pillow's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb limit). Both are checked
    from the header, before decoding. Raises ``ImageDecodeError``.
    """
    return _decode(bytes(data), label, max_side, max_pixels)


def read_image(
    path: str | os.PathLike[str], *, max_side: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """``decode_image`` of a file, named by its path in errors."""
    return _decode(Path(path), os.fspath(path), max_side, max_pixels)


def image_size(
    source: bytes | str | os.PathLike[str],
    *,
    label: str | None = None,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """(H, W) that decoding ``source`` (file bytes or a path) will return, from the header
    and the EXIF orientation only (nothing is decompressed), with the same size checks as
    ``decode_image``. Raises ``ImageDecodeError``."""
    if isinstance(source, bytes | bytearray | memoryview):
        src: bytes | Path = bytes(source)
        name = label or "image"
    else:
        src, name = Path(source), label or os.fspath(source)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    with _open(src, name, max_side) as img:
        _check_size(img, name, max_side, 2**62 if limit is None else int(limit))
        width, height = img.size
        try:
            orientation = img.getexif().get(_ORIENTATION_TAG)
        except _PILLOW_ERRORS:
            orientation = None  # a damaged EXIF block; decoding will tell
    return (width, height) if orientation in _SWAPS_SIDES else (height, width)


def stored_size(
    data: bytes, *, label: str = "image", max_side: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """(H, W) as the header stores it, before any EXIF turn, with ``image_size``'s checks.
    Reads the header only: Pillow's ``getexif`` loads a PNG or WebP whole to find an EXIF
    block that may follow the pixels, so a turn (which swaps the sides, never the pixel
    count) is left to the caller. Raises ``ImageDecodeError``."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    with _open(bytes(data), label, max_side) as img:
        _check_size(img, label, max_side, 2**62 if limit is None else int(limit))
        width, height = img.size
    return height, width
