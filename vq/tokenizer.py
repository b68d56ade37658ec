"""The ``Tokenizer``: a loaded VQ-VAE behind a pixel-level API, uint8 images <-> int64 codes.

What it accepts (anything else is a ValueError saying how to convert):
- a torch uint8 tensor (B, C, H, W) or (C, H, W);
- a numpy uint8 array (H, W, C) or (B, H, W, C), the layout image libraries return;
- a PIL image in mode "RGB" (for other modes call ``image.convert("RGB")`` first);
- a list of those, all of one size.
H and W must be positive multiples of the model's downsampling factor f.

Precision (``vq.precision``): "fp32" or "bf16"; by default bf16 where the device runs it
natively, unless the artifact's config.json recommends "fp32". Quantization itself always
runs in float32 inside the quantizers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vq.model import VQVAE, VQVAEConfig
from vq.pixels import float_to_uint8, hwc_to_chw, uint8_to_float
from vq.precision import Precision, autocast, check_precision, default_precision

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# On CPU a batch runs in chunks of about this many pixels. A network's full-resolution
# activations are its largest (the default's 32 channels x 256² x 4 bytes = 8 MiB per image):
# one 256² image's stay inside a typical last-level cache through the residual blocks, a
# batch's do not, so chunks beat one large batch (docs/benchmarks/throughput.md). GPUs get
# the whole batch.
CPU_CHUNK_PIXELS = 256 * 256
_HINT = "for float images in [0, 1] use (x * 255).round().to(torch.uint8)"


def resolve_precision(
    requested: str | None, device: torch.device, metadata: Mapping[str, Any]
) -> Precision:
    """The precision to run at: ``requested`` if given, else "fp32" if the artifact
    recommends it, else the device's default (bf16 where native)."""
    if requested is not None:
        return check_precision(requested)
    if metadata.get("recommended_precision") == "fp32":
        return "fp32"
    return default_precision(device)


def _one_image(image: Any, where: str) -> torch.Tensor:
    """One image as a uint8 (C, H, W) tensor (see the module docstring for what is accepted)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise ValueError(f"{where} must be uint8 in [0, 255], got dtype {image.dtype}; {_HINT}")
        if image.ndim != 3:
            raise ValueError(f"{where} must be (C, H, W), got shape {tuple(image.shape)}")
        return image
    mode = getattr(image, "mode", None)
    if mode is not None and hasattr(image, "getbands"):  # a PIL image, without importing PIL
        if mode != "RGB":
            raise ValueError(f"{where} is a PIL image in mode {mode!r}; pass image.convert('RGB')")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"{where} must be a uint8 array in [0, 255], got dtype {image.dtype}; for "
                "floats in [0, 1] use (x * 255).round().astype(np.uint8)"
            )
        if image.ndim == 2:
            raise ValueError(
                f"{where} is a grayscale (H, W) array, shape {image.shape}; the tokenizer takes "
                "RGB: pass np.stack([x, x, x], axis=-1) (or PIL's image.convert('RGB'))"
            )
        if image.ndim != 3:
            raise ValueError(f"{where} must be an (H, W, C) array, got shape {image.shape}")
        return hwc_to_chw(image)
    raise ValueError(
        f"{where} has type {type(image).__name__}; pass a uint8 torch tensor (B, C, H, W), a "
        "uint8 numpy array (H, W, C) or (B, H, W, C), a PIL RGB image, or a list of them"
    )


def as_image_batch(images: Any) -> torch.Tensor:
    """What users have (tensor, numpy array, PIL image, list of them) -> uint8 (B, C, H, W)."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 in [0, 255], got dtype {images.dtype}; {_HINT}")
        return images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return torch.stack([_one_image(im, "images") for im in images])
    if isinstance(images, Sequence) and not isinstance(images, str | bytes):
        if not images:
            raise ValueError("images is an empty list; pass at least one image")
        batch = [_one_image(im, f"images[{i}]") for i, im in enumerate(images)]
        sizes = sorted({tuple(t.shape) for t in batch})
        if len(sizes) > 1:
            raise ValueError(
                f"images in one call must share a size, got (C, H, W) {sizes}; encode each "
                "size in its own call, or crop or resize them to one size first"
            )
        return torch.stack(batch)
    return _one_image(images, "images")[None]


def check_pixels(batch: torch.Tensor, channels: int, f: int) -> None:
    """ValueError saying how to fix a batch (B, C, H, W) whose channels are not ``channels``
    (grayscale, RGBA) or whose sides are not multiples of ``f``."""
    c, h, w = batch.shape[1:]
    if c != channels:
        fixes = {
            1: "grayscale: repeat it to RGB, x.expand(-1, 3, -1, -1) for a (B, 1, H, W) tensor, "
            "np.stack([x, x, x], axis=-1) for an (H, W) array",
            4: "RGBA: drop the alpha channel, x[:, :3] for a (B, 4, H, W) tensor, "
            "x[..., :3] for an (H, W, 4) array",
        }
        fix = fixes.get(int(c), "convert it to RGB")
        raise ValueError(
            f"images have {c} channel(s), the tokenizer takes {channels} (RGB); {fix} "
            "(PIL: image.convert('RGB'))"
        )
    if h == 0 or w == 0 or h % f or w % f:
        raise ValueError(
            f"image height and width must be positive multiples of f={f}, got {h}x{w}; crop "
            f"to {h - h % f}x{w - w % f}: image[: h - h % {f}, : w - w % {f}] for an (H, W, 3) "
            f"array, x[..., : h - h % {f}, : w - w % {f}] for a tensor"
        )


def chunk_size(batch: int, pixels_per_image: int, device: torch.device) -> int:
    """Images per forward pass for a batch of ``batch`` images of ``pixels_per_image`` pixels
    on ``device``: all of them on GPUs, about ``CPU_CHUNK_PIXELS`` pixels' worth (at least
    one image) on CPU."""
    if device.type != "cpu":
        return max(1, batch)
    return max(1, min(batch, CPU_CHUNK_PIXELS // max(1, pixels_per_image)))


def in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    pixels_per_image: int,
    device: torch.device,
) -> torch.Tensor:
    """``fn`` over ``batch`` (dim 0) in chunks of ``chunk_size`` images, outputs concatenated."""
    n = chunk_size(batch.shape[0], pixels_per_image, device)
    return torch.cat([fn(part) for part in batch.split(n)])


class Tokenizer:
    """A loaded artifact: uint8 images <-> int64 code grids, in eval mode without autograd.

    Outputs come back on the device of a tensor input (CPU otherwise); the network runs on
    ``device`` at ``precision`` (see the module docstring).
    """

    def __init__(
        self,
        model: VQVAE,
        metadata: dict[str, Any],
        device: str | torch.device = "cpu",
        precision: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.metadata = metadata
        self.config: VQVAEConfig = model.config
        self.f: int = model.f
        self.codebook_size: int = model.codebook_size
        self.code_dim: int = model.code_dim
        self._requested_precision = precision
        self.to(device)

    def to(self, device: str | torch.device) -> Tokenizer:
        """Move to ``device``; an unrequested precision is re-resolved for the new device."""
        self.device = torch.device(device)
        self.precision: Precision = resolve_precision(
            self._requested_precision, self.device, self.metadata
        )
        # channels_last: oneDNN's and cuDNN's fast layout (torch's stubs lack the keyword).
        self.model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    def __repr__(self) -> str:
        q = self.config.quantizer
        return (
            f"Tokenizer(kind={q.kind!r}, codebook_size={self.codebook_size}, f={self.f}, "
            f"code_dim={self.code_dim}, device={str(self.device)!r}, "
            f"precision={self.precision!r})"
        )

    @torch.inference_mode()
    def encode(self, images: Any) -> torch.Tensor:
        """uint8 images (B, C, H, W) or what ``as_image_batch`` accepts, H and W multiples
        of f -> int64 codes (B, H/f, W/f)."""
        batch = as_image_batch(images)
        check_pixels(batch, self.config.in_channels, self.f)
        self.model.check_images(batch)
        x = uint8_to_float(batch.to(self.device)).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            codes = in_chunks(self.model.encode, x, x.shape[2] * x.shape[3], self.device)
        return codes.to(batch.device)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes (B, h, w) in [0, codebook_size) -> uint8 images (B, C, h*f, w*f)."""
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype not in _INTEGER_DTYPES:
            raise ValueError(
                f"codes must be an integer tensor (int64) with ids in [0, {self.codebook_size}), "
                f"got dtype {codes.dtype}"
            )
        self.model.check_codes(codes)
        ids = codes.to(self.device, torch.long)
        pixels = ids.shape[1] * ids.shape[2] * self.f**2
        with autocast(self.device, self.precision):
            images = in_chunks(self.model.decode, ids, pixels, self.device)
        return float_to_uint8(images).to(codes.device)
