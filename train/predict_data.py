"""Prediction (dataset tokenization) input, split over ranks and DataLoader workers so every
sample lands in exactly one batch: ``PredictImages`` (a folder's images in same-size batches,
for the ``.npy`` + manifest output) and ``PredictUnits`` (any source, unit by unit, for the
per-shard Parquet / tar output)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from train.crops import resize_center_square
from train.images import find_images, to_tensor
from train.sources import Unit, UnitReader
from vq.model import VQVAE
from vq.tokenizer import in_chunks
from vqio import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    center_crop,
    decode_image,
    format_size,
    image_size,
    read_image,
)


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
        resize: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.resize = resize
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
            if size is not None and resize is not None:
                size = (resize, resize)
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
                    image = read_image(path)
                    if self.resize is not None:
                        image = resize_center_square(image, self.resize)
                    images.append(to_tensor(image))
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


class PredictUnits(IterableDataset[dict[str, Any]]):
    """Prediction input from any ``train.sources`` source, unit by unit (a tar shard, a
    Parquet row group, a chunk of a folder): unit ``i`` goes to rank ``i % world_size`` and
    then to one DataLoader worker, which yields its samples in same-size batches like
    ``PredictImages`` (``images``, ``paths`` = sample keys, ``errors``) plus ``unit`` (its
    name) and ``unit_end`` (true on the unit's last batch, which may hold no image), so a
    writer can write one output shard per unit once the unit is complete.

    ``done`` names units an earlier run finished; they are left out before the split, so
    every rank agrees on the rest.
    """

    def __init__(
        self,
        units: Sequence[Unit],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        done: Collection[str] = (),
        image_column: str | None = None,
        resize: int | None = None,
    ) -> None:
        todo = [u for u in units if u.name not in set(done)]
        self.resize = resize
        self.units = todo[rank::world_size]
        self.batch_size = batch_size
        self.image_column = image_column
        self.num_samples = sum(len(u) for u in self.units)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        reader = UnitReader(self.image_column)
        for unit in self.units[worker::workers]:
            groups: dict[tuple[int, ...], tuple[list[torch.Tensor], list[str]]] = {}
            errors: list[dict[str, str]] = []
            for i, key in enumerate(unit.keys):
                name = str(key)
                try:
                    image = decode_image(reader.read(unit, i), label=reader.label(unit, i))
                    if self.resize is not None:
                        image = resize_center_square(image, self.resize)
                except (ImageDecodeError, OSError, ValueError) as exc:
                    errors.append({"path": name, "error": str(exc)})
                    continue
                tensors, names = groups.setdefault(image.shape, ([], []))
                tensors.append(to_tensor(image))
                names.append(name)
                if len(tensors) == self.batch_size:
                    yield self._batch(unit, tensors, names, errors, False)
                    groups.pop(image.shape)
                    errors = []
            rest = list(groups.values())
            for j, (tensors, names) in enumerate(rest):
                yield self._batch(unit, tensors, names, errors, j == len(rest) - 1)
                errors = []
            if not rest:
                yield self._batch(unit, [], [], errors, True)
        reader.close()

    @staticmethod
    def _batch(
        unit: Unit,
        tensors: list[torch.Tensor],
        names: list[str],
        errors: list[dict[str, str]],
        end: bool,
    ) -> dict[str, Any]:
        images = torch.stack(tensors) if tensors else torch.empty(0, 3, 0, 0)
        return {
            "images": images,
            "paths": names,
            "errors": errors,
            "unit": unit.name,
            "unit_end": end,
        }


def center_crop_to_multiple(images: torch.Tensor, f: int) -> torch.Tensor:
    """Crop (B, C, H, W) centrally to the largest H', W' that are multiples of f (the
    service's ``fit=crop`` crops the same pixels: both use ``vqio.center_crop``)."""
    rows, cols = center_crop(images.shape[-2], images.shape[-1], f)
    return images[..., rows, cols]


def predict_codes(batch: dict[str, Any], model: VQVAE, device: torch.device) -> dict[str, Any]:
    """A predict batch ({"images", "paths", "errors"}) -> {"codes" (B, h, w), "paths",
    "errors"}: what ``vq-train predict`` writes.

    Images whose sides are not multiples of f are centre-cropped to the largest multiples (a
    375x500 (HxW) image at f=8 is tokenized as its central 368x496).
    """
    images: torch.Tensor = batch["images"]
    paths: list[str] = list(batch["paths"])
    errors: list[dict[str, str]] = list(batch["errors"])
    codes = torch.empty(0, 0, 0, dtype=torch.long)
    if images.shape[0] > 0:
        cropped = center_crop_to_multiple(images, model.f)
        if cropped.shape[-1] == 0 or cropped.shape[-2] == 0:
            h, w = images.shape[-2:]
            error = f"image {format_size(h, w)} is smaller than f={model.f}"
            errors += [{"path": p, "error": error} for p in paths]
            paths = []
        else:
            # The Tokenizer's chunking, so predict runs the same passes as the library.
            pixels = cropped.shape[2] * cropped.shape[3]
            codes = in_chunks(model.encode, cropped, pixels, device).cpu()  # (B, h, w)
    return {"codes": codes, "paths": paths, "errors": errors}
