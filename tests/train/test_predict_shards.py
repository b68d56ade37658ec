"""`vq-train predict` into Parquet / tar token shards: one per input unit, each image once,
also across a kill and a re-run and across ranks."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from tests.train.helpers import write_image
from tests.train.test_module import tiny_module
from train.callbacks import CodeWriter
from train.data import ImageDataModule
from train.images import to_tensor
from train.module import center_crop_to_multiple
from train.pack import pack
from train.predict_data import PredictUnits
from train.sources import open_source
from vqio import decode_image

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    for i in range(10):
        write_image(photos / f"p{i:02d}.png", 24 if i % 3 else 32, 28, seed=i)
    (photos / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # header fails
    with pytest.warns(UserWarning, match=r"left out 1 unreadable image file.*bad\.png"):
        pack(photos, tmp_path / "tar", shard_size=3)
    # A member that passes no header check: corrupt inside a shard.
    with tarfile.open(tmp_path / "tar" / "train-00000.tar", "a") as tf:
        data = b"\xff\xd8\xff\xe0 definitely not a jpeg"
        info = tarfile.TarInfo("zz_broken.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return tmp_path / "tar"


def _trainer(out: Path, fmt: str, callbacks: list[Any] | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[CodeWriter(out_dir=str(out), format=fmt), *(callbacks or [])],
    )


def _read(out: Path, fmt: str) -> dict[str, list[np.ndarray]]:
    """key -> the code grids written for it (a list: duplicates would show)."""
    got: dict[str, list[np.ndarray]] = {}
    for path in sorted(out.glob(f"*.{fmt}")):
        if fmt == "parquet":
            t = pq.read_table(path).to_pylist()
            for row in t:
                grid = np.array(row["tokens"]).reshape(row["grid_h"], row["grid_w"])
                got.setdefault(row["__key__"], []).append(grid)
        else:
            with tarfile.open(path) as tf:
                names = tf.getnames()
                for name in names:
                    if name.endswith(".json"):
                        meta = json.loads(tf.extractfile(name).read())  # type: ignore[union-attr]
                        raw = tf.extractfile(name[:-5] + ".npy").read()  # type: ignore[union-attr]
                        got.setdefault(meta["key"], []).append(np.load(io.BytesIO(raw)))
    return got


@pytest.mark.parametrize("fmt", ["parquet", "tar"])
def test_predict_writes_one_shard_per_input_shard(
    shards: Path, tmp_path: Path, fmt: str, one_thread: None
) -> None:
    torch.manual_seed(0)
    module = tiny_module().eval()
    out = tmp_path / f"codes-{fmt}"
    dm = ImageDataModule(predict_root=str(shards), predict_batch_size=2, num_workers=0)
    _trainer(out, fmt).predict(module, datamodule=dm, return_predictions=False)
    source = open_source("data.predict_root", str(shards))
    assert sorted(p.stem for p in out.glob(f"*.{fmt}")) == sorted(u.name for u in source.units)
    got = _read(out, fmt)
    keys = {str(k) for u in source.units for k in u.keys}
    assert set(got) == keys - {"zz_broken"} and all(len(v) == 1 for v in got.values())
    skipped = (out / "_train-00000.skipped.jsonl").read_text()
    assert "zz_broken" in skipped
    if fmt == "parquet":  # docs/training.md's line reads the folder, metadata beside it
        assert (out / "_info.json").is_file()
        table = pq.read_table(str(out))
        assert sorted(table.column("__key__").to_pylist()) == sorted(got)
    # The codes are the model's codes of the decoded image.
    unit = source.units[1]
    from train.sources import UnitReader

    image = decode_image(UnitReader().read(unit, 0))
    want = module.model.encode(center_crop_to_multiple(to_tensor(image)[None], module.f))[0]
    assert np.array_equal(got[str(unit.keys[0])][0], want.numpy())


def test_rerun_renames_the_metadata_of_earlier_versions(shards: Path, tmp_path: Path) -> None:
    """An out_dir written before the rename (``info.json``, ``<unit>.skipped.jsonl``) reads as
    one table after a re-run, which renames them."""
    module = tiny_module().eval()
    out = tmp_path / "codes"
    dm = ImageDataModule(predict_root=str(shards), predict_batch_size=2, num_workers=0)
    _trainer(out, "parquet").predict(module, datamodule=dm, return_predictions=False)
    (out / "_info.json").rename(out / "info.json")
    (out / "_train-00000.skipped.jsonl").rename(out / "train-00000.skipped.jsonl")
    dm = ImageDataModule(predict_root=str(shards), predict_batch_size=2, num_workers=0)
    _trainer(out, "parquet").predict(module, datamodule=dm, return_predictions=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".parquet")) == [
        "_info.json",
        "_train-00000.skipped.jsonl",
    ]
    assert pq.read_table(str(out)).num_rows == sum(len(v) for v in _read(out, "parquet").values())


class _Kill(L.Callback):
    """Stops predict (an exception, as a kill would) after ``n`` batches."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("killed")


def test_rerun_after_a_kill_writes_each_image_once(
    shards: Path, tmp_path: Path, one_thread: None
) -> None:
    module = tiny_module().eval()
    out = tmp_path / "codes"

    def run(callbacks: list[Any]) -> None:
        dm = ImageDataModule(predict_root=str(shards), predict_batch_size=2, num_workers=0)
        _trainer(out, "parquet", callbacks).predict(module, datamodule=dm, return_predictions=False)

    with pytest.raises(RuntimeError, match="killed"):
        run([_Kill(5)])
    first = set(p.name for p in out.glob("*.parquet"))
    assert 0 < len(first) < 4  # some units done, some not
    (out / ".train-00003.parquet.tmp").write_bytes(b"torn")  # a shard the kill cut short
    run([])
    got = _read(out, "parquet")
    source = open_source("data.predict_root", str(shards))
    keys = {str(k) for u in source.units for k in u.keys} - {"zz_broken"}
    assert Counter({k: len(v) for k, v in got.items()}) == Counter(dict.fromkeys(keys, 1))
    assert not list(out.glob(".*.tmp"))


def test_units_split_over_ranks_and_workers_exactly_once(shards: Path) -> None:
    source = open_source("data.predict_root", str(shards), files_per_unit=2)
    seen: Counter[str] = Counter()
    for world in (1, 2, 3):
        seen.clear()
        for rank in range(world):
            ds = PredictUnits(source.units, 2, rank, world, done={source.units[0].name})
            for batch in ds:
                seen.update(batch["paths"])
                seen.update(e["path"] for e in batch["errors"])
        want = {str(k) for u in source.units[1:] for k in u.keys}
        assert set(seen) == want and set(seen.values()) == {1}


def test_cli_ddp_predict_after_a_kill_writes_each_image_once(shards: Path, tmp_path: Path) -> None:
    """The real thing: `vq-train predict` SIGKILLed mid-run, then re-run on 2 gloo processes:
    every sample of the tar shards lands in exactly one Parquet row."""
    from tests.train.helpers import CONFIGS, TINY_OVERRIDES, run_cli

    out = tmp_path / "codes"
    base = [
        "predict",
        "--config",
        str(CONFIGS / "fsq.yaml"),
        *TINY_OVERRIDES,
        f"--data.predict_root={shards / 'train-{00000..00003}.tar'}",
        "--data.predict_batch_size=1",
        "--data.num_workers=0",
        "--predict_writer.format=parquet",
        f"--predict_writer.out_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    kill = '{"class_path": "tests.train.helpers.KillAtPredictBatch", "init_args": {"batch": 5}}'
    proc = run_cli([*base, f"--trainer.callbacks+={kill}"], tmp_path)
    assert proc.returncode < 0, proc.stderr[-3000:]
    assert 0 < len(list(out.glob("*.parquet"))) < 4
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    proc = run_cli([*base, *ddp], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unit(s) done by an earlier run" in proc.stdout
    got = _read(out, "parquet")
    source = open_source("data.predict_root", str(shards))
    keys = {str(k) for u in source.units for k in u.keys} - {"zz_broken"}
    assert set(got) == keys and all(len(v) == 1 for v in got.values())


def test_predict_resize_gives_one_grid_and_full_batches(shards: Path) -> None:
    source = open_source("data.predict_root", str(shards))
    ds = PredictUnits(source.units, 3, resize=16)
    batches = [b for b in ds if b["paths"]]
    assert {tuple(b["images"].shape[1:]) for b in batches} == {(3, 16, 16)}
    # Units of 3 samples (one with a corrupt member) of two sizes: full batches of 3.
    assert sum(len(b["paths"]) for b in batches) == 10
    assert max(len(b["paths"]) for b in batches) == 3
