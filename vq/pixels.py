"""Pixel ranges and layouts, written once: uint8 [0, 255] images <-> the float [-1, 1] the
networks see, and numpy (H, W, C) arrays -> torch (C, H, W) tensors.

Training (``train.images``), the ``Tokenizer`` and the service all convert through these.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_RANGE = (-1.0, 1.0)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1.0


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded to the nearest level."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def float_to_unit(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> float32 [0, 1], clamped (the range of image metrics and loggers)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def hwc_to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) array -> uint8 (C, H, W) tensor sharing its memory where it can."""
    # np.require copies only when needed (slices; read-only arrays, which PIL hands out).
    return torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1)
