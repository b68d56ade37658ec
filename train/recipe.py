"""The recipe's loss terms as one module, shaped like the field's (taming's
``VQLPIPSWithDiscriminator``, LlamaGen's ``VQLoss``): it owns the perceptual network, the
PatchGAN discriminator and LeCAM's moving averages, and composes the pure functions of
``train.objective`` into the generator's and the discriminator's losses (docs/training.md,
"The recipe"):

    L_G = reconstruction.l2_weight · MSE + reconstruction.l1_weight · L1 + quantizer loss
          [+ perceptual.weight · perceptual]
          [+ λ · adversarial.weight · L_G^adv from adversarial.start_step]
    L_D = hinge or non-saturating loss of the PatchGAN [+ lecam_weight · LeCAM]

The caller owns the VQ-VAE, the optimizers and the order of the steps (``train.module``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from train.gan import AdversarialConfig, PatchDiscriminator
from train.objective import (
    adaptive_weight,
    adversarial_factor,
    discriminator_loss,
    gaussian_highpass,
    generator_loss,
    lecam_regularizer,
    reconstruction_losses,
)
from train.perceptual import PerceptualConfig, build_perceptual
from vq.config import check_float
from vq.model import VQVAEOutput

Losses = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ReconstructionConfig:
    """The pixel terms (``model.reconstruction`` in YAML).

    l1_weight: weight of the L1 term (0 disables it; SimVQ's and taming's).
    l2_weight: weight of the MSE term (0 disables it; LlamaGen's).
    """

    l1_weight: float = 0.0
    l2_weight: float = 1.0

    def __post_init__(self) -> None:
        check_float("model.reconstruction.l1_weight", self.l1_weight, low=0.0, high=math.inf)
        check_float("model.reconstruction.l2_weight", self.l2_weight, low=0.0, high=math.inf)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecipeLoss(nn.Module):
    """Args:
    in_channels: image channels (the discriminator's input).
    reconstruction: the pixel terms' weights.
    perceptual: the perceptual term (None = none).
    adversarial: the PatchGAN term (None = no discriminator).
    memory_format: the layout the discriminator runs in (the VQ-VAE's).
    """

    lecam_ema_real: torch.Tensor
    lecam_ema_fake: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        reconstruction: ReconstructionConfig,
        perceptual: PerceptualConfig | None,
        adversarial: AdversarialConfig | None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        self.pixel = reconstruction
        self.perceptual_config = perceptual
        self.adversarial = adversarial
        self.memory_format = memory_format
        self.discriminator: PatchDiscriminator | None = None
        if adversarial is not None:
            self.discriminator = PatchDiscriminator(
                in_channels, adversarial.channels, adversarial.layers
            )
            # LeCAM's moving averages of the logits (buffers: they resume with the run).
            self.register_buffer("lecam_ema_real", torch.zeros(()))
            self.register_buffer("lecam_ema_fake", torch.zeros(()))
        # The perceptual network's weights are the user's files, not part of the run: kept out
        # of the checkpoint (a list is not a registered submodule). Built here, after the
        # discriminator's initialisation, so that missing weights fail before a run starts.
        self._perceptual = [] if perceptual is None else [build_perceptual(perceptual)]

    def adversarial_on(self, step: int) -> bool:
        """Whether both players train at optimizer step ``step``."""
        adv = self.adversarial
        return adv is not None and adversarial_factor(step, adv.start_step) > 0

    def reconstruction(
        self, out: VQVAEOutput, images: torch.Tensor, quantizer_loss: bool = True
    ) -> Losses:
        """The reconstruction, quantizer and perceptual terms of ``out`` against ``images``
        (B, C, H, W) in [-1, 1]; "loss" is their weighted sum (without the quantizer's when
        ``quantizer_loss`` is false: nothing it trains is trainable)."""
        losses = reconstruction_losses(out.recon.float(), images.float())
        losses["quant_loss"] = out.quantizer.loss.float()
        total = self.pixel.l2_weight * losses["mse"] + self.pixel.l1_weight * losses["l1"]
        if quantizer_loss:
            total = total + losses["quant_loss"]
        if self.perceptual_config is not None:
            net = self._perceptual[0].to(images.device)
            losses["perceptual"] = net(out.recon, images)
            total = total + self.perceptual_config.weight * losses["perceptual"]
        losses["loss"] = total
        return losses

    def generator(self, losses: Losses, recon: torch.Tensor, last_layer: torch.Tensor) -> Losses:
        """Adds the generator's adversarial term to ``losses`` (from ``reconstruction``):
        "g_adv", its "adaptive_weight", and "loss" the total. The caller freezes the
        discriminator (the generator's step leaves its gradients alone)."""
        adv, disc = self.adversarial, self.discriminator
        assert adv is not None and disc is not None
        logits_fake = disc(self._judged(recon)).float()
        g_adv = generator_loss(logits_fake, adv.loss)
        weight = torch.tensor(adv.weight, device=recon.device)
        if adv.adaptive:
            weight = weight * adaptive_weight(losses["loss"], g_adv, last_layer)
        return {
            **losses,
            "g_adv": g_adv,
            "adaptive_weight": weight.detach(),
            "loss": losses["loss"] + weight * g_adv,
        }

    def discriminator_step_loss(self, images: torch.Tensor, recon: torch.Tensor) -> Losses:
        """The discriminator's loss on real ``images`` and (detached) reconstructions, as
        "d_total" with its logged parts; moves LeCAM's averages."""
        adv, disc = self.adversarial, self.discriminator
        assert adv is not None and disc is not None
        real, fake = self._judged(images), self._judged(recon.detach())
        # One pass for both (GroupNorm: a logit depends on its own image only).
        pair = torch.cat([real, fake.to(real.dtype)])
        logits = disc(pair.contiguous(memory_format=self.memory_format)).float()
        logits_real, logits_fake = logits.chunk(2)
        d_loss = discriminator_loss(logits_real, logits_fake, adv.loss)
        losses = {"d_loss": d_loss.detach()}
        if adv.lecam_weight > 0:
            lecam = lecam_regularizer(
                logits_real, logits_fake, self.lecam_ema_real, self.lecam_ema_fake
            )
            losses["lecam"] = lecam.detach()
            d_loss = d_loss + adv.lecam_weight * lecam
            with torch.no_grad():
                self.lecam_ema_real.lerp_(logits_real.mean(), 1 - adv.lecam_decay)
                self.lecam_ema_fake.lerp_(logits_fake.mean(), 1 - adv.lecam_decay)
        losses["d_logits_real"] = logits_real.detach().mean()
        losses["d_logits_fake"] = logits_fake.detach().mean()
        return {**losses, "d_total": d_loss}

    def _judged(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of ``images``: all of them, or their high-pass."""
        assert self.adversarial is not None
        sigma = self.adversarial.highpass_sigma
        if sigma is not None:
            images = gaussian_highpass(images, sigma)
        return images.contiguous(memory_format=self.memory_format)
