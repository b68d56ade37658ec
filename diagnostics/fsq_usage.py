"""Why an FSQ tokenizer leaves codes unused: per-channel levels against their combinations.

    python diagnostics/fsq_usage.py --kodak DIR --tokenizer models/default          # 24 images
    python diagnostics/fsq_usage.py --kodak DIR --tokenizer models/default --quick  # 2 images

An FSQ code is a tuple of per-channel levels (Mentzer et al., ICLR 2024, §3), so a codebook
can go unused for two different reasons, which call for different fixes:

- the **marginals** are narrow: a channel's outer levels are (almost) never produced, so no
  code containing them can be hit (a bound/scale problem of the encoder's output);
- the channels are **dependent**: every level of every channel is used, but only some
  combinations (the latent lives on a lower-dimensional set than the grid; more data,
  steps or capacity spread it, the quantizer cannot).

The script encodes the images (float32), counts the codes hit, and compares it with the
number of distinct codes the same number of tokens would hit if the channels were
independent with the measured marginals: E[distinct] = Σ_k 1 − (1 − p_k)^N with p_k the
product of the code's per-channel level frequencies (the occupancy formula). Observed far
below that = dependence; the independent figure itself low = narrow marginals.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # run as a script: vq/ and bench/kodak.py importable
    if str(_path) not in sys.path:
        # appended: bench/service.py must not shadow the service package
        sys.path.append(str(_path))

import kodak  # noqa: E402 - bench/ is a folder of scripts

from vq import functional as VF  # noqa: E402
from vq import load_tokenizer  # noqa: E402


def level_histograms(level_ids: torch.Tensor, levels: Sequence[int]) -> list[torch.Tensor]:
    """(N, d) level ids -> per channel the (L_i,) frequencies (each sums to 1)."""
    return [
        torch.bincount(level_ids[:, i], minlength=level).double() / level_ids.shape[0]
        for i, level in enumerate(levels)
    ]


def expected_distinct_independent(marginals: Sequence[torch.Tensor], tokens: int) -> float:
    """Σ_k 1 − (1 − p_k)^N over all codes k, p_k = Π_i marginal_i[level_i(k)]: the codes N
    tokens hit in expectation if the channels were independent (the occupancy formula)."""
    p = marginals[0]
    for m in marginals[1:]:
        p = torch.outer(p, m).flatten()  # the product distribution over all combinations
    return float((1.0 - torch.exp(tokens * torch.log1p(-p.clamp(max=1 - 1e-15)))).sum())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=str(ROOT / "models" / "default"))
    p.add_argument("--kodak", default=None, help="folder of the Kodak images (required)")
    p.add_argument("--quick", action="store_true", help="the first 2 images only")
    args = p.parse_args(argv)
    if args.kodak is None or not Path(args.kodak).is_dir():
        where = "" if args.kodak is None else f" ({args.kodak} is not a folder)"
        print(f"error: pass --kodak DIR, a folder of the Kodak images{where}", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.tokenizer, precision="fp32")
    levels = getattr(tok.model.quantizer, "levels", None)
    if levels is None:
        print(f"error: {args.tokenizer} is not an FSQ tokenizer", file=sys.stderr)
        return 2
    images = kodak.load_images(args.kodak, limit=2 if args.quick else None)
    with torch.no_grad():
        ids = torch.cat([tok.encode(image).flatten() for image in images.pixels])
    levels_t = torch.tensor(levels)
    level_ids = VF.fsq_index_to_levels(ids, levels_t, VF.fsq_basis(levels))  # (N, d)
    marginals = level_histograms(level_ids, levels)
    n, k = ids.numel(), math.prod(levels)
    observed = int(torch.unique(ids).numel())
    independent = expected_distinct_independent(marginals, n)
    corr = torch.corrcoef(level_ids.T.double())
    off = [abs(float(corr[i, j])) for i, j in itertools.combinations(range(len(levels)), 2)]
    print(
        f"{kodak.display_path(args.tokenizer)}: FSQ levels {list(levels)} (K = {k:,}), {n:,} Kodak tokens"
    )
    print("| channel | levels | levels used | share of tokens at the two outer levels |")
    print("|---|---|---|---|")
    for i, (level, m) in enumerate(zip(levels, marginals, strict=True)):
        print(f"| {i} | {level} | {int((m > 0).sum())} | {float(m[0] + m[-1]):.1%} |")
    print(f"codes hit: {observed:,} of {k:,} ({observed / k:.1%})")
    print(
        f"if the channels were independent with these marginals: {independent:,.0f} "
        f"({independent / k:.1%}); upper bound with uniform marginals: "
        f"{k * (1 - (1 - 1 / k) ** n):,.0f}"
    )
    print(f"mean |correlation| between channels' level ids: {sum(off) / len(off):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
