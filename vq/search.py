"""Nearest-code search (docs/design.md, "Nearest code").

``k* = argmin_k ||e - c_k||²`` is computed as ``argmin_k (||c_k||² - 2 e·c_k)``: the ``||e||²``
term is the same for every code, so one matmul per tile gives the ranking. The search runs in
float32 even under bf16/fp16 autocast (low-precision dot products reorder close codes).

Why tiles: with D = 64 a matmul does only 128 flops per output element, so writing a large
slice of the N x K distance matrix to memory and reading it back for the argmin costs more
than the matmul itself (docs/benchmarks/quantizers.md measures the untiled baseline). We tile
over rows *and* codes so that each (rows x codes) distance tile stays in the L2 cache, reduce it
at once, and keep per-row minima across code tiles. ``max_bytes`` bounds the tile; on CPU the
tile is further capped at ``CPU_TILE_BYTES`` because beyond that the tile leaves the cache.

The reduction of a tile is two-level, because ``torch.min(dim)`` with indices is several times
slower than ``torch.amin`` (values only): split each row's codes into groups of ``_GROUP``,
take the value-only minimum of every group, find the best group with ``min`` on that much
smaller matrix, then the position inside the winning group with ``argmin`` over ``_GROUP``
values gathered from the tile. All values compared are the tile's own, so the result is exactly
the argmin of the computed distances.

Ties go to the lowest code index, as with ``torch.argmin``: every step keeps the first minimum
(first group, first position in the group, first code tile).

``nearest_code(..., bf16_candidates=True)`` first picks *candidates* from bf16 distance tiles
(bf16 matmuls run at ~2.7x the float32 rate on AVX-512 BF16 / AMX CPUs) and then re-ranks every
candidate exactly in float32 (``_search_bf16``; the error bound that makes this exact is proved
there). The result is the same as the float32 search's; it is opt-in because on the CPUs we
measured it did not pay (docs/benchmarks/throughput.md, "nearest_code").
"""

from __future__ import annotations

import math

import torch

DEFAULT_MAX_BYTES = 32 * 2**20
# Distance tile caps: on CPU a tile larger than a typical per-core L2 (1 MiB) spills to
# memory; the tile shape is the fastest bench/quantizers.py found (docs/benchmarks/quantizers.md).
CPU_TILE_BYTES = 2**20
_CPU_CODE_TILE = 512
# GPUs want few, large launches; the bound is then max_bytes alone.
_GPU_CODE_TILE = 4096
# Codes per group of the two-level reduction (a multiple of the SIMD width).
_GROUP = 32

# bf16 candidate search (``_search_bf16``): codes per candidate group, codes and rows per bf16
# distance tile (2 bytes per distance: 512 x 1024 fills the 1 MiB L2), the candidate groups a
# row may have before it falls back to the exact float32 tile search, and the smallest
# codebook (below it the float32 search is as fast).
_BF16_GROUP = 16
_BF16_CODE_TILE = 512
_BF16_ROW_TILE = 1024
_BF16_MAX_GROUPS_PER_ROW = 8
_BF16_MIN_CODES = 512
# Unit roundoff of bf16 (8 significant bits, round to nearest) and of float32.
_U_BF16 = 2.0**-8
_U_FP32 = 2.0**-24


def _check_inputs(x: torch.Tensor, codebook: torch.Tensor, max_bytes: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor of shape (N, D), got {shape}")
    if not isinstance(codebook, torch.Tensor) or codebook.ndim != 2:
        shape = (
            tuple(codebook.shape) if isinstance(codebook, torch.Tensor) else type(codebook).__name__
        )
        raise ValueError(f"codebook must be a 2-D tensor of shape (K, D), got {shape}")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"x (N, D) and codebook (K, D) must share D, got x {tuple(x.shape)} "
            f"and codebook {tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise ValueError("codebook must have at least one code, got shape (0, D)")
    if x.device != codebook.device:
        raise ValueError(
            f"x and codebook must be on the same device, got {x.device} and {codebook.device}"
        )
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")


def tile_shape(n: int, k: int, max_bytes: int, device_type: str = "cpu") -> tuple[int, int]:
    """(rows, codes) of one float32 distance tile for ``n`` rows and ``k`` codes."""
    elems = max(1, max_bytes // 4)
    if device_type == "cpu":
        elems = min(elems, CPU_TILE_BYTES // 4)
        code_tile = _CPU_CODE_TILE
    else:
        code_tile = _GPU_CODE_TILE
    codes = min(k, code_tile, elems)
    rows = max(1, min(n, elems // codes))
    return rows, codes


@torch.no_grad()
def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    bf16_candidates: bool = False,
) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean distance) for each row of ``x``.

    x: (N, D), codebook: (K, D) -> (N,) int64 on x's device; ties go to the lowest index.
    The result is that of the float32 search (``||c||² - 2 x·c`` in float32) whichever route
    runs: ``bf16_candidates=True`` takes the bf16 candidate route on a CPU, False (the
    default) the plain float32 tiles.
    At most ``max_bytes`` of float32 distances exist at once (plus O(N + K) bookkeeping;
    the bf16 route holds a fixed 1 MiB tile and (K / 16) x 1024 group minima).
    Raises ``ValueError`` for non-2-D inputs, mismatched D, an empty codebook, inputs on two
    devices or a non-positive ``max_bytes``.
    """
    _check_inputs(x, codebook, max_bytes)
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float().contiguous()  # (N, D)
        codebook = codebook.float().contiguous()  # (K, D)
        c_sq = (codebook * codebook).sum(dim=1)  # (K,)
        if bf16_candidates and x.device.type == "cpu":
            return _search_bf16(x, codebook, c_sq, max_bytes)
        return _search_fp32(x, codebook, c_sq, max_bytes)


def _search_fp32(
    x: torch.Tensor, codebook: torch.Tensor, c_sq: torch.Tensor, max_bytes: int
) -> torch.Tensor:
    """The float32 tile search (module docstring): x (N, D), codebook (K, D), c_sq (K,)."""
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    rows, codes = tile_shape(n, k, max_bytes, x.device.type)
    num_tiles = -(-k // codes)
    tile = torch.empty(rows * codes, device=x.device)  # reused distance buffer
    # Per row block: each code tile's best value and index, reduced over tiles at the end.
    best_val = torch.empty(num_tiles, rows, device=x.device)  # (T, rows)
    best_idx = torch.empty(num_tiles, rows, dtype=torch.long, device=x.device)  # (T, rows)
    row_ids = torch.arange(rows, device=x.device)
    for r0 in range(0, n, rows):
        block = x[r0 : r0 + rows]  # (nb, D)
        nb = block.shape[0]
        for t in range(num_tiles):
            c0 = t * codes
            cb = codebook[c0 : c0 + codes]  # (kb, D)
            kb = cb.shape[0]
            dist = tile[: nb * kb].view(nb, kb)
            torch.addmm(c_sq[c0 : c0 + kb], block, cb.t(), alpha=-2.0, out=dist)  # (nb, kb)
            val, idx = best_val[t, :nb], best_idx[t, :nb]
            if kb % _GROUP == 0 and kb > _GROUP:
                groups = dist.view(nb, kb // _GROUP, _GROUP)  # (nb, G, _GROUP)
                torch.min(groups.amin(dim=2), dim=1, out=(val, idx))  # best group (nb,)
                offset = groups[row_ids[:nb], idx].argmin(dim=1)  # (nb, _GROUP) -> (nb,)
                torch.add(offset, idx, alpha=_GROUP, out=idx)  # index within the tile
            else:
                torch.min(dist, dim=1, out=(val, idx))
        if num_tiles == 1:
            out[r0 : r0 + nb] = best_idx[0, :nb]
        else:
            # min over dim 0 returns the first (lowest) tile on ties; tile t starts at code
            # t * codes, which turns the index within the tile into the code id.
            winner = best_val[:, :nb].min(dim=0).indices  # (nb,)
            local = best_idx[:, :nb].gather(0, winner[None])[0]  # (nb,)
            torch.add(local, winner, alpha=codes, out=out[r0 : r0 + nb])

    return out


def _bf16_error_scale(d: int) -> float:
    """epsilon with |a_k - r_k| <= epsilon * (||c_k||² + 2 ||x|| ||c_k||) (see ``_search_bf16``)."""
    u, gamma = _U_BF16, (d + 1) * _U_FP32 / (1 - (d + 1) * _U_FP32)
    return 4.5 * u + 3.0 * gamma


def _search_bf16(
    x: torch.Tensor, codebook: torch.Tensor, c_sq: torch.Tensor, max_bytes: int
) -> torch.Tensor:
    """bf16 candidates, exact float32 re-ranking: the float32 search's result, from cheaper
    bf16 matmuls (whether it is faster depends on the CPU; module docstring).

    Each distance ``r_k = ||c_k||² - 2 x·c_k`` (what ``_search_fp32`` ranks) is first
    approximated by one bf16 matmul, ``a_k = [c̃_k, bf16(||c_k||²)] · [bf16(-2x), 1]`` (bf16
    inputs, float32 accumulation, bf16 output). Codes are grouped by 16; a group is a
    candidate for a row when its smallest ``a`` lies within ``2E`` of the row's smallest
    ``a``; every code of every candidate group is then re-ranked exactly in float32.

    Why nothing is missed. With u = 2^-8 (bf16 rounding) and γ = (D+1)·2^-24 (a float32 sum
    of D+1 exact products), and M_k = ||c_k||² + 2||x||·||c_k||:
      rounding ||c_k||² to bf16 moves a_k by <= u·||c_k||²;
      rounding x and c_k to bf16 moves the dot term by <= Σ 2|x_i c_i|·((1+u)² - 1)
        <= u(2+u)·2||x||·||c_k|| (Cauchy-Schwarz);
      the float32 accumulation adds <= γ(1+u)²·M_k, rounding the result to bf16 <= u(1+3u)·M_k;
      the float32 reference r_k itself is within γ·M_k of the real value.
    So |a_k - r_k| <= (4u + 5u² + 3γ)·M_k <= ε·M_k with ε = 4.5u + 3γ, and with
    M = max_k M_k (using max ||c_k||², max ||c_k||), |a_k - r_k| <= E = ε·M for every k.
    Let j be a code with the smallest a (a_j = A) and k* the float32 winner. Then
    r_k* <= r_j <= A + E, so a_k* <= r_k* + E <= A + 2E: k*'s group is a candidate. A code k
    outside the candidate groups has a_k > A + 2E, so r_k >= a_k - E > A + E >= r_j >= r_k*:
    it can neither win nor tie. Re-ranking all candidates with the lowest id on ties thus
    returns the float32 search's answer. A row with more than ``_BF16_MAX_GROUPS_PER_ROW``
    candidate groups (near-duplicate codes, adversarial inputs), or none (non-finite
    values), is searched by ``_search_fp32`` instead.
    """
    n, d = x.shape
    k = codebook.shape[0]
    g = _BF16_GROUP
    num_groups = -(-k // g)
    k_pad = num_groups * g
    dev = x.device
    # Augmented operands: one plain matmul gives ||c||² - 2 c·x (D + 2 keeps bf16 pairs even).
    c_aug = torch.zeros(k_pad, d + 2, dtype=torch.bfloat16, device=dev)  # (K', D + 2)
    c_aug[:k, :d] = codebook
    c_aug[:k, d] = c_sq
    # Padding codes sit at a huge distance: they never win a group's minimum.
    c_aug[k:, d] = torch.finfo(torch.bfloat16).max / 4
    x_aug = torch.zeros(n, d + 2, dtype=torch.bfloat16, device=dev)  # (N, D + 2)
    x_aug[:, :d] = x * -2.0  # bf16(-2x) = -2 bf16(x): scaling by 2 is exact
    x_aug[:, d] = 1.0
    c_norm = c_sq.max().clamp_min(0).sqrt()
    bound = _bf16_error_scale(d) * (c_sq.max() + 2.0 * x.norm(dim=1) * c_norm)  # (N,) = E

    # Rows per block: the block's group minima (num_groups x rows bf16) stay within 8 MiB.
    rows = max(64, min(_BF16_ROW_TILE, (8 * 2**20) // (2 * num_groups)))
    code_tile = min(k_pad, _BF16_CODE_TILE)
    tile = torch.empty(code_tile * rows, dtype=torch.bfloat16, device=dev)
    group_min = torch.empty(num_groups, rows, dtype=torch.bfloat16, device=dev)
    out = torch.empty(n, dtype=torch.long, device=dev)
    offsets = torch.arange(g, device=dev)  # (g,)
    for r0 in range(0, n, rows):
        xb = x_aug[r0 : r0 + rows]  # (nb, D + 2)
        nb = xb.shape[0]
        gm = group_min[:, :nb]
        for c0 in range(0, k_pad, code_tile):
            kb = min(code_tile, k_pad - c0)
            dist = tile[: kb * nb].view(kb, nb)
            torch.mm(c_aug[c0 : c0 + kb], xb.t(), out=dist)  # (kb, nb): codes x rows
            # Vertical minimum over each group's g rows: contiguous, vectorised.
            torch.amin(dist.view(kb // g, g, nb), dim=1, out=gm[c0 // g : (c0 + kb) // g])
        best = gm.amin(dim=0).float()  # (nb,) = A per row
        cand = gm.float() <= (best + 2.0 * bound[r0 : r0 + nb])[None, :]  # (G, nb)
        count = cand.sum(dim=0)  # (nb,); 0 only for non-finite rows
        overflow = (count > _BF16_MAX_GROUPS_PER_ROW) | (count == 0)  # (nb,)
        cand[:, overflow] = False
        grp, row = cand.nonzero(as_tuple=True)  # (P,), (P,): candidate (group, row) pairs
        ids = grp[:, None] * g + offsets  # (P, g) code ids
        valid = ids < k
        ids = ids.clamp_max(k - 1)
        # Exact float32 distances of every candidate code, as _search_fp32 computes them.
        exact = torch.baddbmm(
            c_sq[ids][:, :, None], codebook[ids], x[row + r0][:, :, None], alpha=-2.0
        )[:, :, 0]  # (P, g)
        exact = exact.masked_fill(~valid, math.inf)
        val, pos = exact.min(dim=1)  # (P,): the first minimum within the group
        code = ids.gather(1, pos[:, None])[:, 0]  # (P,)
        # Per row: the smallest value, then the lowest code id among the pairs that reach it.
        row_best = torch.full((nb,), math.inf, device=dev)
        row_best.scatter_reduce_(0, row, val, "amin")
        tied_code = torch.where(val == row_best[row], code, k)
        winner = torch.full((nb,), k, dtype=torch.long, device=dev)
        winner.scatter_reduce_(0, row, tied_code, "amin")
        if bool(overflow.any()):
            idx = overflow.nonzero()[:, 0]
            winner[idx] = _search_fp32(x[r0 + idx], codebook, c_sq, max_bytes)
        out[r0 : r0 + nb] = winner
    return out
