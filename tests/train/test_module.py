"""The LightningModule trained in-process: artifact round trip, resume, bf16, schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import vq
from tests.train.test_lpips import write_weights
from train.callbacks import CodebookMonitor
from train.checkpointing import upgrade_checkpoint
from train.cli import silence_third_party_noise
from train.data import ImageDataModule
from train.export import export_checkpoint, export_module, module_from_checkpoint, read_checkpoint
from train.export import main as export_main
from train.gan import AdversarialConfig
from train.module import VQVAEModule, center_crop_to_multiple, warmup_cosine
from train.optimization import EMAConfig, OptimizerConfig
from vq.model import QuantizerConfig, VQVAEConfig


def tiny_module(**quantizer: object) -> VQVAEModule:
    q = {"codebook_size": 32, "grad_estimator": "rotation", "dead_code_threshold": 0.5, **quantizer}
    cfg = VQVAEConfig(f=4, widths=(8, 8, 16), code_dim=8, quantizer=QuantizerConfig(**q))  # type: ignore[arg-type]
    return VQVAEModule(cfg, OptimizerConfig(lr=3e-3, warmup_steps=1))


def tiny_data() -> ImageDataModule:
    return ImageDataModule(
        crop_size=16, val_crop_size=32, batch_size=4, samples_per_epoch=8, val_crops_per_image=2
    )


def tiny_trainer(
    root: Path, max_steps: int, callbacks: list[Callback] | None = None, **kwargs: object
) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[
            ModelCheckpoint(
                dirpath=root / "checkpoints",
                monitor="val/loss",
                save_last=True,
                save_on_train_epoch_end=False,  # as vq-train: best chosen at validation
            ),
            CodebookMonitor(window=1024),
            *(callbacks or []),
        ],
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Trained:
    module: VQVAEModule
    root: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    silence_third_party_noise()  # module-scoped: runs before the autouse fixture
    try:
        L.seed_everything(0, verbose=False)
        root = tmp_path_factory.mktemp("fit")
        module = tiny_module()
        tiny_trainer(root, max_steps=4).fit(module, datamodule=tiny_data())
        return Trained(module, root)
    finally:
        torch.set_num_threads(threads)


def test_artifact_round_trip_gives_the_trained_codes(trained: Trained, tmp_path: Path) -> None:
    images = torch.randint(0, 256, (3, 3, 24, 32), dtype=torch.uint8)
    expected = trained.module.model.encode(images.float() / 127.5 - 1.0)

    export_module(trained.module, tmp_path / "mem", metrics={"psnr": 20.0, "junk": 1.0})
    tokenizer = vq.load_tokenizer(tmp_path / "mem", precision="fp32")
    assert torch.equal(tokenizer.encode(images), expected)
    assert tokenizer.metadata["metrics"] == {"psnr": 20.0}  # only the known metric names

    # last.ckpt holds the final state too; vq-export writes the same codes.
    assert export_main([str(trained.root / "checkpoints" / "last.ckpt"), str(tmp_path / "ck")]) == 0
    from_ckpt = vq.load_tokenizer(tmp_path / "ck", precision="fp32")
    assert torch.equal(from_ckpt.encode(images), expected)
    assert from_ckpt.metadata["extra"]["global_step"] == 4
    assert {"psnr", "ssim", "epoch_usage"} <= set(from_ckpt.metadata["metrics"])


def test_corrupted_artifact_and_checkpoint_fail_clearly(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = export_checkpoint(trained.root / "checkpoints" / "last.ckpt", tmp_path / "art")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(vq.ArtifactError, match="model.safetensors"):
        vq.load_tokenizer(out)

    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes((trained.root / "checkpoints" / "last.ckpt").read_bytes()[:500])
    assert export_main([str(truncated), str(tmp_path / "x")]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


class _Probe(Callback):
    """Records the step and the quantizer state when (resumed) training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step
        self.state = {k: v.clone() for k, v in pl_module.model.quantizer.state_dict().items()}


# Resuming into a new directory is the scenario; Lightning warns that the old one's
# checkpoint bookkeeping is not carried over.
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_continues_step_count_and_keeps_codebook(
    trained: Trained, tmp_path: Path, one_thread: None
) -> None:
    last = trained.root / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    fresh = tiny_module()  # a new random codebook: the checkpoint must replace it
    assert not torch.equal(
        fresh.model.quantizer.book.codebook, saved["state_dict"]["model.quantizer.codebook"]
    )
    probe = _Probe()
    trainer = tiny_trainer(tmp_path, max_steps=6, callbacks=[probe])
    trainer.fit(fresh, datamodule=tiny_data(), ckpt_path=last)
    assert probe.step == 4
    for name in ("codebook", "ema_count"):
        assert torch.equal(probe.state[name], saved["state_dict"][f"model.quantizer.{name}"])
    assert trainer.global_step == 6
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6


@pytest.mark.parametrize(
    "quantizer",
    [
        {},
        {"codebook": "linear", "dead_code_threshold": 0.0},
        {
            "kind": "fsq",
            "codebook_size": 64,
            "levels": (4, 4, 4),
            "grad_estimator": "ste",
            "dead_code_threshold": 0.0,
        },
    ],
)
def test_bf16_mixed_training_step(
    quantizer: dict[str, object], tmp_path: Path, one_thread: None
) -> None:
    module = tiny_module(**quantizer)
    trainer = tiny_trainer(tmp_path, max_steps=2, precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(module, datamodule=tiny_data())
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert math.isfinite(float(trainer.callback_metrics["val/psnr"]))


def test_schedule_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(
        a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)
    )  # non-increasing after warmup
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)


def test_center_crop_to_multiple() -> None:
    x = torch.arange(2 * 3 * 13 * 10, dtype=torch.float).reshape(2, 3, 13, 10)
    y = center_crop_to_multiple(x, 4)
    assert y.shape == (2, 3, 12, 8)
    assert torch.equal(y, x[..., 0:12, 1:9])


def test_bad_hyperparameters_raise() -> None:
    with pytest.raises(ValueError, match="lr"):
        VQVAEModule(optimizer={"lr": 0.0})  # type: ignore[arg-type]  # YAML mapping
    with pytest.raises(ValueError, match="l1_weight"):
        VQVAEModule(reconstruction={"l1_weight": -1.0})  # type: ignore[arg-type]


def test_a_checkpoint_of_the_flat_layout_still_loads() -> None:
    """Checkpoints written before the argument groups and the recipe module (flat
    hyper-parameters, the discriminator at the top level) export and resume."""
    cfg = VQVAEConfig(
        f=4, widths=(8, 8, 16), code_dim=8, quantizer=QuantizerConfig(codebook_size=32)
    )
    module = VQVAEModule(
        cfg,
        OptimizerConfig(lr=1e-3, total_steps=9),
        adversarial=AdversarialConfig(channels=8),
        ema=EMAConfig(decay=0.9),
    )
    hparams = dict(module.hparams)
    flat = {k: v for k, v in hparams.items() if k not in ("optimizer", "reconstruction", "ema")}
    flat |= {**hparams["optimizer"], **hparams["reconstruction"], "ema_decay": 0.9}
    flat["adversarial"] = {**hparams["adversarial"], "feature_matching_weight": 0.0}
    state = {k.removeprefix("recipe."): v for k, v in module.state_dict().items()}
    restored = module_from_checkpoint(
        upgrade_checkpoint({"state_dict": state, "hyper_parameters": flat})
    )
    assert dict(restored.hparams) == hparams
    after = restored.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in module.state_dict().items())


class _UsageProbe(Callback):
    """Records the monitor's window usage after every training batch (runs after it)."""

    def __init__(self, monitor: CodebookMonitor) -> None:
        self.monitor = monitor
        self.by_step: dict[int, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        assert self.monitor.train_usage is not None
        self.by_step[trainer.global_step] = self.monitor.train_usage.window_usage


def test_usage_figures_are_logged_fresh_on_logging_steps(tmp_path: Path, one_thread: None) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    from tests.train.helpers import scalar_tags

    monitor = CodebookMonitor(window=64)  # small window: usage changes from step to step
    probe = _UsageProbe(monitor)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=3,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=TensorBoardLogger(tmp_path, name="", version=0),
        callbacks=[monitor, probe],
    )
    # One epoch of 6 batches: a logging interval longer than the epoch is Lightning's warning.
    data = ImageDataModule(crop_size=16, val_crop_size=32, batch_size=4, samples_per_epoch=24)
    trainer.fit(tiny_module(), datamodule=data)
    tags = scalar_tags(tmp_path / "version_0")
    logged = tags["usage/window_usage"]
    assert [s for s, _ in logged] == [s for s, _ in tags["train/loss"]] == [2, 5]
    # The logger's step is the number of finished optimizer steps before the batch.
    for step, value in logged:
        assert value == pytest.approx(probe.by_step[step + 1])


def test_test_stage_reports_quality_and_usage(
    trained: Trained, tmp_path: Path, one_thread: None
) -> None:
    trainer = tiny_trainer(tmp_path, max_steps=1)
    (metrics,) = trainer.test(trained.module, datamodule=tiny_data(), verbose=False)
    for key in ("test/psnr", "test/ssim", "test/loss", "test/epoch_usage", "test/tokens"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 < metrics["test/epoch_usage"] <= 1.0
    assert metrics["test/tokens"] == 2 * 2 * (32 // 4) ** 2  # 2 images x 2 crops x 8x8 codes


@pytest.mark.parametrize(
    ("quantizer", "fix"),
    [
        ({"codebook_size": 1024}, "--model.vqvae.quantizer.codebook_init data"),
        ({"codebook_size": 1024, "codebook": "linear"}, "lower --model.optimizer.lr"),
    ],
)
def test_monitor_warns_once_when_usage_collapses(
    tmp_path: Path, one_thread: None, quantizer: dict[str, object], fix: str
) -> None:
    """A window of 256 tokens (4 steps of 4 crops x 4x4 codes) can use at most 25 % of 1,024
    codes, below a 30 % collapse floor: one warning, naming the fix for this quantizer."""
    from vq.model import QuantizerConfig, VQVAEConfig

    config = VQVAEConfig(f=4, widths=(8, 8, 16), code_dim=4, quantizer=QuantizerConfig(**quantizer))
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=4,
        log_every_n_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        callbacks=[CodebookMonitor(window=256, collapse_usage=0.3)],
    )
    with pytest.warns(UserWarning, match="CODEBOOK COLLAPSE") as caught:
        trainer.fit(VQVAEModule(config), datamodule=tiny_data())
    collapse = [w for w in caught if "CODEBOOK COLLAPSE" in str(w.message)]
    assert len(collapse) == 1 and fix in str(collapse[0].message)


def test_monitor_rejects_a_bad_collapse_floor() -> None:
    with pytest.raises(ValueError, match="collapse_usage=1.5"):
        CodebookMonitor(collapse_usage=1.5)


@pytest.mark.parametrize("weights", [True, False], ids=["with-weights", "without"])
def test_val_lpips_is_logged_and_exported_where_the_weights_are(
    weights: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    folder = tmp_path / "lpips"
    folder.mkdir()
    if weights:
        write_weights(folder, "vgg")  # test-made weights in the real layout
    monkeypatch.setenv("VQ_LPIPS_DIR", str(folder))
    module = tiny_module()
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=tiny_data())
    art = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "art")
    metrics = vq.load_tokenizer(art, precision="fp32").metadata["metrics"]
    if weights:
        lpips = float(trainer.callback_metrics["val/lpips"])
        assert math.isfinite(lpips) and lpips > 0
        assert metrics["lpips"] == pytest.approx(lpips)
    else:
        assert "val/lpips" not in trainer.callback_metrics and "lpips" not in metrics
    # The LPIPS network is the user's file: never in the checkpoint.
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert not any("lpips" in key or "features." in key for key in ckpt["state_dict"])
