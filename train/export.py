"""Lightning checkpoint -> tokenizer artifact (``vq.artifact.save_tokenizer``).

    vq-export CKPT OUT_DIR

The artifact's config.json gets the checkpoint's validation metrics (psnr, ssim,
epoch_usage, ...) when the checkpoint has them (checkpoints written by ``vq-train fit``
do), and ``extra`` records the source checkpoint, its epoch and step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from train.module import VQVAEModule
from vq.artifact import save_tokenizer

# Metrics copied into the artifact (keys as logged under "val/").
ARTIFACT_METRICS = (
    "psnr",
    "ssim",
    "epoch_usage",
    "epoch_perplexity",
    "epoch_dead_codes",
    "tokens",
    "loss",
    "mse",
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint written by vq-train; ValueError with a clear message if the
    file is missing, unreadable or not one of ours."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"checkpoint {str(p)!r} does not exist (expected a .ckpt file from vq-train fit)"
        )
    try:
        # weights_only: the checkpoint holds only tensors and plain containers (the model
        # config is stored as a dict), so nothing needs unpickling as code.
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file (pickle, zip, runtime)
        raise ValueError(
            f"checkpoint {str(p)!r} could not be read (truncated or not a PyTorch checkpoint?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {str(p)!r} has no 'state_dict': not a Lightning checkpoint")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "vqvae" not in hparams:
        raise ValueError(
            f"checkpoint {str(p)!r} has no 'vqvae' hyper-parameter: not written by vq-train"
        )
    return ckpt


def module_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> VQVAEModule:
    """Rebuild the VQVAEModule of a checkpoint dict (from ``read_checkpoint``), in eval mode."""
    try:
        # LightningCLI adds private keys (_instantiator, _class_path) to the hyper-parameters.
        hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
        module = VQVAEModule(**hparams)
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{source} does not match the model it describes: {exc}") from None
    return module.eval()


def _pick_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ARTIFACT_METRICS if k in metrics}


def export_module(
    module: VQVAEModule,
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    source: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``module.model`` as an artifact with the chosen validation metrics."""
    info: dict[str, Any] = {"source": source, **(extra or {})}
    return save_tokenizer(module.model, out_dir, metrics=_pick_metrics(metrics or {}), extra=info)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """``vq-export``'s work: checkpoint file -> artifact directory; returns the directory."""
    ckpt = read_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt, source=f"checkpoint {str(ckpt_path)!r}")
    return export_module(
        module,
        out_dir,
        metrics=ckpt.get("val_metrics") or {},
        source=Path(ckpt_path).name,
        extra={
            "epoch": int(ckpt.get("epoch", -1)),
            "global_step": int(ckpt.get("global_step", -1)),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vq-export",
        description="Export a vq-train checkpoint (.ckpt) as a tokenizer artifact directory "
        "(config.json + model.safetensors) that vq.load_tokenizer and vq-serve load.",
    )
    parser.add_argument("ckpt", help="checkpoint file written by vq-train fit")
    parser.add_argument("out_dir", help="artifact directory to write (created if missing)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.ckpt, args.out_dir)
    except ValueError as exc:
        print(f"vq-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote tokenizer artifact {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
