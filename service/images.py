"""Untrusted bytes -> uint8 RGB arrays the tokenizer accepts, and uint8 arrays -> PNG bytes.

Decoding is ``vqio.decode_image``, the decoder training and ``vq-train predict`` use too, so
a file gets the same codes here as there. Every failure is an ``APIError`` (4xx) naming the
image and the problem; sizes are checked from the header, before decoding.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

import vqio
from service.errors import APIError, ErrorCode
from vqio import ALLOWED_FORMATS, format_size

FitMode = Literal["reject", "crop", "pad", "resize"]

# vqio's error kinds -> error codes (docs/api.md).
_DECODE_ERRORS: dict[vqio.DecodeErrorKind, ErrorCode] = {
    "empty": ErrorCode.EMPTY_IMAGE,
    "unreadable": ErrorCode.INVALID_IMAGE,
    "corrupt": ErrorCode.INVALID_IMAGE,
    "too_large": ErrorCode.IMAGE_TOO_LARGE,
}


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own decompression-bomb guard, as a second line behind the header check.

    Pillow raises DecompressionBombError inside ``Image.open`` above twice this limit (and
    only warns between 1x and 2x); ``decode_image`` refuses anything over ``max_side`` per
    side first. The limit is a Pillow global, so it is per process.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


def header_size(data: bytes, *, label: str, max_side: int) -> tuple[int, int]:
    """(H, W) as the header stores it (``vqio.stored_size``; an EXIF turn may swap them), or
    the 4xx decoding would give: what admission control prices before decoding a pixel.
    Only the header is read: no pixel is decoded on the event loop."""
    try:
        return vqio.stored_size(data, label=label, max_side=max_side)
    except vqio.ImageDecodeError as exc:
        raise APIError(_DECODE_ERRORS[exc.kind], str(exc)) from None


def fitted_size(h: int, w: int, *, f: int, fit: FitMode) -> tuple[int, int]:
    """The size ``fit_image`` will produce from (h, w) (reject: unchanged, or refused)."""
    if fit == "crop":
        return h - h % f, w - w % f
    if fit == "pad":
        return h + (-h) % f, w + (-w) % f
    if fit == "resize":
        return max(f, round(h / f) * f), max(f, round(w / f) * f)
    return h, w


def decode_image(data: bytes, *, label: str, max_side: int) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB (``vqio.decode_image``), or a 4xx.

    ``label`` names the image in error messages (``images[2]``, ``files[0] (cat.png)``).
    """
    try:
        return vqio.decode_image(data, label=label, max_side=max_side)
    except vqio.ImageDecodeError as exc:
        raise APIError(_DECODE_ERRORS[exc.kind], str(exc)) from None


def fit_image(arr: np.ndarray, *, f: int, fit: FitMode, label: str) -> np.ndarray:
    """Make both sides multiples of ``f`` as ``fit`` says; (H, W, 3) -> (H', W', 3).

    reject: error unless they already are. crop: centre crop down to multiples of f.
    pad: pad bottom and right up to multiples of f by repeating the edge pixels (so code
    (i, j) still covers pixels [i*f, (i+1)*f) of the original). resize: bicubic resize to
    the nearest multiples of f (at least f).
    """
    h, w = arr.shape[:2]
    if h % f == 0 and w % f == 0:
        return arr
    if fit == "reject":
        raise APIError(
            ErrorCode.BAD_IMAGE_SIZE,
            f"{label} is {format_size(h, w)}; with fit=reject both sides must be multiples of f={f}. "
            "Resize it, or pass fit=crop, fit=pad or fit=resize",
        )
    if fit == "crop":
        rows, cols = vqio.center_crop(h, w, f)
        if rows.start == rows.stop or cols.start == cols.stop:
            raise APIError(
                ErrorCode.BAD_IMAGE_SIZE,
                f"{label} is {format_size(h, w)}, too small to crop to multiples of f={f}; "
                "use fit=pad or fit=resize",
            )
        return arr[rows, cols]
    if fit == "pad":
        return np.pad(arr, ((0, (-h) % f), (0, (-w) % f), (0, 0)), mode="edge")
    if fit == "resize":
        nh, nw = fitted_size(h, w, f=f, fit=fit)
        resized = Image.fromarray(arr).resize((nw, nh), Image.Resampling.BICUBIC)
        return np.asarray(resized, dtype=np.uint8)
    raise APIError(
        ErrorCode.INVALID_REQUEST, f"fit={fit!r} is not allowed; choose reject, crop, pad or resize"
    )


def load_image(
    data: bytes, *, label: str, f: int, fit: FitMode, max_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> (fitted (H', W', 3) uint8, original (H, W))."""
    arr = decode_image(data, label=label, max_side=max_side)
    size = (int(arr.shape[0]), int(arr.shape[1]))
    fitted = fit_image(arr, f=f, fit=fit, label=label)
    # A crop is a strided view; torch wants contiguous memory it may own.
    if not fitted.flags.writeable or not fitted.flags.c_contiguous:
        fitted = np.array(fitted, copy=True, order="C")
    return fitted, size


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes. Low zlib effort: these images are sent, not archived."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


__all__ = [
    "ALLOWED_FORMATS",
    "APIError",
    "FitMode",
    "decode_image",
    "encode_png",
    "fit_image",
    "fitted_size",
    "header_size",
    "load_image",
    "set_pixel_limit",
]
