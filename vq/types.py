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
    """One interface for VQ (STE / rotation, plain / SimVQ codebook) and FSQ."""

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def dim(self) -> int:
        """Channel count D of the encoder output this quantizer takes."""

    @abstractmethod
    def forward(self, z: torch.Tensor) -> QuantizerOutput: ...

    @abstractmethod
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) int64 ids -> (B, D, *spatial), equal in value to forward's output."""
