"""Training and validation data read from a ``Source`` while training, never held in memory.

``RankStream`` orders the samples one rank reads: pass ``p`` shuffles the units, rank ``r``
of ``world`` takes every ``world``-th of them (so the ranks' shares of a pass are disjoint),
and each unit's samples are shuffled too. The order is a function of (seed, pass, rank), and
a position in it is found by arithmetic on the unit sizes, without reading anything.

``StreamBatches`` makes training batch number ``n`` of a rank from the samples at positions
``n * batch_size ..`` of its stream, each decoded (``vqio``) and augmented once
(``augment_crop``, seeded by the batch number): batches are a function of their number, so a
resumed run continues at the sample where the interrupted one stopped, with any number of
DataLoader workers (worker ``w`` of ``W`` makes batches ``start + w, start + w + W, ...``).

``StreamVal`` decodes held-out images for validation, one per item.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from train.crops import augment_crop, batch_seed, grid_crops
from train.images import to_tensor
from train.sources import Unit, UnitReader
from vqio import ImageDecodeError, decode_image


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**63


def default_workers() -> int:
    """DataLoader workers for streamed data: the cores this process may use, less one for
    the training loop, at least 1 and at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


class RankStream:
    """The endless sequence of (unit index, sample index) one rank reads; see the module
    docstring. ``seek(t)`` goes to position ``t`` (counted from the start of training)."""

    def __init__(self, sizes: Sequence[int], seed: int, rank: int, world: int) -> None:
        if len(sizes) < world:
            raise ValueError(f"{len(sizes)} unit(s) cannot be split over {world} ranks")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.seed, self.rank, self.world = seed, rank, world
        self._pass = -1
        self._units: np.ndarray = np.empty(0, dtype=np.int64)
        self._ends: np.ndarray = np.empty(0, dtype=np.int64)
        self._pass_start = 0  # position of the first sample of the current pass

    def _enter(self, p: int, start: int) -> None:
        order = np.random.default_rng(_seed(self.seed, "pass", p)).permutation(len(self.sizes))
        self._units = order[self.rank :: self.world]
        self._ends = np.cumsum(self.sizes[self._units])
        self._pass, self._pass_start = p, start

    def pass_length(self, p: int) -> int:
        order = np.random.default_rng(_seed(self.seed, "pass", p)).permutation(len(self.sizes))
        return int(self.sizes[order[self.rank :: self.world]].sum())

    def take(self, t: int, k: int) -> list[tuple[int, int]]:
        """The ``k`` samples at positions ``t .. t + k - 1``."""
        if self._pass < 0 or t < self._pass_start:
            self._enter(0, 0)
        out: list[tuple[int, int]] = []
        while len(out) < k:
            offset = t - self._pass_start
            if offset >= int(self._ends[-1]):
                self._enter(self._pass + 1, self._pass_start + int(self._ends[-1]))
                continue
            j = int(np.searchsorted(self._ends, offset, side="right"))
            unit = int(self._units[j])
            first = int(self._ends[j - 1]) if j else 0
            perm = np.random.default_rng(_seed(self.seed, "unit", self._pass, unit)).permutation(
                int(self.sizes[unit])
            )
            stop = min(int(self._ends[j]), offset + k - len(out))
            out += [(unit, int(perm[i - first])) for i in range(offset, stop)]
            t += stop - offset
        return out


@dataclass(frozen=True)
class CropSpec:
    """How a training crop is made from a decoded image (``augment_crop``'s arguments)."""

    size: int
    augment: str = "crop"
    resize_ratio: float = 1.125
    min_scale: float = 0.35
    min_std: float = 0.02
    max_tries: int = 10


class _Decoder:
    """Per-process reading and decoding, warning once per unreadable sample."""

    def __init__(self, units: Sequence[Unit], image_column: str | None) -> None:
        self.units = units
        self.image_column = image_column
        self._reader: UnitReader | None = None
        self._pid = -1
        self.warned: set[str] = set()

    def reader(self) -> UnitReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = UnitReader(self.image_column)
            self._pid = os.getpid()
        return self._reader

    def decode(self, unit: int, index: int) -> np.ndarray | None:
        reader = self.reader()
        label = reader.label(self.units[unit], index)
        try:
            return decode_image(reader.read(self.units[unit], index), label=label)
        except (ImageDecodeError, OSError, ValueError) as exc:
            if label not in self.warned:
                self.warned.add(label)
                warnings.warn(f"skipped unreadable sample {label}: {exc}", stacklevel=2)
            return None


class StreamBatches(IterableDataset[torch.Tensor]):
    """Training batches streamed from ``units`` (see the module docstring): batch ``n`` of
    ``rank`` is float (batch_size, 3, size, size) in [-1, 1].

    An unreadable sample is skipped with a warning naming it; its place in the batch is
    taken by another crop of a readable image of the same batch (a batch with none readable
    reads on past its end). Epochs are ``batches_per_epoch`` batches, continued across
    iterations like ``CropBatches`` (keep the workers persistent)."""

    def __init__(
        self,
        units: Sequence[Unit],
        spec: CropSpec,
        batch_size: int,
        batches_per_epoch: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        image_column: str | None = None,
    ) -> None:
        if batches_per_epoch < 1 or batch_size < 1 or start < 0:
            raise ValueError(
                f"StreamBatches needs batch_size >= 1, batches_per_epoch >= 1 and start >= 0; "
                f"got {batch_size}, {batches_per_epoch}, {start}"
            )
        self.units = list(units)
        self.spec = spec
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed, self.rank, self.world, self.start = seed, rank, world, start
        self.stream = RankStream([len(u) for u in self.units], seed, rank, world)
        self._decoder = _Decoder(self.units, image_column)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, number: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, number))
        t = number * self.batch_size
        images: list[np.ndarray] = []
        while not images:
            for unit, index in self.stream.take(t, self.batch_size):
                image = self._decoder.decode(unit, index)
                if image is not None:
                    images.append(image)
            t += self.batch_size
        s = self.spec
        crops = [
            augment_crop(
                images[i % len(images)],
                s.size,
                gen,
                augment=s.augment,
                resize_ratio=s.resize_ratio,
                min_scale=s.min_scale,
                min_std=s.min_std,
                max_tries=s.max_tries,
            )
            for i in range(self.batch_size)
        ]
        return torch.stack([to_tensor(c) for c in crops])

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self.start
        end = (start // self.batches_per_epoch + 1) * self.batches_per_epoch
        self.start = end
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for number in range(start + worker, end, workers):
            yield self.batch(number)


class StreamVal(Dataset[torch.Tensor]):
    """Validation: item ``i`` is the fixed grid crops (``grid_crops``) of held-out sample
    ``items[i]``, float (k, 3, size, size); an unreadable sample gives k = 0 and a warning."""

    def __init__(
        self,
        units: Sequence[Unit],
        items: Sequence[tuple[int, int]],
        size: int,
        crops_per_image: int,
        image_column: str | None = None,
    ) -> None:
        self.items = list(items)
        self.size = size
        self.crops_per_image = crops_per_image
        self._decoder = _Decoder(list(units), image_column)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self._decoder.decode(*self.items[index])
        if image is None:
            return torch.empty(0, 3, self.size, self.size)
        crops = grid_crops(image, self.size, self.crops_per_image)
        return torch.stack([to_tensor(c) for c in crops])


def cat_crops(items: list[torch.Tensor]) -> torch.Tensor:
    """``StreamVal`` collate: the crops of several images in one batch."""
    return torch.cat(items)
