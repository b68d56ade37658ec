"""Odd image files made from a bundled scikit-image photograph (no downloads): the modes and
metadata the one decoder (vqio) must handle alike for training, predict and the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # EXIF tag


def photo(h: int = 70, w: int = 101) -> np.ndarray:
    """A (h, w, 3) uint8 crop of skimage's astronaut, resized: real photographic content."""
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()[40:300, 120:500])
    return np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


def _alpha(h: int, w: int) -> np.ndarray:
    """An alpha ramp from transparent (left) to opaque (right), with an opaque top row."""
    alpha = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    alpha[0] = 255
    return alpha


def rgba_png(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(np.dstack([rgb, _alpha(*rgb.shape[:2])]), "RGBA").save(path)


def gray16_png(path: Path, rgb: np.ndarray) -> None:
    gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16)
    # Up to ~75 % of full scale, as a 16-bit scan often is, with the low byte used: divided
    # by 257 it stays darker than white; stretched by its maximum it would not.
    values = gray * 200 + (np.arange(gray.size).reshape(gray.shape) % 50)
    Image.fromarray(values.astype(np.uint16)).save(path)


def exif_rotated_jpeg(path: Path, rgb: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, quality=90, exif=exif.tobytes())


def palette_gif(path: Path, rgb: np.ndarray) -> None:
    image = Image.fromarray(rgb).quantize(colors=64)
    image.save(path, transparency=0)  # palette entry 0 is transparent: composited over white


def animated_gif(path: Path, rgb: np.ndarray) -> None:
    first = Image.fromarray(rgb).quantize(colors=64)
    second = Image.fromarray(255 - rgb).quantize(colors=64)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)


def cmyk_jpeg(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).convert("CMYK").save(path, quality=90)


ODD_FILES: dict[str, Callable[[Path, np.ndarray], None]] = {
    "rgba.png": rgba_png,
    "gray16.png": gray16_png,
    "exif_rotated.jpg": exif_rotated_jpeg,
    "palette.gif": palette_gif,
    "animated.gif": animated_gif,
    "cmyk.jpg": cmyk_jpeg,
}


def write_odd_files(folder: Path, rgb: np.ndarray | None = None) -> list[Path]:
    """Every file of ``ODD_FILES`` under ``folder``, made from ``rgb`` (default ``photo()``)."""
    rgb = photo() if rgb is None else rgb
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, write in ODD_FILES.items():
        write(folder / name, rgb)
        paths.append(folder / name)
    return paths
