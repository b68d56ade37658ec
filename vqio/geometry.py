"""Image geometry in the project's one size order, (H, W): height first, as in numpy and
torch arrays, JSON ``image_size`` and ``grid``, and the ``X-Image-Size`` header."""

from __future__ import annotations


def format_size(height: int, width: int) -> str:
    """How every message writes an image size: ``"300x451 (HxW)"``."""
    return f"{height}x{width} (HxW)"


def center_crop(height: int, width: int, multiple: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the central crop whose sides are the largest multiples of
    ``multiple``; index arrays with them: ``image[rows, cols]`` (H, W, C) or
    ``images[..., rows, cols]`` (B, C, H, W). A side smaller than ``multiple`` gives an empty
    slice, for the caller to refuse."""
    if multiple < 1:
        raise ValueError(f"multiple={multiple!r} is not allowed; expected an integer >= 1")
    h2, w2 = height - height % multiple, width - width % multiple
    top, left = (height - h2) // 2, (width - w2) // 2
    return slice(top, top + h2), slice(left, left + w2)
