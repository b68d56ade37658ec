"""Nearest-code search (shared DESIGN.md, "Nearest code").

k* = argmin_k ||e - c_k||^2 computed as ||c_k||^2 - 2 e.c_k with matmuls, in float32
even under autocast, chunked so that only a bounded slice of the N x K distance
matrix exists at once.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_BYTES = 32 * 2**20


@torch.no_grad()
def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> torch.Tensor:
    """Index of the nearest codebook row for each row of ``x``.

    x: (N, D), codebook: (K, D) -> (N,) int64.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        codebook = codebook.float()
        n, k = x.shape[0], codebook.shape[0]
        c_sq = (codebook * codebook).sum(dim=1)  # (K,)
        rows = max(1, max_bytes // (4 * max(k, 1)))
        out = torch.empty(n, dtype=torch.long, device=x.device)
        for start in range(0, n, rows):
            block = x[start : start + rows]  # (n_b, D)
            dist = torch.addmm(c_sq, block, codebook.t(), alpha=-2.0)  # (n_b, K)
            out[start : start + rows] = dist.argmin(dim=1)
        return out
