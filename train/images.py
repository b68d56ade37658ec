"""The images a run uses: found on disk or bundled, decoded once into memory, split by image.

``find_images`` lists a folder's image files, ``load_folder`` decodes them (skipping, with a
warning, the unreadable ones), ``split_by_image`` holds out a stable share for validation;
``BUNDLED_TRAIN`` / ``BUNDLED_VAL`` name the scikit-image photographs used when no folder is
given (no downloads). ``to_tensor`` turns a decoded uint8 (H, W, 3) image into the float32
(3, H, W) tensor in [-1, 1] the VQ-VAE expects.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vq.pixels import hwc_to_chw, uint8_to_float
from vqio import IMAGE_EXTENSIONS, ImageDecodeError, read_image

# The bundled set: every natural RGB photograph in skimage.data that ships inside the wheel
# (skimage.data.<name>() works offline). Synthetic images (colorwheel, logo) and grayscale
# ones are left out; "cat" is the same photograph as "chelsea".
BUNDLED_TRAIN = (
    "astronaut",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)
# Held out for validation/test: a scene (coffee cup on a table) and a street photograph,
# neither like any training image.
BUNDLED_VAL = ("coffee", "stereo_motorcycle")


def load_bundled_image(name: str) -> np.ndarray:
    """One skimage.data photograph as uint8 (H, W, 3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity): the left view only; right would leak into val
    return np.ascontiguousarray(image[..., :3])


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted."""
    base = Path(root)
    if not base.exists():
        raise ValueError(
            f"data root {str(base)!r} does not exist; pass an existing folder of images"
        )
    if not base.is_dir():
        raise ValueError(f"data root {str(base)!r} is not a folder; pass a folder of images")
    return sorted(
        p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return uint8_to_float(hwc_to_chw(image))


@dataclass
class LoadedImages:
    """Images decoded once, with their names (file path or skimage name)."""

    names: list[str]
    images: list[np.ndarray]  # uint8 (H, W, 3)
    skipped: list[tuple[str, str]]  # (path, error)


def load_folder(paths: Sequence[Path]) -> LoadedImages:
    """Decode every file; unreadable or truncated ones are skipped with a warning and a count."""
    names: list[str] = []
    images: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            images.append(read_image(path))
            names.append(str(path))
        except ImageDecodeError as exc:
            skipped.append((str(path), str(exc)))  # the message names the file
    if skipped:
        shown = "; ".join(f"{p} ({e})" for p, e in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(paths)}: {shown}{more}",
            stacklevel=2,
        )
    return LoadedImages(names, images, skipped)


def split_by_image(
    names: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val): a deterministic pseudo-random split by image name.

    Each image goes to validation when the hash of (seed, name), read as a number in [0, 1),
    is below ``val_fraction``, so an image keeps its side when files are added or removed.
    With two or more images each side gets at least one (the lowest / highest hash).
    """
    n = len(names)
    if n == 1:
        return [0], [0]

    def unit(i: int) -> float:
        digest = hashlib.sha256(f"{seed}:{names[i]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    scores = [unit(i) for i in range(n)]
    val = {i for i in range(n) if scores[i] < val_fraction}
    if not val:
        val = {min(range(n), key=scores.__getitem__)}
    if len(val) == n:
        val.discard(max(range(n), key=scores.__getitem__))
    return [i for i in range(n) if i not in val], sorted(val)
