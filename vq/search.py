"""Nearest-code search (docs/design.md, "Nearest code").

``k* = argmin_k ||e - c_k||²`` is computed as ``argmin_k (||c_k||² - 2 e·c_k)``: the ``||e||²``
term is the same for every code, so one matmul per tile gives the ranking. The search runs in
float32 even under bf16/fp16 autocast (low-precision dot products reorder close codes).

Why tiles: with D = 64 a matmul does only 128 flops per output element, so writing a large
slice of the N x K distance matrix to memory and reading it back for the argmin costs more
than the matmul itself (a bare ``z @ C.T`` drops from ~80 to ~30 GFLOP/s at large K). We tile
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
"""

from __future__ import annotations

import torch

DEFAULT_MAX_BYTES = 32 * 2**20
# Distance tile caps: on CPU a tile larger than the per-core L2 (1 MiB here) spills to memory;
# 512 codes x 512 rows measured best on a 2-core AVX-512 EPYC (bench/quantizers.py --search).
CPU_TILE_BYTES = 2**20
_CPU_CODE_TILE = 512
# GPUs want few, large launches; the bound is then max_bytes alone.
_GPU_CODE_TILE = 4096
# Codes per group of the two-level reduction (a multiple of the SIMD width).
_GROUP = 32


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
    x: torch.Tensor, codebook: torch.Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean distance) for each row of ``x``.

    x: (N, D), codebook: (K, D) -> (N,) int64 on x's device; ties go to the lowest index.
    At most ``max_bytes`` of distances exist at once (plus O(N + K) bookkeeping).
    Raises ``ValueError`` for non-2-D inputs, mismatched D, an empty codebook, inputs on two
    devices or a non-positive ``max_bytes``.
    """
    _check_inputs(x, codebook, max_bytes)
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float().contiguous()  # (N, D)
        codebook = codebook.float().contiguous()  # (K, D)
        c_sq = (codebook * codebook).sum(dim=1)  # (K,)
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
