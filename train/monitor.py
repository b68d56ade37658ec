"""``CodebookMonitor``: codebook-usage figures during training, validation and test."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from train.module import VQVAEModule
from train.plots import figure_usage_histogram, reconstruction_grid
from vq import CodebookUsage


def _logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning flushes step-level logs after the current training batch: every
    ``log_every_n_steps`` optimizer steps (global_step is already incremented here) and on
    the last one. The same public figures Lightning's own test uses; a resumed run keeps them
    in step (train.checkpointing.LastCheckpoint aligns Lightning's logging step)."""
    every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))  # set in a connector
    return trainer.global_step % every == 0 or trainer.should_stop


def collapse_fix(pl_module: L.LightningModule) -> str:
    """The remedy for a collapsed codebook, for the quantizer being trained."""
    config = getattr(pl_module, "config", None)
    q = getattr(config, "quantizer", None)
    if q is not None and q.kind == "vq" and getattr(q, "codebook", None) == "plain":
        if q.codebook_init != "data" or q.dead_code_threshold <= 0:
            return (
                "start the codes from data and restart dead ones: "
                "--model.vqvae.quantizer.codebook_init data "
                "--model.vqvae.quantizer.dead_code_threshold 0.1"
            )
        return (
            "restarts are on, so the encoder output itself has collapsed: "
            "lower --model.optimizer.lr (e.g. 3e-4) or raise --model.vqvae.quantizer.dead_code_threshold"
        )
    return (
        "the encoder output has likely collapsed to a few directions: lower --model.optimizer.lr "
        "(at 2e-3 it collapsed, 3e-4 did not)"
    )


class CodebookMonitor(Callback):
    """Codebook utilization during training and validation, for any quantizer
    (docs/design.md, "Codebook utilization: definitions").

    Training, every ``trainer.log_every_n_steps`` steps: ``usage/batch_usage``,
    ``usage/window_usage``, ``usage/perplexity``, ``usage/dead_codes`` and
    ``usage/unseen_codes`` (window of ``window`` tokens; codes without a hit are unseen while
    it fills, dead once it is full). Each validation pass: ``val/epoch_usage``, ``val/epoch_perplexity``,
    ``val/epoch_dead_codes``, ``val/tokens``; with a TensorBoard logger also a sorted usage
    histogram figure, the raw code histogram and a grid of ``num_images`` reconstructions.
    Under DDP the histograms are summed across ranks (``CodebookUsage.all_reduce``) before
    any figure is computed, at the same steps on every rank. ``vq-train test`` logs the
    epoch figures under ``test/``.

    Collapse warning: once the window is full, if fewer than ``collapse_usage`` of the K codes
    are used in it, a warning naming the fix is raised, once per fit (0 disables it).
    """

    def __init__(
        self, window: int = 65536, num_images: int = 8, collapse_usage: float = 0.1
    ) -> None:
        super().__init__()
        if not 0.0 <= collapse_usage <= 1.0:
            raise ValueError(
                f"codebook_monitor.collapse_usage={collapse_usage!r} is not allowed; "
                "expected a number in [0, 1]"
            )
        self.window = window
        self.num_images = num_images
        self.collapse_usage = collapse_usage
        self._warned_collapse = False
        self.train_usage: CodebookUsage | None = None
        self.val_usage: CodebookUsage | None = None
        self._grid_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_state: torch.Tensor | None = None

    def _tracker(self, pl_module: L.LightningModule) -> CodebookUsage:
        if not isinstance(pl_module, VQVAEModule):
            raise TypeError(f"CodebookMonitor monitors a VQVAEModule, not {type(pl_module)}")
        return CodebookUsage(pl_module.codebook_size, self.window, device=pl_module.device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.val_usage = self._tracker(pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores callback state (load_state_dict) after setup and before this
        # hook, so the window a resumed run continues is built here.
        fresh = self._tracker(pl_module)
        if self._pending_state is not None:
            restored = CodebookUsage.from_state_tensor(self._pending_state.to(pl_module.device))
            self._pending_state = None
            if restored.codebook_size == fresh.codebook_size:
                self.train_usage = restored
                return
        if self.train_usage is None or self.train_usage.codebook_size != fresh.codebook_size:
            self.train_usage = fresh

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.train_usage is None or not isinstance(outputs, dict) or "indices" not in outputs:
            return
        if self.train_usage.device != outputs["indices"].device:
            self.train_usage = CodebookUsage.from_state_tensor(
                self.train_usage.state_tensor().to(outputs["indices"].device)
            )
        self.train_usage.update(outputs["indices"])
        # Compute the figures only on the steps where Lightning writes step logs (values
        # logged in between would be overwritten unseen). The test is the same on every
        # rank, so the collective in all_reduce is entered by all of them or by none.
        if not _logs_this_step(trainer):
            return
        usage = self.train_usage.all_reduce()
        self._check_collapse(usage, pl_module, trainer.global_step)
        pl_module.log_dict(
            {
                "usage/batch_usage": usage.batch_usage,
                "usage/window_usage": usage.window_usage,
                "usage/perplexity": usage.perplexity,
                "usage/dead_codes": float(usage.dead_codes),
                "usage/unseen_codes": float(usage.unseen_codes),
            },
            on_step=True,
            on_epoch=False,
        )

    def _check_collapse(
        self, usage: CodebookUsage, pl_module: L.LightningModule, step: int
    ) -> None:
        if self._warned_collapse or usage.window_tokens < usage.window:
            return  # judge a full window only (a young window has seen few codes by design)
        if usage.window_usage >= self.collapse_usage:
            return
        self._warned_collapse = True
        k = usage.codebook_size
        rank_zero_warn(
            f"CODEBOOK COLLAPSE at step {step}: only {usage.window_usage:.1%} of the {k:,} codes "
            f"({k - usage.dead_codes:,}) were used in the last {usage.window_tokens:,} training "
            f"tokens. Fix: {collapse_fix(pl_module)} (docs/training.md, 'Healthy tokenizers').",
            category=UserWarning,
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_usage = self._tracker(pl_module)
        self._grid_batch = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_end(trainer, pl_module, "val")

    # `vq-train test` gets the same epoch figures under test/ (no images).
    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "test")

    def _eval_batch(self, outputs: Any, batch: Any) -> None:
        if self.val_usage is None or not isinstance(outputs, dict):
            return
        self.val_usage.update(outputs["indices"].to(self.val_usage.device))
        if self._grid_batch is None and self.num_images > 0:
            n = self.num_images
            self._grid_batch = (batch[:n].detach().cpu(), outputs["recon"][:n].detach().cpu())

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.val_usage is None:
            return
        usage = self.val_usage.all_reduce()
        hist = usage.epoch_histogram
        pl_module.log_dict(
            {
                f"{stage}/epoch_usage": usage.epoch_usage,
                f"{stage}/epoch_perplexity": usage.epoch_perplexity,
                f"{stage}/epoch_dead_codes": float(int((hist == 0).sum())),
                f"{stage}/tokens": float(usage.tokens_seen),
            },
            on_step=False,
            on_epoch=True,
        )
        if stage == "val":
            self._log_images(trainer, hist, usage.epoch_usage)

    @rank_zero_only
    def _log_images(self, trainer: L.Trainer, hist: torch.Tensor, epoch_usage: float) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            step = trainer.global_step
            title = f"validation code usage: {epoch_usage:.1%} of {hist.numel()} codes"
            writer.add_figure("val/usage_histogram", figure_usage_histogram(hist, title), step)
            ids = torch.repeat_interleave(torch.arange(hist.numel()), hist.cpu())
            if ids.numel() > 0:
                writer.add_histogram("val/code_ids", ids, step, bins=min(hist.numel(), 256))
            if self._grid_batch is not None:
                writer.add_image(
                    "val/reconstructions", reconstruction_grid(*self._grid_batch), step
                )

    # The training window survives a resume (rank 0's window: the one it logs).
    def state_dict(self) -> dict[str, Any]:
        if self.train_usage is None:
            return {}
        return {"train_usage": self.train_usage.state_tensor().cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("train_usage")
        if state is not None:
            self._pending_state = state  # applied in on_train_start
