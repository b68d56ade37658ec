"""Is a finished training run a healthy tokenizer? Reads a ``vq-train fit`` run's TensorBoard
log and judges its last figures against docs/training.md's definition.

    python diagnostics/health.py runs/rotation/version_0 [more runs ...]

Healthy (docs/training.md, "Healthy tokenizers"): at the end of training at least
``MIN_USAGE`` of the K codes are used over the codebook monitor's window of training tokens
(``usage/window_usage``), and the last held-out PSNR (``val/psnr``) is at least
``MIN_PSNR`` dB. Exit status 1 when a run is not healthy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

MIN_USAGE = 0.5
MIN_PSNR = 17.0
KEYS = ("usage/window_usage", "usage/perplexity", "usage/dead_codes", "val/psnr", "val/ssim")


def last_scalars(run: Path) -> dict[str, tuple[int, float]]:
    """(step, value) of the last event of each scalar in ``KEYS`` under ``run``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    out = {}
    for key in KEYS:
        if key in tags:
            event = acc.Scalars(key)[-1]
            out[key] = (event.step, event.value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/NAME/version_N)")
    args = p.parse_args(argv)
    healthy_all = True
    for run in args.runs:
        s = last_scalars(run)
        if "usage/window_usage" not in s or "val/psnr" not in s:
            print(f"{run}: no usage/window_usage or val/psnr logged (did the run finish?)")
            healthy_all = False
            continue
        step, usage = s["usage/window_usage"]
        psnr = s["val/psnr"][1]
        healthy = usage >= MIN_USAGE and psnr >= MIN_PSNR
        healthy_all &= healthy
        extra = ", ".join(
            f"{k.split('/')[1]} {s[k][1]:.4g}" for k in KEYS[1:] if k in s and k != "val/psnr"
        )
        print(
            f"{run}: step {step}: window usage {usage:.1%}, val PSNR {psnr:.2f} dB ({extra}) "
            f"-> {'healthy' if healthy else 'NOT healthy'}"
        )
    return 0 if healthy_all else 1


if __name__ == "__main__":
    sys.exit(main())
