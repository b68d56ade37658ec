"""The DataModule of ``vq-train``: images for training, validation and dataset tokenization.

``ImageDataModule(root=None)`` uses natural RGB photographs bundled with scikit-image
(no downloads), split by image; ``root=...`` uses a folder of images (recursively), webdataset
tar shards, or Parquet / Arrow tables (``train.sources``), split by image with
``val_fraction`` unless ``val_root`` is given.

Two ways to feed training: a folder whose decoded images fit ``cache_mb`` is decoded once
into memory (``train.images``, ``train.crops``: the fast path of small data sets); anything
else is streamed, decoded and augmented in DataLoader workers (``train.stream``), in memory
flat in the data set's size. Prediction batches come from ``train.predict_data``.

Tensors are float32 in [-1, 1], (3, H, W) per image, the range the VQ-VAE expects.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from train.crops import AUGMENTS, CropBatches, CropLoader, TensorListDataset, grid_crops
from train.images import (
    BUNDLED_TRAIN,
    BUNDLED_VAL,
    LoadedImages,
    find_images,
    load_bundled_image,
    load_folder,
    split_by_image,
)
from train.predict_data import PredictImages, PredictUnits
from train.sources import Source, Unit, open_source
from train.stream import CropSpec, StreamBatches, StreamVal, _Decoder, cat_crops, default_workers
from vqio import IMAGE_EXTENSIONS, ImageDecodeError, image_size

# Samples decoded before training to check a streamed source is readable at all.
_PROBE = 16


def _decoded_mb(source: Source, budget_mb: float) -> float:
    """MiB a folder's images take decoded to uint8 RGB, read from the file headers; counting
    stops as soon as it exceeds ``budget_mb``."""
    total, budget = 0, budget_mb * 2**20
    for unit in source.units:
        for key in unit.keys:
            try:
                h, w = image_size(Path(unit.shard) / str(key))
            except ImageDecodeError:
                continue
            total += 3 * h * w
            if total > budget:
                return total / 2**20
    return total / 2**20


def _probe(source: Source, units: list[Unit]) -> None:
    """ValueError naming the option and root if none of a few samples spread over the
    source decodes (an unreadable source fails before training, not in a worker)."""
    decoder = _Decoder(units, source.image_column)
    tried, errors = 0, []
    step = max(1, len(units) // _PROBE)
    for u in range(0, len(units), step):
        for i in range(min(2, len(units[u]))):
            tried += 1
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if decoder.decode(u, i) is not None:
                    return
            errors += [str(w.message) for w in caught]
        if tried >= _PROBE:
            break
    raise ValueError(
        f"{source.option}={source.root!r}: none of the {tried} sample(s) tried could be decoded"
        f" (first error: {errors[0] if errors else 'unknown'})"
    )


_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def expand_root(option: str, root: str) -> str:
    """``root`` with environment variables expanded (``${VQ_DATA_ROOT}/train``: how
    configs/default.yaml takes its corpus); ValueError naming ``--option`` when a variable is
    not set."""
    path = os.path.expandvars(root)
    unset = _VARIABLE.search(path)
    if unset is not None:
        name = unset.group(1)
        raise ValueError(
            f"{option}={root!r} needs the environment variable {name}, which is not set: "
            f"set {name}=DIR or pass --{option} DIR (docs/data.md says where to get a corpus)"
        )
    return path


def held_out_val_root(root: str | None, val_root: str | None) -> str | None:
    """``val_root`` expanded, or None (hold out ``val_fraction`` of ``root``) when it names only
    environment variables that are not set while ``root`` needs none of them:
    configs/default.yaml's ``${VQ_DATA_ROOT}/val`` when the training folder comes from
    ``--data.root`` alone. ValueError naming ``--data.val_root`` in any other unset case."""
    if val_root is None:
        return None
    try:
        return expand_root("data.val_root", val_root)
    except ValueError:
        if root is None:
            raise
        expand_root("data.root", root)  # the training folder must not need them either
        names = sorted(set(_VARIABLE.findall(os.path.expandvars(val_root))))
        warnings.warn(
            f"data.val_root={val_root!r} needs {', '.join(names)}, which is not set: holding "
            "out data.val_fraction of data.root's images for validation instead (pass "
            "--data.val_root DIR to validate on a folder)",
            stacklevel=1,  # one place, so Python shows it once per run
        )
        return None


def existing_root(option: str, root: str) -> str:
    """``expand_root``, and a ValueError naming ``--option`` when a plain path (no glob or
    brace pattern) does not exist: cheap, for checking before a run starts."""
    path = expand_root(option, root)
    if not any(c in path for c in "*?[{") and not Path(path).exists():
        source = "" if path == root else f" (from {root!r})"
        raise ValueError(
            f"{option}={path!r}{source} does not exist: pass a folder of images or shards with "
            f"--{option} DIR (docs/data.md says where to get a corpus)"
        )
    return path


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
        root: training images: a folder (recursive; png/jpg/jpeg/webp/bmp), tar shards (a
            file, a folder, a glob or a brace pattern ``train-{0000..0252}.tar``), Parquet or
            Arrow files (``train.sources``); None for the bundled scikit-image photographs
            (train: ``BUNDLED_TRAIN``, val/test: ``BUNDLED_VAL``). Environment variables in
            it are expanded (``${VQ_DATA_ROOT}/train``); ``check_roots`` names one not set.
        val_root: validation/test images, any form ``root`` takes. None: ``val_fraction``
            of ``root``'s images are held out instead (split by image). Needs ``root``. One
            whose environment variables are not set, while ``root`` needs none, holds out
            too (``held_out_val_root``: configs/default.yaml with only ``--data.root``).
        crop_size: side of the square random training crops (a multiple of the model's f).
        val_crop_size: side of the fixed validation/test crops; None = ``crop_size``.
        batch_size: crops per training/validation batch.
        samples_per_epoch: random crops per training epoch (the epoch length; with a handful
            of images "one pass" means nothing).
        val_fraction: share of a folder's images held out for validation (split by image).
        val_crops_per_image: cap on the fixed validation crops taken from one image.
        min_crop_std: training crops whose pixel std (in [0, 1]) is below this are redrawn.
        max_crop_tries: draws per crop before accepting a near-constant one.
        num_workers: DataLoader worker processes; None: 0 for data held in memory, else
            ``default_workers()`` (the usable cores less one, 1..8).
        seed: seed for the folder split.
        cache_mb: a folder whose images decode to at most this many MiB is decoded once and
            held in memory (the fast path); larger folders and all shards are streamed.
            0 streams always.
        augment: training crops: ``crop`` (random crop at the image's resolution),
            ``resize_crop`` (shorter side to ``crop_size * resize_ratio``, then a random crop)
            or ``random_resized_crop`` (``min_scale``..1 of the area, aspect 3/4..4/3);
            all with random horizontal flips. Only ``crop`` uses the memory fast path.
        resize_ratio: ``resize_crop``'s shorter side over ``crop_size``.
        min_scale: ``random_resized_crop``'s smallest share of the image area.
        val_max_images: streamed validation uses at most this many held-out images.
        image_column: the image column of Parquet / Arrow sources (None: found by name).
        predict_shard_size: images of a folder per output shard of ``vq-train predict``'s
            Parquet / tar output (shard sources keep their own: one output per tar shard,
            Parquet row group or Arrow slice).
        predict_resize: resize each image's shorter side to this and take the central
            square before tokenizing (e.g. 256 for ImageNet-style codes, and full batches
            from images of mixed sizes); None tokenizes each image at its own size.
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
        num_workers: int | None = None,
        seed: int = 0,
        predict_root: str | None = None,
        predict_batch_size: int = 8,
        cache_mb: float = 1024.0,
        augment: str = "crop",
        resize_ratio: float = 1.125,
        min_scale: float = 0.35,
        val_max_images: int = 500,
        image_column: str | None = None,
        predict_shard_size: int = 1024,
        predict_resize: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("crop_size", crop_size),
            ("val_crop_size", crop_size if val_crop_size is None else val_crop_size),
            ("batch_size", batch_size),
            ("samples_per_epoch", samples_per_epoch),
            ("val_crops_per_image", val_crops_per_image),
            ("predict_batch_size", predict_batch_size),
            ("val_max_images", val_max_images),
            ("predict_shard_size", predict_shard_size),
            ("predict_resize", 1 if predict_resize is None else predict_resize),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r} is not allowed; expected an integer >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"data.val_fraction={val_fraction!r} is not allowed; expected 0 < x < 1"
            )
        if num_workers is not None and num_workers < 0:
            raise ValueError(
                f"data.num_workers={num_workers!r} is not allowed; expected >= 0 or None (auto)"
            )
        if augment not in AUGMENTS:
            raise ValueError(f"data.augment={augment!r} is not allowed; expected one of {AUGMENTS}")
        if cache_mb < 0:
            raise ValueError(f"data.cache_mb={cache_mb!r} is not allowed; expected >= 0")
        if resize_ratio < 1.0:
            raise ValueError(f"data.resize_ratio={resize_ratio!r} is not allowed; expected >= 1")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"data.min_scale={min_scale!r} is not allowed; expected 0 < x <= 1")
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
        self.cache_mb = cache_mb
        self.spec = CropSpec(
            crop_size, augment, resize_ratio, min_scale, min_crop_std, max_crop_tries
        )
        self.val_max_images = val_max_images
        self.image_column = image_column
        # Streamed data (None: in memory): the training units, the validation units and the
        # held-out (unit, sample) items.
        self.streamed: Source | None = None
        self._stream_train: list[Unit] = []
        self._stream_val: tuple[list[Unit], list[tuple[int, int]], str | None] = ([], [], None)
        self.train_names: list[str] = []
        self.val_names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._train_images: list[np.ndarray] | None = None
        self._val_images: list[np.ndarray] = []
        # Relative paths under predict_root to leave out (CodeWriter fills it with what an
        # interrupted run already wrote, so a re-run resumes).
        self.predict_exclude: set[str] = set()
        self.predict_shard_size = predict_shard_size
        self.predict_resize = predict_resize
        # Set by CodeWriter: "npy" (PredictImages, a folder) or "parquet"/"tar" (PredictUnits,
        # any source), and the units an earlier run finished.
        self.predict_format = "npy"
        self.predict_done_units: set[str] = set()
        self.predict_total = 0  # images this rank tokenizes (progress)

    def check_roots(self) -> None:
        """ValueError naming the option when ``root`` or ``val_root`` is not an existing
        folder (an environment variable in it not set, a typo); ``vq-train`` calls it before
        the run starts so a bad path leaves no empty ``version_N/`` behind."""
        if self.root is not None:
            existing_root("data.root", self.root)
        if held_out_val_root(self.root, self.val_root) is not None:
            existing_root("data.val_root", str(self.val_root))

    # Loading happens in setup (every process), not prepare_data: nothing is downloaded.
    def _load(self) -> None:
        if self._train_images is not None:
            return
        if self.root is None:
            self.train_names, self.val_names = list(BUNDLED_TRAIN), list(BUNDLED_VAL)
            self._train_images = [load_bundled_image(n) for n in BUNDLED_TRAIN]
            self._val_images = [load_bundled_image(n) for n in BUNDLED_VAL]
            return
        root = expand_root("data.root", self.root)
        val_root = held_out_val_root(self.root, self.val_root)
        source = open_source(
            "data.root",
            root,
            files_per_unit=0,
            image_column=self.image_column,
            shuffle_seed=self.seed,
        )
        val_source = (
            None
            if val_root is None
            else open_source("data.val_root", val_root, image_column=self.image_column)
        )
        in_memory = self.spec.augment == "crop" and all(
            s is None or s.kind == "folder" for s in (source, val_source)
        )
        if in_memory:  # the training and validation images share the budget
            used = _decoded_mb(source, self.cache_mb)
            if val_source is not None and used <= self.cache_mb:
                used += _decoded_mb(val_source, self.cache_mb - used)
            in_memory = used <= self.cache_mb
        if not in_memory:
            self._setup_stream(source, val_source)
            self._train_images = []
            return
        loaded = _load_root("data.root", root)
        self.skipped = list(loaded.skipped)
        if val_root is not None:
            val = _load_root("data.val_root", val_root)
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

    def _setup_stream(self, source: Source, val_source: Source | None) -> None:
        self.streamed = source
        units = source.units
        if val_source is not None:
            train_units = units
            val_units = val_source.units
            val_items = [(u, i) for u, unit in enumerate(val_units) for i in range(len(unit))]
            val_column = val_source.image_column
        else:
            names = [
                str(Path(unit.shard) / str(k)) if unit.kind == "folder" else f"{unit.name}/{k}"
                for unit in units
                for k in unit.keys
            ]
            _, val_idx = split_by_image(names, self.val_fraction, self.seed)
            is_val = np.zeros(len(names), dtype=bool)
            is_val[val_idx] = True
            train_units, val_items, pos = [], [], 0
            for u, unit in enumerate(units):
                mask = is_val[pos : pos + len(unit)]
                val_items += [(u, int(i)) for i in np.flatnonzero(mask)]
                if (~mask).any():
                    train_units.append(unit.subset(~mask))
                pos += len(unit)
            if len(names) == 1:
                train_units = list(units)
            val_units, val_column = units, source.image_column
        if len(val_items) > self.val_max_images:
            keep = np.linspace(0, len(val_items) - 1, self.val_max_images).round().astype(int)
            val_items = [val_items[i] for i in keep]
        _probe(source, train_units)
        self._stream_train = train_units
        self._stream_val = (val_units, val_items, val_column)

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return 0 if self.streamed is None else default_workers()

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
            num_workers=self._workers(),
            persistent_workers=self._workers() > 0,
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
        per_rank = math.ceil(self.samples_per_epoch / (self.batch_size * world))
        workers = self._workers()
        dataset: CropBatches | StreamBatches
        if self.streamed is not None:
            if len(self._stream_train) < world:
                raise ValueError(
                    f"data.root={self.root!r} has {len(self._stream_train)} shard(s), fewer "
                    f"than the {world} ranks: pack it into at least {world} shards (vq-data pack)"
                )
            dataset = StreamBatches(
                self._stream_train,
                self.spec,
                self.batch_size,
                per_rank,
                seed=torch.initial_seed(),
                rank=rank,
                world=world,
                start=start,
                image_column=self.streamed.image_column,
            )
            return CropLoader(
                dataset,
                batch_size=None,
                num_workers=workers,
                persistent_workers=workers > 0,
                generator=torch.Generator(),
            )
        dataset = CropBatches(
            self._train_images,
            self.crop_size,
            self.batch_size,
            per_rank,
            seed=torch.initial_seed(),  # set by seed_everything, the same on every rank
            rank=rank,
            start=start,
            min_std=self.min_crop_std,
            max_tries=self.max_crop_tries,
        )
        return CropLoader(
            dataset,
            batch_size=None,  # the dataset yields whole batches
            num_workers=workers,
            persistent_workers=workers > 0,
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
        self._load()
        if self.streamed is not None:
            units, items, column = self._stream_val
            dataset = StreamVal(units, items, self.val_crop_size, self.val_crops_per_image, column)
            workers = self._workers()
            return DataLoader(
                dataset,
                batch_size=max(1, self.batch_size // self.val_crops_per_image),
                collate_fn=cat_crops,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
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
        if self.predict_format != "npy":
            source = open_source(
                "data.predict_root",
                self.predict_root,
                files_per_unit=self.predict_shard_size,
                image_column=self.image_column,
            )
            units = PredictUnits(
                source.units,
                self.predict_batch_size,
                rank,
                world,
                done=self.predict_done_units,
                image_column=source.image_column,
                resize=self.predict_resize,
            )
            self.predict_total = units.num_samples
            workers = default_workers() if self.num_workers is None else self.num_workers
            return DataLoader(
                units, batch_size=None, num_workers=min(workers, max(1, len(units.units)))
            )
        if not Path(self.predict_root).is_dir() or not find_images(self.predict_root):
            kind = open_source("data.predict_root", self.predict_root).kind
            if kind != "folder":
                raise ValueError(
                    f"data.predict_root={self.predict_root!r} is {kind} shards: the .npy + "
                    "manifest output reads folders; pass --predict_writer.format parquet or tar"
                )
        dataset = PredictImages(
            self.predict_root,
            self.predict_batch_size,
            rank,
            world,
            exclude=self.predict_exclude,
            resize=self.predict_resize,
        )
        self.predict_total = sum(len(b) for b in dataset.batches[rank::world])
        # batch_size=None: the dataset yields whole batches.
        return DataLoader(dataset, batch_size=None, num_workers=self._workers())
