"""Pure math shared by the quantizers (docs/design.md, "The quantizers").

Every function here is stateless and works on flat rows: ``e`` and ``q`` are (N, D),
one encoder vector and its chosen code per row. The quantizer modules flatten
(B, D, *spatial) to (N, D) before calling in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------
# Gradient estimators
# ----------------------------------------------------------------------------------------


def ste(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator (van den Oord et al. 2017, §3.2): value q, gradient identity to e.

    Written as ``sg(q) + (e - sg(e))`` rather than the usual ``e + sg(q - e)``: ``e - sg(e)`` is
    exactly zero, so the value is exactly ``q`` (bit for bit) and ``decode`` reproduces it.
    No gradient reaches ``q``: the codebook learns from the codebook loss (or EMA) only.
    """
    return q.detach() + (e - e.detach())


def rotate_to(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rotation trick (Fifty et al., ICLR 2025, §4.2): value q, gradient ``λ Rᵀ g`` to e.

    e, q: (N, D). With ``ê = e/|e|``, ``q̂ = q/|q|``, ``r = (ê + q̂)/|ê + q̂|``, ``λ = |q|/|e|``,
    ``R = I - 2 r rᵀ + 2 q̂ êᵀ`` rotates ê onto q̂, and the forward pass is ``sg(λ R) e``.
    R is never formed: ``R e = e - 2 (r·e) r + 2 (ê·e) q̂`` with r, ê, q̂, λ detached, so the cost
    is O(N D). The returned value is exactly ``q`` (the rotated vector's value is swapped for
    q with the same exact-zero trick as :func:`ste`), and no gradient reaches q.

    Degenerate rows (the weak spots named in the paper's §6), guarded with ``eps``:
    - ``|e| < eps`` or ``|q| < eps``: the direction of e or q is undefined and λ blows up
      or vanishes; those rows fall back to the straight-through gradient (R = I, λ = 1).
    - ``ê ≈ -q̂`` (``|ê + q̂| < eps``): r is undefined; we set r = 0, leaving
      ``R = I - 2 ê êᵀ`` (a Householder reflection). It maps ê to -ê = q̂ and is orthogonal,
      so the norm and angle properties still hold.
    Every gradient is finite.
    """
    e_norm = e.detach().norm(dim=-1, keepdim=True)  # (N, 1)
    q_norm = q.detach().norm(dim=-1, keepdim=True)  # (N, 1)
    e_hat = e.detach() / e_norm.clamp_min(eps)
    q_hat = q.detach() / q_norm.clamp_min(eps)
    s = e_hat + q_hat
    s_norm = s.norm(dim=-1, keepdim=True)
    r = torch.where(s_norm < eps, torch.zeros_like(s), s / s_norm.clamp_min(eps))
    lam = q_norm / e_norm.clamp_min(eps)  # (N, 1)

    rotated = lam * (
        e
        - 2.0 * (r * e).sum(dim=-1, keepdim=True) * r
        + 2.0 * (e_hat * e).sum(dim=-1, keepdim=True) * q_hat
    )  # (N, D), = λ R e with gradient λ Rᵀ g
    degenerate = (e_norm < eps) | (q_norm < eps)  # (N, 1)
    path = torch.where(degenerate, e, rotated)
    return q.detach() + (path - path.detach())


def vq_loss(e: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """VQ-VAE loss ``||sg(e) - q||² + β ||e - sg(q)||²`` (van den Oord et al. 2017, eq. 3).

    Both terms are means over all elements. The first (codebook) term trains the codebook
    (or SimVQ's W); the second (commitment) term, weighted by β, trains the encoder.
    β multiplies the commitment term, not the codebook term (taming-transformers had it
    swapped for years).
    """
    return codebook_loss(e, q) + beta * commitment_loss(e, q)


def codebook_loss(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``||sg(e) - q||²`` (mean): moves the codes toward the encoder outputs."""
    return F.mse_loss(q, e.detach())


def commitment_loss(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``||e - sg(q)||²`` (mean): keeps the encoder outputs close to their codes."""
    return F.mse_loss(e, q.detach())


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, ``x / max(||x||, 1e-12)`` over the last dim (``F.normalize``,
    as LlamaGen): the l2-normalised codebook compares unit encoder rows with unit codes
    (Yu et al. 2022, ViT-VQGAN, §3.2), so the squared distance is ``2 - 2 cos``."""
    return F.normalize(x, p=2.0, dim=-1)


# ----------------------------------------------------------------------------------------
# FSQ (Mentzer et al., ICLR 2024, §3 and Appendix A.1)
# ----------------------------------------------------------------------------------------

FSQ_BOUND_EPS = 1e-3


def fsq_bound(z: torch.Tensor, levels: torch.Tensor, eps: float = FSQ_BOUND_EPS) -> torch.Tensor:
    """Squash each channel so that rounding gives exactly L_i integer values.

    z: (N, d), levels: (d,) int. Returns ``tanh(z + shift) * half_l - offset`` with
    ``half_l = (L - 1)(1 + eps)/2``, ``offset = 0.5`` for even L (0 for odd) and
    ``shift = atanh(offset / half_l)``, so that z = 0 maps to 0. After rounding, odd L gives
    the integers ``[-(L-1)/2, (L-1)/2]`` and even L gives ``[-L/2, L/2 - 1]``.

    Which bound: the paper's Appendix A.1 writes ``half_l = (L-1)(1-eps)/2`` and
    ``shift = tan(offset/half_l)``; we follow vector_quantize_pytorch's ``(1 + eps)`` and
    ``atanh`` (the exact inverse of tanh, so the shift really centres 0). The two agree
    except within about eps of a rounding edge, i.e. on a small fraction of inputs.
    """
    lv = levels.to(z.dtype)
    half_l = (lv - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
    shift = torch.atanh(offset / half_l)
    return torch.tanh(z + shift) * half_l - offset


def fsq_quantize(z: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bound, round with a straight-through gradient, rescale: (N, d) -> (codes, level ids).

    codes: (N, d) in [-1, 1] (value ``round(bound(z)) / (L // 2)``, exact), gradient that of
    ``bound(z) / (L // 2)``. level ids: (N, d) int64 in [0, L_i).
    """
    bounded = fsq_bound(z, levels)
    half_width = (levels // 2).to(z.dtype)
    rounded = bounded.detach().round()
    codes = ste(bounded / half_width, rounded / half_width)
    level_ids = (rounded + half_width).long()
    return codes, level_ids


def fsq_basis(levels: Sequence[int]) -> torch.Tensor:
    """Mixed-radix place values (1, L_0, L_0 L_1, ...): channel 0 is the least significant."""
    basis = [1]
    for level in list(levels)[:-1]:
        basis.append(basis[-1] * int(level))
    return torch.tensor(basis, dtype=torch.long)


def fsq_levels_to_index(level_ids: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(..., d) per-channel level ids -> (...) int64 code id ``Σ_i l_i · basis_i``."""
    return (level_ids.long() * basis).sum(dim=-1)


def fsq_index_to_levels(
    indices: torch.Tensor, levels: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """(...) int64 code ids -> (..., d) per-channel level ids (inverse of the above)."""
    return (indices.long().unsqueeze(-1) // basis) % levels


def fsq_levels_to_codes(level_ids: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(..., d) level ids in [0, L) -> (..., d) float32 codes ``(l - L//2) / (L//2)``."""
    half_width = (levels // 2).float()
    return (level_ids.float() - half_width) / half_width


# ----------------------------------------------------------------------------------------
# EMA codebook (van den Oord et al. 2017, Appendix A.1; Razavi et al. 2019, VQ-VAE-2)
# ----------------------------------------------------------------------------------------


def ema(average: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    """Exponential moving average step ``γ · average + (1 - γ) · value``; the EMA codebook
    applies it to the hit counts (``N_k ← γ N_k + (1-γ) n_k``) and the assigned sums
    (``m_k ← γ m_k + (1-γ) Σ_{e→k} e``)."""
    return decay * average + (1.0 - decay) * value


def assignment_stats(
    e: torch.Tensor, indices: torch.Tensor, codebook_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code hit counts n_k (K,) and sums Σ_{e→k} e (K, D) for one batch. e: (N, D)."""
    counts = torch.bincount(indices, minlength=codebook_size).to(e.dtype)  # (K,)
    sums = torch.zeros(codebook_size, e.shape[1], dtype=e.dtype, device=e.device)
    sums.index_add_(0, indices, e)  # (K, D)
    return counts, sums


def laplace_smooth(counts: torch.Tensor, eps: float) -> torch.Tensor:
    """Laplace-smoothed counts ``(N_k + ε) / (n + K ε) · n`` with n = Σ N_k.

    Keeps every count > 0 (so ``m_k / N_k`` is defined for codes never hit) while
    preserving the total.
    """
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


def ema_codebook(counts: torch.Tensor, sums: torch.Tensor, eps: float) -> torch.Tensor:
    """Codes ``c_k = m_k / Ñ_k`` with Ñ the Laplace-smoothed counts. (K,), (K, D) -> (K, D)."""
    return sums / laplace_smooth(counts, eps).unsqueeze(1)
