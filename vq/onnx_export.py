"""ONNX graphs of a tokenizer: ``encoder.onnx`` (images -> int64 codes) and ``decoder.onnx``
(codes -> uint8 images), with dynamic batch and spatial axes.

The quantizer is written out as plain tensor arithmetic so the graph needs no custom op:
nearest-code search as ``argmin_k (||c_k||² - 2 e·c_k)`` (one MatMul and an ArgMin over the
codebook, which ONNX resolves to the first minimum as ``torch.argmin`` does), the L2-normalised
lookup with the same on unit vectors, SimVQ with its effective codebook ``W(C)`` folded into
a constant, and FSQ as bound / round / mixed-radix arithmetic (``vq.functional``). Images
use ``vq.pixels``' conversions, so the graphs take and return what ``vq.Tokenizer`` does.

Codes agree with PyTorch's except where two codes are (near-)equidistant: the tiled search of
``vq.search`` and a MatMul sum the same products in different orders.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vq import functional as VF
from vq.artifact import CONFIG_NAME, record_files
from vq.model import VQVAE
from vq.pixels import float_to_uint8, uint8_to_float
from vq.quantizers import FSQ, VectorQuantizer

InputDtype = Literal["uint8", "float"]
ENCODER_NAME = "encoder.onnx"
DECODER_NAME = "decoder.onnx"
OPSET = 17


class _Search(nn.Module):
    """(B, D, h, w) latents -> (B, h, w) ids of the nearest row of a constant (K, D) codebook,
    the latents first mapped as the codebook component maps them (unit rows for l2)."""

    codebook_t: torch.Tensor  # (D, K) buffer
    c_sq: torch.Tensor  # (K,) buffer

    def __init__(
        self, codebook: torch.Tensor, transform_input: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.register_buffer("codebook_t", codebook.t().contiguous())  # (D, K)
        self.register_buffer("c_sq", (codebook * codebook).sum(dim=1))  # (K,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e = self.transform_input(z.permute(0, 2, 3, 1))  # (B, h, w, D)
        return (self.c_sq - 2.0 * (e @ self.codebook_t)).argmin(dim=-1)  # (B, h, w)


class _FSQIndex(nn.Module):
    """(B, D, h, w) latents -> (B, h, w) FSQ ids (projection, bound, round, mixed radix)."""

    def __init__(self, fsq: FSQ) -> None:
        super().__init__()
        self.fsq = fsq

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.permute(0, 2, 3, 1)  # (B, h, w, D)
        if self.fsq.project_in is not None:
            h = self.fsq.project_in(h)
        _, level_ids = VF.fsq_quantize(h, self.fsq._levels)
        return VF.fsq_levels_to_index(level_ids, self.fsq._basis)


class _Lookup(nn.Module):
    """(B, h, w) ids -> (B, D, h, w) codes from a constant (K, D) table."""

    table: torch.Tensor  # (K, D) buffer

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.contiguous())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table[codes].permute(0, 3, 1, 2)


class _FSQCodes(nn.Module):
    def __init__(self, fsq: FSQ) -> None:
        super().__init__()
        self.fsq = fsq

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        level_ids = VF.fsq_index_to_levels(codes, self.fsq._levels, self.fsq._basis)
        out = VF.fsq_levels_to_codes(level_ids, self.fsq._levels)  # (B, h, w, d)
        if self.fsq.project_out is not None:
            out = self.fsq.project_out(out)
        return out.permute(0, 3, 1, 2)


def _quantizer_graphs(model: VQVAE) -> tuple[nn.Module, nn.Module]:
    q = model.quantizer
    if isinstance(q, FSQ):
        return _FSQIndex(q), _FSQCodes(q)
    if isinstance(q, VectorQuantizer):
        codebook = q.get_codebook().float()  # unit rows for l2; W(C) for SimVQ
        return _Search(codebook, q.book.transform_input), _Lookup(codebook)
    raise ValueError(f"no ONNX export for quantizer {type(q).__name__}")


class EncoderGraph(nn.Module):
    """uint8 images (B, C, H, W) (or float in [-1, 1]) -> int64 codes (B, H/f, W/f)."""

    def __init__(self, model: VQVAE, input_dtype: InputDtype = "uint8") -> None:
        super().__init__()
        self.encoder = model.encoder
        self.search, _ = _quantizer_graphs(model)
        self.uint8 = input_dtype == "uint8"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = uint8_to_float(images) if self.uint8 else images
        return self.search(self.encoder(x))


class DecoderGraph(nn.Module):
    """int64 codes (B, h, w) -> uint8 images (B, C, h*f, w*f), as ``Tokenizer.decode``."""

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        _, self.lookup = _quantizer_graphs(model)
        self.decoder = model.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return float_to_uint8(self.decoder(self.lookup(codes)))


def export_onnx(
    model: VQVAE, out_dir: str | Path, *, input_dtype: InputDtype = "uint8"
) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into ``out_dir``.

    When ``out_dir`` is the artifact of this very model (``vq-export --onnx ARTIFACT
    ARTIFACT``), their checksums are added to its config.json so that loading verifies them
    (``vq.artifact.read_artifact_file``); graphs written into another model's artifact are
    not recorded, and loading that artifact refuses them."""
    if input_dtype not in ("uint8", "float"):
        raise ValueError(f"input_dtype={input_dtype!r} is not allowed; choose 'uint8' or 'float'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    f, c = model.f, model.config.in_channels
    dtype = torch.uint8 if input_dtype == "uint8" else torch.float32
    images = torch.zeros(1, c, 2 * f, 3 * f, dtype=dtype)
    codes = torch.zeros(1, 2, 3, dtype=torch.long)
    enc, dec = out / ENCODER_NAME, out / DECODER_NAME
    # The TorchScript-based exporter: torch.export's rejected the dynamic spatial axes of these
    # graphs ("Invalid ranges") in torch 2.13. Its deprecation notice and its note that it
    # cannot fold a strided Slice are about the exporter, not the graph: silenced here only.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message="The feature will be removed", module="torch")
        # GroupNorm's batch-size sanity check (torch.nn.functional) is traced as a constant.
        warnings.filterwarnings(
            "ignore",
            message="Converting a tensor to a Python boolean",
            module="torch.nn.functional",
        )
        torch.onnx.export(
            EncoderGraph(model, input_dtype).eval(),
            (images,),
            str(enc),
            input_names=["images"],
            output_names=["codes"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "codes": {0: "batch", 1: "h", 2: "w"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            DecoderGraph(model).eval(),
            (codes,),
            str(dec),
            input_names=["codes"],
            output_names=["images"],
            dynamic_axes={
                "codes": {0: "batch", 1: "h", 2: "w"},
                "images": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    if (out / CONFIG_NAME).is_file() and not record_files(out, (ENCODER_NAME, DECODER_NAME), model):
        warnings.warn(
            f"{enc.name} and {dec.name} were written into {out}, an artifact of another model "
            "(or one that does not load): they are not recorded in its config.json, and "
            "loading the artifact will refuse them",
            stacklevel=2,
        )
    return enc, dec
