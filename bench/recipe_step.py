"""Cost of one training step of the perceptual + adversarial recipe against an MSE step, at
the shipped tokenizer's configuration (configs/default.yaml: batch 8 of 96x96 crops).

    python bench/recipe_step.py                      # JSON in runs/bench/recipe_step/
    python bench/recipe_step.py --out docs/benchmarks/recipe_step   # the committed report

Each variant trains through ``VQVAEModule`` and Lightning's ``Trainer`` on fixed in-memory
batches; the variants alternate over ``--rounds`` rounds and the median step time counts
(one machine, one run: the ratio is what is compared, docs/benchmarks/recipe_step.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from report import recipe_step_markdown, write  # bench/ is a folder of scripts

from train.module import VQVAEModule

REPO = Path(__file__).resolve().parents[1]
RECIPE = {
    "perceptual": {"kind": "ms_ssim", "weight": 0.5},
    "adversarial": {"weight": 0.5, "adaptive": True, "loss": "hinge"},
    "ema_decay": 0.998,
    "l1_weight": 1.0,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "mse": {},
    "recipe": RECIPE,
    "recipe_decoder_only": {**RECIPE, "trainable": "decoder"},
}


class StepTimer(L.Callback):
    def __init__(self, skip: int) -> None:
        self.skip, self._t = skip, 0.0
        self.times: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step > self.skip:
            self.times.append(time.perf_counter() - self._t)


def time_variant(options: dict[str, Any], batch: torch.Tensor, steps: int, precision: str) -> float:
    """Median seconds per optimizer step of ``steps`` steps after 2 warm-up steps."""
    vqvae = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["model"]["vqvae"]
    torch.manual_seed(0)
    module = VQVAEModule(vqvae=vqvae, warmup_steps=1, **options)
    timer = StepTimer(skip=2)
    trainer = L.Trainer(
        max_steps=steps + 2,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    batches = list(batch.repeat(steps + 2, 1, 1, 1).split(len(batch)))  # (B, 3, H, W) each
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # type: ignore[arg-type,var-annotated]
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(timer.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round (for the tests)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "recipe_step")
    args = parser.parse_args()
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    torch.manual_seed(0)
    batch = torch.rand(8, 3, 96, 96) * 2 - 1  # configs/default.yaml: batch 8, 96x96 crops
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, options in VARIANTS.items():
            samples[name].append(time_variant(options, batch, steps, args.precision))
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    result = {
        "benchmark": "recipe_step",
        "command": "python bench/recipe_step.py" + (" --quick" if args.quick else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "precision": args.precision,
        "batch": [8, 3, 96, 96],
        "steps": steps,
        "rounds": rounds,
        "seconds_per_step": seconds,
        "samples": samples,
        "ratio_to_mse": {name: seconds[name] / seconds["mse"] for name in VARIANTS},
        "target_max_ratio": 2.0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe_step.json").write_text(json.dumps(result, indent=2) + "\n")
    write(args.out / "recipe_step.md", recipe_step_markdown(result))
    print(json.dumps(result["ratio_to_mse"], indent=2))


if __name__ == "__main__":
    main()
