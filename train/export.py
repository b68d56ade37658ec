"""Lightning checkpoint -> tokenizer artifact (``vq.artifact.save_tokenizer``): ``vq-export``
and the ``ExportBest`` callback that exports at the end of ``vq-train fit``.

    vq-export CKPT OUT_DIR
    vq-export --onnx SOURCE OUT_DIR    # SOURCE: an artifact directory or a vq-train checkpoint

With ``--onnx`` it writes ``encoder.onnx`` and ``decoder.onnx`` (``vq.onnx_export``) instead.
The artifact's config.json gets the checkpoint's validation metrics (psnr, ssim, lpips,
epoch_usage, ...) when the checkpoint has them (checkpoints written by ``vq-train fit``
do), and ``extra`` records the source checkpoint, its epoch and step.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from train.checkpointing import upgrade_checkpoint
from train.module import VQVAEModule
from vq.artifact import save_tokenizer

log = logging.getLogger(__name__)

# Metrics copied into the artifact (keys as logged under "val/").
ARTIFACT_METRICS = (
    "psnr",
    "ssim",
    "lpips",  # LPIPS (VGG), where the run had the weights (train/module.py)
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
    return upgrade_checkpoint(ckpt)


def module_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> VQVAEModule:
    """Rebuild the VQVAEModule of a checkpoint dict (from ``read_checkpoint``), in eval mode."""
    try:
        # LightningCLI adds private keys (_instantiator, _class_path) to the hyper-parameters.
        hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
        # Only the network is rebuilt: neither the artifact a run started from nor the
        # perceptual network's weight files are needed to export it.
        hparams.pop("init_from", None)
        hparams.pop("perceptual", None)
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
    """Save ``module.inference_model`` (the EMA weights when on) as an artifact with the
    chosen validation metrics."""
    info: dict[str, Any] = {"source": source, **(extra or {})}
    return save_tokenizer(
        module.inference_model, out_dir, metrics=_pick_metrics(metrics or {}), extra=info
    )


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


class ExportBest(Callback):
    """At the end of ``fit``, write the best checkpoint (lowest ``val/loss``; the last one
    when no validation ran) as a tokenizer artifact in ``<log_dir>/artifact`` (next to
    ``checkpoints/``), with its validation metrics in ``config.json``."""

    def __init__(self, dirname: str = "artifact", enabled: bool = True) -> None:
        super().__init__()
        self.dirname = dirname
        self.enabled = enabled
        self.artifact_dir: Path | None = None
        self._trained = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        ckpt_cb = trainer.checkpoint_callback
        ckpt_dir: Path | None = None
        best = ""
        if isinstance(ckpt_cb, ModelCheckpoint):
            best = ckpt_cb.best_model_path or ckpt_cb.last_model_path
            if ckpt_cb.dirpath:
                ckpt_dir = Path(ckpt_cb.dirpath)
        base = (
            ckpt_dir.parent
            if ckpt_dir is not None
            else Path(trainer.log_dir or trainer.default_root_dir)
        )
        out = base / self.dirname
        self.artifact_dir = out
        if not self._trained and (out / "config.json").is_file():
            # A resume with nothing left to train: the artifact of the finished run stands
            # (exports are atomic, so an existing one is complete).
            rank_zero_info(f"Tokenizer artifact {out} is up to date (nothing was trained)")
            return
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if best and Path(best).is_file():
                export_checkpoint(best, out)
            else:
                metrics = {
                    k.removeprefix("val/"): float(v)
                    for k, v in trainer.callback_metrics.items()
                    if k.startswith("val/")
                }
                assert isinstance(pl_module, VQVAEModule), "ExportBest exports a VQVAEModule"
                export_module(pl_module, out, metrics=metrics, source="in-memory model")
            log.info("exported tokenizer artifact to %s (from %s)", out, best or "the final model")
            print(f"Exported tokenizer artifact: {out} (from {best or 'the final model'})")
        self.artifact_dir = out
        trainer.strategy.barrier()


def export_onnx_from(source: str | Path, out_dir: str | Path, input_dtype: str = "uint8") -> Path:
    """``vq-export --onnx``: an artifact directory or a checkpoint -> ONNX encoder/decoder."""
    from vq.artifact import load_tokenizer
    from vq.onnx_export import export_onnx

    src = Path(source)
    if src.is_dir():
        model = load_tokenizer(src, precision="fp32").model
    else:
        ckpt = read_checkpoint(src)
        model = module_from_checkpoint(ckpt, source=f"checkpoint {str(src)!r}").model
    export_onnx(model, out_dir, input_dtype=input_dtype)  # type: ignore[arg-type]
    return Path(out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vq-export",
        description="Export a vq-train checkpoint (.ckpt) as a tokenizer artifact directory "
        "(config.json + model.safetensors) that vq.load_tokenizer and vq-serve load.",
    )
    parser.add_argument(
        "ckpt", help="checkpoint file written by vq-train fit (with --onnx: or an artifact dir)"
    )
    parser.add_argument("out_dir", help="directory to write (created if missing)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="write encoder.onnx (images -> int64 codes) and decoder.onnx (codes -> uint8 "
        "images) with dynamic batch and spatial axes instead of an artifact",
    )
    parser.add_argument(
        "--onnx-input",
        choices=["uint8", "float"],
        default="uint8",
        help="encoder.onnx input: uint8 images in [0, 255] (default) or float in [-1, 1]",
    )
    args = parser.parse_args(argv)
    try:
        if args.onnx:
            out = export_onnx_from(args.ckpt, args.out_dir, args.onnx_input)
        else:
            out = export_checkpoint(args.ckpt, args.out_dir)
    except ValueError as exc:
        print(f"vq-export: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # onnx / onnxscript not installed
        print(
            f"vq-export: error: {exc}; install the extra: pip install 'vq-tokenizer[onnx]'",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {'ONNX encoder/decoder' if args.onnx else 'tokenizer artifact'} {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
