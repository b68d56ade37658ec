"""The LightningModule that trains a ``vq.model.VQVAE``: the one training recipe.

Loss = MSE(recon, x) + l1_weight * L1(recon, x) + the quantizer's own loss
(codebook + β·commitment for VQ, 0 for FSQ). AdamW with a step-based schedule:
linear warmup, then cosine decay to ``min_lr_ratio * lr``. Gradient clipping lives in the
trainer config (``trainer.gradient_clip_val``).

``bench/quality.py`` trains through this module too (``compute_losses`` and
``configure_optimizers`` without a Trainer, given ``total_steps``), so a change to the
recipe here reaches the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vq.model import VQVAE, VQVAEConfig
from vq.pixels import float_to_unit
from vq.tokenizer import in_chunks
from vqio import center_crop, format_size


def center_crop_to_multiple(images: torch.Tensor, f: int) -> torch.Tensor:
    """Crop (B, C, H, W) centrally to the largest H', W' that are multiples of f (the
    service's ``fit=crop`` crops the same pixels: both use ``vqio.center_crop``)."""
    rows, cols = center_crop(images.shape[-2], images.shape[-1], f)
    return images[..., rows, cols]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps`` (and ``min_ratio`` after it)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: conv/linear weights (ndim >= 2) decay; biases, norms and the quantizer's
    tables (codebook, SimVQ's W, FSQ's projections) do not: decaying a codebook pulls the
    codes to the origin."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_quantizer = name.startswith("quantizer.")
        (decay if param.ndim >= 2 and not is_quantizer else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class VQVAEModule(L.LightningModule):
    """Args:
    vqvae: the architecture and quantizer (``vq.model.VQVAEConfig``; in YAML a nested
        mapping under ``model.vqvae``).
    lr: peak learning rate of AdamW. 3e-4: at 2e-3 the latent collapsed to ~1 dimension
        within 100 steps and codebook usage with it (docs/benchmarks/quality.md, "Learning rate").
    weight_decay: AdamW weight decay, applied to conv/linear weights only (not to norms,
        biases or codebooks: decaying a codebook pulls codes to the origin).
    betas: AdamW betas.
    warmup_steps: linear warmup length in optimizer steps.
    min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine.
    total_steps: length of the schedule; None = ``trainer.max_steps`` (or the estimated
        stepping batches when max_steps is -1).
    l1_weight: weight of an extra L1 reconstruction term (0 disables it).
    channels_last: run the convolutions in channels_last memory format (oneDNN's and cuDNN's
        fast layout; 1.15x float32 training steps/s on a 2-core AVX-512 CPU, more in bf16).
    compile: ``torch.compile`` the encoder and decoder (in place: checkpoint keys unchanged).
        Pays off only for long runs at one crop size: compilation takes a minute or more.
    """

    def __init__(
        self,
        # None = VQVAEConfig(): a default instance would pin the quantizer's kind for the CLI
        # (jsonargparse merges YAML onto it), so `quantizer.kind: fsq` would not parse.
        vqvae: VQVAEConfig | None = None,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        total_steps: int | None = None,
        l1_weight: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if vqvae is None:
            vqvae = VQVAEConfig()
        if isinstance(vqvae, Mapping):
            vqvae = VQVAEConfig.from_dict(vqvae)
        if not isinstance(vqvae, VQVAEConfig):
            raise ValueError(
                f"vqvae must be a VQVAEConfig or a mapping, got {type(vqvae).__name__}"
            )
        if not lr > 0:
            raise ValueError(f"model.lr={lr!r} is not allowed; expected > 0")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps={warmup_steps!r} is not allowed; expected >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio={min_lr_ratio!r} is not allowed; expected [0, 1]")
        if l1_weight < 0:
            raise ValueError(f"model.l1_weight={l1_weight!r} is not allowed; expected >= 0")
        # Hyper-parameters as plain values (the config as a dict, no pickled classes): the
        # checkpoint then loads with torch.load(weights_only=True), and
        # `load_from_checkpoint` / `vq-export` rebuild the config with VQVAEConfig.from_dict.
        self.save_hyperparameters(
            {
                "vqvae": vqvae.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": tuple(betas),
                "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio,
                "total_steps": total_steps,
                "l1_weight": l1_weight,
                "channels_last": channels_last,
                "compile": compile,
            }
        )
        self.model = VQVAE(vqvae)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.test_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    @property
    def config(self) -> VQVAEConfig:
        return self.model.config

    @property
    def f(self) -> int:
        return self.model.f

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) in [-1, 1] -> int64 codes (B, H/f, W/f)."""
        return self.model.encode(images)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.hparams["channels_last"] else torch.contiguous_format

    def setup(self, stage: str) -> None:
        # State dicts stay layout-agnostic (save_tokenizer makes them contiguous).
        self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # stubs lack it
        if self.hparams["compile"] and stage == "fit":
            self.model.encoder.compile()
            self.model.decoder.compile()

    def compute_losses(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """images float (B, 3, H, W) in [-1, 1] -> ({"loss", "mse", "quant_loss"[, "l1"]},
        the model's ``VQVAEOutput``); "loss" is what the optimizer minimizes."""
        out = self.model(images.contiguous(memory_format=self.memory_format))
        recon = out.recon.float()
        target = images.float()
        mse = F.mse_loss(recon, target)
        losses = {"mse": mse, "quant_loss": out.quantizer.loss.float()}
        total = mse + losses["quant_loss"]
        if self.hparams["l1_weight"] > 0:
            losses["l1"] = F.l1_loss(recon, target)
            total = total + self.hparams["l1_weight"] * losses["l1"]
        losses["loss"] = total
        return losses, out

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        losses, out = self.compute_losses(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=False,
            batch_size=batch.shape[0],
        )
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=batch.shape[0])
        # indices go to CodebookMonitor (on_train_batch_end receives this dict).
        return {"loss": losses["loss"], "indices": out.quantizer.indices.detach()}

    def _eval_step(self, batch: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        losses, out = self.compute_losses(batch)
        pred, target = float_to_unit(out.recon), float_to_unit(batch)
        psnr, ssim = (
            (self.val_psnr, self.val_ssim) if stage == "val" else (self.test_psnr, self.test_ssim)
        )
        psnr(pred, target)
        ssim(pred, target)
        n = batch.shape[0]
        self.log_dict(
            {f"{stage}/{k}": v for k, v in losses.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log(f"{stage}/psnr", psnr, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}/ssim", ssim, on_step=False, on_epoch=True, batch_size=n)
        return {"indices": out.quantizer.indices.detach(), "recon": out.recon.detach()}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A batch from ``ImageDataModule.predict_dataloader`` -> codes for its images.

        Images whose sides are not multiples of f are centre-cropped to the largest
        multiples (a 375x500 (HxW) image at f=8 is tokenized as its central 368x496).
        """
        images: torch.Tensor = batch["images"]
        paths: list[str] = list(batch["paths"])
        errors: list[dict[str, str]] = list(batch["errors"])
        codes = torch.empty(0, 0, 0, dtype=torch.long)
        if images.shape[0] > 0:
            cropped = center_crop_to_multiple(images, self.f)
            if cropped.shape[-1] == 0 or cropped.shape[-2] == 0:
                h, w = images.shape[-2:]
                errors += [
                    {"path": p, "error": f"image {format_size(h, w)} is smaller than f={self.f}"}
                    for p in paths
                ]
                paths = []
            else:
                # The Tokenizer's chunking, so predict runs the same passes as the library.
                pixels = cropped.shape[2] * cropped.shape[3]
                codes = in_chunks(
                    self.model.encode, cropped, pixels, self.device
                ).cpu()  # (B, h, w)
        return {"codes": codes, "paths": paths, "errors": errors}

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, hp["weight_decay"]),
            lr=hp["lr"],
            betas=tuple(hp["betas"]),
        )
        total = hp["total_steps"]
        if total is None:
            max_steps = self.trainer.max_steps
            total = (
                max_steps
                if max_steps and max_steps > 0
                else self.trainer.estimated_stepping_batches
            )
        warmup, min_ratio = hp["warmup_steps"], hp["min_lr_ratio"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, int(total), min_ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The latest validation figures travel with the checkpoint so that export (at the
        # end of fit or via vq-export) can write them into the artifact's config.json.
        metrics = {}
        if self._trainer is not None:
            for key, value in self.trainer.callback_metrics.items():
                if key.startswith("val/"):
                    metrics[key.removeprefix("val/")] = float(value)
        checkpoint["val_metrics"] = metrics
