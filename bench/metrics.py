"""Image quality figures of the benchmarks, on RGB uint8 (H, W, 3) arrays as stored.

PSNR and SSIM measure fidelity; MS-SSIM and VIF weigh structure across scales; the
high-frequency power ratio says whether fine detail survives at all (a blurred
reconstruction can score a fair PSNR and keep almost none of it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
    visual_information_fidelity,
)

# MS-SSIM's 5 scales with an 11-pixel window need a side > (11 - 1) * 2**4 at full size.
MS_SSIM_MIN_SIDE = 161
# VIF's coarsest scale filters with a 5-pixel window after 3 halvings.
VIF_MIN_SIDE = 41
HF_CUTOFF = 0.25  # cycles/pixel: the upper half of the representable band (Nyquist is 0.5)


def _unit(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape, MSE over all pixels and channels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (torchmetrics, Gaussian window, data range 1) of two uint8 RGB images."""
    value = structural_similarity_index_measure(_unit(a), _unit(b), data_range=1.0)
    assert isinstance(value, torch.Tensor)  # a tuple only with return_full_image=True
    return float(value)


def ms_ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003; torchmetrics, 5 scales) of two uint8 RGB images; NaN when a
    side is too short for 5 scales."""
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    return float(multiscale_structural_similarity_index_measure(_unit(a), _unit(b), data_range=1.0))


def vif_uint8(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain VIF (Sheikh & Bovik 2006; torchmetrics), mean over the RGB channels, on
    0..255 values (the model's noise variance assumes that range); NaN for tiny images.
    float32: float64 gives the same figure to 4 digits at many times the cost."""
    if min(reference.shape[:2]) < VIF_MIN_SIDE:
        return math.nan
    ref, dist = _unit(reference) * 255, _unit(distorted) * 255
    return float(visual_information_fidelity(dist, ref))


def luma(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B of (H, W, 3) -> float64 (H, W)."""
    rgb = image.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def high_frequency_power(image: np.ndarray, cutoff: float = HF_CUTOFF) -> float:
    """Power of the luma's 2-D DFT at radial frequencies above ``cutoff`` cycles/pixel."""
    y = luma(image)
    power = np.abs(np.fft.fft2(y)) ** 2  # (H, W)
    fy = np.fft.fftfreq(y.shape[0])[:, None]  # cycles/pixel along each axis
    fx = np.fft.fftfreq(y.shape[1])[None, :]
    return float(power[np.hypot(fy, fx) > cutoff].sum())


def high_frequency_ratio(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """High-frequency luma power of the reconstruction over the original's: 1 keeps the
    original's fine-detail energy, 0 has none (a blur), > 1 has more (noise, ringing or
    invented texture). An energy ratio, not a fidelity measure: it cannot tell real detail
    from made-up detail of the same strength."""
    reference = high_frequency_power(original)
    return high_frequency_power(reconstruction) / reference if reference > 0 else math.nan


def box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)² window of a 2-D array, edges replicated (summed-area table)."""
    k = 2 * radius + 1
    padded = np.pad(x, radius + 1, mode="edge")[1:, 1:]
    table = padded.cumsum(0).cumsum(1)
    table = np.pad(table, ((1, 0), (1, 0)))
    total = table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]
    return total[: x.shape[0], : x.shape[1]] / (k * k)


# Octave bands of radial frequency (cycles/pixel) from 1/16 to Nyquist, finest last.
OCTAVES = ((1 / 16, 1 / 8), (1 / 8, 1 / 4), (1 / 4, 1 / 2))


def band_powers(image: np.ndarray, bands: tuple[tuple[float, float], ...] = OCTAVES) -> np.ndarray:
    """Power of the luma's 2-D DFT in each radial band [low, high) cycles/pixel -> (len(bands),)."""
    y = luma(image)
    power = np.abs(np.fft.fft2(y - y.mean())) ** 2
    radius = np.hypot(np.fft.fftfreq(y.shape[0])[:, None], np.fft.fftfreq(y.shape[1])[None, :])
    return np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in bands])


def spectral_error(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Two-sided spectral error: the mean over the octave bands (``OCTAVES``) of
    |log2(reconstruction's luma power / original's)|. 0 for the original's spectrum; a blur
    (power missing) and invented texture (power added) both raise it, one octave of error per
    halving or doubling. Like the HF ratio it is blind to *which* detail is there (JPEG's block
    edges score low), so it is never read alone."""
    ref, rec = band_powers(original), band_powers(reconstruction)
    if (ref <= 0).any():
        return math.nan
    return float(np.mean(np.abs(np.log2(np.maximum(rec, 1e-12) / ref))))


def delta_e_2000(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference (Sharma et al. 2005; scikit-image's implementation)
    over all pixels, sRGB -> CIELAB (D65): about 1 is just noticeable side by side."""
    lab_a = rgb2lab(original.astype(np.float32) / 255)
    lab_b = rgb2lab(reconstruction.astype(np.float32) / 255)
    return float(np.mean(deltaE_ciede2000(lab_a, lab_b)))


def image_figures(original: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """Every per-image figure of the Kodak evaluation but LPIPS (``bench/kodak.py``)."""
    return {
        "psnr": psnr_uint8(original, reconstruction),
        "ssim": ssim_uint8(original, reconstruction),
        "ms_ssim": ms_ssim_uint8(original, reconstruction),
        "vif": vif_uint8(original, reconstruction),
        "hf_ratio": high_frequency_ratio(original, reconstruction),
        "spectral_error": spectral_error(original, reconstruction),
        "delta_e": delta_e_2000(original, reconstruction),
    }


FIGURES = ("psnr", "ssim", "ms_ssim", "vif", "hf_ratio", "spectral_error", "delta_e")
LOWER_IS_BETTER = ("spectral_error", "delta_e")


# --- rFID ----------------------------------------------------------------------------------

FID_PATCH = 256  # HiFiC's patch side (Mentzer et al. 2020, "High-Fidelity Generative Image
# Compression", appendix: FID on 256x256 patches, the grid plus the grid shifted by half a patch)


def fid_patches(image: np.ndarray, side: int = FID_PATCH) -> list[np.ndarray]:
    """Non-overlapping ``side`` x ``side`` patches of (H, W, 3), then those of the grid shifted
    by ``side // 2`` in both axes (HiFiC's protocol: more samples from few large images)."""
    h, w = image.shape[:2]
    out = []
    for offset in (0, side // 2):
        for top in range(offset, h - side + 1, side):
            for left in range(offset, w - side + 1, side):
                out.append(image[top : top + side, left : left + side])
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D), (M, D) (Heusel
    et al. 2017, FID): ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½). Tr((Σa Σb)^½) is the sum of
    the square roots of the eigenvalues of Σa Σb, which are real and >= 0 (a product of two
    PSD matrices); float64 throughout."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"feature sets of shapes {a.shape} and {b.shape}: expected (N, D) and (M, D), N, M >= 2"
        )
    ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    mu = ta.mean(0) - tb.mean(0)
    sa, sb = torch.cov(ta.T), torch.cov(tb.T)
    eig = torch.linalg.eigvals(sa @ sb).real.clamp(min=0)
    return float(mu @ mu + sa.trace() + sb.trace() - 2 * eig.sqrt().sum())
