"""The PatchGAN discriminator of the adversarial term and its configuration.

PatchGAN (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", §3.2.2): a fully convolutional classifier whose every output logit judges one
receptive-field patch (70×70 px at three strided layers), the discriminator of taming's VQGAN,
LlamaGen's and SimVQ's tokenizers. GroupNorm instead of BatchNorm: a logit then depends on its
own image only, so real and reconstructed images share one forward pass and DDP needs no
synchronised statistics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from train.objective import GanLoss
from vq.config import check_choice, check_float, check_int


@dataclass(frozen=True)
class AdversarialConfig:
    """The adversarial term (``model.adversarial`` in YAML; absent = no discriminator).

    weight: the generator's adversarial weight (SimVQ 0.1, LlamaGen 0.5, taming 0.8).
    loss: "hinge" (taming, LlamaGen) or "non_saturating" (SimVQ), for both players.
    adaptive: multiply ``weight`` by taming's ‖∇L_rec‖/‖∇L_G‖ at the decoder's last layer.
    start_step: optimizer step from which the adversarial term is on (taming's disc_start;
        the discriminator trains from this step too).
    lecam_weight: LeCAM regularisation of the discriminator (0 = off; Open-MAGVIT2, IBQ).
    lecam_decay: decay of LeCAM's moving averages of the logits.
    highpass_sigma: the discriminator judges images minus their Gaussian blur of this std
        (px) instead of the images (None = whole images): the adversarial gradient then moves
        mostly the fine detail and the pixel loss sets the coarse content (Fritsche et al.
        2019's frequency separation).
    lr: the discriminator's learning rate (None = the generator's ``model.lr``).
    betas: the discriminator's Adam betas (None = the generator's ``model.betas``).
    channels: width of the first discriminator layer (64 in pix2pix and taming).
    layers: strided layers (3 in pix2pix and taming: 70×70 patches).
    """

    weight: float = 0.1
    loss: GanLoss = "hinge"
    adaptive: bool = False
    start_step: int = 0
    lecam_weight: float = 0.0
    lecam_decay: float = 0.999
    highpass_sigma: float | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    channels: int = 64
    layers: int = 3

    def __post_init__(self) -> None:
        check_float("model.adversarial.weight", self.weight, low=0.0, high=math.inf)
        check_choice("model.adversarial.loss", self.loss, ["hinge", "non_saturating"])
        check_int("model.adversarial.start_step", self.start_step, minimum=0)
        check_float("model.adversarial.lecam_weight", self.lecam_weight, low=0.0, high=math.inf)
        check_float(
            "model.adversarial.lecam_decay", self.lecam_decay, low=0, high=1, open_high=True
        )
        if self.highpass_sigma is not None and not self.highpass_sigma > 0:
            raise ValueError(
                f"model.adversarial.highpass_sigma={self.highpass_sigma!r} is not allowed; "
                "expected > 0 (px) or null"
            )
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"model.adversarial.lr={self.lr!r} is not allowed; expected > 0")
        check_int("model.adversarial.channels", self.channels, minimum=1)
        check_int("model.adversarial.layers", self.layers, minimum=1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = None if self.betas is None else list(self.betas)
        return out


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class PatchDiscriminator(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> patch logits (B, 1, H', W').

    conv4×4/2 → LeakyReLU(0.2), then ``layers - 1`` × [conv4×4/2 → GroupNorm → LeakyReLU],
    one conv4×4/1 → GroupNorm → LeakyReLU, and a conv4×4/1 to one logit per patch; widths
    double per layer up to 8× ``channels`` (pix2pix's NLayerDiscriminator layout).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        width = channels
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        for i in range(1, layers + 1):
            prev, width = width, channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [
                nn.Conv2d(prev, width, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(_groups(width), width),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # pix2pix's N(0, 0.02) init
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
