"""The DataModule of ``vq-train``: images for training, validation and dataset tokenization.

``ImageDataModule(root=None)`` uses natural RGB photographs bundled with scikit-image
(no downloads), split by image; ``root="some/folder"`` uses every readable image under that
folder (recursively), split by image with ``val_fraction``. The pieces live in
``train.images`` (finding, decoding, splitting), ``train.crops`` (training and validation
crops) and ``train.predict_data`` (prediction batches).

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

from train.crops import CropBatches, CropLoader, TensorListDataset, grid_crops
from train.images import (
    BUNDLED_TRAIN,
    BUNDLED_VAL,
    LoadedImages,
    find_images,
    load_bundled_image,
    load_folder,
    split_by_image,
)
from train.predict_data import PredictImages
from vqio import IMAGE_EXTENSIONS

_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def existing_root(option: str, root: str) -> str:
    """``root`` with environment variables expanded (``${VQ_DATA_ROOT}/train``: how
    configs/default.yaml takes its corpus); ValueError naming ``--option`` when a variable is
    not set or the folder does not exist."""
    path = os.path.expandvars(root)
    unset = _VARIABLE.search(path)
    if unset is not None:
        name = unset.group(1)
        raise ValueError(
            f"{option}={root!r} needs the environment variable {name}, which is not set: "
            f"set {name}=DIR or pass --{option} DIR (docs/data.md says where to get a corpus)"
        )
    if not Path(path).is_dir():
        source = "" if path == root else f" (from {root!r})"
        what = "is not a folder" if Path(path).exists() else "does not exist"
        raise ValueError(
            f"{option}={path!r}{source} {what}: pass a folder of images with --{option} DIR "
            "(docs/data.md says where to get a corpus)"
        )
    return path


def _load_root(option: str, root: str) -> LoadedImages:
    """Every readable image under ``root``, decoded once; ValueError naming ``option`` if
    there is none."""
    root = existing_root(option, root)
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
            Environment variables in it are expanded when the images load
            (``${VQ_DATA_ROOT}/train``); ``check_roots`` names one that is not set.
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

    def check_roots(self) -> None:
        """ValueError naming the option when ``root`` or ``val_root`` is not an existing
        folder (an environment variable in it not set, a typo); ``vq-train`` calls it before
        the run starts so a bad path leaves no empty ``version_N/`` behind."""
        for option, root in (("data.root", self.root), ("data.val_root", self.val_root)):
            if root is not None:
                existing_root(option, root)

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
