"""Crash safety: a run killed with SIGKILL and resumed ends exactly where the uninterrupted
run ends (weights, optimizer, schedule, codebook statistics, usage window, random state,
TensorBoard curves); checkpoints are written atomically; a resume with nothing left says so."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.helpers import CONFIGS, REPO, TINY_OVERRIDES, run_cli, scalar_tags
from train.cli import main
from train.export import read_checkpoint

# EMA codebook + data initialization + dead-code restarts: every piece of quantizer state
# (EMA counts and sums, the init flag, restart draws from the global generator) must resume.
RESUME_OVERRIDES = [
    *TINY_OVERRIDES,
    "--trainer.max_steps=8",
    "--model.optimizer.total_steps=8",  # the same LR schedule for the killed and the whole run
    "--data.samples_per_epoch=12",  # 3 batches an epoch: validations at steps 3 and 6
    "--last_checkpoint.every_n_steps=2",
    "--trainer.enable_progress_bar=false",
    "--model.vqvae.quantizer.codebook_update=ema",
    "--model.vqvae.quantizer.codebook_init=data",
    "--model.vqvae.quantizer.dead_code_threshold=0.5",
]
USAGE_KEYS = ("usage/batch_usage", "usage/window_usage", "usage/perplexity", "usage/dead_codes")


def _fit(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["fit", "--config", str(CONFIGS / "rotation.yaml"), *RESUME_OVERRIDES]
    return run_cli([*args, f"--trainer.default_root_dir={root}", *extra], cwd=root)


def _assert_same_tensors(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_then_resume_continues_exactly(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    assert _fit(whole).returncode == 0

    kill = '{"class_path": "tests.train.helpers.KillAtStep", "init_args": {"step": 5}}'
    proc = _fit(killed, f"--trainer.callbacks+={kill}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = killed / "version_0" / "checkpoints"
    # Killed after step 5: the newest checkpoint is the periodic one of step 4, complete.
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert not list(ckpts.glob(".*.tmp"))

    proc = _fit(killed, "--ckpt_path=last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not resumable" not in proc.stderr and "not empty" not in proc.stderr
    assert not (killed / "version_1").exists()

    a = read_checkpoint(whole / "version_0" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(ckpts / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    _assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    _assert_same_tensors(a["optimizer_states"], b["optimizer_states"], "optimizer")
    _assert_same_tensors(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    for name in ("CodebookMonitor", "RandomState"):
        assert name in b["callbacks"], f"the final checkpoint lacks the {name} state"
        _assert_same_tensors(a["callbacks"][name], b["callbacks"][name], name)

    # What TensorBoard shows: the same curves, every usage key at steps 0..7 exactly once
    # (the killed run's events after its checkpoint are purged, not shown twice).
    ta, tb = scalar_tags(whole / "version_0"), scalar_tags(killed / "version_0")
    for key in USAGE_KEYS:
        assert [s for s, _ in tb[key]] == list(range(8)), key
    assert ta == tb


def test_atomic_checkpoint_write_survives_sigkill(tmp_path: Path) -> None:
    # A writer replacing a 16 MB file in a loop, killed at a random moment: the file is
    # always one complete version, never a mix or a truncation.
    target = tmp_path / "last.ckpt"
    code = (
        "import sys\n"
        "from train.checkpointing import atomic_write_bytes\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_bytes(sys.argv[1], bytes([i % 256]) * (16 << 20))\n"
        "    i += 1\n"
        "    print(i, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(3):  # a few complete writes, then kill in the middle of later ones
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    data = target.read_bytes()
    assert len(data) == 16 << 20 and data == bytes([data[0]]) * len(data)


def test_resume_with_nothing_left_says_so_extending_trains_on_and_ckpt_settings_are_named(
    tmp_path: Path,
    one_thread: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    args = [
        "fit",
        "--config",
        str(CONFIGS / "fsq.yaml"),
        *TINY_OVERRIDES,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    main(args)
    artifact = tmp_path / "version_0" / "artifact" / "config.json"
    exported = json.loads(artifact.read_text())["created"]
    capfd.readouterr()

    caplog.clear()
    main([*args, "--ckpt_path=last"])
    # Lightning's logger prints to stderr, or hands records to pytest's capture.
    out = "".join(capfd.readouterr()) + caplog.text
    assert "nothing left to train" in out and "--trainer.max_steps 8" in out
    assert json.loads(artifact.read_text())["created"] == exported  # not re-exported

    main([*args, "--ckpt_path=last", "--trainer.max_steps=6"])
    last = read_checkpoint(tmp_path / "version_0" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6  # saved at the end of fit, not at the last validation
    steps = [s for s, _ in scalar_tags(tmp_path / "version_0")["usage/window_usage"]]
    assert steps == list(range(6))

    # A checkpoint path (not "last"): Lightning's CLI takes model.* from the checkpoint; the
    # command line's different value is named, not dropped silently.
    lr = last["hyper_parameters"]["optimizer"]["lr"]
    capfd.readouterr()
    path = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    main([*args, f"--ckpt_path={path}", "--trainer.max_steps=7", f"--model.optimizer.lr={lr * 10}"])
    err = capfd.readouterr().err
    assert f"model.optimizer.lr={lr!r} (given {lr * 10!r})" in err
    assert read_checkpoint(path)["hyper_parameters"]["optimizer"]["lr"] == lr
