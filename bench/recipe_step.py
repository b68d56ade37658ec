"""Cost of one training step of the perceptual + adversarial recipe against an MSE step, at
the shipped tokenizer's configuration (configs/default.yaml: batch 8 of 96x96 crops), with
MS-SSIM and with LPIPS (VGG, the weights of ``vq-lpips-weights``; its rows are skipped with a
note where they are not converted).

    python bench/recipe_step.py                      # runs/bench/recipe_step/recipe_step.{json,md}
    python bench/recipe_step.py --out docs/benchmarks/recipe_step   # the committed report

Each variant trains through ``VQVAEModule`` and Lightning's ``Trainer`` on fixed in-memory
batches; the variants alternate over ``--rounds`` rounds and the median step time counts
(one machine, one run: the ratio is what is compared, docs/benchmarks/recipe_step.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # bench/ is a folder of scripts
import torch
import yaml
from steps import StepTimes, trainer

from train.lpips import resolve_weights
from train.module import VQVAEModule
from train.optimization import OptimizerConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = {
    "perceptual": {"kind": "ms_ssim", "weight": 0.5},
    "adversarial": {"weight": 0.5, "adaptive": True, "loss": "hinge"},
    "ema": {"decay": 0.998},
    "reconstruction": {"l1_weight": 1.0},
}
# The same recipe with LPIPS as SimVQ and LlamaGen train it (VGG, weight 1.0). Its backbone
# runs as in training: channels_last, bf16 under bf16-mixed, the original's features once per
# step without a graph (train/lpips.py).
LPIPS_RECIPE = {**RECIPE, "perceptual": {"kind": "lpips", "net": "vgg", "weight": 1.0}}
VARIANTS: dict[str, dict[str, Any]] = {
    "mse": {},
    "recipe": RECIPE,
    "recipe_decoder_only": {**RECIPE, "trainable": "decoder"},
    "recipe_lpips": LPIPS_RECIPE,
    "recipe_lpips_decoder_only": {**LPIPS_RECIPE, "trainable": "decoder"},
}
LPIPS_ROWS = ("recipe_lpips", "recipe_lpips_decoder_only")


def runnable_variants() -> tuple[dict[str, dict[str, Any]], str | None]:
    """The variants this machine can time, and a note on any left out (the LPIPS rows need
    the converted weights)."""
    try:
        resolve_weights("vgg", None)
    except ValueError as exc:
        kept = {k: v for k, v in VARIANTS.items() if k not in LPIPS_ROWS}
        return kept, f"LPIPS rows not measured: {exc}"
    return dict(VARIANTS), None


def time_variant(options: dict[str, Any], batch: torch.Tensor, steps: int, precision: str) -> float:
    """Median seconds per optimizer step of ``steps`` steps after 2 warm-up steps."""
    vqvae = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["model"]["vqvae"]
    torch.manual_seed(0)
    module = VQVAEModule(vqvae=vqvae, optimizer=OptimizerConfig(warmup_steps=1), **options)
    clock = StepTimes()
    batches = list(batch.repeat(steps + 2, 1, 1, 1).split(len(batch)))  # (B, 3, H, W) each
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # type: ignore[arg-type,var-annotated]
    trainer(steps + 2, precision, clock).fit(module, train_dataloaders=loader)
    return statistics.median(clock.step_seconds(skip=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser(__doc__, "recipe_step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    args = parser.parse_args(argv)
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    torch.manual_seed(0)
    batch = torch.rand(8, 3, 96, 96) * 2 - 1  # configs/default.yaml: batch 8, 96x96 crops
    variants, lpips_note = runnable_variants()
    if lpips_note:
        print(lpips_note, flush=True)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, options in variants.items():
            samples[name].append(time_variant(options, batch, steps, args.precision))
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    result = common.meta("recipe_step", argv, args.quick)
    result.update(
        precision=args.precision,
        batch=[8, 3, 96, 96],
        steps=steps,
        rounds=rounds,
        seconds_per_step=seconds,
        samples=samples,
        ratio_to_mse={name: seconds[name] / seconds["mse"] for name in variants},
        lpips_note=lpips_note,
    )
    common.save(result, args.out)


if __name__ == "__main__":
    main()
