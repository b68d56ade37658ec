"""The training objective as small pure functions: reconstruction, perceptual and adversarial
terms, the adaptive GAN weight, LeCAM regularisation, the EMA update, the AdamW parameter
groups and the learning-rate schedule (docs/training.md, "The recipe").

``train.recipe.RecipeLoss`` composes these; nothing here knows Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

GanLoss = Literal["hinge", "non_saturating"]

# ----------------------------------------------------------------------------------------
# Reconstruction and perceptual terms
# ----------------------------------------------------------------------------------------


def reconstruction_losses(recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """recon, target (B, C, H, W) in [-1, 1] -> {"mse", "l1"} (means over every element)."""
    return {"mse": F.mse_loss(recon, target), "l1": F.l1_loss(recon, target)}


# MS-SSIM's scale weights (Wang, Simoncelli & Bovik 2003, Table/§3.2) for its first three
# scales, renormalised to sum to 1: five scales need sides > 160 px with the 11-px window,
# and training crops are often 96-128 px.
MS_SSIM_BETAS_3 = (0.0448 / 0.6305, 0.2856 / 0.6305, 0.3001 / 0.6305)


def ms_ssim_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM over three scales, images (B, C, H, W) in [-1, 1], sides >= 41 px.

    Contrast terms are clamped at 0 before the fractional powers (torchmetrics'
    ``normalize="relu"``), which keeps the gradient finite early in training.
    """
    side = min(recon.shape[-2:])
    if side < 41:
        raise ValueError(
            f"the MS-SSIM perceptual term needs crops of at least 41 px, got {side}; "
            "raise data.crop_size or use model.perceptual.kind=lpips"
        )
    score = multiscale_structural_similarity_index_measure(
        (recon.float() + 1) / 2,
        (target.float() + 1) / 2,
        data_range=1.0,
        betas=MS_SSIM_BETAS_3,
        normalize="relu",
    )
    assert isinstance(score, torch.Tensor)
    return 1.0 - score


# ----------------------------------------------------------------------------------------
# Adversarial terms
# ----------------------------------------------------------------------------------------


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (B, C, H, W) -> their Gaussian blur (std ``sigma`` px, kernel radius 3σ, reflect
    padding), in float32 even under autocast. Its transfer is exp(-2π²σ²f²): 0.29 at 0.25
    cycles/px for σ = 1, 0.73 at 0.125."""
    if not sigma > 0:
        raise ValueError(f"sigma={sigma!r} is not allowed; expected > 0")
    radius = max(1, math.ceil(3 * sigma))
    if min(images.shape[-2:]) <= radius:
        raise ValueError(
            f"a blur of sigma {sigma} needs sides over {radius} px, got {tuple(images.shape[-2:])}"
        )
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    with torch.autocast(images.device.type, enabled=False):
        blurred = F.pad(images.float(), (radius, radius, radius, radius), mode="reflect")
        for shape in ((1, 1, 1, -1), (1, 1, -1, 1)):  # separable: rows, then columns
            weight = kernel.view(shape).expand(channels, -1, -1, -1)
            blurred = F.conv2d(blurred, weight, groups=channels)
        return blurred


def gaussian_highpass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (B, C, H, W) minus their ``gaussian_blur``: the detail a pixel loss leaves to the
    adversarial term when the discriminator judges only this (frequency separation: Fritsche,
    Gu & Timofte, ICCVW 2019, §3.1). Its transfer is 1 - exp(-2π²σ²f²): 0.71 at 0.25 cycles/px
    for σ = 1, 0.27 at 0.125."""
    blurred = gaussian_blur(images, sigma)
    # float32 even under autocast: the detail is a small difference of two large values.
    with torch.autocast(images.device.type, enabled=False):
        return images.float() - blurred


def discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: GanLoss
) -> torch.Tensor:
    """The discriminator's loss on patch logits (any shape).

    hinge (Lim & Ye 2017; taming's VQGAN): mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))), halved.
    non_saturating (Goodfellow et al. 2014): softplus(-D(x)) + softplus(D(x̂)), i.e. the
    binary cross-entropy of real vs reconstructed, halved.
    """
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor, kind: GanLoss) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's logits for reconstructions.

    hinge: -mean(D(x̂)) (taming, LlamaGen); non_saturating: mean(softplus(-D(x̂))), the
    -log D(x̂) of Goodfellow et al. 2014, §3 (SimVQ's recipe).
    """
    if kind == "hinge":
        return -logits_fake.mean()
    return F.softplus(-logits_fake).mean()


def adaptive_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """taming's VQGAN weight λ = ‖∇_w L_rec‖ / (‖∇_w L_G‖ + eps), w the decoder's last layer
    (Esser et al. 2021, eq. 7), clamped to [0, max_weight] and detached: it balances the two
    gradients where they meet the image instead of by a hand-tuned constant."""
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (gan_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def lecam_regularizer(
    logits_real: torch.Tensor,
    logits_fake: torch.Tensor,
    ema_real: torch.Tensor,
    ema_fake: torch.Tensor,
) -> torch.Tensor:
    """LeCAM (Tseng et al., CVPR 2021, eq. 3): ‖D(x) - α_F‖² + ‖D(x̂) - α_R‖², α the moving
    averages of the discriminator's outputs on reconstructions (F) and real images (R); keeps
    the discriminator's predictions from drifting apart when it wins too easily."""
    return (logits_real - ema_fake).pow(2).mean() + (logits_fake - ema_real).pow(2).mean()


def adversarial_factor(step: int, start_step: int) -> float:
    """1 from ``start_step`` on, 0 before it (taming's ``disc_start``)."""
    return 1.0 if step >= start_step else 0.0


# ----------------------------------------------------------------------------------------
# Weight averaging, optimizer groups, schedule
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update_(
    averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], decay: float
) -> None:
    """In place: a ← decay · a + (1 - decay) · c for each pair (Polyak averaging of weights).
    Floating-point tensors only; integer buffers (counters) are copied."""
    floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
    if floats:
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - decay)
    for a, c in zip(averaged, current, strict=True):
        if not a.is_floating_point():
            a.copy_(c)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps`` (and ``min_ratio`` after it). ``min_ratio = 1`` is a
    constant learning rate after warmup (SimVQ's and LlamaGen's recipes)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    quantizer_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW groups of a VQVAE's trainable parameters.

    Conv/linear weights (ndim >= 2) decay; biases, norms and the quantizer's tables (codebook,
    SimVQ's W, FSQ's projections) do not: decaying a codebook pulls the codes to the origin.
    The quantizer's parameters get ``lr_scale = quantizer_lr_scale`` (the scheduler multiplies
    it into their learning rate): under Adam a parameter moves about lr per step, so SimVQ's
    W cannot follow an encoder whose output grows by O(1) unless its lr is larger
    (docs/training.md, "SimVQ").
    """
    groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "no_decay": [], "quantizer": []}
    for name, param in named:
        if not param.requires_grad:
            continue
        if name.startswith("quantizer."):
            groups["quantizer"].append(param)
        else:
            groups["decay" if param.ndim >= 2 else "no_decay"].append(param)
    out = [
        {"params": groups["decay"], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": groups["no_decay"], "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": groups["quantizer"], "weight_decay": 0.0, "lr_scale": quantizer_lr_scale},
    ]
    return [g for g in out if g["params"]]
