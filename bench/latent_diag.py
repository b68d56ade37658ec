"""Why usage collapses: train one quality-benchmark configuration briefly and look at the latent.

    .venv/bin/python bench/latent_diag.py --method simvq --size 1024 --steps 80 --lr 2e-3
    .venv/bin/python bench/latent_diag.py --method simvq --size 1024 --steps 80 --lr 2e-4

Uses bench/quality.py's model, data, crop stream and training loop (same seed), then reports
on the held-out crops: the share of the encoder output's variance in its top principal
directions (near 1.0 for the first one = the latent has collapsed to a line, and no codebook
can be used well on a line), the norms of e's mean and spread next to the codebook's, the
number of distinct codes hit, and the training curve (window usage and MSE). ``--simvq-bias``
gives SimVQ's map W a bias (the official SimVQ code's nn.Linear default) to test whether the
code cloud's fixed centre at the origin is the problem. Numbers are quoted in
docs/benchmarks/quality.md ("Learning rate").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as Q  # noqa: E402 - bench/ is a folder of scripts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=Q.METHODS, default="simvq")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=None, help="default: the method's config")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--simvq-bias", action="store_true", help="give SimVQ's W a bias (zero-init)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = () if args.lr is None else (f"model.lr={args.lr!r}",)
    cfg = Q.BenchConfig(
        steps=args.steps, batch_size=args.batch_size, overrides=overrides, history_points=8
    )
    data = Q.load_data(cfg, with_codecs=False)  # the bundled photographs
    module, rec = Q.build_module(args.method, args.size, cfg)
    model = module.model
    if args.simvq_bias:
        old = model.quantizer.book.proj
        if not isinstance(old, torch.nn.Linear):
            p.error("--simvq-bias needs a SimVQ method")
        new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.zero_()
        model.quantizer.book.proj = new
    result = Q.RunResult(args.method, args.size)
    Q.train(module, rec, data, cfg, result, log=lambda s: None)
    model.eval()
    with torch.no_grad():
        out = model(data.val_crops)
        e = out.z.movedim(1, -1).reshape(-1, out.z.shape[1]).float()
        centred = e - e.mean(0)
        s2 = torch.linalg.svdvals(centred) ** 2
        share = (s2 / s2.sum())[:4].tolist()
        print(
            f"{args.method} K={args.size} lr={module.hparams['lr']:g} steps={args.steps}"
            + (" (W with bias)" if args.simvq_bias else "")
        )
        print(f"  variance share of e's top principal directions: {[round(x, 3) for x in share]}")
        print(
            f"  |mean(e)| {e.mean(0).norm():.3f}, mean |e - mean(e)| {centred.norm(dim=1).mean():.3f}"
        )
        if hasattr(model.quantizer, "get_codebook"):
            cb = model.quantizer.get_codebook()
            print(
                f"  |mean(code)| {cb.mean(0).norm():.3f}, mean |code| {cb.norm(dim=1).mean():.3f}"
            )
        hit = out.quantizer.indices.unique().numel()
        print(
            f"  codes hit on held-out tokens: {hit} of {model.codebook_size} ({e.shape[0]} tokens)"
        )
        curve = [
            (h["step"], round(h["window_usage"], 3), round(h["train_mse"], 3))
            for h in result.history
        ]
        print(f"  (step, training window usage, train MSE): {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
