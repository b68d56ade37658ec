"""The recipe's math (train.objective): each term against its formula, gradients where the
formula is about gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.gan import PatchDiscriminator
from train.objective import (
    adaptive_weight,
    adversarial_factor,
    discriminator_loss,
    ema_update_,
    gaussian_blur,
    gaussian_highpass,
    generator_loss,
    lecam_regularizer,
    ms_ssim_loss,
    parameter_groups,
    reconstruction_losses,
)


def test_hinge_losses_match_their_definitions() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 3.0])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 4]
    expected = 0.5 * (torch.tensor([0.0, 0.5, 2.0]).mean() + torch.tensor([0.0, 1.0, 4.0]).mean())
    assert torch.allclose(discriminator_loss(real, fake, "hinge"), expected)
    assert torch.allclose(generator_loss(fake, "hinge"), -fake.mean())


def test_non_saturating_losses_are_binary_cross_entropy() -> None:
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    bce = F.binary_cross_entropy_with_logits
    d = 0.5 * (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating"), d, atol=1e-6)
    g = bce(fake, torch.ones_like(fake))  # -log sigmoid(D(x̂))
    assert torch.allclose(generator_loss(fake, "non_saturating"), g, atol=1e-6)


def test_perfect_discriminator_has_zero_hinge_loss() -> None:
    assert discriminator_loss(torch.full((5,), 3.0), torch.full((5,), -3.0), "hinge") == 0


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_layer() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(8, 4)
    out = x @ w.T
    rec = out.pow(2).mean()
    gan = -(out * 3.0).mean()
    (g_rec,) = torch.autograd.grad(rec, w, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan, w, retain_graph=True)
    weight = adaptive_weight(rec, gan, w)
    assert torch.allclose(weight, g_rec.norm() / (g_gan.norm() + 1e-4))
    assert not weight.requires_grad
    # Scaling the adversarial loss by 10 scales its weight by ~1/10: the balance holds.
    assert torch.allclose(adaptive_weight(rec, 10 * gan, w), weight / 10, rtol=1e-3)


def test_adaptive_weight_is_clamped() -> None:
    w = torch.ones(2, requires_grad=True)
    rec = (w * 1e6).sum()
    gan = (w * 1e-12).sum()
    assert adaptive_weight(rec, gan, w, max_weight=5.0) == 5.0


def test_lecam_regularizer_formula() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    ema_real, ema_fake = torch.tensor(2.0), torch.tensor(-0.5)
    expected = ((real - ema_fake) ** 2).mean() + ((fake - ema_real) ** 2).mean()
    assert torch.allclose(lecam_regularizer(real, fake, ema_real, ema_fake), expected)


def test_adversarial_factor_switches_on_at_start_step() -> None:
    assert [adversarial_factor(s, 3) for s in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_ema_update_is_polyak_averaging_and_copies_integers() -> None:
    a = [torch.zeros(3), torch.tensor([1, 2])]
    c = [torch.ones(3), torch.tensor([5, 6])]
    ema_update_(a, c, decay=0.9)
    assert torch.allclose(a[0], torch.full((3,), 0.1))
    assert torch.equal(a[1], torch.tensor([5, 6]))
    same = [torch.randn(4)]
    before = same[0].clone()
    ema_update_(same, [before.clone()], decay=0.999)
    assert torch.equal(same[0], before)  # averaging equal weights changes no bit


def test_reconstruction_losses() -> None:
    x, y = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    losses = reconstruction_losses(x, y)
    assert losses["mse"] == pytest.approx(0.25) and losses["l1"] == pytest.approx(0.5)


def test_ms_ssim_loss_is_zero_for_identical_images_and_grows_with_blur() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert ms_ssim_loss(x, x) == pytest.approx(0.0, abs=1e-5)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1)
    more = F.avg_pool2d(x, 7, stride=1, padding=3)
    assert 0 < ms_ssim_loss(blurred, x) < ms_ssim_loss(more, x)
    y = blurred.clone().requires_grad_(True)
    ms_ssim_loss(y, x).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_ms_ssim_loss_refuses_small_crops() -> None:
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 41 px"):
        ms_ssim_loss(x, x)


def test_parameter_groups_scale_the_quantizer_and_spare_it_decay() -> None:
    model = torch.nn.ModuleDict(
        {
            "encoder": torch.nn.Conv2d(3, 4, 3),
            "quantizer": torch.nn.Linear(4, 4),
            "norm": torch.nn.GroupNorm(2, 4),
        }
    )
    model["norm"].weight.requires_grad_(False)
    groups = parameter_groups(model.named_parameters(), 0.1, quantizer_lr_scale=10.0)
    by_scale = {g["lr_scale"]: g for g in groups if g["lr_scale"] != 1.0}
    quant = by_scale[10.0]
    assert {id(p) for p in quant["params"]} == {id(p) for p in model["quantizer"].parameters()}
    assert quant["weight_decay"] == 0.0
    decayed = [g for g in groups if g["weight_decay"] > 0]
    assert [p.shape for g in decayed for p in g["params"]] == [model["encoder"].weight.shape]
    frozen = model["norm"].weight
    assert all(p is not frozen for g in groups for p in g["params"])


def test_discriminator_gives_one_logit_per_patch() -> None:
    disc = PatchDiscriminator(channels=8, layers=3)
    logits = disc(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 (strided) -> 7 -> 6


def test_gaussian_highpass_removes_constants_keeps_fine_detail_and_refuses_bad_sigma() -> None:
    flat = torch.full((1, 3, 32, 32), 0.7)
    assert gaussian_highpass(flat, 1.0).abs().max() < 1e-6  # no detail in a constant image
    x = torch.arange(32.0)
    for freq, low, high in ((0.0625, 0.0, 0.3), (0.5, 0.9, 1.01)):  # cycles/pixel
        wave = torch.cos(2 * torch.pi * freq * x).expand(1, 1, 32, 32)
        inner = gaussian_highpass(wave, 1.0)[..., 8:-8, 8:-8]  # away from the padding
        gain = inner.pow(2).mean().sqrt() / wave[..., 8:-8, 8:-8].pow(2).mean().sqrt()
        # transfer 1 - exp(-2π²σ²f²): 0.07 at 1/16 cycles/px, 0.99 at Nyquist
        assert low <= gain.item() <= high, (freq, gain.item())
    noise = torch.randn(2, 3, 24, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inside autocast too
        under_autocast = gaussian_highpass(noise, 1.0)
    assert torch.equal(under_autocast, gaussian_highpass(noise, 1.0))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_highpass(flat, 0.0)


def test_gaussian_blur_is_the_complement_of_the_highpass_and_keeps_constants() -> None:
    images = torch.randn(2, 3, 24, 24)
    assert torch.allclose(
        gaussian_blur(images, 1.0) + gaussian_highpass(images, 1.0), images, atol=1e-6
    )
    flat = torch.full((1, 3, 16, 16), -0.3)
    assert torch.allclose(gaussian_blur(flat, 0.5), flat, atol=1e-6)
    with pytest.raises(ValueError, match="sides over 3 px"):
        gaussian_blur(torch.zeros(1, 3, 3, 3), 1.0)
