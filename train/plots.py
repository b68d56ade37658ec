"""Figures for TensorBoard: the sorted code-usage histogram and a reconstruction grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def figure_usage_histogram(hist: torch.Tensor, title: str) -> Any:
    """A matplotlib figure of hit counts per code, sorted (a flat line = uniform usage)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    counts = hist.double().cpu().sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    # A filled step curve, not one bar per code: with 64k codes bars take seconds to draw.
    ax.fill_between(np.arange(len(counts)), counts, step="post", linewidth=0)
    ax.set_yscale("symlog")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("hits")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def reconstruction_grid(images: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) inputs and reconstructions in [-1, 1] -> one (3, 2H + 3 pad, N(W + pad) + pad)
    image in [0, 1]: inputs on the top row, reconstructions below."""
    n, c, h, w = images.shape
    grid = torch.ones(c, 2 * h + 3 * pad, n * (w + pad) + pad)
    for row, batch in enumerate((images, recon)):
        top = pad + row * (h + pad)
        for i in range(n):
            left = pad + i * (w + pad)
            grid[:, top : top + h, left : left + w] = ((batch[i].float().cpu() + 1) / 2).clamp(0, 1)
    return grid
