"""Image files in and out, the same way for training, predict and the service (Pillow +
numpy; ``vq`` itself stays torch + safetensors only).

- ``decode_image(bytes)`` / ``read_image(path)``: the one decoder, file -> uint8 (H, W, 3);
- ``image_size(path)``: the (H, W) it will return, from the header;
- ``stored_size(bytes)``: the (H, W) the header stores, before any EXIF turn (never loads);
- ``center_crop``, ``format_size``: geometry in the one size order, (H, W).
"""

from vqio.decode import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    DecodeErrorKind,
    ImageDecodeError,
    decode_image,
    image_size,
    read_image,
    stored_size,
)
from vqio.geometry import center_crop, format_size

__all__ = [
    "ALLOWED_FORMATS",
    "IMAGE_EXTENSIONS",
    "DecodeErrorKind",
    "ImageDecodeError",
    "center_crop",
    "decode_image",
    "format_size",
    "image_size",
    "read_image",
    "stored_size",
]
