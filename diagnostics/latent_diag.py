"""Why usage collapses: train one quality-benchmark configuration and look at the latent.

    .venv/bin/python diagnostics/latent_diag.py --method simvq --size 1024 --steps 600 --snapshots 100 300 --corpus DIR
    .venv/bin/python diagnostics/latent_diag.py --method simvq --size 1024 --steps 80 --lr 2e-3

Trains like bench/quality.py (``vq-train fit`` with the method's config, K, the budget and
the same seed; ``--corpus DIR`` with train/ and val/, else the bundled photographs), stopping
at each snapshot step and continuing from its ``last.ckpt``, and reports on held-out crops at
each snapshot and at the end (the learning-rate schedule is the one of the full ``--steps``
run, so a snapshot is a point of that run, not a shorter run):

- the share of the encoder output's variance in its top principal directions (near 1.0 for
  the first one = the latent has collapsed to a line, and no codebook can be used on a line)
  and its effective dimension (participation ratio (Σλ)² / Σλ² of the covariance's
  eigenvalues λ);
- for codebooks: the same effective dimension of the code vectors, and the ratio of the codes'
  spread to e's along each of e's top principal directions and over the rest of the space —
  codes spread where e has no mass are codes no token can reach;
- the number of distinct codes hit, and the training curve (window usage and MSE).

Numbers are quoted in docs/benchmarks/quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # run as a script: vq/, train/ and quality.py importable
    if str(_path) not in sys.path:
        # appended: bench/service.py must not shadow the service package
        sys.path.append(str(_path))

import quality as Q  # noqa: E402 - bench/ is a folder of scripts

from train import cli  # noqa: E402
from vq import load_tokenizer  # noqa: E402


def participation_ratio(eigenvalues: torch.Tensor) -> float:
    """Effective dimension (Σλ)² / Σλ² of a covariance with these eigenvalues: D for an
    isotropic cloud in D dimensions, 1 for a line."""
    return float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def principal_axes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the covariance of rows x (N, D)."""
    centred = x - x.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return s**2 / max(1, x.shape[0] - 1), vh.T


def spread_ratios(e: torch.Tensor, codes: torch.Tensor, top: int = 4) -> list[float]:
    """Std of the codes over std of e along e's first ``top`` principal directions, then the
    same ratio (root mean variance) over the remaining directions."""
    lam, axes = principal_axes(e)
    code_var = ((codes - codes.mean(0)) @ axes).var(0)
    ratios = (code_var[:top] / lam[:top]).sqrt().tolist()
    if axes.shape[1] > top:
        ratios.append(float((code_var[top:].mean() / lam[top:].mean()).sqrt()))
    return ratios


def report(artifact: Path, val_crops: torch.Tensor, step: int) -> None:
    model = load_tokenizer(artifact, precision="fp32").model
    with torch.no_grad():
        out = model(val_crops)
    e = out.z.movedim(1, -1).reshape(-1, out.z.shape[1]).float()
    lam, _ = principal_axes(e)
    share = (lam / lam.sum())[:4].tolist()
    print(f"step {step}:")
    print(f"  variance share of e's top principal directions: {[round(x, 3) for x in share]}")
    print(f"  effective dimension of e: {participation_ratio(lam):.2f} of {e.shape[1]}")
    print(
        f"  |mean(e)| {e.mean(0).norm():.3f}, mean |e - mean(e)| {(e - e.mean(0)).norm(dim=1).mean():.3f}"
    )
    get_codebook = getattr(model.quantizer, "get_codebook", None)  # codebook quantizers
    if get_codebook is not None:
        cb = get_codebook().float()
        print(f"  |mean(code)| {cb.mean(0).norm():.3f}, mean |code| {cb.norm(dim=1).mean():.3f}")
        print(
            f"  effective dimension of the codes: {participation_ratio(principal_axes(cb)[0]):.2f}"
        )
        ratios = [round(r, 2) for r in spread_ratios(e, cb)]
        print(f"  code spread / e spread along e's top directions, then the rest: {ratios}")
    hit = out.quantizer.indices.unique().numel()
    print(f"  codes hit on held-out tokens: {hit} of {model.codebook_size} ({e.shape[0]} tokens)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=Q.METHODS, default="simvq")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument(
        "--snapshots", type=int, nargs="*", default=[], help="also report at these steps"
    )
    p.add_argument("--lr", type=float, default=None, help="default: the method's config")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus", default=None, help="folder with train/ and val/")
    p.add_argument("--val-crops-per-image", type=int, default=4)
    args = p.parse_args(argv)
    if any(not 0 < s < args.steps for s in args.snapshots):
        p.error(f"--snapshots must lie in (0, --steps={args.steps}), got {args.snapshots}")
    torch.set_num_threads(args.threads)
    # Every leg keeps the full run's schedule and epoch length.
    overrides: tuple[str, ...] = (
        f"model.optimizer.total_steps={args.steps}",
        f"model.optimizer.warmup_steps={Q.warmup_steps(args.method, args.steps)}",
        f"data.samples_per_epoch={args.steps * args.batch_size}",
    )
    if args.lr is not None:
        overrides += (f"model.optimizer.lr={args.lr!r}",)
    cfg = Q.BenchConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        overrides=overrides,
        corpus=args.corpus,
        val_crops_per_image=args.val_crops_per_image,
        history_points=16,
    )
    dm = Q.datamodule(cfg)
    val = torch.from_numpy(np.stack(dm.val_crops())).permute(0, 3, 1, 2).float() / 127.5 - 1
    print(f"{len(dm.train_names)} training, {len(dm.val_names)} held-out images")
    print(f"{args.method} K={args.size} lr={args.lr or 'config'} steps={args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for stop in [*sorted(set(args.snapshots)), args.steps]:
            leg = dataclasses.replace(cfg, steps=stop)
            cli.main(Q.fit_args(args.method, args.size, leg, work))
            version = cli.latest_resumable_version(work)
            assert version is not None, "vq-train wrote no checkpoint"
            report(work / version / "artifact", val, stop)
        last = cli.latest_resumable_version(work)
        assert last is not None
        curve = [
            (h["step"], round(h["window_usage"], 3), round(h["train_mse"], 3))
            for h in Q.history(work / last)
        ]
    print(f"  (step, training window usage, train MSE): {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
