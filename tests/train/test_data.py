"""ImageDataModule: bundled set, folders, crops, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.train.helpers import write_image
from train.crops import batch_seed, crop_weights, draw_crop, grid_crops
from train.data import ImageDataModule
from train.images import BUNDLED_TRAIN, BUNDLED_VAL, split_by_image, to_tensor
from vqio import read_image


def test_empty_or_unreadable_folder_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no image files"):
        ImageDataModule(root=str(empty)).setup("fit")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png at all")
    with (
        pytest.warns(UserWarning, match="skipped 1 unreadable"),
        pytest.raises(ValueError, match="none of its 1 image file"),
    ):
        ImageDataModule(root=str(broken)).setup("fit")

    with pytest.raises(
        ValueError, match="does not exist: pass a folder of images or shards with --data.root"
    ):
        ImageDataModule(root=str(tmp_path / "nope")).setup("fit")
    with pytest.raises(ValueError, match="does not exist: .* --data.val_root"):
        ImageDataModule(root=str(empty), val_root=str(tmp_path / "nope")).check_roots()
    with pytest.raises(ValueError, match="data.val_root=.* is a file but not a shard"):
        ImageDataModule(root=str(broken), val_root=str(empty / "notes.txt")).setup("fit")


def test_default_config_with_only_data_root_holds_out_a_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/default.yaml's ``val_root: ${VQ_DATA_ROOT}/val`` with only ``--data.root`` and
    no VQ_DATA_ROOT holds out ``val_fraction`` of the training folder, as the README says."""
    for i in range(5):
        write_image(tmp_path / "photos" / f"{i}.png", 40, 40, seed=i)
    monkeypatch.delenv("VQ_TEST_CORPUS", raising=False)
    module = ImageDataModule(
        root=str(tmp_path / "photos"), val_root="${VQ_TEST_CORPUS}/val", crop_size=32
    )
    with pytest.warns(UserWarning, match=r"needs VQ_TEST_CORPUS.*holding out data\.val_fraction"):
        module.check_roots()
    with pytest.warns(UserWarning, match="holding out"):
        module.setup("fit")
    assert len(module.train_names) == 4 and len(module.val_names) == 1
    # The training folder must come from somewhere: an unset variable there still stops.
    unset = ImageDataModule(root="${VQ_TEST_CORPUS}/train", val_root="${VQ_TEST_CORPUS}/val")
    with pytest.raises(ValueError, match=r"data\.root=.*needs the environment variable"):
        unset.check_roots()


def test_data_paths_expand_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split in ("train", "val"):
        write_image(tmp_path / split / "a.png", 40, 40)
    module = ImageDataModule(
        root="${VQ_TEST_CORPUS}/train", val_root="$VQ_TEST_CORPUS/val", crop_size=32
    )
    monkeypatch.delenv("VQ_TEST_CORPUS", raising=False)
    with pytest.raises(
        ValueError, match=r"needs the environment variable VQ_TEST_CORPUS.*--data\.root"
    ):
        module.check_roots()
    monkeypatch.setenv("VQ_TEST_CORPUS", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"from '\$\{VQ_TEST_CORPUS\}/train'\) does not exist"):
        module.check_roots()
    monkeypatch.setenv("VQ_TEST_CORPUS", str(tmp_path))
    module.setup("fit")
    assert [Path(n).parent.name for n in (*module.train_names, *module.val_names)] == [
        "train",
        "val",
    ]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        ImageDataModule(crop_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ImageDataModule(val_fraction=1.0)


def test_folder_modes_recursive_and_corrupt_files(tmp_path: Path) -> None:
    write_image(tmp_path / "rgb.png", 40, 50)
    write_image(tmp_path / "deep" / "er" / "gray.jpg", 40, 50, mode="L", seed=1)
    write_image(tmp_path / "rgba.png", 40, 50, mode="RGBA", seed=2)
    write_image(tmp_path / "pal.bmp", 40, 50, mode="P", seed=3)
    write_image(tmp_path / "w.webp", 40, 50, seed=4)
    Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)).save(
        tmp_path / "g16.png"
    )
    full = (tmp_path / "rgb.png").read_bytes()
    write_image(tmp_path / "trunc.jpg", 64, 64, seed=5)
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "trunc.jpg").read_bytes()[:300])
    (tmp_path / "garbage.PNG").write_bytes(full[:20] + b"\x00" * 50)

    for name in ("rgb.png", "deep/er/gray.jpg", "rgba.png", "pal.bmp", "w.webp", "g16.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (40, 50, 3), name

    dm = ImageDataModule(
        root=str(tmp_path), crop_size=32, batch_size=2, samples_per_epoch=6, val_fraction=0.3
    )
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        dm.setup("fit")
    assert sorted(Path(p).name for p, _ in dm.skipped) == ["garbage.PNG", "trunc.jpg"]
    assert len(dm.train_names) + len(dm.val_names) == 6
    assert not set(dm.train_names) & set(dm.val_names)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert len(dm.train_dataloader()) == 3  # samples_per_epoch / batch_size


def test_bundled_split_is_by_image_and_val_is_deterministic() -> None:
    assert not set(BUNDLED_TRAIN) & set(BUNDLED_VAL)
    dm = ImageDataModule(crop_size=64, val_crop_size=128, val_crops_per_image=5)
    dm.setup("fit")
    assert dm.val_names == list(BUNDLED_VAL)
    first = dm.val_crops()
    assert len(first) == 5 * len(BUNDLED_VAL)
    assert all(c.shape == (128, 128, 3) for c in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, dm.val_crops(), strict=True))


def test_split_by_image_is_stable_and_keeps_both_sides() -> None:
    names = [f"img{i}.png" for i in range(40)]
    train, val = split_by_image(names, 0.25, seed=0)
    assert 4 <= len(val) <= 16 and sorted(train + val) == list(range(40))
    assert split_by_image(names, 0.25, seed=0) == (train, val)
    # Adding and removing files moves no other image to the other side.
    more = [*names[5:], "new1.png", "new2.png"]
    t2, v2 = split_by_image(more, 0.25, seed=0)
    assert {names[i] for i in val if i >= 5} == {more[i] for i in v2} - {"new1.png", "new2.png"}
    # Both sides stay non-empty; a single image serves as both.
    for n in (2, 3):
        t, v = split_by_image(names[:n], 0.01, seed=0)
        assert t and v and sorted(t + v) == list(range(n))
        t, v = split_by_image(names[:n], 0.99, seed=0)
        assert t and v
    assert split_by_image(["one.png"], 0.2, 0) == ([0], [0])


def test_near_constant_crops_are_redrawn() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((64, 256, 3), dtype=np.uint8)  # left 3/4 black: "sky"
    image[:, 192:] = rng.integers(0, 255, (64, 64, 3))
    torch.manual_seed(0)

    def flat_fraction(min_std: float) -> float:
        gen, weights = torch.Generator().manual_seed(0), crop_weights([image])
        crops = [
            draw_crop([image], weights, 32, gen, min_std=min_std, max_tries=20) for _ in range(200)
        ]
        return float(np.mean([to_tensor(c).std().item() < 0.04 for c in crops]))

    assert flat_fraction(0.0) > 0.5
    assert flat_fraction(0.05) < 0.05


def test_grid_crops_cover_centre_and_cap() -> None:
    image = np.arange(100 * 70 * 3, dtype=np.uint32).reshape(100, 70, 3).astype(np.uint8)
    tiles = grid_crops(image, 32, max_crops=100)
    assert len(tiles) == 3 * 2
    assert np.array_equal(tiles[0], image[2:34, 3:35])
    assert len(grid_crops(image, 32, max_crops=4)) == 4
    small = grid_crops(np.zeros((10, 20, 3), np.uint8), 32, max_crops=4)
    assert len(small) == 2 and small[0].shape == (32, 32, 3)  # upscaled to 32x64 first


def test_training_batches_differ_between_ranks_and_repeat_per_seed() -> None:
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3)).astype(np.uint8)

    def draws(rank: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(batch_seed(7, rank, 0))
        return np.stack([draw_crop([image], crop_weights([image]), 16, gen) for _ in range(4)])

    assert np.array_equal(draws(0), draws(0))
    assert not np.array_equal(draws(0), draws(1))
