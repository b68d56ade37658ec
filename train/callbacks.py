"""Callbacks: codebook monitoring, export of the best model, and the code writer of
``vq-train predict``."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from vq import CodebookUsage

log = logging.getLogger(__name__)


def _figure_usage_histogram(hist: torch.Tensor, title: str) -> Any:
    """A matplotlib figure of hit counts per code, sorted (a flat line = uniform usage)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    counts = hist.double().cpu().sort(descending=True).values.numpy()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    # A filled step curve, not one bar per code: with 64k codes bars take seconds to draw.
    ax.fill_between(np.arange(len(counts)), counts, step="post", linewidth=0)
    ax.set_yscale("symlog")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("hits")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def reconstruction_grid(images: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) inputs and reconstructions in [-1, 1] -> one (3, 2H + 3 pad, N(W + pad) + pad)
    image in [0, 1]: inputs on the top row, reconstructions below."""
    n, c, h, w = images.shape
    grid = torch.ones(c, 2 * h + 3 * pad, n * (w + pad) + pad)
    for row, batch in enumerate((images, recon)):
        top = pad + row * (h + pad)
        for i in range(n):
            left = pad + i * (w + pad)
            grid[:, top : top + h, left : left + w] = ((batch[i].float().cpu() + 1) / 2).clamp(0, 1)
    return grid


def _logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning flushes step-level logs after the current training batch."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and hasattr(connector, "should_update_logs"):
        return bool(connector.should_update_logs)
    # Fallback for a Lightning without the connector: global_step is already incremented.
    every = int(getattr(trainer, "log_every_n_steps", 1) or 1)
    return trainer.global_step % every == 0


def collapse_fix(pl_module: L.LightningModule) -> str:
    """The remedy for a collapsed codebook, for the quantizer being trained."""
    config = getattr(pl_module, "config", None)
    q = getattr(config, "quantizer", None)
    if q is not None and q.kind == "vq" and q.codebook == "plain":
        if q.codebook_init != "data" or q.dead_code_threshold <= 0:
            return (
                "start the codes from data and restart dead ones: "
                "--model.vqvae.quantizer.codebook_init data "
                "--model.vqvae.quantizer.dead_code_threshold 0.1"
            )
        return (
            "restarts are on, so the encoder output itself has collapsed: "
            "lower --model.lr (e.g. 3e-4) or raise --model.vqvae.quantizer.dead_code_threshold"
        )
    return (
        "the encoder output has likely collapsed to a few directions: lower --model.lr "
        "(at 2e-3 it collapsed, 3e-4 did not)"
    )


class CodebookMonitor(Callback):
    """Codebook utilization during training and validation, for any quantizer
    (docs/design.md, "Codebook usage: definitions").

    Training, every ``trainer.log_every_n_steps`` steps: ``usage/batch_usage``,
    ``usage/window_usage``, ``usage/perplexity``, ``usage/dead_codes`` (window of
    ``window`` tokens). Each validation pass: ``val/epoch_usage``, ``val/epoch_perplexity``,
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
        k = int(pl_module.codebook_size)  # type: ignore[arg-type]
        return CodebookUsage(k, self.window, device=pl_module.device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.train_usage is None:
            self.train_usage = self._tracker(pl_module)
            if self._pending_state is not None:
                restored = CodebookUsage.from_state_tensor(self._pending_state.to(pl_module.device))
                if restored.codebook_size == self.train_usage.codebook_size:
                    self.train_usage = restored
                self._pending_state = None
        self.val_usage = self._tracker(pl_module)

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
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_validation_epoch_start(trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(outputs, batch)

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
            writer.add_figure("val/usage_histogram", _figure_usage_histogram(hist, title), step)
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
            self._pending_state = state
            self.train_usage = None


class ExportBest(Callback):
    """At the end of ``fit``, write the best checkpoint (lowest ``val/loss``; the last one
    when no validation ran) as a tokenizer artifact in ``<log_dir>/artifact`` (next to
    ``checkpoints/``), with its validation metrics in ``config.json``."""

    def __init__(self, dirname: str = "artifact", enabled: bool = True) -> None:
        super().__init__()
        self.dirname = dirname
        self.enabled = enabled
        self.artifact_dir: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        from train.export import export_checkpoint, export_module
        from train.module import VQVAEModule

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


_SHARD_RE = re.compile(r"^codes-rank(\d+)-.*\.npy$")


def _code_dtype(codebook_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.int32)


class CodeWriter(BasePredictionWriter):
    """Writes ``vq-train predict`` output to ``out_dir``, one file set per rank:

    - ``codes-rank{R}-{h}x{w}-{S:05d}.npy``: uint16 (int32 if codebook_size > 65,536)
      arrays (N, h, w), the code grids of N images of one grid shape, at most ``shard_size``
      rows per shard;
    - ``manifest-rank{R}.jsonl``: one line per tokenized image:
      ``{"path", "shard", "row", "grid": [h, w], "crop": [H', W'], "size": [H, W]}``;
    - ``skipped-rank{R}.jsonl``: one line per file that could not be tokenized:
      ``{"path", "error"}`` (also counted in a warning);
    - ``info.json`` (rank 0): root, f, codebook_size, dtype, world size.

    Paths are relative to ``data.predict_root``. A new run removes this rank's earlier files
    (only names of the forms above) so stale shards never mix in.
    """

    def __init__(self, out_dir: str | None = None, shard_size: int = 4096) -> None:
        super().__init__(write_interval="batch")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size!r} is not allowed; expected >= 1")
        self.out_dir = out_dir
        self.shard_size = shard_size
        self._buffers: dict[tuple[int, int], list[np.ndarray]] = {}
        self._pending: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._shard_counts: dict[tuple[int, int], int] = {}
        self.num_written = 0
        self.num_skipped = 0

    def _dir(self, trainer: L.Trainer) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        return Path(trainer.default_root_dir) / "codes"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        for path in out.iterdir():
            m = _SHARD_RE.match(path.name)
            own = (m is not None and int(m.group(1)) == rank) or path.name in (
                f"manifest-rank{rank}.jsonl",
                f"skipped-rank{rank}.jsonl",
            )
            if own:
                path.unlink()
        self._manifest = (out / f"manifest-rank{rank}.jsonl").open("w", encoding="utf-8")
        self._skipped = (out / f"skipped-rank{rank}.jsonl").open("w", encoding="utf-8")
        self._buffers, self._pending, self._shard_counts = {}, {}, {}
        self.num_written = self.num_skipped = 0
        self._dtype = _code_dtype(int(pl_module.codebook_size))  # type: ignore[arg-type]
        if trainer.is_global_zero:
            dm = trainer.datamodule  # type: ignore[attr-defined]
            info = {
                "root": str(getattr(dm, "predict_root", "")),
                "f": int(pl_module.f),  # type: ignore[arg-type]
                "codebook_size": int(pl_module.codebook_size),  # type: ignore[arg-type]
                "dtype": self._dtype.name,
                "world_size": trainer.world_size,
                "crop": "centre crop to the largest multiple of f",
            }
            (out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for err in prediction["errors"]:
            self._skipped.write(json.dumps(err) + "\n")
            self.num_skipped += 1
        paths = prediction["paths"]
        if not paths:
            return
        codes = prediction["codes"].numpy().astype(self._dtype)  # (B, h, w)
        grid = (int(codes.shape[1]), int(codes.shape[2]))
        h, w = batch["images"].shape[-2:]
        f = int(pl_module.f)  # type: ignore[arg-type]
        buf = self._buffers.setdefault(grid, [])
        pend = self._pending.setdefault(grid, [])
        for i, path in enumerate(paths):
            buf.append(codes[i])
            pend.append(
                {
                    "path": path,
                    "grid": list(grid),
                    "crop": [grid[0] * f, grid[1] * f],
                    "size": [h, w],
                }
            )
            if len(buf) == self.shard_size:
                self._flush(trainer, grid)

    def _flush(self, trainer: L.Trainer, grid: tuple[int, int]) -> None:
        buf, pend = self._buffers.get(grid, []), self._pending.get(grid, [])
        if not buf:
            return
        index = self._shard_counts.get(grid, 0)
        name = f"codes-rank{trainer.global_rank}-{grid[0]}x{grid[1]}-{index:05d}.npy"
        np.save(self._dir(trainer) / name, np.stack(buf))  # (N, h, w)
        for row, entry in enumerate(pend):
            self._manifest.write(json.dumps({**entry, "shard": name, "row": row}) + "\n")
        self.num_written += len(buf)
        self._shard_counts[grid] = index + 1
        self._buffers[grid], self._pending[grid] = [], []

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for grid in list(self._buffers):
            self._flush(trainer, grid)
        self._manifest.close()
        self._skipped.close()
        out = self._dir(trainer)
        rank = trainer.global_rank
        if self.num_skipped:
            warnings.warn(
                f"rank {rank}: skipped {self.num_skipped} unreadable image file(s); "
                f"see {out / f'skipped-rank{rank}.jsonl'}",
                stacklevel=2,
            )
        print(
            f"rank {rank}: tokenized {self.num_written} image(s) into {out} "
            f"(manifest-rank{rank}.jsonl), skipped {self.num_skipped}"
        )
