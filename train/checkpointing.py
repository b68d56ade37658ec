"""Crash-safe checkpoints: atomic writes, a ``last.ckpt`` every N steps and at the end of fit,
and the random state that makes a resumed run continue exactly.

A run killed at any moment (``kill -9``, power loss, OOM) loses at most ``every_n_steps``
optimizer steps:

- ``AtomicCheckpointIO`` writes every checkpoint with ``vq.atomic.atomic_write_bytes`` (a
  temporary file in the same directory, fsynced and renamed over the old one), so ``last.ckpt`` is always the previous complete checkpoint or the new complete one, never
  a truncated file. (Lightning's default goes through an fsspec transaction whose temporary
  file lives in the system temp directory; when that is another filesystem the final move is
  a copy into the target, which a kill can cut short.)
- ``LastCheckpoint`` writes ``last.ckpt`` every ``every_n_steps`` steps and when fit ends
  (``ModelCheckpoint(save_last=True)`` writes it at each validation too).
- At the next start in the same directory, ``LastCheckpoint`` removes what a crash left:
  temporary files of interrupted writes, and (when resuming) ``best-*`` checkpoints that
  the restored ModelCheckpoint no longer tracks (a crash between writing a new best and
  deleting the old one). A write that fails for lack of space ends the run with one line
  naming the file and the fix (``CheckpointWriteError``); the previous checkpoint is intact.
- ``RandomState`` stores torch's global generator (CPU and CUDA) in the checkpoint and puts
  it back when training resumes. All randomness of training that is not the crop stream
  (data initialization and dead-code restarts of codebooks) draws from it; the crop stream
  is a function of the batch number (``train.crops.CropBatches``), so a resumed run draws the
  crops and restart vectors the uninterrupted run would have drawn.
"""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from vq.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


_TEMPORARY_GLOB = ".*.ckpt.*.tmp"  # vq.atomic's temporary of a checkpoint: .NAME.ckpt.XXXXXXXX.tmp
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CheckpointWriteError(SystemExit):
    """A checkpoint could not be written because the disk is full (or over quota): the run
    ends with this one line on stderr and exit status 1, not a traceback. A SystemExit,
    so that it passes through Lightning's and the CLI's handlers unchanged."""

    def __init__(self, path: _PATH, exc: OSError) -> None:
        super().__init__(
            f"vq-train: error: cannot write checkpoint {path}: {exc.strerror or exc} "
            f"(errno {exc.errno}); the previous checkpoint is intact. Free space on that disk "
            "(or write the run elsewhere with --trainer.default_root_dir) and resume with "
            "--ckpt_path last"
        )


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted ``atomic_write_bytes`` calls left in
    ``directory`` (a killed or crashed run); returns them. Call only when no other process
    writes there."""
    removed = []
    for stale in Path(directory).glob(_TEMPORARY_GLOB):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def remove_orphaned_best(cb: ModelCheckpoint) -> list[Path]:
    """Delete checkpoints named like ``cb``'s (``best-*.ckpt``) in its directory that its
    restored state does not track: a run that crashed between saving a new best and
    deleting the old one leaves the old one behind, which ModelCheckpoint never prunes."""
    if not cb.dirpath or not cb.best_k_models or cb.filename is None:
        return []
    prefix = cb.filename.split("{", 1)[0]
    if not prefix:
        return []  # a pattern that starts with a field could match any checkpoint
    kept = {
        Path(p).resolve() for p in (*cb.best_k_models, cb.best_model_path, cb.last_model_path) if p
    }
    removed = []
    for path in Path(cb.dirpath).glob(f"{prefix}*{cb.FILE_EXTENSION}"):
        if path.resolve() not in kept and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into memory, then ``atomic_write_bytes`` (local paths); a full disk
    is a ``CheckpointWriteError``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            # Remote storage (s3://, ...): its own transactions apply.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise CheckpointWriteError(path, exc) from None
            raise


def _last_path(trainer: L.Trainer) -> Path | None:
    """``last.ckpt`` of the trainer's ModelCheckpoint (the directory ``--ckpt_path last``
    searches), or None without one."""
    cb = trainer.checkpoint_callback
    if not isinstance(cb, ModelCheckpoint) or not cb.dirpath:
        return None
    return Path(cb.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"


class LastCheckpoint(Callback):
    """Write ``last.ckpt`` (next to the ModelCheckpoint's checkpoints) every
    ``every_n_steps`` optimizer steps and at the end of fit, so that a killed run loses at
    most ``every_n_steps`` steps and a finished run can be extended from its very end.
    ``every_n_steps=0`` keeps only the end-of-fit checkpoint.

    On resume it also puts Lightning's logging step where the uninterrupted run has it, and
    says so when the checkpoint has nothing left to train."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise ValueError(f"every_n_steps={every_n_steps!r} is not allowed; expected an int")
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps!r} is not allowed; expected >= 0")
        self.every_n_steps = every_n_steps
        self._saved_step = -1
        self._trained = False
        self._align_step = False

    def _save(self, trainer: L.Trainer) -> None:
        path = _last_path(trainer)
        if path is None or trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank 0 writes
        self._saved_step = trainer.global_step
        cb = trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint):
            cb.last_model_path = str(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        step = trainer.global_step
        periodic = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        # The last step is saved here, not only in on_train_end: a checkpoint taken after a
        # batch is one Lightning resumes mid-epoch, so extending the run (a larger max_steps)
        # keeps its epochs and validations where the uninterrupted run has them.
        if periodic or step == trainer.max_steps:
            self._save(trainer)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = False
        cb = trainer.checkpoint_callback
        if trainer.is_global_zero and isinstance(cb, ModelCheckpoint) and cb.dirpath:
            for stale in remove_stale_temporaries(cb.dirpath):
                log.info("removed %s, left by an interrupted checkpoint write", stale)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = True
        self._align_step = bool(trainer.ckpt_path)
        cb = trainer.checkpoint_callback
        if trainer.ckpt_path and trainer.is_global_zero and isinstance(cb, ModelCheckpoint):
            # After the restore: cb now tracks what the resumed run kept.
            for orphan in remove_orphaned_best(cb):
                log.info("removed %s, a best checkpoint the run no longer tracks", orphan)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._align_step:
            # Lightning logs batch b at its count of stepped batches, which an uninterrupted
            # run has equal to global_step when a batch starts; its restore logic (in the
            # epoch loop's reset, after on_train_start) adds one more when resuming from
            # some end-of-epoch checkpoints, shifting every later curve by a step. No public
            # API sets it.
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self._align_step = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)  # other ends (max_epochs, early stopping); no-op if just saved

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._trained and trainer.ckpt_path:
            rank_zero_info(nothing_left_message(trainer))


def nothing_left_message(trainer: L.Trainer) -> str:
    """What a resume that trains nothing tells the user (why, and how to extend the run)."""
    step, epoch = trainer.global_step, trainer.current_epoch
    if trainer.max_steps > 0 and step >= trainer.max_steps:
        reached = f"trainer.max_steps={trainer.max_steps}"
        extend = f"--trainer.max_steps {2 * trainer.max_steps}"
    else:
        reached = f"trainer.max_epochs={trainer.max_epochs}"
        extend = f"--trainer.max_epochs {2 * (trainer.max_epochs or 1)}"
    return (
        f"vq-train: nothing left to train: the checkpoint {trainer.ckpt_path} is at step "
        f"{step} (epoch {epoch}), which already reached {reached}. To train further, raise "
        f"the limit and resume, e.g. {extend} --ckpt_path last (docs/training.md, "
        '"Crash safety and resume", says how the learning-rate schedule continues).'
    )


class RandomState(Callback):
    """Saves torch's global generator state (CPU, and CUDA when present) with each
    checkpoint and restores it when training resumes, right before the first resumed step
    (after Lightning's set-up and sanity validation, which may draw from it)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["torch"])
        cuda = self._pending.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self._pending = None


# Checkpoints written before the recipe's loss module and the argument groups held flat
# hyper-parameters and the discriminator at the top level: renamed when read, so that they
# still resume (``on_load_checkpoint``) and export (``train.export.read_checkpoint``).
_LEGACY_GROUPS = {
    **dict.fromkeys(
        (
            "lr",
            "weight_decay",
            "betas",
            "warmup_steps",
            "min_lr_ratio",
            "total_steps",
            "quantizer_lr_scale",
        ),
        "optimizer",
    ),
    **dict.fromkeys(("l1_weight", "l2_weight"), "reconstruction"),
}
_REMOVED_OFF = {"feature_matching_weight": 0.0, "pixel_loss_lowpass": False}


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` (a vq-train checkpoint dict) in today's layout, renamed in place."""
    state = ckpt.get("state_dict")
    if isinstance(state, dict):
        for key in [k for k in state if k.startswith(("discriminator.", "lecam_ema_"))]:
            state[f"recipe.{key}"] = state.pop(key)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "optimizer" in hparams or "lr" not in hparams:
        return ckpt
    for key, group in _LEGACY_GROUPS.items():
        if key in hparams:
            hparams.setdefault(group, {})[key] = hparams.pop(key)
    decay = hparams.pop("ema_decay", None)
    hparams["ema"] = None if decay is None else {"decay": decay}
    adversarial = hparams.get("adversarial")
    if isinstance(adversarial, dict):
        for key, off in _REMOVED_OFF.items():  # options since removed, left off: drop them
            if adversarial.get(key, off) == off:
                adversarial.pop(key, None)
    return ckpt
