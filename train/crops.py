"""Crops of decoded images: random ones for training, a fixed grid for validation.

``draw_crop`` is one random crop; ``CropBatches`` (with its ``CropLoader``) makes the training
batches as a function of their number, so a resumed run sees the crops the uninterrupted run
would have; ``grid_crops`` and ``TensorListDataset`` give the fixed validation/test crops. Tensors are float32 in [-1, 1],
(3, H, W) per crop.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from train.images import to_tensor


def ensure_min_side(image: np.ndarray, size: int) -> np.ndarray:
    """Upscale (bicubic) so both sides are >= size; images already large enough pass through."""
    h, w = image.shape[:2]
    if min(h, w) >= size:
        return image
    scale = size / min(h, w)
    new = (max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale)))  # PIL: (W, H)
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BICUBIC), dtype=np.uint8)


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


AUGMENTS = ("crop", "resize_crop", "random_resized_crop")


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize (Pillow, antialiased when shrinking) to (height, width)."""
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def resize_center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side resized (bicubic, antialiased) to ``size``, then the central square:
    the usual preprocessing before tokenizing a data set at one resolution."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    image = _resize(image, max(size, round(h * scale)), max(size, round(w * scale)))
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def augment_crop(
    image: np.ndarray,
    size: int,
    gen: torch.Generator,
    *,
    augment: str = "crop",
    resize_ratio: float = 1.125,
    min_scale: float = 0.35,
    min_std: float = 0.02,
    max_tries: int = 10,
    flip: bool = True,
) -> np.ndarray:
    """One augmented ``size`` x ``size`` uint8 crop of ``image`` drawn with ``gen``:

    - ``crop``: a random crop at the image's own resolution (upscaled first if a side is
      below ``size``), redrawn while near-constant (``draw_crop``);
    - ``resize_crop``: shorter side resized to ``round(size * resize_ratio)``, then a random
      crop (LlamaGen's tokenizer recipe, ratio 1.1);
    - ``random_resized_crop``: a random region of ``min_scale``..1 of the area and aspect
      3/4..4/3, resized to ``size`` (MaskGIT / TiTok style);

    then a random horizontal flip."""
    if augment == "crop":
        image = ensure_min_side(image, size)
        return draw_crop(
            [image], torch.ones(1), size, gen, min_std=min_std, max_tries=max_tries, flip=flip
        )
    h, w = image.shape[:2]
    if augment == "resize_crop":
        short = max(size, round(size * resize_ratio))
        scale = short / min(h, w)
        image = _resize(image, max(short, round(h * scale)), max(short, round(w * scale)))
        h, w = image.shape[:2]
        top = int(torch.randint(h - size + 1, (), generator=gen))
        left = int(torch.randint(w - size + 1, (), generator=gen))
        crop = image[top : top + size, left : left + size]
    elif augment == "random_resized_crop":
        area = h * w
        ch, cw = min(h, w), min(h, w)  # fallback: the central square
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(min_scale, 1.0, generator=gen))
            log_ratio = float(
                torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
            )
            ratio = math.exp(log_ratio)
            tw, th = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < tw <= w and 0 < th <= h:
                ch, cw = th, tw
                break
        top = int(torch.randint(h - ch + 1, (), generator=gen))
        left = int(torch.randint(w - cw + 1, (), generator=gen))
        crop = _resize(np.ascontiguousarray(image[top : top + ch, left : left + cw]), size, size)
    else:
        raise ValueError(f"augment={augment!r} is not allowed; expected one of {AUGMENTS}")
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        crop = crop[:, ::-1]
    return crop


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
        ds = self.dataset  # CropBatches or train.stream.StreamBatches: the same geometry
        return {
            "batch_size": int(ds.batch_size),  # type: ignore[attr-defined]
            "batches_per_epoch": int(ds.batches_per_epoch),  # type: ignore[attr-defined]
        }

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
