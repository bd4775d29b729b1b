"""ImageNet-style class-folder data with ADM preprocessing and recorded control metadata.

Layout: ``root/train/<class>/<image>`` and optionally ``root/val/<class>/<image>`` (if ``val/`` is missing, a
deterministic fraction of ``train/`` is held out). Images get ADM's centre crop (`data.transforms.center_crop_arr`,
the preprocessing of ADM, DiT and MDT and of ADM's FID reference statistics) and, for training, a random horizontal
flip. The control metadata is the real geometry: original ``(h, w)``, the crop's ``(top, left)`` and ``(h, w)`` in
original pixels, and the flip.

Unreadable images raise `CorruptImageError` naming the file, or with ``skip_corrupt=True`` are replaced by the next
readable image and counted in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from data.sampling import ResumableDataModule
from data.transforms import CONTROL_NAMES, CenterCropFlip

log = logging.getLogger(__name__)

_MAX_SKIPS = 100  # consecutive unreadable files tolerated with skip_corrupt before giving up


class CorruptImageError(OSError):
    """An image file could not be decoded."""


class ImageFolderDataset(Dataset):
    """Class-labelled image files, centre-cropped, with captions and control metadata.

    Args:
        samples: ``(path, class_index)`` pairs, as in torchvision's ``ImageFolder.samples``.
        class_names: Class folder names, indexed by class label.
        resolution: Output side length in pixels.
        flip_p: Horizontal flip probability (0 for evaluation).
        skip_corrupt: Replace unreadable images by the next readable one (logged and counted) instead of raising.
        split: Name of the split, recorded in a latent cache's key.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        class_names: list[str],
        resolution: int,
        flip_p: float = 0.5,
        skip_corrupt: bool = False,
        split: str = "train",
    ) -> None:
        if not samples:
            raise ValueError("ImageFolderDataset needs at least one sample")
        self.samples, self.class_names, self.resolution, self.split = samples, class_names, resolution, split
        self.transform = CenterCropFlip(resolution, flip_p)
        self._unflipped = CenterCropFlip(resolution, 0.0)
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0  # per process: each DataLoader worker counts its own skips

    def __len__(self) -> int:
        return len(self.samples)

    def cache_key(self) -> dict:
        """What determines a latent cache of this split (see `data.latent_cache`).

        The centre crop is deterministic (one crop per item); the random flip is kept as an augmentation by storing
        the moments of the image and of its mirror image whenever this split flips.
        """
        listing = hashlib.sha256(json.dumps(self.samples).encode()).hexdigest()
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "split": self.split,
            "resolution": self.resolution,
            "options": {"num_items": len(self.samples), "files_sha256": listing, "skip_corrupt": self.skip_corrupt},
            "crops_per_item": 1,
            "flip_moments": self.transform.flip.p > 0,
        }

    def cache_views(self, index: int) -> list[dict]:
        """The views a latent cache stores for item ``index``: unflipped, and mirrored if this split flips."""
        item = self._item(index, self._unflipped)
        if self.transform.flip.p == 0:
            return [item]
        control = {**item["control"], "flip": torch.ones_like(item["control"]["flip"])}
        return [item, {**item, "image": torch.flip(item["image"], dims=[-1]), "control": control}]

    def __getitem__(self, index: int) -> dict:
        return self._item(index, self.transform)

    def _item(self, index: int, transform: CenterCropFlip) -> dict:
        for attempt in range(_MAX_SKIPS + 1):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = _load_rgb(path)
            except CorruptImageError:
                if not self.skip_corrupt:
                    raise
                self.num_skipped += 1
                log.warning("skipped corrupt image %s (%d skipped so far in this process)", path, self.num_skipped)
                continue
            tensor, control = transform(image)
            return {
                "image": tensor,
                "class_label": torch.tensor(label, dtype=torch.int64),
                "caption": f"a photo of {self.class_names[label]}",
                "control": control,
            }
        raise CorruptImageError(f"{_MAX_SKIPS + 1} consecutive unreadable images starting at index {index}")


def _load_rgb(path: str) -> Image.Image:
    """Fully decode ``path`` as RGB; any decoding failure becomes a `CorruptImageError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise CorruptImageError(f"cannot read image {path}: {error}") from error


def _holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic ``(train, val)`` index split holding out ``fraction`` of ``n`` items (at least one)."""
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={fraction} leaves no training images out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class ImageFolderDataModule(ResumableDataModule):
    """ImageNet-layout class folders with ADM centre crop, random flip and recorded control metadata.

    Captions are ``"a photo of <class folder name>"``. The training stream is resumable (see `data.sampling`).

    Args:
        root: Dataset root holding ``train/<class>/...`` and optionally ``val/<class>/...``.
        resolution: Output side length in pixels (ADM centre crop).
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes (0 decodes in the main process).
        val_fraction: Fraction of ``train/`` held out for validation when ``val/`` does not exist.
        seed: Seed of the hold-out split and of the training shuffle.
        random_flip: Random horizontal flips (p=0.5) for training; validation is never flipped.
        skip_corrupt: Replace unreadable images by the next readable one (logged, counted) instead of raising.
        num_classes: Declared number of classes (ImageNet: 1000), checked against the class folders at ``setup``.
            Declaring it lets a config be parsed and described without the data on disk; ``None`` counts folders.
        latent_cache: Train from a latent cache of the training split (`data.latent_cache`) holding the moments of
            each image and of its flip, so the flip stays a random augmentation: ``"auto"`` uses ``$LDMBENCH_CACHE``
            or ``runs/cache`` in a folder named by what determines the cache, building it on first use when the
            run reads at least half of the images; a path uses that folder (built if absent); None decodes images.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 256,
        batch_size: int = 32,
        num_workers: int = 4,
        val_fraction: float = 0.01,
        seed: int = 0,
        random_flip: bool = True,
        skip_corrupt: bool = False,
        num_classes: int | None = None,
        latent_cache: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self._declared_num_classes = num_classes
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        # An undeclared num_classes (None) is counted from the folders and linked into the model; recording the None
        # would clash with the model's count when Lightning merges both hyper-parameter sets for the logger.
        self.save_hyperparameters(ignore=[] if num_classes is not None else ["num_classes"])
        self.root, self._resolution, self.val_fraction = Path(root), resolution, val_fraction
        self.random_flip, self.skip_corrupt = random_flip, skip_corrupt
        self._class_names: list[str] | None = None
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        self.latent_cache = latent_cache
        self.cached_train_set: Dataset | None = None

    @property
    def train_dir(self) -> Path:
        """``root/train``, checked to exist."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder root {self.root} does not exist or is not a directory")
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"expected class folders under {train} (layout root/train/<class>/<image>)")
        return train

    @property
    def class_names(self) -> list[str]:
        """Class folder names (sorted, as torchvision's ImageFolder), indexed by class label."""
        if self._class_names is None:  # listing the class folders is cheap; scanning every file is left to setup
            self._class_names = find_classes(str(self.train_dir))[0]
        return self._class_names

    @property
    def num_classes(self) -> int:
        """The declared number of classes, else the number of class folders."""
        if self._declared_num_classes is not None:
            return self._declared_num_classes
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        """Output side length in pixels."""
        return self._resolution

    @property
    def control_names(self) -> tuple[str, ...]:
        """Control scalars this data records, in `data.transforms.CONTROL_NAMES` order."""
        return CONTROL_NAMES

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders and build the train / val datasets (once); for ``fit``, find or build the latent cache."""
        if self.train_set is None:
            self._build_datasets()
        if stage in ("fit", None) and self.latent_cache is not None and self.cached_train_set is None:
            from data.latent_cache import resolve_train_cache

            flip_p = 0.5 if self.random_flip else 0.0
            self.cached_train_set = resolve_train_cache(self, self.train_set, self.latent_cache, flip_p=flip_p)

    def _build_datasets(self) -> None:
        train = ImageFolder(str(self.train_dir))
        samples, val_samples = train.samples, self._val_samples(train)
        if val_samples is None:
            train_idx, val_idx = _holdout(len(samples), self.val_fraction, self.seed)
            samples, val_samples = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
        self._class_names = train.classes
        declared = self._declared_num_classes
        if declared is not None and declared != len(train.classes):
            raise ValueError(f"num_classes={declared} but {self.train_dir} has {len(train.classes)} class folders")
        flip_p = 0.5 if self.random_flip else 0.0
        self.train_set = ImageFolderDataset(samples, train.classes, self.resolution, flip_p, self.skip_corrupt, "train")
        self.val_set = ImageFolderDataset(val_samples, train.classes, self.resolution, 0.0, self.skip_corrupt, "val")

    def _val_samples(self, train: ImageFolder) -> list[tuple[str, int]] | None:
        """Samples of ``root/val`` with the train class indices, or None if there is no ``val/``."""
        val_dir = self.root / "val"
        if not val_dir.is_dir():
            return None
        val = ImageFolder(str(val_dir))
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            raise ValueError(f"{val_dir} has class folders absent from train/: {unknown[:10]}")
        return [(path, train.class_to_idx[val.classes[label]]) for path, label in val.samples]

    def _datasets(self) -> tuple[ImageFolderDataset, ImageFolderDataset]:
        if self.train_set is None:
            self._build_datasets()
        assert self.train_set is not None and self.val_set is not None
        return self.train_set, self.val_set

    def train_dataloader(self) -> DataLoader:
        """Resumable shuffled stream of whole batches (cached moments instead of images when a cache is in use)."""
        train_set = self.cached_train_set if self.cached_train_set is not None else self._datasets()[0]
        return self._train_loader(train_set, len(train_set))

    def val_dataloader(self) -> DataLoader:
        """The validation images in fixed order, unflipped."""
        return self._eval_loader(self._datasets()[1])

    def test_dataloader(self) -> DataLoader:
        """Same as `val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Same as `val_dataloader`."""
        return self.val_dataloader()
