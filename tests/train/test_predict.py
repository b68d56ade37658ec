"""`vq-train predict`: a folder of images -> sharded code files + JSONL manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

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
from train.predict_data import PredictImages
from vqio import read_image

GOOD = {
    "a.png": (40, 48),
    "b.png": (40, 48),
    "c.jpg": (40, 48),
    "sub/d.png": (45, 50),  # not a multiple of f=4: centre-cropped to 44x48
    "sub/e.webp": (45, 50),
    "gray.png": (16, 24),
}
BAD = ("broken.png", "sub/truncated.jpg")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i, (name, (h, w)) in enumerate(GOOD.items()):
        write_image(root / name, h, w, mode="L" if name.startswith("gray") else "RGB", seed=i)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    write_image(root / "sub" / "truncated.jpg", 64, 64, seed=9)
    data = (root / "sub" / "truncated.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "readme.txt").write_text("ignored")
    return root


def test_predict_writes_every_good_image_once(
    folder: Path, tmp_path: Path, one_thread: None
) -> None:
    torch.manual_seed(0)
    module = tiny_module().eval()
    out = tmp_path / "codes"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[CodeWriter(out_dir=str(out), shard_size=2)],
    )
    dm = ImageDataModule(predict_root=str(folder), predict_batch_size=2)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        trainer.predict(module, datamodule=dm, return_predictions=False)

    entries = [json.loads(line) for line in (out / "manifest-rank0.jsonl").read_text().splitlines()]
    assert Counter(e["path"] for e in entries) == Counter(list(GOOD))  # each good file once
    skipped = [json.loads(line) for line in (out / "skipped-rank0.jsonl").read_text().splitlines()]
    assert sorted(s["path"] for s in skipped) == sorted(BAD)
    assert all(s["error"] for s in skipped)

    info = json.loads((out / "_info.json").read_text())
    assert info["f"] == 4 and info["codebook_size"] == 32 and info["dtype"] == "uint16"
    assert info["precision"] == "32-true"  # the trainer's (Lightning default here)
    rows_per_shard: Counter[str] = Counter()
    for e in entries:
        codes = np.load(out / e["shard"])
        assert codes.dtype == np.uint16 and codes.shape[1:] == tuple(e["grid"])
        image = to_tensor(read_image(folder / e["path"]))[None]
        expected = module.model.encode(center_crop_to_multiple(image, 4))[0]
        assert np.array_equal(codes[e["row"]], expected.numpy())
        assert e["size"] == list(GOOD[e["path"]]) and e["crop"] == [g * 4 for g in e["grid"]]
        rows_per_shard[e["shard"]] += 1
    # shard_size=2: every shard holds at most 2 rows, and every row is in the manifest
    assert all(np.load(out / s).shape[0] == n <= 2 for s, n in rows_per_shard.items())
    assert {p.name for p in out.glob("codes-rank0-*.npy")} == set(rows_per_shard)


def test_predict_split_over_ranks_loses_and_duplicates_nothing(folder: Path) -> None:
    seen: Counter[str] = Counter()
    for world in (1, 2, 3):
        seen.clear()
        for rank in range(world):
            for batch in PredictImages(folder, batch_size=2, rank=rank, world_size=world):
                seen.update(batch["paths"])
                seen.update(e["path"] for e in batch["errors"])
                if batch["paths"]:  # a batch stacks images of one size
                    assert batch["images"].shape[0] == len(batch["paths"])
        assert seen == Counter([*GOOD, *BAD]), world  # every file exactly once


def test_predict_without_root_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="predict_root"):
        ImageDataModule().predict_dataloader()


def test_the_documented_command_tokenizes_with_the_shipped_model(tmp_path: Path) -> None:
    """README / docs/training.md: ``vq-train predict --config configs/default.yaml
    --model.init_from models/default ...`` (no checkpoint, run outside the checkout) gives the
    codes ``Tokenizer.encode`` gives for the centre crop, at the same precision."""
    import vq
    from tests.train.helpers import REPO, run_cli

    for i, (h, w) in enumerate([(64, 72), (67, 50)]):
        write_image(tmp_path / "photos" / f"{i}.png", h, w, seed=i)
    proc = run_cli(
        [
            "predict",
            "--config",
            str(REPO / "configs" / "default.yaml"),
            "--model.init_from",
            "models/default",
            "--data.predict_root",
            "photos",
            "--predict_writer.out_dir",
            "codes",
            "--trainer.precision",
            "32-true",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = vq.load_tokenizer(REPO / "models" / "default", precision="fp32")
    entries = (tmp_path / "codes" / "manifest-rank0.jsonl").read_text().splitlines()
    assert len(entries) == 2
    for line in entries:
        e = json.loads(line)
        image = read_image(tmp_path / "photos" / e["path"])  # uint8 (H, W, 3)
        (big_h, big_w), (h, w) = e["size"], e["crop"]
        top, left = (big_h - h) // 2, (big_w - w) // 2
        want = tok.encode(np.ascontiguousarray(image[top : top + h, left : left + w]))[0]
        got = np.load(tmp_path / "codes" / e["shard"])[e["row"]]
        assert np.array_equal(got, want.numpy()), e
