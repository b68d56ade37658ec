"""The VQGAN-family encoder and decoder (Esser et al. 2021, "Taming Transformers for
High-Resolution Image Synthesis", §3.1 and Appendix; the layout of taming-transformers'
``diffusionmodules/model.py``, which LlamaGen's VQ tokenizer (Sun et al. 2024) reuses).

    encoder: conv_in -> per level: num_res_blocks x (ResnetBlock [+ AttnBlock]) [+ Downsample]
             -> mid (ResnetBlock, AttnBlock, ResnetBlock) -> GroupNorm, swish -> conv_out
             -> quant_conv (1x1, z_channels -> code_dim)
    decoder: post_quant_conv (1x1) -> conv_in -> mid -> per level, lowest resolution first:
             (num_res_blocks + 1) x (ResnetBlock [+ AttnBlock]) [+ Upsample]
             -> GroupNorm, swish -> conv_out

Module names follow taming's (``down.{i}.block.{j}``, ``up.{i}`` = level i, ``mid.attn_1``),
so a taming state dict maps onto this one by renaming only the 1x1 convs and the codebook
(``vq.importer``). The output is not clamped: upstream viewers clamp to [-1, 1] afterwards,
as ``vq.pixels.float_to_uint8`` does.

Each choice below is one the upstream code makes and a converted checkpoint depends on:
GroupNorm(32, eps=1e-6), swish, asymmetric zero padding before the stride-2 conv,
nearest-neighbour upsampling, single-head attention scaled by C^-1/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vq.config import VQGAN_NORM_GROUPS, VQVAEConfig


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) (Ramachandran et al. 2017), taming's ``nonlinearity``."""
    return F.silu(x)


def norm(channels: int) -> nn.GroupNorm:
    # eps 1e-6, not PyTorch's 1e-5: the checkpoints were trained with taming's Normalize.
    return nn.GroupNorm(VQGAN_NORM_GROUPS, channels, eps=1e-6, affine=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head softmax(q kᵀ / sqrt(C)) v over tokens: (B, N, C) x3 -> (B, N, C)."""
    # SDPA's default scale is 1/sqrt(last dim) = C^-1/2, taming's ``int(c) ** (-0.5)``.
    return F.scaled_dot_product_attention(q, k, v)


class ResnetBlock(nn.Module):
    """skip(x) + conv2(swish(norm2(conv1(swish(norm1(x)))))), skip a 1x1 conv when the
    width changes (taming's ``nin_shortcut``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut: nn.Conv2d | None = None
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))  # dropout (0 in every released config) omitted
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """x + proj_out(attention(q, k, v)) over the H*W positions; q, k, v 1x1 convs of norm(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, c, h * w).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)

        out = attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))  # (B, N, C)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv: H, W -> H/2, W/2 for even sides."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention, then a
    resampling conv (``downsample`` in the encoder, ``upsample`` in the decoder) or none."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, attn: bool, resample: str
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            ResnetBlock(a, b) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if attn else 0))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


class Mid(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class VQGANEncoder(nn.Module):
    """(B, C, H, W) -> (B, code_dim, H/f, W/f): the pre-quantization latent."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths, attn = cfg.widths, set(cfg.attn_levels)
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.stem_width, 3, padding=1)
        ins = (cfg.stem_width, *widths[:-1])
        self.down = nn.ModuleList(
            Level(ins[i], w, cfg.num_res_blocks, i in attn, "down" if i < last else "")
            for i, w in enumerate(widths)
        )
        self.mid = Mid(widths[-1])
        self.norm_out = norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.conv_out(swish(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class VQGANDecoder(nn.Module):
    """(B, code_dim, h, w) -> (B, C, h*f, w*f). ``up[i]`` is level i, run from the last level
    (lowest resolution) to level 0, as in taming."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths, attn = cfg.decoder_widths, set(cfg.attn_levels)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1])
        # Level i takes the width of level i + 1 (the one run before it); the last, the mid's.
        ins = (*widths[1:], widths[-1])
        self.up = nn.ModuleList(
            Level(ins[i], w, cfg.num_res_blocks + 1, i in attn, "up" if i > 0 else "")
            for i, w in enumerate(widths)
        )
        self.norm_out = norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(q)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))
