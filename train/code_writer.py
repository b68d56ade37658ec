"""``CodeWriter``: the output of ``vq-train predict`` (code shards + JSONL manifests), written
so that a killed run resumes from the shards already written."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from train.checkpointing import atomic_write_bytes
from train.data import ImageDataModule
from train.module import VQVAEModule

_SHARD_RE = re.compile(r"^codes-rank(\d+)-(\d+)x(\d+)-(\d+)\.npy$")
_RANK_FILE_RE = re.compile(r"^(manifest|skipped)-rank(\d+)\.jsonl$")


def _code_dtype(codebook_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.int32)


def _vqvae(pl_module: L.LightningModule) -> VQVAEModule:
    if not isinstance(pl_module, VQVAEModule):
        raise TypeError(f"CodeWriter writes the codes of a VQVAEModule, not {type(pl_module)}")
    return pl_module


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file; a torn last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entries.append(entry)
    return entries


def finished_paths(out_dir: Path) -> set[str]:
    """Images an earlier run (any rank, any world size) already tokenized or found unreadable:
    manifest entries whose shard exists, and skipped entries."""
    done: set[str] = set()
    if not out_dir.is_dir():
        return done
    for path in out_dir.iterdir():
        m = _RANK_FILE_RE.match(path.name)
        if m is None:
            continue
        for entry in _read_jsonl(path):
            if m.group(1) == "skipped" or (out_dir / str(entry.get("shard", ""))).is_file():
                done.add(entry["path"])
    return done


class CodeWriter(BasePredictionWriter):
    """Writes ``vq-train predict`` output to ``out_dir``, one file set per rank:

    - ``codes-rank{R}-{h}x{w}-{S:05d}.npy``: uint16 (int32 if codebook_size > 65,536)
      arrays (N, h, w), the code grids of N images of one grid shape, at most ``shard_size``
      rows per shard;
    - ``manifest-rank{R}.jsonl``: one line per tokenized image:
      ``{"path", "shard", "row", "grid": [h, w], "crop": [H', W'], "size": [H, W]}``;
    - ``skipped-rank{R}.jsonl``: one line per file that could not be tokenized:
      ``{"path", "error"}`` (also counted in a warning);
    - ``info.json`` (rank 0): root, f, codebook_size, dtype, world size, precision.

    Paths are relative to ``data.predict_root``.

    Crash safety: a shard is written atomically and only then are its manifest lines appended
    (and flushed), so a manifest line always points at a complete shard. With ``resume=True``
    (the default) a new run into the same ``out_dir`` leaves out every image an earlier run
    finished (``finished_paths``; it sets ``ImageDataModule.predict_exclude``), appends to the
    manifests and numbers its shards after the existing ones: re-running the killed command
    continues where it stopped, with any number of processes. ``resume=False`` removes the
    earlier output of the ``out_dir`` first and tokenizes everything again.
    """

    def __init__(
        self, out_dir: str | None = None, shard_size: int = 4096, resume: bool = True
    ) -> None:
        super().__init__(write_interval="batch")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size!r} is not allowed; expected >= 1")
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.resume = resume
        self._buffers: dict[tuple[int, int], list[np.ndarray]] = {}
        self._pending: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._shard_counts: dict[tuple[int, int], int] = {}
        self.num_written = 0
        self.num_skipped = 0
        self.num_resumed = 0

    def _dir(self, trainer: L.Trainer) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        return Path(trainer.default_root_dir) / "codes"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        out = self._dir(trainer)
        if not self.resume:
            trainer.strategy.barrier()  # every rank has looked at out_dir before rank 0 clears it
            if trainer.is_global_zero and out.is_dir():
                for path in out.iterdir():
                    if _SHARD_RE.match(path.name) or _RANK_FILE_RE.match(path.name):
                        path.unlink()
            trainer.strategy.barrier()
            return
        done = finished_paths(out)  # read by every rank before any writes (barrier below)
        self.num_resumed = len(done)
        datamodule = getattr(trainer, "datamodule", None)
        if done and isinstance(datamodule, ImageDataModule):
            datamodule.predict_exclude = done
        trainer.strategy.barrier()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        # Continue this rank's files: keep their complete lines, number new shards after
        # every existing one (a torn shard of the killed run is never named again).
        self._shard_counts = {}
        for path in out.glob(f".codes-rank{rank}-*.tmp.npy"):
            path.unlink()  # a shard the killed run was writing; its images are redone
        for path in out.iterdir():
            m = _SHARD_RE.match(path.name)
            if m is not None and int(m.group(1)) == rank:
                grid = (int(m.group(2)), int(m.group(3)))
                self._shard_counts[grid] = max(self._shard_counts.get(grid, 0), int(m.group(4)) + 1)
        for kind in ("manifest", "skipped"):
            path = out / f"{kind}-rank{rank}.jsonl"
            lines = "".join(json.dumps(e) + "\n" for e in _read_jsonl(path))
            atomic_write_bytes(path, lines.encode("utf-8"))
        self._manifest = (out / f"manifest-rank{rank}.jsonl").open("a", encoding="utf-8")
        self._skipped = (out / f"skipped-rank{rank}.jsonl").open("a", encoding="utf-8")
        self._buffers, self._pending = {}, {}
        self.num_written = self.num_skipped = 0
        module = _vqvae(pl_module)
        self._dtype = _code_dtype(module.codebook_size)
        if trainer.is_global_zero:
            dm = getattr(trainer, "datamodule", None)
            info = {
                "root": str(getattr(dm, "predict_root", "")),
                "f": module.f,
                "codebook_size": module.codebook_size,
                "dtype": self._dtype.name,
                "world_size": trainer.world_size,
                "crop": "centre crop to the largest multiple of f",
                # Lightning's precision plugin: "bf16-mixed" is the Tokenizer's "bf16" path.
                "precision": str(trainer.precision),
            }
            text = json.dumps(info, indent=2) + "\n"
            atomic_write_bytes(out / "info.json", text.encode("utf-8"))

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
        self._skipped.flush()
        paths = prediction["paths"]
        if not paths:
            return
        codes = prediction["codes"].numpy().astype(self._dtype)  # (B, h, w)
        grid = (int(codes.shape[1]), int(codes.shape[2]))
        h, w = batch["images"].shape[-2:]
        f = _vqvae(pl_module).f
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
        out = self._dir(trainer)
        # The shard first, complete, then the lines that point at it.
        tmp = out / f".{name}.tmp.npy"
        np.save(tmp, np.stack(buf))  # (N, h, w)
        tmp.replace(out / name)
        for row, entry in enumerate(pend):
            self._manifest.write(json.dumps({**entry, "shard": name, "row": row}) + "\n")
        self._manifest.flush()
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
        resumed = f", {self.num_resumed} done by an earlier run" if self.num_resumed else ""
        print(
            f"rank {rank}: tokenized {self.num_written} image(s) into {out} "
            f"(manifest-rank{rank}.jsonl), skipped {self.num_skipped}{resumed}"
        )
