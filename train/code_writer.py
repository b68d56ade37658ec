"""``CodeWriter``: the output of ``vq-train predict``, written so that a killed run resumes
from the shards already written: ``.npy`` code shards + JSONL manifests (a folder), or one
Parquet / webdataset tar file per input unit (any ``train.sources`` source)."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import time
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
FORMATS = ("npy", "parquet", "tar")
# Metadata names start with "_": Parquet readers (pyarrow, Spark, DuckDB) skip such files, so
# `pyarrow.parquet.read_table(out_dir)` reads the token shards alone.
INFO_NAME = "_info.json"


def skipped_name(unit: str) -> str:
    """The file beside a unit's shard that lists its unreadable samples."""
    return f"_{unit}.skipped.jsonl"


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _safe_key(key: str) -> str:
    """A webdataset key for ``key``: no image extension, no dots in the file name."""
    head, _, base = key.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if dot and ext.lower() in ("png", "jpg", "jpeg", "webp", "bmp"):
        base = stem
    base = base.replace(".", "_")
    return f"{head}/{base}" if head else base


def unit_shards(out_dir: Path, fmt: str) -> set[str]:
    """Names of the units whose output shard is complete in ``out_dir``."""
    if not out_dir.is_dir():
        return set()
    return {p.name[: -len(fmt) - 1] for p in out_dir.glob(f"*.{fmt}") if not p.name.startswith(".")}


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


def _migrate(out: Path) -> None:
    """Renames an earlier version's metadata (``info.json``, ``<unit>.skipped.jsonl``), which
    made ``pyarrow.parquet.read_table(out)`` fail, to the names Parquet readers skip."""
    for path in out.glob("*.skipped.jsonl"):
        if not path.name.startswith("_"):
            path.replace(out / skipped_name(path.name[: -len(".skipped.jsonl")]))
    old = out / "info.json"
    if old.is_file():
        old.replace(out / INFO_NAME)


class CodeWriter(BasePredictionWriter):
    """Writes ``vq-train predict`` output to ``out_dir``, one file set per rank:

    - ``codes-rank{R}-{h}x{w}-{S:05d}.npy``: uint16 (int32 if codebook_size > 65,536)
      arrays (N, h, w), the code grids of N images of one grid shape, at most ``shard_size``
      rows per shard;
    - ``manifest-rank{R}.jsonl``: one line per tokenized image:
      ``{"path", "shard", "row", "grid": [h, w], "crop": [H', W'], "size": [H, W]}``;
    - ``skipped-rank{R}.jsonl``: one line per file that could not be tokenized:
      ``{"path", "error"}`` (also counted in a warning);
    - ``_info.json`` (rank 0): root, f, codebook_size, dtype, world size, precision.

    Paths are relative to ``data.predict_root``.

    ``format="parquet"`` or ``"tar"`` instead writes one file per input unit (a tar shard, a
    Parquet row group, an Arrow slice, ``data.predict_shard_size`` images of a folder),
    named after it, once the whole unit is tokenized:

    - ``<unit>.parquet``: one row per image, ``__key__`` (the sample key), ``tokens``
      (list of uint16, or int32 if codebook_size > 65,536: the h x w grid, row-major),
      ``grid_h``, ``grid_w``, ``height``, ``width`` (the decoded image);
    - ``<unit>.tar``: webdataset samples ``<key>.npy`` (the (h, w) grid) and ``<key>.json``
      (``{"key", "grid", "size"}``);
    - ``_<unit>.skipped.jsonl`` next to it when some samples could not be read.

    Names that start with ``_`` are skipped by Parquet readers, so
    ``pyarrow.parquet.read_table(out_dir)`` reads the shards alone. Output of earlier versions
    (``info.json``, ``<unit>.skipped.jsonl``) is renamed to these names by a re-run.

    A unit's file appears complete (written to a temporary name, then renamed) or not at
    all, and a re-run skips the units that have one: after a kill, each image is written
    exactly once.

    Progress (images, images/s, ETA) is printed every ``progress_every`` seconds per rank.

    Crash safety: a shard is written atomically and only then are its manifest lines appended
    (and flushed), so a manifest line always points at a complete shard. With ``resume=True``
    (the default) a new run into the same ``out_dir`` leaves out every image an earlier run
    finished (``finished_paths``; it sets ``ImageDataModule.predict_exclude``), appends to the
    manifests and numbers its shards after the existing ones: re-running the killed command
    continues where it stopped, with any number of processes. ``resume=False`` removes the
    earlier output of the ``out_dir`` first and tokenizes everything again.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        shard_size: int = 4096,
        resume: bool = True,
        format: str = "npy",
        progress_every: float = 10.0,
    ) -> None:
        super().__init__(write_interval="batch")
        if shard_size < 1:
            raise ValueError(f"shard_size={shard_size!r} is not allowed; expected >= 1")
        if format not in FORMATS:
            raise ValueError(
                f"predict_writer.format={format!r} is not allowed; expected one of {FORMATS}"
            )
        self.format = format
        self.progress_every = progress_every
        self._units: dict[str, dict[str, list[Any]]] = {}
        self._done = 0
        self._t0 = self._last = 0.0
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
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ImageDataModule):
            datamodule.predict_format = self.format
        if self.format != "npy":
            self._setup_units(trainer, out, datamodule)
            return
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
        if trainer.is_global_zero and out.is_dir():
            _migrate(out)
        datamodule = getattr(trainer, "datamodule", None)
        if done and isinstance(datamodule, ImageDataModule):
            datamodule.predict_exclude = done
        trainer.strategy.barrier()

    def _setup_units(self, trainer: L.Trainer, out: Path, datamodule: Any) -> None:
        trainer.strategy.barrier()  # every rank is here before rank 0 touches out_dir
        if trainer.is_global_zero and out.is_dir():
            for path in out.glob(".*.tmp"):
                path.unlink()  # a shard a killed run was writing; its unit is redone
            _migrate(out)
            if not self.resume:
                for path in out.glob(f"*.{self.format}"):
                    path.unlink()
                for path in out.glob("_*.skipped.jsonl"):
                    path.unlink()
        trainer.strategy.barrier()
        done = unit_shards(out, self.format)
        self.num_resumed = len(done)
        if isinstance(datamodule, ImageDataModule):
            datamodule.predict_done_units = done
        trainer.strategy.barrier()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last = time.monotonic()
        self._done = 0
        if self.format != "npy":
            self._dir(trainer).mkdir(parents=True, exist_ok=True)
            self._units = {}
            self.num_written = self.num_skipped = 0
            module = _vqvae(pl_module)
            self._dtype = _code_dtype(module.codebook_size)
            if trainer.is_global_zero:
                self._write_info(trainer, module)
            return
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
            self._write_info(trainer, module)

    def _write_info(self, trainer: L.Trainer, module: VQVAEModule) -> None:
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
            "format": self.format,
        }
        text = json.dumps(info, indent=2) + "\n"
        atomic_write_bytes(self._dir(trainer) / INFO_NAME, text.encode("utf-8"))

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
        self._progress(trainer, len(prediction["paths"]) + len(prediction["errors"]))
        if self.format != "npy":
            self._collect(trainer, prediction, batch)
            return
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

    def _progress(self, trainer: L.Trainer, images: int) -> None:
        self._done += images
        now = time.monotonic()
        if now - self._last < self.progress_every:
            return
        self._last = now
        dm = getattr(trainer, "datamodule", None)
        total = int(getattr(dm, "predict_total", 0))
        rate = self._done / max(now - self._t0, 1e-9)
        eta = f", ETA {_duration((total - self._done) / rate)}" if total and rate > 0 else ""
        print(
            f"rank {trainer.global_rank}: {self._done}/{total or '?'} images, "
            f"{rate:.1f} images/s{eta}",
            file=sys.stderr,
            flush=True,
        )

    def _collect(self, trainer: L.Trainer, prediction: Any, batch: Any) -> None:
        unit = self._units.setdefault(
            batch["unit"], {"keys": [], "codes": [], "sizes": [], "errors": []}
        )
        unit["errors"] += prediction["errors"]
        if prediction["paths"]:
            codes = prediction["codes"].numpy().astype(self._dtype)
            h, w = batch["images"].shape[-2:]
            unit["keys"] += list(prediction["paths"])
            unit["codes"] += list(codes)
            unit["sizes"] += [(int(h), int(w))] * len(codes)
        if batch["unit_end"]:
            self._write_unit(trainer, batch["unit"], self._units.pop(batch["unit"]))

    def _write_unit(self, trainer: L.Trainer, name: str, unit: dict[str, list[Any]]) -> None:
        out = self._dir(trainer)
        target = out / f"{name}.{self.format}"
        tmp = out / f".{name}.{self.format}.tmp"
        if unit["errors"]:
            lines = "".join(json.dumps(e) + "\n" for e in unit["errors"])
            atomic_write_bytes(out / skipped_name(name), lines.encode("utf-8"))
            self.num_skipped += len(unit["errors"])
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            value = pa.uint16() if self._dtype == np.uint16 else pa.int32()
            table = pa.table(
                {
                    "__key__": pa.array(unit["keys"], pa.string()),
                    "tokens": pa.array([c.reshape(-1) for c in unit["codes"]], pa.list_(value)),
                    "grid_h": pa.array([c.shape[0] for c in unit["codes"]], pa.int32()),
                    "grid_w": pa.array([c.shape[1] for c in unit["codes"]], pa.int32()),
                    "height": pa.array([s[0] for s in unit["sizes"]], pa.int32()),
                    "width": pa.array([s[1] for s in unit["sizes"]], pa.int32()),
                }
            )
            pq.write_table(table, tmp)
        else:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
                for key, codes, size in zip(
                    unit["keys"], unit["codes"], unit["sizes"], strict=True
                ):
                    safe = _safe_key(key)
                    buf = io.BytesIO()
                    np.save(buf, codes)
                    meta = {"key": key, "grid": list(codes.shape), "size": list(size)}
                    for ext, data in (("npy", buf.getvalue()), ("json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(f"{safe}.{ext}")
                        info.size, info.mtime = len(data), 0
                        tf.addfile(info, io.BytesIO(data))
        tmp.replace(target)
        self.num_written += len(unit["keys"])

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
        out = self._dir(trainer)
        rank = trainer.global_rank
        self._last = 0.0
        self._progress(trainer, 0)
        if self.format != "npy":
            resumed = (
                f", {self.num_resumed} unit(s) done by an earlier run" if self.num_resumed else ""
            )
            print(
                f"rank {rank}: tokenized {self.num_written} image(s) into {out} "
                f"(one .{self.format} per unit), skipped {self.num_skipped}{resumed}"
            )
            return
        for grid in list(self._buffers):
            self._flush(trainer, grid)
        self._manifest.close()
        self._skipped.close()
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
