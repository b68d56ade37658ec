"""Convolutional VQ-VAE: encoder, quantizer, decoder (van den Oord et al. 2017, "Neural
Discrete Representation Learning", §3; layout after the VQGAN encoder/decoder of Esser et
al. 2021, without the attention blocks and the GAN loss).

    image (B, C, H, W) -> encoder -> 1x1 conv -> z (B, D, H/f, W/f) -> quantizer
      -> 1x1 conv -> decoder -> recon (B, C, H, W)

The network is fully convolutional, so any H, W divisible by f work.
Configuration lives in ``vq.config`` (``VQVAEConfig`` with a ``VQConfig`` or ``FSQConfig``),
which round-trips through JSON so an artifact can rebuild the model. ``architecture="vqgan"``
swaps this encoder/decoder for the taming / LlamaGen one in ``vq.vqgan``; the quantizer, the
code checks and the encode/decode API stay the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vq.config import (
    ALLOWED_F,
    DEFAULT_VQ_CODE_DIM,
    FSQ_RECOMMENDED_LEVELS,
    AnyQuantizerConfig,
    FSQConfig,
    QuantizerConfig,
    VQConfig,
    VQVAEConfig,
)
from vq.precision import float32_input, float32_output
from vq.quantizers import FSQ, VectorQuantizer
from vq.types import Quantizer, QuantizerOutput
from vq.vqgan import VQGANDecoder, VQGANEncoder

__all__ = [
    "ALLOWED_F",
    "DEFAULT_VQ_CODE_DIM",
    "FSQ_RECOMMENDED_LEVELS",
    "FSQConfig",
    "QuantizerConfig",
    "VQConfig",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "build_quantizer",
]


def build_quantizer(cfg: AnyQuantizerConfig, dim: int) -> Quantizer:
    """The quantizer described by ``cfg`` for encoder vectors of ``dim`` channels."""
    if isinstance(cfg, FSQConfig):
        levels = cfg.levels
        # FSQ only needs its own projection when z is wider than the number of levels.
        return FSQ(levels, dim=None if dim == len(levels) else dim)
    # Every VQConfig field goes through (none copied by hand, none dropped).
    return VectorQuantizer(dim, **cfg.to_dict())


def _norm(channels: int) -> nn.GroupNorm:
    # Up to 32 groups as in VQGAN, but at least 2 channels per group: a group of one channel
    # on a 1x1 code grid has a single value and cannot be normalized.
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): the pre-activation residual block of VQGAN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv (exact for even sides), changing the width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest neighbour then a 3x3 conv (no checkerboard artefacts,
    unlike a transposed conv; Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, code_dim, H/f, W/f)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = cfg.widths
        self.stem = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [ResBlock(width) for _ in range(cfg.num_res_blocks)]
            if i + 1 < len(widths):
                layers.append(Downsample(width, widths[i + 1]))
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(widths[-1])
        self.pre_quant = nn.Conv2d(widths[-1], cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = float32_input(self.stem, x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # The block before the latent in float32 too (vq.precision: rounding there lands on
            # the latent directly).
            h = float32_output(block, h) if i == last else block(h)
        return float32_output(self.pre_quant, F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, code_dim, h, w) -> (B, C, h*f, w*f), the encoder mirrored."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = cfg.widths
        self.post_quant = nn.Conv2d(cfg.code_dim, widths[-1], 1)
        layers: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            layers += [ResBlock(widths[i]) for _ in range(cfg.num_res_blocks)]
            if i > 0:
                layers.append(Upsample(widths[i], widths[i - 1]))
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.post_quant(q))
        return float32_output(self.conv_out, F.silu(self.norm_out(h)))


class VQVAEOutput(NamedTuple):
    """recon: (B, C, H, W) reconstruction; quantizer: the quantizer's output on z
    (quantized, indices (B, H/f, W/f), loss); z: (B, D, H/f, W/f) encoder output before
    quantization, e.g. for the quantization error ||z - quantized||."""

    recon: torch.Tensor
    quantizer: QuantizerOutput
    z: torch.Tensor


class VQVAE(nn.Module):
    """Images in [-1, 1] <-> integer code grids. See the module docstring for the layout."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.f = config.f
        vqgan = config.architecture == "vqgan"
        # Built in this order (encoder, quantizer, decoder) so seeded inits stay reproducible.
        self.encoder: nn.Module = VQGANEncoder(config) if vqgan else Encoder(config)
        self.quantizer = build_quantizer(config.quantizer, config.code_dim)
        self.decoder: nn.Module = VQGANDecoder(config) if vqgan else Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def code_dim(self) -> int:
        return self.config.code_dim

    def check_images(self, images: torch.Tensor) -> None:
        """ValueError unless ``images`` is (B, in_channels, H, W) with H, W positive multiples of f."""
        c = self.config.in_channels
        if images.ndim != 4 or images.shape[1] != c:
            raise ValueError(f"expected images of shape (B, {c}, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h == 0 or w == 0 or h % self.f or w % self.f:
            raise ValueError(
                f"image height and width must be positive multiples of f={self.f}, got {h}x{w}"
            )

    def check_codes(self, codes: torch.Tensor) -> None:
        """ValueError unless ``codes`` is an integer (B, h, w) grid of ids in [0, codebook_size)."""
        k = self.codebook_size
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor (int64), got dtype {codes.dtype}")
        if codes.ndim != 3 or codes.shape[1] == 0 or codes.shape[2] == 0:
            raise ValueError(
                f"expected codes of shape (B, h, w) with h, w >= 1, got {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(
                f"code ids must lie in [0, {k}); got values in [{int(codes.min())}, {int(codes.max())}]"
            )

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """images (B, C, H, W) in [-1, 1] -> reconstruction, quantizer output and z."""
        self.check_images(images)
        z = self.encoder(images)  # (B, D, H/f, W/f)
        q = self.quantizer(z)
        recon = self.decoder(q.quantized)  # (B, C, H, W)
        return VQVAEOutput(recon=recon, quantizer=q, z=z)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> int64 codes (B, H/f, W/f)."""
        self.check_images(images)
        return self.quantizer(self.encoder(images)).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes (B, h, w) -> images (B, C, h*f, w*f), roughly in [-1, 1]."""
        self.check_codes(codes)
        q = self.quantizer.decode(codes.long())  # (B, D, h, w)
        return self.decoder(q)
