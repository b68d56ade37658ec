"""The perceptual term of the recipe: LPIPS from user-supplied weights or weights-free MS-SSIM
(docs/training.md, "The recipe": what each is worth)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from train.lpips import LPIPS, NETS, LPIPSNet
from train.objective import ms_ssim_loss
from vq.config import check_choice, check_float

PerceptualKind = Literal["lpips", "ms_ssim"]


@dataclass(frozen=True)
class PerceptualConfig:
    """The perceptual term (``model.perceptual`` in YAML; absent = none).

    kind: "lpips" (LPIPS v0.1, the field's choice; needs weights: ``vq-lpips-weights``) or
        "ms_ssim" (1 - MS-SSIM over three scales; no weights).
    weight: its weight in the generator's loss (SimVQ and LlamaGen: 1.0 for LPIPS).
    net: LPIPS's backbone, "vgg" (the one LlamaGen and SimVQ train with) or "alex".
    weights: the converted weights' path (None = ``train.lpips.weights_file(net)``).
    """

    kind: PerceptualKind = "ms_ssim"
    weight: float = 1.0
    net: LPIPSNet = "vgg"
    weights: str | None = None

    def __post_init__(self) -> None:
        check_choice("model.perceptual.kind", self.kind, ["lpips", "ms_ssim"])
        check_choice("model.perceptual.net", self.net, list(NETS))
        check_float("model.perceptual.weight", self.weight, low=0.0, high=math.inf)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MSSSIMLoss(torch.nn.Module):
    """recon, target (B, C, H, W) in [-1, 1] -> 1 - MS-SSIM (``train.objective.ms_ssim_loss``)."""

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ms_ssim_loss(recon, target)


class LPIPSLoss(torch.nn.Module):
    """recon, target (B, 3, H, W) in [-1, 1] -> mean LPIPS distance."""

    def __init__(self, net: LPIPSNet, weights: str | None) -> None:
        super().__init__()
        self.lpips = LPIPS(net, weights)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(recon, target).mean()


def build_perceptual(cfg: PerceptualConfig) -> torch.nn.Module:
    """The term as a frozen module: ``loss = module(recon, target)``."""
    if cfg.kind == "lpips":
        return LPIPSLoss(cfg.net, cfg.weights)
    return MSSSIMLoss()
