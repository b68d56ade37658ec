"""bench/metrics.py: the figures of the Kodak evaluation, the high-frequency power ratio first."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.bench.helpers import load_script


@pytest.fixture(scope="module")
def metrics() -> ModuleType:
    return load_script("metrics")


def _photo_like(h: int = 192, w: int = 176, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus fine texture: power at low and high frequencies."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 16, w // 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC), np.float64)
    texture = rng.normal(0, 20, size=(h, w, 1))
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def _grating(frequency: float, h: int = 64, w: int = 64) -> np.ndarray:
    """A vertical sinusoid of ``frequency`` cycles/pixel, grey."""
    x = np.arange(w)
    row = 128 + 100 * np.cos(2 * np.pi * frequency * x)
    return np.repeat(np.repeat(row[None, :, None], h, 0), 3, 2).astype(np.uint8)


def test_luma_is_bt601(metrics: ModuleType) -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10]]], np.uint8)
    assert metrics.luma(rgb)[0].tolist() == pytest.approx([76.245, 149.685, 29.07, 10.0])


def test_high_frequency_power_sees_only_frequencies_above_the_cutoff(
    metrics: ModuleType,
) -> None:
    low, high = _grating(0.125), _grating(0.375)  # both whole cycles over 64 pixels
    reference = metrics.high_frequency_power(high)
    # What the low grating has above the cutoff is uint8 rounding noise.
    assert metrics.high_frequency_power(low) < 1e-4 * reference
    # The cutoff is a parameter: below 0.125 the low grating counts too.
    assert metrics.high_frequency_power(low, cutoff=0.1) > 0.5 * reference


def test_hf_ratio_is_one_for_a_copy_below_one_for_a_blur_above_for_noise(
    metrics: ModuleType,
) -> None:
    image = _photo_like()
    assert metrics.high_frequency_ratio(image, image.copy()) == pytest.approx(1.0)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))
    assert metrics.high_frequency_ratio(image, blurred) < 0.2
    noise = np.random.default_rng(1).normal(0, 30, image.shape)
    noisy = np.clip(image + noise, 0, 255).astype(np.uint8)
    assert metrics.high_frequency_ratio(image, noisy) > 1.0
    flat = np.full((32, 32, 3), 90, np.uint8)  # no high-frequency power to compare with
    assert math.isnan(metrics.high_frequency_ratio(flat, image[:32, :32]))


def test_every_figure_is_perfect_for_a_copy_and_worse_for_a_blur(metrics: ModuleType) -> None:
    image = _photo_like()
    same = metrics.image_figures(image, image.copy())
    assert same["psnr"] == math.inf
    for key in ("ssim", "ms_ssim", "vif", "hf_ratio"):
        assert same[key] == pytest.approx(1.0, abs=1e-4), key
    for key in metrics.LOWER_IS_BETTER:
        assert same[key] == pytest.approx(0.0, abs=1e-6), key
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))
    worse = metrics.image_figures(image, blurred)
    assert set(worse) == set(metrics.FIGURES)
    for key in metrics.FIGURES:
        if key in metrics.LOWER_IS_BETTER:
            assert worse[key] > same[key], key
        else:
            assert worse[key] < same[key], key


def test_the_spectral_error_is_two_sided_and_colour_error_sees_a_tint(
    metrics: ModuleType,
) -> None:
    image = _photo_like()
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
    noise = np.random.default_rng(1).normal(0, 25, image.shape)
    textured = np.clip(image + noise, 0, 255).astype(np.uint8)
    assert metrics.high_frequency_ratio(image, textured) > 1  # power added, not lost
    for distorted in (blurred, textured):  # a blur and invented texture both count
        assert metrics.spectral_error(image, distorted) > 0.5
    # A doubling of power in every band is exactly one octave of error.
    quiet = (image.astype(np.float64) * 0.3 + 90).round()  # room to amplify without clipping
    louder = (quiet - quiet.mean()) * np.sqrt(2) + quiet.mean()
    doubled = metrics.spectral_error(quiet.astype(np.uint8), louder.round().astype(np.uint8))
    assert doubled == pytest.approx(1.0, abs=0.05)
    tinted = np.clip(image.astype(int) + [12, 0, -12], 0, 255).astype(np.uint8)
    assert metrics.delta_e_2000(image, tinted) > 2  # beyond "just noticeable" (about 1)


def test_figures_needing_a_larger_image_are_nan(metrics: ModuleType) -> None:
    small = _photo_like(48, 64)
    figures = metrics.image_figures(small, small)
    assert math.isnan(figures["ms_ssim"])  # 5 scales need a side of at least 161
    assert figures["vif"] == pytest.approx(1.0, abs=1e-4)
    tiny = _photo_like(32, 32)
    assert math.isnan(metrics.vif_uint8(tiny, tiny))


def test_frechet_distance_is_the_closed_form(metrics: ModuleType) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, shifted mean: the distance is ||shift||^2.
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift))
    # Scaled copy: mean s*mu, covariance s^2 S: (1 - s)^2 (|mu|^2 + Tr S).
    mu, cov_trace = a.mean(0), float(np.trace(np.cov(a.T)))
    expected = 4 * (float(mu @ mu) + cov_trace)
    assert metrics.frechet_distance(a, 3 * a) == pytest.approx(expected, rel=1e-6)
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a))
    with pytest.raises(ValueError, match="expected"):
        metrics.frechet_distance(a, a[:, :3])


def test_fid_patches_follow_the_grid_and_the_shifted_grid(metrics: ModuleType) -> None:
    image = np.arange(512 * 768 * 3, dtype=np.int64).reshape(512, 768, 3)
    patches = metrics.fid_patches(image)
    assert len(patches) == 3 * 2 + 2 * 1  # 768x512: 3x2 grid, 2x1 shifted by 128
    assert all(p.shape == (256, 256, 3) for p in patches)
    assert (patches[0] == image[:256, :256]).all() and (patches[6] == image[128:384, 128:384]).all()
    assert metrics.fid_patches(image[:200, :200]) == []
