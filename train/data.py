"""Images for training, validation and dataset tokenization.

``ImageDataModule(root=None)`` uses natural RGB photographs bundled with scikit-image
(no downloads), split by image; ``root="some/folder"`` uses every readable image under that
folder (recursively), split by image with ``val_fraction``.

Tensors are float32 in [-1, 1], (3, H, W) per image, the range the VQ-VAE expects.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from vq.pixels import uint8_to_float
from vqio import IMAGE_EXTENSIONS, ImageDecodeError, image_size, read_image

# The bundled set: every natural RGB photograph in skimage.data that ships inside the wheel
# (skimage.data.<name>() works offline). Synthetic images (colorwheel, logo) and grayscale
# ones are left out; "cat" is the same photograph as "chelsea".
BUNDLED_TRAIN = (
    "astronaut",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)
# Held out for validation/test: a scene (coffee cup on a table) and a street photograph,
# neither like any training image.
BUNDLED_VAL = ("coffee", "stereo_motorcycle")


def _rank() -> int:
    """This process's rank under torch.distributed (0 when not initialized)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def load_bundled_image(name: str) -> np.ndarray:
    """One skimage.data photograph as uint8 (H, W, 3)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity): the left view only; right would leak into val
    return np.ascontiguousarray(image[..., :3])


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted."""
    base = Path(root)
    if not base.exists():
        raise ValueError(
            f"data root {str(base)!r} does not exist; pass an existing folder of images"
        )
    if not base.is_dir():
        raise ValueError(f"data root {str(base)!r} is not a folder; pass a folder of images")
    return sorted(
        p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    # np.require copies only when needed (slices, read-only arrays from PIL).
    x = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1)  # (3, H, W)
    return uint8_to_float(x)


def ensure_min_side(image: np.ndarray, size: int) -> np.ndarray:
    """Upscale (bicubic) so both sides are >= size; images already large enough pass through."""
    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image
    scale = size / min(h, w)
    new = (max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale)))  # PIL: (W, H)
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BICUBIC), dtype=np.uint8)


@dataclass
class LoadedImages:
    """Images decoded once, with their names (file path or skimage name)."""

    names: list[str]
    images: list[np.ndarray]  # uint8 (H, W, 3)
    skipped: list[tuple[str, str]]  # (path, error)


def load_folder(paths: Sequence[Path]) -> LoadedImages:
    """Decode every file; unreadable or truncated ones are skipped with a warning and a count."""
    names: list[str] = []
    images: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            images.append(read_image(path))
            names.append(str(path))
        except ImageDecodeError as exc:
            skipped.append((str(path), str(exc)))  # the message names the file
    if skipped:
        shown = "; ".join(f"{p} ({e})" for p, e in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) of {len(paths)}: {shown}{more}",
            stacklevel=2,
        )
    return LoadedImages(names, images, skipped)


def split_by_image(
    names: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val): a deterministic pseudo-random split by image name.

    Each image goes to validation when the hash of (seed, name), read as a number in [0, 1),
    is below ``val_fraction``, so an image keeps its side when files are added or removed.
    With two or more images each side gets at least one (the lowest / highest hash).
    """
    n = len(names)
    if n == 1:
        return [0], [0]

    def unit(i: int) -> float:
        digest = hashlib.sha256(f"{seed}:{names[i]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    scores = [unit(i) for i in range(n)]
    val = {i for i in range(n) if scores[i] < val_fraction}
    if not val:
        val = {min(range(n), key=scores.__getitem__)}
    if len(val) == n:
        val.discard(max(range(n), key=scores.__getitem__))
    return [i for i in range(n) if i not in val], sorted(val)


def crop_weights(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Sampling probability of each image: its share of all pixels."""
    weights = torch.tensor([im.shape[0] * im.shape[1] for im in images], dtype=torch.float)
    return weights / weights.sum()


def draw_crop(
    images: Sequence[np.ndarray],
    weights: torch.Tensor,
    size: int,
    gen: torch.Generator,
    *,
    min_std: float = 0.02,
    max_tries: int = 10,
    flip: bool = True,
) -> np.ndarray:
    """One random ``size`` x ``size`` crop, uint8 (size, size, 3), drawn with ``gen``: an
    image (with probability ``weights``), a position, redrawn up to ``max_tries`` times while
    the crop is near-constant (std of its [0, 1] pixels below ``min_std``), then a random
    horizontal flip. Images must be at least ``size`` on both sides (``ensure_min_side``)."""

    def one() -> np.ndarray:
        image = images[int(torch.multinomial(weights, 1, generator=gen))]
        h, w = image.shape[:2]
        top = int(torch.randint(h - size + 1, (), generator=gen))
        left = int(torch.randint(w - size + 1, (), generator=gen))
        return image[top : top + size, left : left + size]

    crop = one()
    for _ in range(max(1, max_tries) - 1):
        if crop.std() / 255.0 >= min_std:
            break
        crop = one()
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        crop = crop[:, ::-1]
    return crop


class RandomCropDataset(Dataset[torch.Tensor]):
    """``length`` random crops (``draw_crop``), each from a random image (weighted by pixel
    count), with a random horizontal flip. Near-constant crops (std of [0, 1] pixels <
    ``min_std``, e.g. the black border of ``retina``, empty sky of ``hubble_deep_field``) are
    redrawn up to ``max_tries`` times so they do not dominate the loss.

    A stream: item ``i`` is the next draw of a generator per process (main or DataLoader
    worker) seeded from ``torch.initial_seed()`` plus the distributed rank, not a function
    of ``i``. Training uses ``CropBatches`` instead, whose batches are a function of their
    number (what an exact resume needs).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        crop_size: int,
        length: int,
        *,
        min_std: float = 0.02,
        max_tries: int = 10,
        flip: bool = True,
    ) -> None:
        self.images = [ensure_min_side(im, crop_size) for im in images]
        self.crop_size = crop_size
        self.length = length
        self.min_std = min_std
        self.max_tries = max(1, max_tries)
        self.flip = flip
        self.weights = crop_weights(self.images)

        self._gen: torch.Generator | None = None
        self._gen_pid = -1

    def __len__(self) -> int:
        return self.length

    def _generator(self) -> torch.Generator:
        # Created lazily in the process that draws (a forked worker must not reuse the
        # parent's generator state, or all workers would draw the same crops).
        if self._gen is None or self._gen_pid != os.getpid():
            seed = (torch.initial_seed() + 1_000_003 * _rank()) % 2**63
            self._gen = torch.Generator().manual_seed(seed)
            self._gen_pid = os.getpid()
        return self._gen

    def __getitem__(self, index: int) -> torch.Tensor:
        crop = draw_crop(
            self.images,
            self.weights,
            self.crop_size,
            self._generator(),
            min_std=self.min_std,
            max_tries=self.max_tries,
            flip=self.flip,
        )
        return to_tensor(crop)


def batch_seed(seed: int, rank: int, batch: int) -> int:
    """The generator seed of training batch number ``batch`` on ``rank``: a hash, so nearby
    numbers give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**63


class CropBatches(IterableDataset[torch.Tensor]):
    """Training batches: batch number ``b`` (counted from the start of training, per rank)
    is ``batch_size`` crops (``draw_crop``) drawn from a generator seeded with
    ``batch_seed(seed, rank, b)``.

    The stream is a function of the batch number, not of what was drawn before, so:
    - a run resumed after ``g`` steps starts at batch ``g`` (``start``) and sees exactly the
      crops the uninterrupted run would have seen (Lightning restarts the data iterator on
      resume; a generator-state stream would either repeat or, with prefetching, skip batches);
    - any number of DataLoader workers gives the same batches (worker ``w`` of ``n`` makes
      batches ``start + w, start + w + n, ...``, which the DataLoader returns in order), so
      the length is exact whatever Lightning's generic ``__len__`` warning says;
    - ranks differ through ``rank`` in the seed.

    An epoch is ``batches_per_epoch`` batches: iterating yields the batches from ``start``
    to the end of its epoch, then the next iteration continues with the next epoch. Keep the
    workers persistent (``persistent_workers=True``): each worker's copy counts epochs itself.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        crop_size: int,
        batch_size: int,
        batches_per_epoch: int,
        *,
        seed: int,
        rank: int = 0,
        start: int = 0,
        min_std: float = 0.02,
        max_tries: int = 10,
        flip: bool = True,
    ) -> None:
        if batches_per_epoch < 1 or batch_size < 1 or start < 0:
            raise ValueError(
                f"CropBatches needs batch_size >= 1, batches_per_epoch >= 1 and start >= 0; got "
                f"{batch_size}, {batches_per_epoch}, {start}"
            )
        self.images = [ensure_min_side(im, crop_size) for im in images]
        self.weights = crop_weights(self.images)
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.rank = rank
        self.start = start
        self.min_std = min_std
        self.max_tries = max_tries
        self.flip = flip

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, number: int) -> torch.Tensor:
        """Batch ``number``: float (batch_size, 3, crop_size, crop_size) in [-1, 1]."""
        gen = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, number))
        crops = [
            to_tensor(
                draw_crop(
                    self.images,
                    self.weights,
                    self.crop_size,
                    gen,
                    min_std=self.min_std,
                    max_tries=self.max_tries,
                    flip=self.flip,
                )
            )
            for _ in range(self.batch_size)
        ]
        return torch.stack(crops)

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self.start
        end = (start // self.batches_per_epoch + 1) * self.batches_per_epoch
        self.start = end  # the next iteration is the next epoch
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for number in range(start + worker, end, workers):
            yield self.batch(number)


class CropLoader(DataLoader[torch.Tensor]):
    """The DataLoader of ``CropBatches``. Its position needs no saving (the dataset starts at
    the restored step), but Lightning treats a loader with ``state_dict``/``load_state_dict``
    as resumable mid-epoch; the state kept is the epoch geometry, checked on resume because
    a different batch size, epoch length or number of ranks changes the stream."""

    def state_dict(self) -> dict[str, int]:
        ds = self.dataset
        assert isinstance(ds, CropBatches)
        return {"batch_size": ds.batch_size, "batches_per_epoch": ds.batches_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state != self.state_dict():
            warnings.warn(
                f"resuming with another batch size or epoch length ({self.state_dict()}, the "
                f"checkpoint has {state}): training continues, but not with the crops and "
                "epochs the interrupted run would have used",
                stacklevel=2,
            )


def grid_crops(image: np.ndarray, size: int, max_crops: int) -> list[np.ndarray]:
    """Deterministic crops: the non-overlapping size x size tiles of a grid centred in the
    image, evenly subsampled to at most ``max_crops``."""
    image = ensure_min_side(image, size)
    h, w = image.shape[:2]
    rows, cols = h // size, w // size
    top0, left0 = (h - rows * size) // 2, (w - cols * size) // 2
    tiles = [
        image[top0 + r * size : top0 + (r + 1) * size, left0 + c * size : left0 + (c + 1) * size]
        for r in range(rows)
        for c in range(cols)
    ]
    if len(tiles) > max_crops:
        keep = np.linspace(0, len(tiles) - 1, max_crops).round().astype(int)
        tiles = [tiles[i] for i in keep]
    return tiles


class TensorListDataset(Dataset[torch.Tensor]):
    def __init__(self, items: Sequence[np.ndarray]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.items[index])


# --- prediction (dataset tokenization) --------------------------------------------------


@dataclass
class PredictItem:
    """One entry of a prediction batch: an image file, or why it could not be read."""

    path: str
    error: str | None = None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file header (EXIF orientation applied), or None if it cannot be read."""
    try:
        return image_size(path)
    except ImageDecodeError:
        return None


class PredictImages(IterableDataset[dict[str, Any]]):
    """Yields ready-made batches of same-size images from a folder: dicts with
    ``images`` float (B, 3, H, W) in [-1, 1] (B may be 0), ``paths`` (B names, relative to
    root) and ``errors`` (list of {"path", "error"} for files that could not be read).

    Work is split by position, batch ``i`` going to rank ``i % world_size`` and then to
    worker ``(i // world_size) % num_workers``, so with any number of ranks and workers every
    file lands in exactly one batch (an IterableDataset: Lightning does not wrap it in a
    DistributedSampler that would pad by repeating files).
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        exclude: Collection[str] = (),
    ) -> None:
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        paths = find_images(self.root)
        if not paths:
            raise ValueError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}"
            )
        # Files an earlier, interrupted run already finished (relative paths), left out
        # before batches are formed so every rank agrees on the rest.
        skip = set(exclude)
        paths = [p for p in paths if p.relative_to(self.root).as_posix() not in skip]
        # Group by size so a batch stacks; files whose header is unreadable become error
        # batches of their own (also assigned to exactly one rank).
        by_size: dict[tuple[int, int], list[Path]] = {}
        self.batches: list[list[Path]] = []
        for path in paths:
            size = _image_size(path)
            if size is None:
                self.batches.append([path])
            else:
                by_size.setdefault(size, []).append(path)
        for size in sorted(by_size):
            group = by_size[size]
            self.batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        self.num_files = len(paths)

    def _mine(self) -> list[list[Path]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rank_batches = self.batches[self.rank :: self.world_size]
        return rank_batches[worker::workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self._mine():
            images: list[torch.Tensor] = []
            names: list[str] = []
            errors: list[dict[str, str]] = []
            for path in batch:
                name = path.relative_to(self.root).as_posix()
                try:
                    images.append(to_tensor(read_image(path)))
                    names.append(name)
                except ImageDecodeError as exc:
                    errors.append({"path": name, "error": str(exc)})
            # Header sizes agree within a group, decoded sizes may not (a lying header):
            # keep the majority size and report the rest.
            if images:
                sizes = [tuple(t.shape) for t in images]
                common = max(set(sizes), key=sizes.count)
                kept = [
                    (t, n) for t, n in zip(images, names, strict=True) if tuple(t.shape) == common
                ]
                for t, n in zip(images, names, strict=True):
                    if tuple(t.shape) != common:
                        errors.append(
                            {
                                "path": n,
                                "error": f"decoded size {tuple(t.shape)} differs from header",
                            }
                        )
                images = [t for t, _ in kept]
                names = [n for _, n in kept]
            stacked = torch.stack(images) if images else torch.empty(0, 3, 0, 0)
            yield {"images": stacked, "paths": names, "errors": errors}


# --- the DataModule ------------------------------------------------------------------------


def _load_root(option: str, root: str) -> LoadedImages:
    """Every readable image under ``root``, decoded once; ValueError naming ``option`` if
    there is none."""
    paths = find_images(root)
    if not paths:
        raise ValueError(
            f"{option}={root!r} holds no image files "
            f"({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
        )
    loaded = load_folder(paths)
    if not loaded.images:
        raise ValueError(
            f"{option}={root!r}: none of its {len(paths)} image file(s) could be read "
            f"(first error: {loaded.skipped[0][1]})"
        )
    return loaded


class ImageDataModule(L.LightningDataModule):
    """Random crops for training, fixed crops for validation/test, folders for prediction.

    Args:
        root: folder of training images (recursive; png/jpg/jpeg/webp/bmp), or None for the
            bundled scikit-image photographs (train: ``BUNDLED_TRAIN``, val/test: ``BUNDLED_VAL``).
        val_root: folder of validation/test images. None: ``val_fraction`` of ``root``'s
            images are held out instead (split by image). Needs ``root``.
        crop_size: side of the square random training crops (a multiple of the model's f).
        val_crop_size: side of the fixed validation/test crops; None = ``crop_size``.
        batch_size: crops per training/validation batch.
        samples_per_epoch: random crops per training epoch (the epoch length; with a handful
            of images "one pass" means nothing).
        val_fraction: share of a folder's images held out for validation (split by image).
        val_crops_per_image: cap on the fixed validation crops taken from one image.
        min_crop_std: training crops whose pixel std (in [0, 1]) is below this are redrawn.
        max_crop_tries: draws per crop before accepting a near-constant one.
        num_workers: DataLoader worker processes.
        seed: seed for the folder split.
        predict_root: folder to tokenize with ``vq-train predict``.
        predict_batch_size: images per prediction batch (same-size images are grouped).
    """

    def __init__(
        self,
        root: str | None = None,
        val_root: str | None = None,
        crop_size: int = 128,
        val_crop_size: int | None = None,
        batch_size: int = 16,
        samples_per_epoch: int = 1600,
        val_fraction: float = 0.2,
        val_crops_per_image: int = 16,
        min_crop_std: float = 0.02,
        max_crop_tries: int = 10,
        num_workers: int = 0,
        seed: int = 0,
        predict_root: str | None = None,
        predict_batch_size: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (
            ("crop_size", crop_size),
            ("val_crop_size", crop_size if val_crop_size is None else val_crop_size),
            ("batch_size", batch_size),
            ("samples_per_epoch", samples_per_epoch),
            ("val_crops_per_image", val_crops_per_image),
            ("predict_batch_size", predict_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r} is not allowed; expected an integer >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"data.val_fraction={val_fraction!r} is not allowed; expected 0 < x < 1"
            )
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers!r} is not allowed; expected >= 0")
        if val_root is not None and root is None:
            raise ValueError(
                "data.val_root needs data.root (the training folder); without data.root the "
                "bundled photographs are used for both"
            )
        self.save_hyperparameters()
        self.root = root
        self.val_root = val_root
        self.crop_size = crop_size
        self.val_crop_size = crop_size if val_crop_size is None else val_crop_size
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.val_fraction = val_fraction
        self.val_crops_per_image = val_crops_per_image
        self.min_crop_std = min_crop_std
        self.max_crop_tries = max_crop_tries
        self.num_workers = num_workers
        self.seed = seed
        self.predict_root = predict_root
        self.predict_batch_size = predict_batch_size
        self.train_names: list[str] = []
        self.val_names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._train_images: list[np.ndarray] | None = None
        self._val_images: list[np.ndarray] = []
        # Relative paths under predict_root to leave out (CodeWriter fills it with what an
        # interrupted run already wrote, so a re-run resumes).
        self.predict_exclude: set[str] = set()

    # Loading happens in setup (every process), not prepare_data: nothing is downloaded.
    def _load(self) -> None:
        if self._train_images is not None:
            return
        if self.root is None:
            self.train_names, self.val_names = list(BUNDLED_TRAIN), list(BUNDLED_VAL)
            self._train_images = [load_bundled_image(n) for n in BUNDLED_TRAIN]
            self._val_images = [load_bundled_image(n) for n in BUNDLED_VAL]
            return
        loaded = _load_root("data.root", self.root)
        self.skipped = list(loaded.skipped)
        if self.val_root is not None:
            val = _load_root("data.val_root", self.val_root)
            self.skipped += val.skipped
            self.train_names, self._train_images = loaded.names, loaded.images
            self.val_names, self._val_images = val.names, val.images
            return
        train_idx, val_idx = split_by_image(loaded.names, self.val_fraction, self.seed)
        if len(loaded.images) == 1:
            warnings.warn(
                f"data.root={self.root!r} has a single readable image: it is used for both "
                "training and validation, so validation figures are not held-out figures",
                stacklevel=2,
            )
        self.train_names = [loaded.names[i] for i in train_idx]
        self.val_names = [loaded.names[i] for i in val_idx]
        self._train_images = [loaded.images[i] for i in train_idx]
        self._val_images = [loaded.images[i] for i in val_idx]

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test"):
            self._load()

    def _loader(
        self, dataset: Dataset[Any], shuffle: bool, batch_size: int | None
    ) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        self._load()
        assert self._train_images is not None
        rank, world, start = 0, 1, 0
        trainer = self.trainer  # None when used without a Trainer
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
            # Batches already trained on (restored from the checkpoint when resuming): the
            # stream continues where the interrupted run stopped.
            start = trainer.global_step * trainer.accumulate_grad_batches
        dataset = CropBatches(
            self._train_images,
            self.crop_size,
            self.batch_size,
            math.ceil(self.samples_per_epoch / (self.batch_size * world)),
            seed=torch.initial_seed(),  # set by seed_everything, the same on every rank
            rank=rank,
            start=start,
            min_std=self.min_crop_std,
            max_tries=self.max_crop_tries,
        )
        return CropLoader(
            dataset,
            batch_size=None,  # the dataset yields whole batches
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating the iterator then draws nothing from torch's
            # global one, whose state a resumed run restores (train.checkpointing.RandomState).
            generator=torch.Generator(),
        )

    def val_crops(self) -> list[np.ndarray]:
        """The fixed validation crops, uint8 (val_crop_size, val_crop_size, 3), image by image."""
        self._load()
        return [
            crop
            for image in self._val_images
            for crop in grid_crops(image, self.val_crop_size, self.val_crops_per_image)
        ]

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(TensorListDataset(self.val_crops()), False, self.batch_size)

    def test_dataloader(self) -> DataLoader[Any]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader[Any]:
        if self.predict_root is None:
            raise ValueError(
                "vq-train predict needs a folder of images: pass --data.predict_root FOLDER"
            )
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        dataset = PredictImages(
            self.predict_root, self.predict_batch_size, rank, world, exclude=self.predict_exclude
        )
        # batch_size=None: the dataset yields whole batches.
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
