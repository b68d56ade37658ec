"""Vector quantization on the unit sphere: input and codebook rows L2-normalised.

ViT-VQGAN (Yu et al. 2022, "Vector-quantized Image Modeling with Improved VQGAN", §3.2)
normalises both before the nearest-code search, which makes it a search by cosine
similarity; LlamaGen's VQ tokenizer (Sun et al. 2024, ``codebook_l2_norm=True``) does the same.
The quantized output is the *normalised* codebook row, so the stored weights need not be
unit-norm (and in released checkpoints they are not).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vq import functional as VF
from vq.config import GradEstimator
from vq.quantizers import _check_indices, _codes_to_channel_first, _flatten, vq_config
from vq.search import nearest_code
from vq.types import Quantizer, QuantizerOutput


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (``F.normalize``, eps 1e-12, as LlamaGen)."""
    return F.normalize(x, p=2.0, dim=-1)


class L2NormVectorQuantizer(Quantizer):
    """A plain (K, D) codebook searched and looked up on the unit sphere.

    forward: e = unit(z rows), c = unit(codebook); index = argmin ||e - c_k||² (first
    minimum); output ``grad_estimator(e, c[index])``; loss ``||sg(e) - q||² + β ||e - sg(q)||²``
    on the normalised vectors (LlamaGen's training loss). decode: unit(codebook)[ids].

    Options: ``VQConfig`` fields as keywords (``grad_estimator``, ``beta``,
    ``search_max_bytes``), defaults there; ``codebook_norm`` is "l2", and the config rejects
    the options a unit-sphere codebook does not support (EMA, dead-code restart, data init,
    a linear codebook).
    """

    def __init__(self, dim: int, codebook_size: int, **options: Any) -> None:
        config = vq_config(codebook_size, options, norm="l2")
        super().__init__(dim, config.codebook_size)
        self.config = config
        self.grad_estimator: GradEstimator = config.grad_estimator
        self.beta = float(config.beta)
        self.search_max_bytes = int(config.search_max_bytes)
        init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.codebook = nn.Parameter(init)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, codebook_norm='l2', "
            f"grad_estimator={self.grad_estimator!r}, beta={self.beta}"
        )

    def unit_codebook(self) -> torch.Tensor:
        """The (K, D) codebook the search and the lookup use: every row at unit norm."""
        return unit_rows(self.codebook.float())

    def get_codebook(self) -> torch.Tensor:
        with torch.no_grad():
            return self.unit_codebook()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, D, *spatial) -> QuantizerOutput(quantized, indices (B, *spatial), loss)."""
        rows, unflatten = _flatten(z, self.dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            e = unit_rows(rows.float())  # (N, D)
            codebook = self.unit_codebook()  # (K, D)
            indices = nearest_code(e, codebook.detach(), max_bytes=self.search_max_bytes)
            q = F.embedding(indices, codebook)  # (N, D)
            loss = VF.vq_loss(e, q, self.beta)
            estimator = VF.rotate_to if self.grad_estimator == "rotation" else VF.ste
            out = estimator(e, q)
        quantized = unflatten(out).to(z.dtype)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), loss)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) integer ids -> (B, D, *spatial) float32 unit-norm codes."""
        _check_indices(indices, self.codebook_size)
        with torch.no_grad():
            return _codes_to_channel_first(F.embedding(indices.long(), self.unit_codebook()))
