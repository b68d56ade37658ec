"""Shared pieces of the training tests: tiny overrides, image folders, event reading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
QUANTIZER_CONFIGS = ("ste", "rotation", "simvq", "simvq_rotation", "fsq")

# Shrinks any config to seconds on a CPU: tiny widths, tiny crops, 4 steps, 2 validations.
TINY_OVERRIDES = [
    "--trainer.max_steps=4",
    "--trainer.log_every_n_steps=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_model_summary=false",
    "--trainer.precision=32-true",
    "--model.vqvae.widths=[8, 8, 16, 16]",
    "--model.optimizer.warmup_steps=1",
    "--data.crop_size=32",
    "--data.val_crop_size=32",
    "--data.batch_size=4",
    "--data.samples_per_epoch=8",
    "--data.val_crops_per_image=2",
    "--codebook_monitor.window=4096",
]


def run_cli(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m train.cli ARGS`` (what the vq-train console script runs) in a subprocess.

    One OpenMP thread: on a shared 2-core machine spinning threads slow tiny models 10x."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "train.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_image(path: Path, h: int, w: int, mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth random image (so crops are not near-constant) saved with PIL."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy) % 256, (yy * 2) % 256, (xx + yy * 5) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    rgb = ((base + noise) % 256).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def scalar_tags(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run directory ``log_dir``: tag -> [(step, value)].

    The directory is read as one run, as TensorBoard does, so events hidden by a resumed
    run's ``purge_step`` are left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(s.step, s.value) for s in acc.Scalars(tag)]
    for tag in acc.Tags()["images"]:
        out[f"image:{tag}"] = [(0, 0.0)]
    return out


class KillAtStep(Callback):
    """Test helper: SIGKILLs its own process after optimizer step ``step`` (the crash a
    resume must survive; no Python clean-up runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAtPredictBatch(Callback):
    """Test helper: SIGKILLs its own process when predict batch ``batch`` starts (batches
    before it are written, later ones not)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: object,
        batch_idx: int,
        *args: object,
    ) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveRankState(Callback):
    """Test helper: at the end of training each rank saves its quantizer state (``whole``:
    the LightningModule's, discriminator and EMA included) and its global step to
    ``out_dir/rank{R}.pt``, so a test can compare the ranks."""

    def __init__(self, out_dir: str, whole: bool = False) -> None:
        self.out_dir = out_dir
        self.whole = whole

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        module = pl_module if self.whole else pl_module.model.quantizer
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(
            {"state": state, "step": trainer.global_step},
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )
