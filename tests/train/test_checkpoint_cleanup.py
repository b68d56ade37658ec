"""What crashes leave behind is cleaned up at the next start (stale temporary files of
checkpoint writes, best checkpoints the resumed run no longer tracks), and a full disk ends
a run with one line instead of a traceback."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

import train.checkpointing as checkpointing
from train.checkpointing import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    LastCheckpoint,
    remove_orphaned_best,
)


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"x")


def test_stale_temporaries_are_removed_at_the_next_start(tmp_path: Path) -> None:
    touch(tmp_path, ".last.ckpt.a1b2c3.tmp", ".best-step=4.ckpt.zz.tmp", "last.ckpt", ".keep.tmp")
    cb = ModelCheckpoint(dirpath=tmp_path, filename="best-{step}")
    trainer = SimpleNamespace(checkpoint_callback=cb, is_global_zero=True)
    LastCheckpoint().on_fit_start(trainer, None)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.tmp", "last.ckpt"]


def test_best_checkpoints_the_run_no_longer_tracks_are_removed(tmp_path: Path) -> None:
    touch(tmp_path, "best-step=2.ckpt", "best-step=4.ckpt", "last.ckpt", "mine.ckpt")
    cb = ModelCheckpoint(dirpath=tmp_path, filename="best-{step}")
    cb.best_k_models = {str(tmp_path / "best-step=4.ckpt"): 0.1}  # as restored from last.ckpt
    cb.best_model_path = str(tmp_path / "best-step=4.ckpt")
    assert remove_orphaned_best(cb) == [tmp_path / "best-step=2.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-step=4.ckpt",
        "last.ckpt",
        "mine.ckpt",
    ]
    fresh = ModelCheckpoint(dirpath=tmp_path, filename="best-{step}")  # tracks nothing yet
    assert remove_orphaned_best(fresh) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(path: object, data: bytes) -> None:
        raise OSError(code, "No space left on device")

    monkeypatch.setattr(checkpointing, "atomic_write_bytes", full)
    target = tmp_path / "last.ckpt"
    with pytest.raises(CheckpointWriteError) as info:
        AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    message = str(info.value.code)
    assert "\n" not in message and str(target) in message
    assert "No space left on device" in message and "--ckpt_path last" in message
    assert isinstance(info.value, SystemExit)  # exits 1 with the message, no traceback


def test_the_torch_floor_loads_weights_only_by_default() -> None:
    import re
    import tomllib

    import torch

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"torch\b", d) and not d.startswith("torchmetrics")]
    floor = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", spec).groups())  # type: ignore[union-attr]
    # Resuming with --ckpt_path goes through Lightning's torch.load, which refuses pickled
    # code only where weights_only=True is torch's default (2.6 on).
    assert floor >= (2, 6), spec
    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= floor
