"""Inference backends: what the batchers call to encode and decode one stacked batch.

Two implementations of one small interface (``Backend``): ``TorchBackend`` runs the loaded
``vq.Tokenizer`` (fp32 or bf16, ``vq.precision``); ``OnnxRuntimeBackend`` runs the ONNX graphs
of ``vq.onnx_export`` (float32) in onnxruntime InferenceSessions. The service picks one per
process (``VQ_BACKEND``); everything around the two calls (validation, batching, the memory
budget, usage statistics from the codes, the dashboard) is the same for both.

Why two: which one is faster depends on the hardware, the model, the precision and encode
versus decode, so the choice is the operator's; docs/benchmarks/throughput.md has the
measured rows.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

import vq

logger = logging.getLogger("service")

BackendName = Literal["torch", "onnxruntime"]
BACKENDS: tuple[BackendName, ...] = ("torch", "onnxruntime")
ONNXRUNTIME_HINT = "pip install onnxruntime (or the project's [onnx] extra)"


class Backend(Protocol):
    """Encode and decode a stacked batch; called on the inference thread only."""

    name: BackendName
    precision: str  # what the encoder and decoder compute in: "fp32" or "bf16"
    source: str  # where its graphs come from, for the start-up log

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W), H and W multiples of f -> int64 codes (N, H/f, W/f)."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes (N, h, w) in [0, codebook_size) -> uint8 images (N, 3, h*f, w*f)."""
        ...


def check_backend(value: Any) -> BackendName:
    """``value`` as a backend name; ValueError naming what is allowed otherwise."""
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in BACKENDS:
        raise ValueError(f"backend={value!r} is not allowed; choose one of {list(BACKENDS)}")
    return name  # type: ignore[no-any-return]


class TorchBackend:
    name: BackendName = "torch"

    def __init__(self, tokenizer: vq.Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.precision: str = tokenizer.precision
        self.source = "vq.Tokenizer"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(images)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(codes)


def import_onnxruntime() -> Any:
    """The onnxruntime module, or RuntimeError naming the fix (it is an optional dependency)."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError(
            f"backend 'onnxruntime' was asked for but onnxruntime is not installed; "
            f"{ONNXRUNTIME_HINT}, or use backend 'torch'"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend:
    """float32 ONNX graphs (uint8 images -> int64 codes, codes -> uint8 images) on the CPU.

    Uses ``encoder.onnx`` / ``decoder.onnx`` from the artifact directory when both are there
    (``vq-export --onnx ARTIFACT ARTIFACT`` writes them and records their checksums), read
    once and verified against config.json like the weights (``vq.artifact.read_artifact_file``:
    an unlisted, changed or linked-in graph is refused); else exports the tokenizer's
    verified model into a temporary directory, removed once the sessions hold the graphs.
    """

    name: BackendName = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        tokenizer: vq.Tokenizer,
        artifact_dir: Path,
        *,
        threads: int | None = None,
        allow_unverified: bool = False,
    ) -> None:
        ort = import_onnxruntime()
        from vq.artifact import read_artifact_file
        from vq.onnx_export import DECODER_NAME, ENCODER_NAME, export_onnx

        # onnxruntime's CPU memory arena stays on: without it the start-up probe sees none of
        # a decode's memory (docs/operations.md, "Backend", has the measurement).
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        enc, dec = artifact_dir / ENCODER_NAME, artifact_dir / DECODER_NAME
        if os.path.lexists(enc) and os.path.lexists(dec):
            self.source = f"{enc.name} and {dec.name} in {artifact_dir}, verified"
            graphs = [
                read_artifact_file(
                    artifact_dir, tokenizer.metadata, p.name, allow_unverified=allow_unverified
                )
                for p in (enc, dec)
            ]
            self._open(ort, options, enc, *graphs)
        else:
            self.source = "exported at start-up from the artifact's verified weights"
            with tempfile.TemporaryDirectory(prefix="vq-onnx-") as tmp:
                export_onnx(tokenizer.model, tmp)
                graphs = [(Path(tmp) / n).read_bytes() for n in (ENCODER_NAME, DECODER_NAME)]
            self._open(ort, options, enc, *graphs)

    def _open(self, ort: Any, options: Any, enc: Path, encoder: bytes, decoder: bytes) -> None:
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(encoder, options, providers=providers)
        self.decoder = ort.InferenceSession(decoder, options, providers=providers)
        given = self.encoder.get_inputs()[0].type
        if given != "tensor(uint8)":
            # vq-export --onnx-input float writes graphs of float images in [-1, 1].
            raise vq.ArtifactError(
                f"{enc} takes {given}, not uint8 images; re-export it with "
                "vq-export --onnx (default --onnx-input uint8) or remove it"
            )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.numpy(), dtype=np.uint8)
        (codes,) = self.encoder.run(None, {"images": x})
        return torch.from_numpy(codes.astype(np.int64, copy=False))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(codes.numpy(), dtype=np.int64)
        (images,) = self.decoder.run(None, {"codes": x})
        return torch.from_numpy(images)


def make_backend(
    name: BackendName,
    tokenizer: vq.Tokenizer,
    artifact_dir: Path,
    *,
    threads: int | None,
    allow_unverified: bool = False,
) -> Backend:
    if name == "onnxruntime":
        return OnnxRuntimeBackend(
            tokenizer, artifact_dir, threads=threads, allow_unverified=allow_unverified
        )
    return TorchBackend(tokenizer)
