"""Types shared by every quantizer (docs/design.md, "Architecture")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import nn


class QuantizerOutput(NamedTuple):
    """What every quantizer's ``forward`` returns.

    quantized: (B, D, *spatial) what the decoder sees; gradients reach z through it.
    indices:   (B, *spatial) int64 code ids in [0, codebook_size).
    loss:      scalar, the quantizer's own loss (0 for FSQ).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


class Quantizer(nn.Module, ABC):
    """One interface for VQ (STE / rotation, plain / SimVQ codebook) and FSQ.

    Every quantizer has a channel count ``dim`` (D of the encoder output it takes) and a
    number of codes ``codebook_size`` (K), fixed at construction; subclasses add their own
    options to ``extra_repr`` after these two.
    """

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self._dim = dim
        self._codebook_size = codebook_size

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    @property
    def dim(self) -> int:
        """Channel count D of the encoder output this quantizer takes."""
        return self._dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}"

    @abstractmethod
    def forward(self, z: torch.Tensor) -> QuantizerOutput: ...

    @abstractmethod
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) int64 ids -> (B, D, *spatial), equal in value to forward's output."""
