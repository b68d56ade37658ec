"""Streamed training data: folders, tar shards, Parquet and Arrow give the same pixels;
corrupt samples are skipped; empty sources fail early; ranks get disjoint shares; batches
are a function of their number (resume)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.helpers import write_image
from train.data import ImageDataModule
from train.pack import pack
from train.sources import UnitReader, expand_braces, open_source
from train.stream import CropSpec, RankStream, StreamBatches
from vqio import decode_image, read_image

pa = pytest.importorskip("pyarrow")


def _photos(folder: Path, n: int, size: int = 40) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"c{i % 2}" / f"img.{i:03d}.{'png' if i % 3 else 'jpg'}"
        write_image(path, size, size + 8, seed=i)
        paths.append(path)
    return paths


def _decoded(root: str, **kw: object) -> dict[str, np.ndarray]:
    """key -> decoded pixels of every sample of a source (by file name stem)."""
    source = open_source("data.root", root, **kw)  # type: ignore[arg-type]
    reader = UnitReader(source.image_column)
    out = {}
    for unit in source.units:
        for i, key in enumerate(unit.keys):
            name = Path(str(key)).name
            if Path(name).suffix in (".png", ".jpg"):
                name = Path(name).stem
            out[name.replace(".", "_")] = decode_image(reader.read(unit, i))
    return out


def _arrow_dir(parquet: Path, out: Path) -> Path:
    """A Hugging Face save_to_disk-like folder: an Arrow stream file with an Image struct."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    image = pa.StructArray.from_arrays(
        [table.column("image").combine_chunks(), pa.array([None] * table.num_rows, pa.string())],
        ["bytes", "path"],
    )
    hf = pa.table({"image": image, "label": pa.array(range(table.num_rows))})
    out.mkdir()
    with (
        pa.OSFile(str(out / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, hf.schema) as writer,
    ):
        writer.write_table(hf)
    (out / "state.json").write_text("{}")
    return out


def test_formats_yield_the_same_pixels(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos", 9)
    want = {p.stem.replace(".", "_"): read_image(p) for p in paths}
    pack(tmp_path / "photos", tmp_path / "tar", shard_size=4)
    pack(tmp_path / "photos", tmp_path / "pq", fmt="parquet", shard_size=4, row_group=2)
    arrow = _arrow_dir(tmp_path / "pq" / "train-00000.parquet", tmp_path / "hf")
    folder = _decoded(str(tmp_path / "photos"))
    pattern = str(tmp_path / "tar" / "train-{00000..00002}.tar")
    for got in (folder, _decoded(pattern), _decoded(str(tmp_path / "pq"))):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    first = _decoded(str(arrow))  # one shard of 4 rows, keys <file stem>/<row>
    assert len(first) == 4
    parquet_rows = _decoded(str(tmp_path / "pq" / "train-00000.parquet"))
    assert all(any(np.array_equal(a, b) for b in parquet_rows.values()) for a in first.values())


def test_brace_expansion() -> None:
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]


def test_a_brace_range_with_missing_shards_names_them(tmp_path: Path) -> None:
    """A brace range names files, so a missing one is an error (a typo or a half-copied data
    set must not train on a subset); a glob takes what exists."""
    _photos(tmp_path / "photos", 6)
    pack(tmp_path / "photos", tmp_path / "tar", shard_size=2)  # train-00000..00002.tar
    pattern = str(tmp_path / "tar" / "train-{00000..00009}.tar")
    with pytest.raises(ValueError, match=r"data\.root=.*names 7 of its 10 files") as err:
        open_source("data.root", pattern)
    assert "train-00003.tar" in str(err.value) and "(7 in all)" in str(err.value)
    assert "glob" in str(err.value)
    with pytest.raises(ValueError, match=r"train-00007\.tar"):
        open_source("data.root", str(tmp_path / "tar" / "train-{00000,00007}.tar"))
    assert len(open_source("data.root", str(tmp_path / "tar" / "train-*.tar")).units) == 3
    assert (
        len(open_source("data.root", str(tmp_path / "tar" / "train-{00000..00002}.tar")).units) == 3
    )


def test_empty_and_unreadable_sources_name_the_option(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data\.root=.*empty.*no image files"):
        ImageDataModule(root=str(tmp_path / "empty")).setup("fit")
    with pytest.raises(ValueError, match=r"data\.root=.*matches no file"):
        ImageDataModule(root=str(tmp_path / "s-*.tar")).setup("fit")
    (tmp_path / "junk.tar").write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"data\.root=.*junk\.tar"):
        ImageDataModule(root=str(tmp_path / "junk.tar")).setup("fit")
    # A shard of images that all fail to decode: caught before training, not in a worker.
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        for i in range(3):
            (tmp_path / f"{i}.jpg").write_bytes(b"not a jpeg")
            tf.add(tmp_path / f"{i}.jpg", arcname=f"s{i}.jpg")
    with pytest.raises(ValueError, match=r"data\.root=.*bad\.tar.*could be decoded"):
        ImageDataModule(root=str(bad), val_root=str(bad)).setup("fit")


def test_corrupt_member_is_skipped_with_a_warning(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 6)
    (shard,) = pack(tmp_path / "photos", tmp_path / "tar", shard_size=10)
    broken = tmp_path / "broken.tar"
    with tarfile.open(shard) as src, tarfile.open(broken, "w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if i == 2:
                data = data[:40]  # truncated image
                bad_key = member.name
            member.size = len(data)
            import io

            dst.addfile(member, io.BytesIO(data))
    source = open_source("data.root", str(broken))
    ds = StreamBatches(source.units, CropSpec(16), batch_size=6, batches_per_epoch=1, seed=0)
    with pytest.warns(UserWarning, match=f"skipped unreadable sample .*{bad_key.split('.')[0]}"):
        batch = ds.batch(0)  # one pass = the 6 samples, one of them unreadable
    assert batch.shape == (6, 3, 16, 16)
    assert batch.abs().max() <= 1.0


def test_ranks_get_disjoint_shares_of_every_pass() -> None:
    sizes = [5, 3, 7, 1, 4, 6, 2]
    for world in (1, 2, 3):
        seen: list[list[tuple[int, int]]] = []
        for rank in range(world):
            stream = RankStream(sizes, seed=7, rank=rank, world=world)
            seen.append(stream.take(0, stream.pass_length(0)))
        flat = [s for share in seen for s in share]
        assert len(flat) == len(set(flat)) == sum(sizes)  # disjoint and complete
    with pytest.raises(ValueError, match="cannot be split over 8 ranks"):
        RankStream(sizes, seed=0, rank=0, world=8)


def test_stream_positions_continue_across_passes() -> None:
    stream = RankStream([3, 4, 2], seed=1, rank=0, world=1)
    whole = stream.take(0, 27)  # three passes
    for p in range(3):
        assert sorted(whole[9 * p : 9 * p + 9]) == sorted(
            (u, i) for u, n in enumerate([3, 4, 2]) for i in range(n)
        )
    fresh = RankStream([3, 4, 2], seed=1, rank=0, world=1)
    assert fresh.take(13, 8) == whole[13:21]  # seek: the same samples, nothing read before


def test_batches_are_a_function_of_their_number(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 12)
    source = open_source("data.root", str(tmp_path / "photos"), files_per_unit=5)
    spec = CropSpec(16, augment="random_resized_crop")
    full = StreamBatches(source.units, spec, 4, 5, seed=3)
    resumed = StreamBatches(source.units, spec, 4, 5, seed=3, start=3)
    first = list(full)
    assert len(first) == 5
    assert all(torch.equal(a, b) for a, b in zip(first[3:], list(resumed), strict=True))


def test_memory_fast_path_and_streaming_choice(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 10, size=64)
    small = ImageDataModule(root=str(tmp_path / "photos"), crop_size=32)
    small.setup("fit")
    assert small.streamed is None and small._train_images
    big = ImageDataModule(root=str(tmp_path / "photos"), crop_size=32, cache_mb=0, batch_size=3)
    big.setup("fit")
    assert big.streamed is not None and big._workers() >= 1
    n_train = sum(len(u) for u in big._stream_train)
    assert n_train + len(big._stream_val[1]) == 10 and big._stream_val[1]
    big.num_workers = 0
    batch = next(iter(big.train_dataloader()))
    assert batch.shape == (3, 3, 32, 32)
    val = next(iter(big.val_dataloader()))
    assert val.shape[1:] == (3, 32, 32) and val.shape[0] >= 1


def test_fit_trains_on_tar_shards(tmp_path: Path) -> None:
    """A few steps of the real CLI on shards, with a DataLoader worker."""
    from tests.train.helpers import CONFIGS, TINY_OVERRIDES, run_cli

    _photos(tmp_path / "photos", 8, size=48)
    pack(tmp_path / "photos", tmp_path / "tar", shard_size=3)
    result = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "fsq.yaml"),
            *TINY_OVERRIDES,
            f"--data.root={tmp_path / 'tar' / 'train-{00000..00002}.tar'}",
            "--data.num_workers=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_worker_count_changes_no_batch(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    _photos(tmp_path / "photos", 8)
    source = open_source("data.root", str(tmp_path / "photos"), files_per_unit=3)

    def batches(workers: int) -> list[torch.Tensor]:
        ds = StreamBatches(source.units, CropSpec(16), 3, 5, seed=1, start=2)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2), strict=True))


@pytest.mark.timeout(900)
def test_sigkill_then_resume_on_shards_continues_exactly(tmp_path: Path) -> None:
    """The streamed path keeps the in-memory path's guarantee (tests/train/test_resume.py):
    killed at step 5 and resumed, a run on tar shards with a DataLoader worker ends with the
    weights of the uninterrupted run."""
    import signal

    from tests.train.helpers import CONFIGS, run_cli
    from tests.train.test_resume import RESUME_OVERRIDES, _assert_same_tensors
    from train.export import read_checkpoint

    _photos(tmp_path / "photos", 10, size=48)
    pack(tmp_path / "photos", tmp_path / "tar", shard_size=4)
    data = [f"--data.root={tmp_path / 'tar' / 'train-{00000..00002}.tar'}", "--data.num_workers=1"]

    def fit(root: Path, *extra: str) -> int:
        root.mkdir(exist_ok=True)
        args = ["fit", "--config", str(CONFIGS / "rotation.yaml"), *RESUME_OVERRIDES, *data]
        proc = run_cli([*args, f"--trainer.default_root_dir={root}", *extra], cwd=root, timeout=400)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode

    assert fit(tmp_path / "whole") == 0
    kill = '{"class_path": "tests.train.helpers.KillAtStep", "init_args": {"step": 5}}'
    assert fit(tmp_path / "killed", f"--trainer.callbacks+={kill}") == -signal.SIGKILL
    assert fit(tmp_path / "killed", "--ckpt_path=last") == 0
    a = read_checkpoint(tmp_path / "whole" / "version_0" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    _assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
