"""The perceptual + adversarial + EMA recipe through ``vq-train``: every term logged, both
optimizers resumed exactly after kill -9, EMA weights validated and exported, decoder-only
fine-tuning leaves every code bit-identical, the published recipe configs train."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vq
from tests.train.helpers import CONFIGS, TINY_OVERRIDES, run_cli, scalar_tags
from tests.train.test_lpips import write_weights
from tests.train.test_resume import _assert_same_tensors
from train.export import read_checkpoint

RECIPE = [
    "--model.perceptual.kind=ms_ssim",
    "--model.adversarial.weight=0.5",
    "--model.adversarial.adaptive=true",
    "--model.adversarial.lecam_weight=0.01",
    "--model.adversarial.highpass_sigma=1.0",
    "--model.adversarial.start_step=1",
    "--model.ema.decay=0.9",
    "--data.crop_size=48",
    "--data.val_crop_size=48",
    "--trainer.enable_progress_bar=false",
]
# Quantizer state that training moves (EMA codebook, data init, dead-code restarts): frozen
# under trainable=decoder, resumed exactly otherwise.
MOVING_QUANTIZER = [
    "--model.vqvae.quantizer.codebook_update=ema",
    "--model.vqvae.quantizer.codebook_init=data",
    "--model.vqvae.quantizer.dead_code_threshold=0.5",
]


def _fit(root: Path, *extra: str, config: str = "rotation") -> None:
    args = ["fit", "--config", str(CONFIGS / f"{config}.yaml"), *TINY_OVERRIDES, *RECIPE]
    proc = run_cli([*args, f"--trainer.default_root_dir={root}", *extra], cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_recipe_logs_every_term_and_exports_the_ema_weights(tmp_path: Path) -> None:
    _fit(tmp_path, *MOVING_QUANTIZER)
    run = tmp_path / "version_0"
    tags = scalar_tags(run)
    for key in (
        "train/mse",
        "train/l1",
        "train/perceptual",
        "train/quant_loss",
        "train/g_adv",
        "train/adaptive_weight",
        "train/d_loss",
        "train/lecam",
        "train/d_logits_real",
        "train/d_logits_fake",
        "val/perceptual",
        "usage/window_usage",
    ):
        assert key in tags, f"{key} not logged"
    # The adversarial term is on from start_step=1: logged at steps 1..3, not at step 0.
    assert [s for s, _ in tags["train/g_adv"]] == [1, 2, 3]
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4  # one step per batch, not one per optimizer
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    state = ckpt["state_dict"]
    exported = load_file(run / "artifact" / "model.safetensors")
    ema = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
    live = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], live[k]) for k in ema)  # EMA differs from the live weights


def test_adversarial_run_resumes_exactly_after_sigkill(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    common = [
        *MOVING_QUANTIZER,
        "--trainer.max_steps=6",
        "--model.optimizer.total_steps=6",
        "--data.samples_per_epoch=12",
        "--last_checkpoint.every_n_steps=2",
    ]
    _fit(whole, *common)
    kill = '{"class_path": "tests.train.helpers.KillAtStep", "init_args": {"step": 3}}'
    args = ["fit", "--config", str(CONFIGS / "rotation.yaml"), *TINY_OVERRIDES, *RECIPE, *common]
    proc = run_cli(
        [*args, f"--trainer.default_root_dir={killed}", f"--trainer.callbacks+={kill}"], cwd=killed
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = killed / "version_0" / "checkpoints"
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 2
    _fit(killed, *common, "--ckpt_path=last")

    a = read_checkpoint(whole / "version_0" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(ckpts / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    # Generator, discriminator, EMA, LeCAM averages; both optimizers and both schedules.
    _assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    _assert_same_tensors(a["optimizer_states"], b["optimizer_states"], "optimizer")
    _assert_same_tensors(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")


def test_decoder_only_finetuning_keeps_every_code(tmp_path: Path) -> None:
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    base.mkdir()
    tuned.mkdir()
    _fit(base, *MOVING_QUANTIZER, "--model.ema=null")
    artifact = base / "version_0" / "artifact"
    _fit(
        tuned,
        *MOVING_QUANTIZER,
        f"--model.init_from={artifact}",
        "--model.trainable=decoder",
        "--model.vqvae=null",
    )
    before = vq.load_tokenizer(artifact, precision="fp32")
    after = vq.load_tokenizer(tuned / "version_0" / "artifact", precision="fp32")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    assert torch.equal(before.encode(images), after.encode(images))
    sb, sa = before.model.state_dict(), after.model.state_dict()
    frozen = [k for k in sb if not k.startswith("decoder.")]
    assert frozen and all(torch.equal(sb[k], sa[k]) for k in frozen)
    assert any(not torch.equal(sb[k], sa[k]) for k in sb if k.startswith("decoder."))


def test_init_from_a_different_network_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    _fit(base, "--model.ema=null")
    args = ["fit", "--config", str(CONFIGS / "fsq.yaml"), *TINY_OVERRIDES]
    artifact = base / "version_0" / "artifact"
    proc = run_cli(
        [*args, f"--model.init_from={artifact}", f"--trainer.default_root_dir={tmp_path}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "model.init_from" in proc.stderr and "leave model.vqvae out" in proc.stderr


def test_lpips_without_weights_fails_before_the_run_with_how_to_get_them(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "fsq.yaml"), *TINY_OVERRIDES]
    proc = run_cli(
        [
            *args,
            "--model.perceptual.kind=lpips",
            f"--model.perceptual.weights={tmp_path / 'missing.safetensors'}",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("vq-train: error:")]
    assert line and "missing.safetensors" in line[0] and "vq-lpips-weights" in line[0]
    assert "ms_ssim" in line[0]
    assert not (tmp_path / "runs").exists()  # nothing left behind


RECIPE_TINY = {
    "simvq_imagenet128": [
        "--model.vqvae.widths=[32, 32, 32, 32]",
        "--model.vqvae.z_channels=32",
        "--model.vqvae.code_dim=8",
    ],
    "llamagen_vq16": [
        "--model.vqvae.widths=[32, 32, 32, 32, 32]",
        "--model.vqvae.z_channels=32",
        "--model.adversarial.start_step=1",
    ],
    "default_decoder_ft": [],
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_TINY))
def test_published_recipe_configs_train(recipe: str, tmp_path: Path) -> None:
    """Each configs/recipes/*.yaml trains as written but for size (and LPIPS weights made
    here in the real file formats)."""
    assert sorted(p.stem for p in (CONFIGS / "recipes").glob("*.yaml")) == sorted(RECIPE_TINY)
    weights = write_weights(tmp_path)
    perceptual = [f"--model.perceptual.weights={weights}"] if recipe != "default_decoder_ft" else []
    init = (
        [f"--model.init_from={CONFIGS.parent / 'models' / 'default-mse'}"]
        if recipe == "default_decoder_ft"
        else []
    )
    proc = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "recipes" / f"{recipe}.yaml"),
            *RECIPE_TINY[recipe],
            *perceptual,
            *init,
            "--trainer.max_steps=3",
            "--trainer.log_every_n_steps=1",
            "--trainer.max_epochs=-1",
            "--trainer.precision=32-true",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.root=null",
            "--data.val_root=null",
            "--data.crop_size=64",
            "--data.val_crop_size=64",
            "--data.batch_size=2",
            "--data.samples_per_epoch=4",
            "--data.val_crops_per_image=1",
            "--data.num_workers=0",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    tags = scalar_tags(tmp_path / "runs" / "version_0")
    assert "train/perceptual" in tags and "val/psnr" in tags
    assert (tmp_path / "runs" / "version_0" / "artifact" / "model.safetensors").is_file()
