"""Convolutional VQ-VAE: encoder, quantizer, decoder (van den Oord et al. 2017, "Neural
Discrete Representation Learning", §3; layout after the VQGAN encoder/decoder of Esser et
al. 2021, without the attention blocks and the GAN loss).

    image (B, C, H, W) -> encoder -> 1x1 conv -> z (B, D, H/f, W/f) -> quantizer
      -> 1x1 conv -> decoder -> recon (B, C, H, W)

The network is fully convolutional, so any H, W divisible by f work.
Configuration lives in two dataclasses, ``QuantizerConfig`` and ``VQVAEConfig``, that
round-trip through JSON (``to_dict``/``from_dict``) so an artifact can rebuild the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from vq.quantizers import FSQ, VectorQuantizer
from vq.types import Quantizer, QuantizerOutput

QuantizerKind = Literal["vq", "fsq"]
CodebookKind = Literal["plain", "linear"]
GradEstimator = Literal["ste", "rotation"]
CodebookUpdate = Literal["gradient", "ema"]
CodebookInit = Literal["uniform", "data"]

ALLOWED_F = (4, 8, 16)

# FSQ paper (Mentzer et al. 2024), Table 1: recommended levels per codebook size.
FSQ_RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}

# Code dim of a VQ codebook when none is given. Low-dimensional codes keep the nearest-code
# search cheap and are known to improve codebook usage (Yu et al. 2022, ViT-VQGAN, §3.2).
DEFAULT_VQ_CODE_DIM = 32

# Channel width per resolution level, highest resolution first; f = 2 ** (levels - 1).
# Modest on purpose: the shipped f=8 tokenizer must train on a CPU and stay < 10 MB.
_DEFAULT_WIDTH_LADDER = (32, 64, 128, 128, 128)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}")


def _check_float(name: str, value: Any, *, low: float, high: float, open_low: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(
            f"{name}={value!r} is not allowed; expected a number in {bracket}{low}, {high}]"
        )


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r} is not allowed; expected a list of integers")
    return tuple(value)


def _from_mapping(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from ``data``; unknown keys are an error, not ignored."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed fields: {names}")
    return dict(data)


@dataclass
class QuantizerConfig:
    """Which quantizer sits between encoder and decoder (docs/design.md, "Architecture").

    kind="vq" uses ``codebook``, ``grad_estimator``, ``beta``, ``codebook_update``,
    ``ema_decay``, ``dead_code_threshold`` and ``codebook_init`` (plain codebooks: "uniform"
    or "data", see ``vq.VectorQuantizer``); SimVQ is ``codebook="linear"``.
    kind="fsq" uses ``levels``; left unset they are the FSQ paper's recommendation for
    ``codebook_size``, and when set ``codebook_size`` must equal their product.
    """

    kind: QuantizerKind = "vq"
    codebook_size: int = 1024
    codebook: CodebookKind = "plain"
    grad_estimator: GradEstimator = "ste"
    beta: float = 0.25
    codebook_update: CodebookUpdate = "gradient"
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.0
    codebook_init: CodebookInit = "uniform"
    levels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_choice("quantizer.kind", self.kind, get_args(QuantizerKind))
        _check_int("quantizer.codebook_size", self.codebook_size, minimum=2)
        _check_choice("quantizer.codebook", self.codebook, get_args(CodebookKind))
        _check_choice("quantizer.grad_estimator", self.grad_estimator, get_args(GradEstimator))
        _check_choice("quantizer.codebook_update", self.codebook_update, get_args(CodebookUpdate))
        _check_choice("quantizer.codebook_init", self.codebook_init, get_args(CodebookInit))
        _check_float("quantizer.beta", self.beta, low=0.0, high=math.inf)
        _check_float("quantizer.ema_decay", self.ema_decay, low=0.0, high=1.0, open_low=True)
        _check_float(
            "quantizer.dead_code_threshold", self.dead_code_threshold, low=0.0, high=math.inf
        )
        if self.codebook_update == "ema" and self.codebook != "plain":
            raise ValueError(
                "quantizer.codebook_update='ema' needs codebook='plain'; a linear (SimVQ) "
                "codebook learns its map W by gradient"
            )
        if self.codebook_init == "data" and self.codebook != "plain":
            raise ValueError(
                "quantizer.codebook_init='data' needs codebook='plain'; a linear (SimVQ) "
                "codebook keeps its random C frozen"
            )
        if self.kind == "vq":
            if self.levels is not None:
                raise ValueError("quantizer.levels is for kind='fsq'; leave it unset for kind='vq'")
            return
        # FSQ has no codebook, no estimator choice and no codebook loss: VQ options that differ
        # from their defaults are a misconfiguration, not something to ignore silently.
        for name, default in (
            ("codebook", "plain"),
            ("grad_estimator", "ste"),
            ("codebook_update", "gradient"),
            ("codebook_init", "uniform"),
        ):
            if getattr(self, name) != default:
                raise ValueError(
                    f"quantizer.{name}={getattr(self, name)!r} has no meaning for kind='fsq'"
                )
        if self.levels is None:
            if self.codebook_size not in FSQ_RECOMMENDED_LEVELS:
                raise ValueError(
                    f"quantizer.codebook_size={self.codebook_size} has no recommended FSQ levels; "
                    f"choose one of {sorted(FSQ_RECOMMENDED_LEVELS)} or set quantizer.levels"
                )
            self.levels = FSQ_RECOMMENDED_LEVELS[self.codebook_size]
            return
        levels = _int_tuple("quantizer.levels", self.levels)
        if not levels or not all(_is_int(n) and n >= 2 for n in levels):
            raise ValueError(
                f"quantizer.levels={list(levels)} is not allowed; expected a non-empty list of integers >= 2"
            )
        self.levels = levels
        if math.prod(levels) != self.codebook_size:
            raise ValueError(
                f"quantizer.codebook_size={self.codebook_size} does not match levels {list(levels)} "
                f"(product {math.prod(levels)}); set codebook_size={math.prod(levels)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["levels"] = None if self.levels is None else list(self.levels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizerConfig:
        return cls(**_from_mapping(cls, data))


@dataclass
class VQVAEConfig:
    """Architecture of the VQ-VAE.

    f: downsampling factor, one of 4, 8, 16 (the code grid is H/f x W/f).
    widths: channels per resolution level, highest resolution first; exactly log2(f) + 1
        entries. Unset: (32, 64, 128, 128, 128) cut to that length.
    num_res_blocks: residual blocks per resolution level, in the encoder and in the decoder.
    code_dim: channels of z, the quantizer's input. Unset: 32 for kind="vq",
        len(levels) for kind="fsq" (set it for FSQ and the quantizer projects).
    """

    in_channels: int = 3
    f: int = 8
    widths: tuple[int, ...] | None = None
    num_res_blocks: int = 1
    code_dim: int | None = None
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.quantizer, Mapping):
            self.quantizer = QuantizerConfig.from_dict(self.quantizer)
        if not isinstance(self.quantizer, QuantizerConfig):
            raise ValueError(
                f"quantizer must be a QuantizerConfig or a mapping, got {self.quantizer!r}"
            )
        _check_int("in_channels", self.in_channels, minimum=1)
        _check_choice("f", self.f, ALLOWED_F)
        _check_int("num_res_blocks", self.num_res_blocks, minimum=0)
        n_levels = self.num_levels
        if self.widths is None:
            self.widths = _DEFAULT_WIDTH_LADDER[:n_levels]
        widths = _int_tuple("widths", self.widths)
        if len(widths) != n_levels or not all(_is_int(w) and w >= 1 for w in widths):
            raise ValueError(
                f"widths={list(widths)} is not allowed for f={self.f}: expected log2(f) + 1 = "
                f"{n_levels} positive integers, one per resolution level"
            )
        self.widths = widths
        if self.code_dim is None:
            levels = self.quantizer.levels
            self.code_dim = len(levels) if levels is not None else DEFAULT_VQ_CODE_DIM
        _check_int("code_dim", self.code_dim, minimum=1)

    @property
    def num_levels(self) -> int:
        return int(math.log2(self.f)) + 1

    @property
    def resolved_widths(self) -> tuple[int, ...]:
        assert self.widths is not None  # set in __post_init__
        return tuple(self.widths)

    @property
    def resolved_code_dim(self) -> int:
        assert self.code_dim is not None  # set in __post_init__
        return self.code_dim

    def to_dict(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "f": self.f,
            "widths": list(self.resolved_widths),
            "num_res_blocks": self.num_res_blocks,
            "code_dim": self.code_dim,
            "quantizer": self.quantizer.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQVAEConfig:
        kwargs = _from_mapping(cls, data)
        if "quantizer" in kwargs:
            kwargs["quantizer"] = QuantizerConfig.from_dict(kwargs["quantizer"])
        return cls(**kwargs)


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    """The quantizer described by ``cfg`` for encoder vectors of ``dim`` channels."""
    if cfg.kind == "fsq":
        assert cfg.levels is not None  # resolved in QuantizerConfig.__post_init__
        # FSQ only needs its own projection when z is wider than the number of levels.
        return FSQ(cfg.levels, dim=None if dim == len(cfg.levels) else dim)
    return VectorQuantizer(
        dim,
        cfg.codebook_size,
        codebook=cfg.codebook,
        grad_estimator=cfg.grad_estimator,
        beta=cfg.beta,
        codebook_update=cfg.codebook_update,
        ema_decay=cfg.ema_decay,
        dead_code_threshold=cfg.dead_code_threshold,
        codebook_init=cfg.codebook_init,
    )


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
        widths = cfg.resolved_widths
        self.stem = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [ResBlock(width) for _ in range(cfg.num_res_blocks)]
            if i + 1 < len(widths):
                layers.append(Downsample(width, widths[i + 1]))
        self.blocks = nn.Sequential(*layers)
        self.norm_out = _norm(widths[-1])
        self.pre_quant = nn.Conv2d(widths[-1], cfg.resolved_code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.pre_quant(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, code_dim, h, w) -> (B, C, h*f, w*f), the encoder mirrored."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = cfg.resolved_widths
        self.post_quant = nn.Conv2d(cfg.resolved_code_dim, widths[-1], 1)
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
        return self.conv_out(F.silu(self.norm_out(h)))


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
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(config.quantizer, config.resolved_code_dim)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def code_dim(self) -> int:
        return self.config.resolved_code_dim

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
