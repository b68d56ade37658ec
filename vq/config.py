"""The configuration tree, validated once: one frozen dataclass per quantizer kind and the model.

    VQVAEConfig
      architecture   "vqvae" (ours) or "vqgan" (taming / LlamaGen encoder-decoder, vq.vqgan)
      quantizer      VQConfig (kind="vq") | FSQConfig (kind="fsq")

Every quantizer option is defined here and only here (its type, its default, its allowed
values); ``vq.quantizers`` validates its constructor arguments through ``VQConfig`` and
``vq.model.build_quantizer`` builds the modules from these configs. All configs round-trip
through JSON (``to_dict`` / ``from_dict``): that is how an artifact rebuilds its network.
Fields added after format 1 artifacts were written have defaults, so older config.json files
load unchanged.

A field holds its value: where a default depends on other options (FSQ's levels, the
network's widths and code dim), the constructor computes it once, so no field is ``None``
and nothing is resolved later. The constructors' arguments are what LightningCLI reads for
``model.vqvae`` (an argument left out there is ``None``: the default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from vq.search import DEFAULT_MAX_BYTES

QuantizerKind = Literal["vq", "fsq"]
CodebookKind = Literal["plain", "linear"]
GradEstimator = Literal["ste", "rotation"]
CodebookUpdate = Literal["gradient", "ema"]
CodebookInit = Literal["uniform", "data", "kaiming"]
# "l2": input rows and codebook rows are L2-normalised before the search and the quantized
# output is the normalised row (ViT-VQGAN, Yu et al. 2022, §3.2; LlamaGen's VQ tokenizer):
# ``vq.quantizers.L2Codebook``, a plain codebook searched on the unit sphere.
CodebookNorm = Literal["none", "l2"]
Architecture = Literal["vqvae", "vqgan"]

# Downsampling factors per architecture: ours is sized for CPU training; the VQGAN family
# ships f4 .. f16 models (and the config format allows one more level each way).
ALLOWED_F: dict[str, tuple[int, ...]] = {"vqvae": (4, 8, 16), "vqgan": (2, 4, 8, 16, 32)}

# VQGAN's GroupNorm has 32 groups everywhere (taming diffusionmodules/model.py, Normalize).
VQGAN_NORM_GROUPS = 32

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
# The VQGAN family's ladder (taming f16: ch 128, ch_mult [1, 1, 2, 2, 4]), cut to length.
_DEFAULT_VQGAN_LADDER = (128, 128, 256, 256, 512, 512)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """ValueError unless ``value`` is one of ``allowed`` (booleans never pass for strings)."""
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_int(name: str, value: Any, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}")


def check_float(
    name: str,
    value: Any,
    *,
    low: float,
    high: float,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high
        )
    if not ok:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(
            f"{name}={value!r} is not allowed; expected a number in {lo}{low}, {high}{hi}"
        )


def _int_tuple(name: str, value: Any, *, minimum: int) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r} is not allowed; expected a list of integers")
    out = tuple(value)
    if not out or not all(_is_int(v) and v >= minimum for v in out):
        raise ValueError(
            f"{name}={list(out)} is not allowed; expected a non-empty list of integers >= {minimum}"
        )
    return out


def _from_mapping(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from ``data``; unknown keys are an error, not ignored."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed fields: {names}")
    return dict(data)


def _init_fields(obj: object, **values: Any) -> None:
    """Set the fields of a frozen dataclass from its own ``__init__`` (each once)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class VQConfig:
    """A nearest-code vector quantizer (``vq.VectorQuantizer``).

    codebook: "plain" (a learned table) or "linear" (SimVQ: frozen C, learned W).
    grad_estimator: "ste" or "rotation" (the rotation trick).
    beta: commitment weight. codebook_update: "gradient" or "ema" (plain only), with
    ``ema_decay`` in [0, 1) and Laplace smoothing ``ema_eps`` > 0. dead_code_threshold:
    restart codes whose EMA hit count falls below it (plain only; 0 = off).
    codebook_init: "uniform", "data" or "kaiming" (plain only). codebook_norm: "none" or "l2"
    (plain only: the table searched by cosine similarity, with every plain option).
    search_max_bytes: memory bound of one nearest-code tile.
    """

    kind: Literal["vq"] = "vq"
    codebook_size: int = 1024
    codebook: CodebookKind = "plain"
    grad_estimator: GradEstimator = "ste"
    beta: float = 0.25
    codebook_update: CodebookUpdate = "gradient"
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_code_threshold: float = 0.0
    codebook_init: CodebookInit = "uniform"
    codebook_norm: CodebookNorm = "none"
    search_max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        check_choice("quantizer.kind", self.kind, ["vq"])
        check_int("quantizer.codebook_size", self.codebook_size, minimum=2)
        check_choice("quantizer.codebook", self.codebook, get_args(CodebookKind))
        check_choice("quantizer.grad_estimator", self.grad_estimator, get_args(GradEstimator))
        check_choice("quantizer.codebook_update", self.codebook_update, get_args(CodebookUpdate))
        check_choice("quantizer.codebook_init", self.codebook_init, get_args(CodebookInit))
        check_choice("quantizer.codebook_norm", self.codebook_norm, get_args(CodebookNorm))
        check_float("quantizer.beta", self.beta, low=0.0, high=math.inf)
        # decay 1 would freeze the averages forever; 0 keeps only the last batch (allowed).
        check_float("quantizer.ema_decay", self.ema_decay, low=0.0, high=1.0, open_high=True)
        check_float("quantizer.ema_eps", self.ema_eps, low=0.0, high=math.inf, open_low=True)
        check_float(
            "quantizer.dead_code_threshold", self.dead_code_threshold, low=0.0, high=math.inf
        )
        check_int("quantizer.search_max_bytes", self.search_max_bytes, minimum=1)
        if self.codebook == "linear":
            for name, default, why in (
                ("codebook_update", "gradient", "SimVQ's codes come from the learned W"),
                ("codebook_init", "uniform", "SimVQ's codebook C is frozen random on purpose"),
                ("codebook_norm", "none", "the l2 lookup is for plain codebooks"),
            ):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"quantizer.{name}={getattr(self, name)!r} needs codebook='plain' "
                        f"({why}); use {name}={default!r}"
                    )
            if self.dead_code_threshold > 0:
                raise ValueError(
                    "quantizer.dead_code_threshold > 0 needs codebook='plain' (SimVQ's frozen "
                    "codes cannot be restarted); use dead_code_threshold=0"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQConfig:
        return cls(**_from_mapping(cls, data))


@dataclass(frozen=True, init=False)
class FSQConfig:
    """Finite scalar quantization (``vq.FSQ``): ``levels`` per channel, ``codebook_size`` their
    product.

    Built from ``levels`` (``codebook_size`` must then equal their product) or from
    ``codebook_size`` alone: the FSQ paper's recommended levels for it, whose product becomes
    ``codebook_size``.
    """

    kind: Literal["fsq"]
    codebook_size: int
    levels: tuple[int, ...]

    def __init__(
        self,
        kind: Literal["fsq"] = "fsq",
        codebook_size: int = 1024,
        levels: tuple[int, ...] | None = None,
    ) -> None:
        check_choice("quantizer.kind", kind, ["fsq"])
        check_int("quantizer.codebook_size", codebook_size, minimum=2)
        if levels is None:
            if codebook_size not in FSQ_RECOMMENDED_LEVELS:
                raise ValueError(
                    f"quantizer.codebook_size={codebook_size} has no recommended FSQ levels; "
                    f"choose one of {sorted(FSQ_RECOMMENDED_LEVELS)} or set quantizer.levels"
                )
            levels = FSQ_RECOMMENDED_LEVELS[codebook_size]
            codebook_size = math.prod(levels)
        levels = _int_tuple("quantizer.levels", levels, minimum=2)
        if math.prod(levels) != codebook_size:
            raise ValueError(
                f"quantizer.codebook_size={codebook_size} does not match levels {list(levels)} "
                f"(product {math.prod(levels)}); set codebook_size={math.prod(levels)}"
            )
        _init_fields(self, kind=kind, codebook_size=codebook_size, levels=levels)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fsq", "codebook_size": self.codebook_size, "levels": list(self.levels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FSQConfig:
        data = dict(data)
        # Format-1 artifacts stored one flat quantizer section with every VQ option: accept
        # those at their VQ defaults (what such files hold), reject any other value.
        defaults = VQConfig()
        for name in [f.name for f in dataclasses.fields(VQConfig)]:
            if name in ("kind", "codebook_size") or name not in data:
                continue
            if data[name] != getattr(defaults, name):
                raise ValueError(f"quantizer.{name}={data[name]!r} has no meaning for kind='fsq'")
            del data[name]
        return cls(**_from_mapping(cls, data))


AnyQuantizerConfig = VQConfig | FSQConfig


def quantizer_config(data: Mapping[str, Any]) -> AnyQuantizerConfig:
    """The config of ``data["kind"]`` ("vq" when absent) from a mapping."""
    if not isinstance(data, Mapping):
        raise ValueError(f"quantizer config expects a mapping, got {type(data).__name__}")
    kind = data.get("kind", "vq")
    check_choice("quantizer.kind", kind, get_args(QuantizerKind))
    return FSQConfig.from_dict(data) if kind == "fsq" else VQConfig.from_dict(data)


def QuantizerConfig(**options: Any) -> AnyQuantizerConfig:  # noqa: N802 - kept name
    """``VQConfig`` or ``FSQConfig`` from keyword options, by ``kind`` (default "vq")."""
    return quantizer_config(options)


def _widths(
    name: str, value: Sequence[int] | None, default: Sequence[int], *, f: int, vqgan: bool
) -> tuple[int, ...]:
    """``value`` (``default`` cut to length when None) checked: one width per level of ``f``."""
    n = int(math.log2(f)) + 1
    widths = tuple(default[:n]) if value is None else _int_tuple(name, value, minimum=1)
    if len(widths) != n:
        raise ValueError(
            f"{name}={list(widths)} is not allowed for f={f}: expected log2(f) + 1 = "
            f"{n} positive integers, one per resolution level"
        )
    if vqgan and any(w % VQGAN_NORM_GROUPS for w in widths):
        raise ValueError(
            f"{name}={list(widths)} is not allowed for architecture='vqgan': GroupNorm"
            f"({VQGAN_NORM_GROUPS}) needs every width to be a multiple of {VQGAN_NORM_GROUPS}"
        )
    return widths


def _attn_levels(value: Sequence[int], num_levels: int) -> tuple[int, ...]:
    levels = () if not value else _int_tuple("attn_levels", value, minimum=0)
    if any(i >= num_levels for i in levels) or len(set(levels)) != len(levels):
        raise ValueError(
            f"attn_levels={list(levels)} is not allowed; expected distinct level indices "
            f"in [0, {num_levels})"
        )
    return tuple(sorted(levels))


@dataclass(frozen=True, init=False)
class VQVAEConfig:
    """Architecture of the tokenizer network. Every field holds the network's value: options
    left out take the defaults below, filled in once by the constructor.

    architecture: "vqvae" (``vq.model``: residual blocks, no attention, stride-2 convs) or
        "vqgan" (``vq.vqgan``: the taming / LlamaGen encoder-decoder with attention).
    f: downsampling factor (the code grid is H/f x W/f).
    widths: channels per resolution level, highest resolution first; exactly log2(f) + 1
        entries (for "vqgan" ``ch * ch_mult``, each divisible by 32). Unset: a ladder per
        architecture, cut to length.
    num_res_blocks: residual blocks per level (the VQGAN decoder has one more per level).
    code_dim: channels of z, the quantizer's input. Unset: 32 for kind="vq",
        len(levels) for kind="fsq" (set it for FSQ and the quantizer projects).
    quantizer: the quantizer's config, or a mapping of one (unset: ``VQConfig()``).

    Settable for "vqgan" only; "vqvae" has the values named (its encoder's first conv has
    widths[0] channels, its last widths[-1], it has no attention and mirrors its widths):
    stem_width: channels of ``conv_in`` (taming's ``ch``); widths[0].
    z_channels: encoder output before ``quant_conv``; widths[-1].
    attn_levels: levels whose residual blocks are each followed by attention, in the encoder
        and the decoder (the middle block always has one); "vqgan": (levels - 1,), the lowest
        resolution, as LlamaGen; "vqvae": (). taming's ``attn_resolutions`` =
        {resolution / 2**i}.
    decoder_widths: the decoder's channels per level; widths.
    """

    in_channels: int
    f: int
    widths: tuple[int, ...]
    num_res_blocks: int
    code_dim: int
    quantizer: AnyQuantizerConfig
    architecture: Architecture
    stem_width: int
    z_channels: int
    attn_levels: tuple[int, ...]
    decoder_widths: tuple[int, ...]

    def __init__(
        self,
        in_channels: int = 3,
        f: int = 8,
        widths: tuple[int, ...] | None = None,
        num_res_blocks: int = 1,
        code_dim: int | None = None,
        quantizer: VQConfig | FSQConfig | None = None,
        architecture: Architecture = "vqvae",
        stem_width: int | None = None,
        z_channels: int | None = None,
        attn_levels: tuple[int, ...] | None = None,
        decoder_widths: tuple[int, ...] | None = None,
    ) -> None:
        q: Any = VQConfig() if quantizer is None else quantizer
        if isinstance(q, Mapping):
            q = quantizer_config(q)
        if not isinstance(q, VQConfig | FSQConfig):
            raise ValueError(f"quantizer must be a VQConfig, an FSQConfig or a mapping, got {q!r}")
        check_choice("architecture", architecture, get_args(Architecture))
        check_int("in_channels", in_channels, minimum=1)
        check_choice("f", f, ALLOWED_F[architecture])
        vqgan = architecture == "vqgan"
        check_int("num_res_blocks", num_res_blocks, minimum=1 if vqgan else 0)
        ladder = _DEFAULT_VQGAN_LADDER if vqgan else _DEFAULT_WIDTH_LADDER
        widths = _widths("widths", widths, ladder, f=f, vqgan=vqgan)
        if code_dim is None:
            code_dim = len(q.levels) if isinstance(q, FSQConfig) else DEFAULT_VQ_CODE_DIM
        check_int("code_dim", code_dim, minimum=1)
        num_levels = len(widths)
        if not vqgan:
            ours: dict[str, Any] = {
                "stem_width": widths[0],
                "z_channels": widths[-1],
                "attn_levels": (),
                "decoder_widths": widths,
            }
            given = {
                "stem_width": stem_width,
                "z_channels": z_channels,
                "attn_levels": attn_levels,
                "decoder_widths": decoder_widths,
            }
            for name, value in given.items():
                value = tuple(value) if isinstance(value, list) else value
                if value is not None and value != ours[name]:
                    raise ValueError(
                        f"{name} is for architecture='vqgan'; leave it unset for 'vqvae' "
                        f"(whose {name} is {ours[name]!r})"
                    )
            stem_width, z_channels = widths[0], widths[-1]
            attn_levels, decoder_widths = (), widths
        else:
            decoder_widths = _widths("decoder_widths", decoder_widths, widths, f=f, vqgan=True)
            stem_width = widths[0] if stem_width is None else stem_width
            z_channels = widths[-1] if z_channels is None else z_channels
            check_int("stem_width", stem_width, minimum=1)
            check_int("z_channels", z_channels, minimum=1)
            if stem_width % VQGAN_NORM_GROUPS:
                raise ValueError(
                    f"stem_width={stem_width} is not allowed for architecture='vqgan': "
                    f"GroupNorm({VQGAN_NORM_GROUPS}) needs a multiple of {VQGAN_NORM_GROUPS}"
                )
            attn_levels = (
                (num_levels - 1,) if attn_levels is None else _attn_levels(attn_levels, num_levels)
            )
        _init_fields(
            self,
            in_channels=in_channels,
            f=f,
            widths=widths,
            num_res_blocks=num_res_blocks,
            code_dim=code_dim,
            quantizer=q,
            architecture=architecture,
            stem_width=stem_width,
            z_channels=z_channels,
            attn_levels=attn_levels,
            decoder_widths=decoder_widths,
        )

    @property
    def num_levels(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "in_channels": self.in_channels,
            "f": self.f,
            "widths": list(self.widths),
            "num_res_blocks": self.num_res_blocks,
            "code_dim": self.code_dim,
            "quantizer": self.quantizer.to_dict(),
            "architecture": self.architecture,
        }
        # "vqvae" has fixed values for the rest (see above): its config.json never held them,
        # and leaving them out keeps every artifact's config hash.
        if self.architecture == "vqgan":
            out |= {
                "stem_width": self.stem_width,
                "z_channels": self.z_channels,
                "attn_levels": list(self.attn_levels),
                "decoder_widths": list(self.decoder_widths),
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VQVAEConfig:
        """The config a ``to_dict`` mapping describes; keys left out or null take the defaults
        (older config.json files)."""
        kwargs = _from_mapping(cls, data)
        if kwargs.get("quantizer") is not None:
            kwargs["quantizer"] = quantizer_config(kwargs["quantizer"])
        return cls(**kwargs)
