"""Import VQGAN-family checkpoints (taming-transformers VQGAN, LlamaGen VQ) as artifacts.

    vq-import {llamagen,taming} CHECKPOINT OUT_DIR      (or python -m vq.importer ...)

Reading: ``torch.load(weights_only=True)``, never unrestricted unpickling. Two non-tensor
globals that real files are known to hold are allow-listed, and nothing else:
``argparse.Namespace`` (LlamaGen's training script saves its ``args``) and Lightning's
``ModelCheckpoint`` class reference (old CompVis Lightning checkpoints), which is loaded as an
inert stub class that has no code. The state dict is ``"state_dict"`` for taming (its
``loss.*`` keys, LPIPS and discriminator, are dropped) and, for LlamaGen, the first of
``"ema"``, ``"model"``, ``"state_dict"`` present, the order of LlamaGen's ``vq_demo.py``.

Every hyper-parameter the tensors determine is read from them (``infer_config``): levels,
widths (``ch * ch_mult``), ``ch``, residual blocks per level, which levels have attention,
``z_channels``, code dim, codebook size. taming's ``resolution`` matters only through
``attn_resolutions`` (attention sits at levels whose size ``resolution / 2**i`` is listed),
so the levels that hold ``attn`` weights say all it decides. What no tensor says is whether
the lookup normalises: LlamaGen's default ``codebook_l2_norm=True`` is assumed for
``llamagen``, plain L2 for ``taming``; ``--codebook-norm`` overrides.

A key that the inferred model lacks or a shape it does not expect is an error naming the
upstream key and both shapes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from vq.config import ALLOWED_F, CodebookNorm, VQConfig, VQVAEConfig
from vq.model import VQVAE

Format = Literal["llamagen", "taming"]
FORMATS: tuple[str, ...] = get_args(Format)
DEFAULT_CODEBOOK_NORM: dict[str, CodebookNorm] = {"llamagen": "l2", "taming": "none"}
# Where each format keeps its weights, in the order tried.
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "llamagen": ("ema", "model", "state_dict"),
    "taming": ("state_dict",),
}


class CheckpointImportError(ValueError):
    """A checkpoint cannot be read or does not fit the format it was given as."""


class _LightningCallbackStub:
    """Stands in for ``ModelCheckpoint`` when a checkpoint pickles the class itself (as a
    key of its ``callbacks`` dict): it is never called, and has no behaviour to run."""


_CALLBACK_PATHS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)


def safe_globals() -> list[Any]:
    """The allow-list for ``torch.load(weights_only=True)`` (see the module docstring)."""
    return [argparse.Namespace, *((_LightningCallbackStub, p) for p in _CALLBACK_PATHS)]


def read_checkpoint(path: str | Path, fmt: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a ``fmt`` checkpoint file (``key`` overrides where it is looked up)."""
    if fmt not in FORMATS:
        raise CheckpointImportError(f"format={fmt!r} is not allowed; choose one of {list(FORMATS)}")
    p = Path(path)
    if not p.is_file():
        raise CheckpointImportError(f"checkpoint {str(p)!r} does not exist")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise CheckpointImportError(
            f"checkpoint {str(p)!r} could not be read with weights_only=True (truncated, not a "
            f"PyTorch file, or it pickles code): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointImportError(
            f"checkpoint {str(p)!r} holds a {type(ckpt).__name__}, not a dict"
        )
    keys = (key,) if key is not None else STATE_KEYS[fmt]
    found = next((k for k in keys if isinstance(ckpt.get(k), Mapping)), None)
    if found is None:
        raise CheckpointImportError(
            f"checkpoint {str(p)!r} has no state dict under {list(keys)}; its top-level keys "
            f"are {sorted(map(str, ckpt))[:20]} (choose one with --key)"
        )
    state = strip_wrapper_prefix(dict(ckpt[found]))
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(
            f"checkpoint {str(p)!r}: {found!r} holds non-tensors at {bad[:5]}"
        )
    return state


# Prefixes a wrapper adds to every key: DistributedDataParallel ("module."), torch.compile
# ("_orig_mod."). Stripped only when every key has them.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def llamagen_to_taming(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LlamaGen keys to taming's layout. The decoder index is reversed: LlamaGen's
    ``decoder.conv_blocks.{k}`` (processing order) is taming's ``decoder.up.{L-1-k}``
    (level index). ``quantize.codebook_used`` (a training statistic) is dropped."""
    dec = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))}
    num_levels = max(dec) + 1 if dec else 0
    mid = {"0": "block_1", "1": "attn_1", "2": "block_2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "quantize.codebook_used":
            continue
        new = re.sub(
            r"^(encoder|decoder)\.mid\.([012])\.", lambda m: f"{m[1]}.mid.{mid[m[2]]}.", key
        )
        new = re.sub(r"^encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1.", new)
        new = re.sub(
            r"^decoder\.conv_blocks\.(\d+)\.",
            lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.",
            new,
        )
        new = re.sub(r"^(encoder\.down|decoder\.up)\.(\d+)\.res\.", r"\1.\2.block.", new)
        out[new] = value
    return out


def taming_model_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """taming's ``VQModel`` state dict without the training loss (``loss.*``)."""
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


# Upstream (taming layout) -> ours: the 1x1 convs live in our encoder/decoder, the codebook
# in the quantizer; every other key is the same.
_RENAMES = (
    ("quant_conv.", "encoder.quant_conv."),
    ("post_quant_conv.", "decoder.post_quant_conv."),
    ("quantize.embedding.weight", "quantizer.codebook"),
)


def _ours(key: str) -> str:
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _require(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointImportError(
            f"checkpoint has no {key!r}: not a VQGAN-family VQ model state dict"
        )
    value = state[key]
    if value.ndim != ndim:
        raise CheckpointImportError(
            f"{key} has shape {tuple(value.shape)}; expected {ndim} dimensions"
        )
    return value


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def infer_config(state: Mapping[str, torch.Tensor], codebook_norm: CodebookNorm) -> VQVAEConfig:
    """The ``architecture="vqgan"`` config a taming-layout state dict determines."""
    if "quantize.used" in state:
        raise CheckpointImportError(
            "quantize.used is present: the checkpoint remaps code indices (VectorQuantizer2 "
            "remap=...), which vq-import does not support"
        )
    if "quantize.embed.weight" in state or "quantize.proj.weight" in state:
        raise CheckpointImportError(
            "quantize.embed / quantize.proj keys: a GumbelQuantize or EMA quantizer, which "
            "vq-import does not support (only VectorQuantizer2 / LlamaGen's VectorQuantizer)"
        )
    conv_in = _require(state, "encoder.conv_in.weight", 4)  # (ch, in_channels, 3, 3)
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointImportError(
            f"encoder levels {levels} are not 0..L-1 (encoder.down.{{i}} keys)"
        )
    n = len(levels)
    if 2 ** (n - 1) not in ALLOWED_F["vqgan"]:
        raise CheckpointImportError(
            f"{n} encoder levels mean f={2 ** (n - 1)}; supported f: {list(ALLOWED_F['vqgan'])}"
        )
    blocks = _indices(state, r"encoder\.down\.0\.block\.(\d+)\.")
    if not blocks:
        raise CheckpointImportError(
            "encoder.down.0 has no residual blocks (encoder.down.0.block.{j})"
        )
    widths = [
        int(_require(state, f"encoder.down.{i}.block.0.conv1.weight", 4).shape[0]) for i in levels
    ]
    dec_widths = [
        int(_require(state, f"decoder.up.{i}.block.0.conv1.weight", 4).shape[0]) for i in levels
    ]
    enc_attn = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state]
    dec_attn = [i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in state]
    if enc_attn != dec_attn:
        raise CheckpointImportError(
            f"attention sits at encoder levels {enc_attn} but decoder levels {dec_attn}; "
            "vq's VQGAN places it at the same levels in both"
        )
    codebook = _require(state, "quantize.embedding.weight", 2)  # (K, E)
    quant_conv = _require(state, "quant_conv.weight", 4)  # (E, z_channels, 1, 1)
    conv_out = _require(state, "encoder.conv_out.weight", 4)  # (z_channels, C, 3, 3)
    try:
        return VQVAEConfig(
            architecture="vqgan",
            in_channels=int(conv_in.shape[1]),
            f=2 ** (n - 1),
            widths=tuple(widths),
            decoder_widths=tuple(dec_widths),
            num_res_blocks=len(blocks),
            stem_width=int(conv_in.shape[0]),
            z_channels=int(conv_out.shape[0]),
            attn_levels=tuple(enc_attn),
            code_dim=int(quant_conv.shape[0]),
            quantizer=VQConfig(codebook_size=int(codebook.shape[0]), codebook_norm=codebook_norm),
        )
    except ValueError as exc:
        raise CheckpointImportError(
            f"the checkpoint's shapes give an unsupported model: {exc}"
        ) from None


def load_into_model(state: Mapping[str, torch.Tensor], config: VQVAEConfig) -> VQVAE:
    """A ``VQVAE(config)`` holding ``state`` (taming layout); every key must match."""
    model = VQVAE(config)
    expected = model.state_dict()
    upstream = {_ours(k): k for k in state}
    missing = sorted(set(expected) - set(upstream))
    unexpected = sorted(upstream[k] for k in set(upstream) - set(expected))
    problems: list[str] = []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}")
    if missing:
        problems.append(f"missing keys (ours) {missing[:8]}")
    for ours in sorted(set(expected) & set(upstream)):
        got, want = tuple(state[upstream[ours]].shape), tuple(expected[ours].shape)
        if got != want:
            problems.append(f"{upstream[ours]}: checkpoint {got} vs inferred model {want}")
    if problems:
        raise CheckpointImportError(
            "checkpoint does not match the model its shapes imply: " + "; ".join(problems)
        )
    model.load_state_dict({k: state[upstream[k]].float() for k in expected}, strict=True)
    return model.eval()


def convert(
    fmt: str, state: Mapping[str, torch.Tensor], codebook_norm: CodebookNorm | None = None
) -> VQVAE:
    """A ``fmt`` state dict as our model (eval mode)."""
    if fmt not in FORMATS:
        raise CheckpointImportError(f"format={fmt!r} is not allowed; choose one of {list(FORMATS)}")
    taming = llamagen_to_taming(state) if fmt == "llamagen" else taming_model_state(state)
    norm = DEFAULT_CODEBOOK_NORM[fmt] if codebook_norm is None else codebook_norm
    return load_into_model(taming, infer_config(taming, norm))


def import_checkpoint(
    fmt: str,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    codebook_norm: CodebookNorm | None = None,
    key: str | None = None,
) -> Path:
    """``vq-import``'s work: read, convert and save as an artifact; returns the directory."""
    from vq.artifact import save_tokenizer  # the artifact module imports vq.model, as we do
    from vq.hub import write_model_card

    model = convert(fmt, read_checkpoint(checkpoint, fmt, key), codebook_norm)
    out = save_tokenizer(
        model,
        out_dir,
        extra={"imported_from": fmt, "source": Path(checkpoint).name},
        recommended_precision="fp32",
    )
    write_model_card(out, base_model_note=f"Converted from a {fmt} checkpoint with vq-import.")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vq-import",
        description="Convert a LlamaGen VQ (.pt) or taming-transformers VQGAN (.ckpt) checkpoint "
        "into a tokenizer artifact (config.json + model.safetensors) for vq.load_tokenizer and "
        "vq-serve. Hyper-parameters are inferred from the tensors.",
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("checkpoint", help="the checkpoint file")
    parser.add_argument("out_dir", help="artifact directory to write (created if missing)")
    parser.add_argument(
        "--codebook-norm",
        choices=get_args(CodebookNorm),
        default=None,
        help="lookup on L2-normalised codes ('l2') or plain ('none'); default: l2 for "
        "llamagen (codebook_l2_norm=True), none for taming",
    )
    parser.add_argument(
        "--key", default=None, help="top-level entry holding the state dict (default: per format)"
    )
    args = parser.parse_args(argv)
    try:
        out = import_checkpoint(
            args.format,
            args.checkpoint,
            args.out_dir,
            codebook_norm=args.codebook_norm,
            key=args.key,
        )
    except ValueError as exc:
        print(f"vq-import: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote tokenizer artifact {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
