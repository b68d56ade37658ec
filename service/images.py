"""Untrusted bytes -> uint8 RGB arrays the tokenizer accepts, and uint8 arrays -> PNG bytes.

Every failure is an ``APIError`` (4xx) naming the image and the problem. The size checks
read only the header: Pillow's ``Image.open`` is lazy, so a 50,000 x 50,000 PNG of a few
hundred bytes is refused before a single pixel is decompressed.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import APIError, bad_request, too_large, unprocessable

FitMode = Literal["reject", "crop", "pad", "resize"]

# A small set of well-trodden decoders; everything else Pillow could open is refused.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own decompression-bomb guard, as a second line behind our header check.

    Pillow raises DecompressionBombError inside ``Image.open`` above twice this limit (and
    only warns between 1x and 2x); our header check in ``decode_image`` refuses anything over
    ``max_side`` per side first. The limit is a Pillow global, so it is per process.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any mode -> (H, W, 3) uint8. Alpha is composited over white; 16-bit is scaled, not clipped."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("RGB") clips 16-bit values at 255 instead of rescaling them.
        arr = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _open(data: bytes, *, label: str, max_side: int) -> Image.Image:
    """Open lazily (header only) and check the declared size; 4xx naming the problem."""
    if not data:
        raise bad_request(f"{label} is empty (0 bytes); send an image file", "empty_image")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise too_large(
            f"{label} refused before decoding: {exc}. The limit is {max_side} px per side",
            "image_too_large",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise bad_request(
            f"{label} is not a readable image ({type(exc).__name__}: {exc}); "
            f"allowed formats: {', '.join(ALLOWED_FORMATS)}",
            "invalid_image",
        ) from None
    width, height = img.size
    if width > max_side or height > max_side:
        img.close()
        raise too_large(
            f"{label} declares {width}x{height} pixels; the limit is {max_side} px per side "
            "(refused before decoding)",
            "image_too_large",
        )
    if width == 0 or height == 0:
        img.close()
        raise bad_request(f"{label} declares {width}x{height} pixels", "invalid_image")
    return img


def header_size(data: bytes, *, label: str, max_side: int) -> tuple[int, int]:
    """(H, W) as the file's header declares it, without decoding a pixel. EXIF rotation
    may swap the sides later; the pixel count, which is what memory depends on, stays."""
    with _open(data, label=label, max_side=max_side) as img:
        width, height = img.size
    return height, width


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
    """Image file bytes -> (H, W, 3) uint8 RGB.

    ``label`` names the image in error messages (``images[2]``, ``files[0] (cat.png)``).
    """
    with _open(data, label=label, max_side=max_side) as img:
        try:
            img.load()
            # EXIF orientation: tokenize what a viewer shows, not the sensor's raw layout.
            oriented = ImageOps.exif_transpose(img)
            return _to_rgb(oriented)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise bad_request(
                f"{label} could not be decoded, truncated or corrupt? ({type(exc).__name__}: {exc})",
                "invalid_image",
            ) from None


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
        raise unprocessable(
            f"{label} is {w}x{h} (WxH); with fit=reject both sides must be multiples of f={f}. "
            "Resize it, or pass fit=crop, fit=pad or fit=resize",
            "bad_image_size",
        )
    if fit == "crop":
        nh, nw = h - h % f, w - w % f
        if nh == 0 or nw == 0:
            raise unprocessable(
                f"{label} is {w}x{h}, too small to crop to multiples of f={f}; use fit=pad or fit=resize",
                "bad_image_size",
            )
        top, left = (h - nh) // 2, (w - nw) // 2
        return arr[top : top + nh, left : left + nw]
    if fit == "pad":
        return np.pad(arr, ((0, (-h) % f), (0, (-w) % f), (0, 0)), mode="edge")
    if fit == "resize":
        nh, nw = fitted_size(h, w, f=f, fit=fit)
        resized = Image.fromarray(arr).resize((nw, nh), Image.Resampling.BICUBIC)
        return np.asarray(resized, dtype=np.uint8)
    raise unprocessable(f"fit={fit!r} is not allowed; choose reject, crop, pad or resize")


def load_image(
    data: bytes, *, label: str, f: int, fit: FitMode, max_side: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> (fitted (H', W', 3) uint8, original (H, W))."""
    arr = decode_image(data, label=label, max_side=max_side)
    size = (int(arr.shape[0]), int(arr.shape[1]))
    fitted = fit_image(arr, f=f, fit=fit, label=label)
    # Arrays viewing Pillow's buffer are read-only; torch wants memory it may own.
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
