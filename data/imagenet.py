"""ImageNet at 256 and 512: the class-folder DataModule with a crop policy, bad-input accounting and FID labels.

`ImageNetDataModule` extends `data.imagefolder.ImageFolderDataModule` (same layout ``root/train/<wnid>/*.JPEG`` and
``root/val/<wnid>/*.JPEG``, same resumable stream and latent cache) with:

- a configurable `data.crop_policy.CropPolicy` for training (ADM centre crop + flip for DiT / MDT, random crop,
  random-resized crop, aspect-preserving); the validation images always take the policy's deterministic
  counterpart (a random crop becomes the centre crop) and are never flipped. Random draws come from a generator
  seeded by ``(seed, stream position, index)``, so a crop differs per epoch and a resumed run draws the same one;
- bad-input accounting (`data.bad_input`): an unreadable image is replaced by the next readable one, counted by
  reason, warned about and logged; above ``max_bad_fraction`` the run stops with a message naming the counts;
- class-balanced validation labels for FID: ``val_per_class`` keeps the first ``k`` validation images of every
  class (ADM's reference batches are 50 per class), and `fid_labels` gives the class of generated sample ``i``;
- the root may come from ``$IMAGENET_ROOT`` (one place for every config of a suite); nothing is read before
  ``setup``, so a config parses and ``describe``s without the dataset, and training stops naming the missing path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.bad_input import BadInputCounter, BadInputError, substitute_next
from data.crop_policy import CropPolicy
from data.imagefolder import ImageFolderDataModule, ImageFolderDataset

log = logging.getLogger(__name__)

ENV_ROOT = "IMAGENET_ROOT"
_DETERMINISTIC = {"random_crop": "center", "random_resized_crop": "center"}


def eval_policy(policy: CropPolicy) -> CropPolicy:
    """The deterministic, unflipped counterpart of a training policy (used for validation and FID references)."""
    by_resolution = {k: _DETERMINISTIC.get(v, v) for k, v in policy.by_resolution.items()}
    return CropPolicy(_DETERMINISTIC.get(policy.policy, policy.policy), 0.0, by_resolution, policy.scale, policy.ratio)


class ImageNetDataset(ImageFolderDataset):
    """Class-labelled images through a crop policy, with bad-input substitution and per-position random draws.

    Args:
        samples: ``(path, class_index)`` pairs.
        class_names: Class folder names, indexed by label.
        resolution: Output side in pixels.
        crop_policy: The policy (its ``flip_p`` included).
        seed: Seed of the per-sample crop and flip draws.
        split: Name of the split (part of a latent cache's key).
        counter: Counts bad items and enforces the limit (each loader worker holds its own copy).
        min_side: Images whose shorter side is below this many pixels are bad input (``too_small``).
    """

    wants_stream_position = True  # the training sampler passes (index, stream position)

    def __init__(
        self,
        samples: list[tuple[str, int]],
        class_names: list[str],
        resolution: int,
        crop_policy: CropPolicy,
        seed: int = 0,
        split: str = "train",
        counter: BadInputCounter | None = None,
        min_side: int = 1,
    ) -> None:
        counter = counter if counter is not None else BadInputCounter(name=f"ImageNet {split}")
        super().__init__(samples, class_names, resolution, crop_policy.flip_p, split, counter, min_side)
        self.crop_policy, self.seed = crop_policy, seed

    def cache_key(self) -> dict:
        """What determines a latent cache of this split: files, resolution, crop policy and flip moments."""
        if self.crop_policy.is_random(self.resolution):
            raise ValueError(
                f"crop policy {self.crop_policy.policy_at(self.resolution)!r} draws a new crop every epoch, which a "
                "latent cache would freeze; train from images (latent_cache: none) or use a deterministic policy "
                "(adm_center, center, aspect_preserving)"
            )
        listing = hashlib.sha256(json.dumps(self.samples).encode()).hexdigest()
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "split": self.split,
            "resolution": self.resolution,
            "options": {
                "num_items": len(self.samples),
                "files_sha256": listing,
                "crop": self.crop_policy.describe(self.resolution),
                "min_side": self.min_side,
            },
            "crops_per_item": 1,
            "flip_moments": self.crop_policy.flip_p > 0,
        }

    def cache_views(self, index: int) -> list[dict]:
        """The unflipped view of item ``index`` (its substitute if unreadable) and, if this split flips, its mirror."""
        self.cache_key()  # refuses random crops
        views = [False, True] if self.crop_policy.flip_p > 0 else [False]
        item = substitute_next(lambda i: self._load(i, None, False), index, len(self), self.counter)
        out = [item]
        if len(views) == 2:
            flipped = {**item["control"], "flip": torch.ones_like(item["control"]["flip"])}
            out.append({**item, "image": torch.flip(item["image"], dims=[-1]), "control": flipped})
        return out

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, position = item if isinstance(item, tuple) else (item, None)
        # A generator per (seed, stream position, index): random per epoch, identical after a resume, and independent
        # of which loader worker decodes the item.
        # (The draw depends on the item actually loaded, so a substitute at position p is exactly that item at p.)
        key = [self.seed, 0 if position is None else position + 1]
        return substitute_next(
            lambda i: self._load(i, np.random.default_rng([*key, i]), None), index, len(self), self.counter
        )

    def _load(self, index: int, rng: np.random.Generator | None, flip: bool | None) -> dict[str, Any]:
        path, label = self.samples[index]
        if label is None or label < 0:
            raise BadInputError("missing_label", path)
        image = self.read(path)  # CorruptImageError (an OSError) or too_small, naming the file
        tensor, control = self.crop_policy(image, self.resolution, rng, flip)
        return {
            "image": tensor,
            "class_label": torch.tensor(label, dtype=torch.int64),
            "caption": f"a photo of {self.class_names[label]}",
            "control": control,
        }


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k with a crop policy, bad-input accounting and class-balanced FID labels.

    Args:
        root: Dataset root (``train/<wnid>/``, ``val/<wnid>/``); None reads ``$IMAGENET_ROOT``. Nothing is read before
            ``setup``, and a missing root stops training with a message naming the path.
        resolution: Output side in pixels (256 or 512 in the paper-scale suites).
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes.
        val_fraction: Fraction of ``train/`` held out when ``val/`` does not exist.
        seed: Seed of the hold-out split, the shuffle and the crop / flip draws.
        crop_policy: The training crop policy; default ADM centre crop with a random flip (DiT, MDT).
        num_classes: Declared number of classes (1000), so that a config describes without the data.
        latent_cache: As for `ImageFolderDataModule` (deterministic crop policies only).
        max_bad_fraction: Stop when more than this fraction of the items seen was bad (unreadable images).
        min_items_before_stop: Items to see before ``max_bad_fraction`` is enforced.
        val_per_class: Keep only the first ``k`` validation images of each class (class-balanced FID reference); None
            keeps them all.
        min_image_side: As for `ImageFolderDataModule` (default: an eighth of the resolution).
        scan: Read every image's header before training and print the summary (`data.folder_scan`). Off by default
            here: 1.28M headers take minutes on a network file system (the result is stored for the next run).
    """

    root_env = ENV_ROOT  # read by the CLI's data-root check, before anything is built
    _data_name = "ImageNet"

    def __init__(
        self,
        root: str | None = None,
        resolution: int = 256,
        batch_size: int = 32,
        num_workers: int = 8,
        val_fraction: float = 0.01,
        seed: int = 0,
        crop_policy: CropPolicy | None = None,
        num_classes: int | None = 1000,
        latent_cache: str | None = None,
        max_bad_fraction: float = 0.001,
        min_items_before_stop: int = 1000,
        val_per_class: int | None = None,
        min_image_side: int | None = None,
        scan: bool = False,
    ) -> None:
        self._root_option = root
        policy = crop_policy if crop_policy is not None else CropPolicy("adm_center", flip_p=0.5)
        super().__init__(
            root=root or os.environ.get(ENV_ROOT) or "",
            resolution=resolution,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            random_flip=policy.flip_p > 0,
            num_classes=num_classes,
            latent_cache=latent_cache,
            max_bad_fraction=max_bad_fraction,
            min_items_before_stop=min_items_before_stop,
            min_image_side=min_image_side,
            scan=scan,
        )
        if val_per_class is not None and val_per_class < 1:
            raise ValueError(f"val_per_class must be >= 1, got {val_per_class}")
        self.crop_policy, self.val_per_class = policy, val_per_class

    @property
    def train_dir(self) -> Path:
        """``root/train``, checked to exist (the message says where the root comes from)."""
        root = self._root_option or os.environ.get(ENV_ROOT)
        if not root:
            raise FileNotFoundError(
                f"ImageNet root not set: export {ENV_ROOT}=/path/to/imagenet or pass --data.init_args.root"
            )
        self.root = Path(root)  # read when training starts, not when the config is parsed
        return super().train_dir

    def _build_datasets(self) -> None:
        super()._build_datasets()  # scans the folders, checks num_classes, holds out val if needed
        assert self.train_set is not None and self.val_set is not None
        names, val_samples = self.train_set.class_names, self.val_set.samples
        if self.val_per_class is not None:
            val_samples = balanced_subset(val_samples, self.val_per_class)
        train_counter, val_counter, side = self.train_set.counter, self.val_set.counter, self.min_image_side
        self.train_set = ImageNetDataset(
            self.train_set.samples, names, self.resolution, self.crop_policy, self.seed, "train", train_counter, side
        )
        self.val_set = ImageNetDataset(
            val_samples, names, self.resolution, eval_policy(self.crop_policy), self.seed, "val", val_counter, side
        )

    def fid_labels(self, n: int) -> torch.Tensor:
        """Class of generated sample ``i``: ``i % num_classes`` (equal counts when ``n`` is a multiple)."""
        return torch.arange(n, dtype=torch.long) % self.num_classes


def balanced_subset(samples: list[tuple[str, int]], per_class: int) -> list[tuple[str, int]]:
    """The first ``per_class`` samples of every class (in the given order), classes in label order.

    Raises:
        ValueError: If a class has fewer than ``per_class`` samples (the reference would not be balanced).
    """
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    short = {label: len(items) for label, items in by_class.items() if len(items) < per_class}
    if short:
        raise ValueError(
            f"val_per_class={per_class} but some classes have fewer images: {dict(list(short.items())[:5])}"
        )
    return [s for label in sorted(by_class) for s in by_class[label][:per_class]]
