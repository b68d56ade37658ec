"""``vq-train``: the LightningCLI for VQ-VAE tokenizers.

    vq-train fit --config configs/rotation.yaml
    vq-train fit --config configs/rotation.yaml --ckpt_path last      # resume the latest run
    vq-train validate --config configs/rotation.yaml --ckpt_path runs/rotation/version_0/checkpoints/last.ckpt
    vq-train predict --config configs/rotation.yaml --ckpt_path CKPT \
        --data.predict_root images/ --predict_writer.out_dir codes/
    vq-train fit --config configs/rotation.yaml --print_config

Defaults added on top of Lightning's (each overridable from YAML or the command line):
- logger: TensorBoard in ``trainer.default_root_dir`` (``runs/`` unless the config says
  otherwise), one ``version_N/`` directory per run holding events, ``checkpoints/`` and the
  exported ``artifact/``;
- callbacks: ``checkpoint`` (ModelCheckpoint: ``last.ckpt`` + the best by ``val/loss``),
  ``lr_monitor``, ``codebook_monitor`` (usage figures), ``export`` (best model -> artifact at
  the end of fit), ``predict_writer`` (codes of ``vq-train predict``);
- ``trainer.precision``: ``bf16-mixed`` where the training device runs bf16 natively (a CUDA
  GPU with bf16, a CPU with AVX-512 BF16 or AMX), else ``32-true`` (emulated bf16 is slower
  than float32); set it explicitly to override;
- ``seed_everything``: 0.

``--ckpt_path last`` with the default logger resumes the newest ``version_N`` under
``default_root_dir`` that has a ``last.ckpt``, and keeps logging into that directory.
``validate``, ``test`` and ``predict`` create no ``version_N`` (the figures are printed; pass
``--trainer.logger`` to log them somewhere).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from train.checkpointing import AtomicCheckpointIO, LastCheckpoint, RandomState
from train.code_writer import CodeWriter
from train.data import ImageDataModule
from train.export import ExportBest, read_checkpoint
from train.module import VQVAEModule
from train.monitor import CodebookMonitor
from vq.precision import bf16_native


def default_precision() -> str:
    """bf16 autocast where the device that trains runs bf16 natively (a CUDA GPU with bf16,
    a CPU with AVX-512 BF16 or AMX; the nearest-code search stays float32 inside vq), full
    float32 elsewhere, where emulated bf16 is slower than float32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16-mixed" if bf16_native(device) else "32-true"


def latest_resumable_version(root: str | Path) -> str | None:
    """Name of the newest ``version_N`` directory under ``root`` with a checkpoints/last*.ckpt."""
    best: tuple[float, str] | None = None
    base = Path(root)
    if not base.is_dir():
        return None
    for version in base.iterdir():
        if not (version.is_dir() and re.fullmatch(r"version_\d+", version.name)):
            continue
        newest = newest_last_checkpoint(version)
        if newest is not None:
            stamp = newest.stat().st_mtime
            if best is None or stamp > best[0]:
                best = (stamp, version.name)
    return None if best is None else best[1]


def newest_last_checkpoint(run: Path) -> Path | None:
    """The newest checkpoints/last*.ckpt of a run directory (what ``--ckpt_path last`` loads)."""
    found = list((run / "checkpoints").glob("last*.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_step(path: str | Path) -> int | None:
    """``global_step`` stored in a checkpoint, None if it cannot be read (Lightning then
    reports the problem when it loads the file)."""
    try:
        # mmap: only the small global_step is read, not every tensor.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # torch raises many types for a bad file; Lightning will name it
        return None


class OpenEndedRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar without ``Epoch 3/-2``: with ``max_epochs=-1`` (train
    until ``max_steps``, as every config here does) the epoch count has no end to show."""

    # Lightning formats "Epoch {n}/{max_epochs - 1}" in this one private method; it has no
    # option for open-ended runs.
    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        # Padded as Lightning pads it, so the bar does not jump when "Validation" replaces it.
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


class VQTrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{step}",
                # The best checkpoint is chosen at validation. (Lightning's automatic choice
                # picks "train epoch end" on a resumed run, whose validation loader is not
                # loaded yet, and then warns that val/loss is missing.) last.ckpt between
                # validations is LastCheckpoint's.
                "checkpoint.save_on_train_epoch_end": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(CodebookMonitor, "codebook_monitor")
        parser.add_lightning_class_args(ExportBest, "export")
        parser.add_lightning_class_args(CodeWriter, "predict_writer")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(RandomState, "random_state")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # The model's settings as given, before Lightning's CLI replaces them by a checkpoint
        # file's hyper-parameters (silently); before_instantiate_classes names what changed.
        subcommand = self.config.get("subcommand")
        # jsonargparse's Namespace.items() yields the leaves under dotted keys.
        self._given = dict(self.config[subcommand].model.items()) if subcommand else {}

    def _name_replaced_settings(self, model: Namespace) -> None:
        after = dict(model.items())
        replaced = [k for k in sorted(self._given) if k in after and after[k] != self._given[k]]
        if replaced:
            shown = ", ".join(
                f"model.{k}={after[k]!r} (given {self._given[k]!r})" for k in replaced
            )
            print(
                f"vq-train: --ckpt_path is a file, so the model's settings come from the "
                f"checkpoint: {shown} (Lightning's CLI does this for a path, not for "
                f"--ckpt_path last).",
                file=sys.stderr,
            )

    def _check_data(self) -> None:
        # Before the Trainer runs: its logger creates version_N/ when the run starts, and a
        # missing corpus would otherwise leave that folder empty.
        if isinstance(self.datamodule, ImageDataModule):
            self.datamodule.check_roots()

    def before_fit(self) -> None:
        self._check_data()

    def before_validate(self) -> None:
        self._check_data()
        self._load_weights("validate")

    def before_test(self) -> None:
        self._check_data()
        self._load_weights("test")

    def before_predict(self) -> None:
        self._load_weights("predict")

    def _load_weights(self, subcommand: str) -> None:
        # Validate, test and predict need the weights only: load them here (weights_only, as
        # vq-export does) instead of letting Lightning restore the run's callback states,
        # which only warned about checkpoint callbacks that these runs have no use for.
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None:
            return
        ckpt = read_checkpoint(ckpt_path)
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} does not fit the model of --config: {exc}"
            ) from None
        config["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        # What the config implies for the Trainer, decided before anything is built.
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        self._name_replaced_settings(config.model)
        if config.model.get("adversarial") is not None:
            _manual_optimization(config.model, config.trainer)
        if self.subcommand != "fit":
            # Validate, test and predict train nothing: no runs/<name>/config.yaml of a run
            # that does not exist.
            self.save_config_callback = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config["trainer"]
        callbacks = _as_list(trainer.get("callbacks"))
        bar = trainer.get("enable_progress_bar") is not False and find_spec("rich") is not None
        if bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
            # Lightning's own (rich) bar, told that max_epochs=-1 means "until max_steps".
            kwargs.setdefault("callbacks", [*callbacks, OpenEndedRichProgressBar()])
        plugins = _as_list(trainer.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # not a user's plugin
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        if trainer.get("logger") in (None, True):
            kwargs.setdefault("logger", self._default_logger(trainer.get("default_root_dir")))
        return super().instantiate_trainer(**kwargs)

    def _default_logger(self, root: str | None) -> TensorBoardLogger | bool:
        if self.subcommand != "fit":
            # No new version_N/ for a run that trains nothing: validate and test print their
            # figures (Lightning's table), predict writes codes. Logging them into the
            # checkpoint's run would put step-0 points into its training curves.
            return False
        # One flat version_N/ per run under default_root_dir (Lightning's default adds a
        # "lightning_logs/" level). For `fit --ckpt_path last`, reuse the run being resumed so
        # the checkpoint is found and its curves continue.
        root = root if root is not None else os.getcwd()
        version: str | None = None
        extra: dict[str, Any] = {}
        ckpt = self.config["fit"].get("ckpt_path")
        if ckpt == "last":
            version = latest_resumable_version(root)
            if version is not None:
                ckpt = newest_last_checkpoint(Path(root) / version)
        step = checkpoint_step(ckpt) if ckpt not in (None, "last") else None
        if step is not None:
            # Resuming into the run's own checkpoint directory is the point; the warning is
            # for fresh runs pointed at a used directory.
            warnings.filterwarnings(
                "ignore", message=r"Checkpoint directory .* exists and is not empty"
            )
            # The events a killed run wrote after its checkpoint would be logged a second
            # time by the resumed run: TensorBoard hides events at or after purge_step
            # (Lightning logs the step's batch at global_step - 1).
            extra["purge_step"] = step
        return TensorBoardLogger(
            save_dir=root, name="", version=version, default_hp_metric=False, **extra
        )


def _as_list(value: Any) -> list[Any]:
    """A Trainer argument that takes one item or a list of them, as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _manual_optimization(model: Namespace, trainer: Namespace) -> None:
    """The adversarial recipe's two optimizers step by hand (manual optimization): Lightning
    then refuses ``trainer.gradient_clip_val``, so the module clips the generator with it; and
    each of the two backward passes leaves the other player's parameters without gradients,
    which DDP allows only when told (Lightning issues #20328, #20685)."""
    model.gradient_clip_val = trainer.get("gradient_clip_val") or None
    trainer.gradient_clip_val = None
    strategy = trainer.get("strategy")
    if strategy == "auto" and _several_processes(trainer):
        strategy = "ddp"  # what Lightning's "auto" picks for several devices or nodes
    if strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        trainer.strategy = f"{strategy}_find_unused_parameters_true"


def _several_processes(trainer: Namespace) -> bool:
    """Whether the Trainer will run several processes (devices or nodes)."""
    if (trainer.get("num_nodes") or 1) > 1:
        return True
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        return gpu and torch.cuda.device_count() > 1
    if isinstance(devices, list):
        return len(devices) > 1
    text = str(devices).strip()
    return int(text) > 1 if text.isdigit() else len(text.strip(",").split(",")) > 1


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def silence_third_party_noise() -> None:
    """Hide Lightning messages that say nothing about this run, each matched by its text."""
    # The predict writer needs no sampler indices (PredictImages yields whole batches).
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    # CropBatches gives each DataLoader worker its own batch numbers, so its __len__ is
    # exact, which is what this generic warning doubts.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # torch deprecated LeafSpec; Lightning's own utilities/_pytree.py still uses it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's CLI still calls jsonargparse APIs that jsonargparse has deprecated
    # (DeprecationWarnings attributed to lightning/pytorch/cli.py; ours are not affected).
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli"
    )
    # Every Trainer logs an advertisement for a cloud logger.
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advertisement not in logger.filters:
        logger.addFilter(_not_an_advertisement)


def main(args: Sequence[str] | None = None) -> None:
    """The ``vq-train`` entry point; ``args`` (from Python, e.g. tests) replaces the
    command line."""
    silence_third_party_noise()
    argv = sys.argv
    if args is not None:
        sys.argv = argv[:1]  # LightningCLI warns when it sees both args and a command line
    try:
        VQTrainCLI(
            VQVAEModule,
            ImageDataModule,
            args=list(args) if args is not None else None,
            trainer_defaults={
                "precision": default_precision(),
                "default_root_dir": "runs",
            },
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except ValueError as exc:
        # Bad user input (an empty data folder, a bad option value): the message, not a trace.
        print(f"vq-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        sys.argv = argv


if __name__ == "__main__":
    main()
