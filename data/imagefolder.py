"""ImageNet-style class-folder data with ADM preprocessing and recorded control metadata.

Layout: ``root/train/<class>/<image>`` and optionally ``root/val/<class>/<image>`` (if ``val/`` is missing, a
deterministic fraction of ``train/`` is held out). Images get ADM's centre crop (`data.transforms.center_crop_arr`,
the preprocessing of ADM, DiT and MDT and of ADM's FID reference statistics) and, for training, a random horizontal
flip. The control metadata is the real geometry: original ``(h, w)``, the crop's ``(top, left)`` and ``(h, w)`` in
original pixels, and the flip.

Before training, `data.folder_scan` lists the folders once (an empty class folder is one clear error) and reads every
image's header, and one summary is printed: images per class, files skipped, unreadable files, images too small to use
and images far below the resolution. Bad input follows the policy of every image DataModule here (`data.bad_input`):
an unreadable or too-small image is replaced by the next readable one, counted, reported once, and above
``max_bad_fraction`` the run stops with a message naming the counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data.bad_input import (
    BadInputCounter,
    BadInputError,
    BadInputMonitor,
    MonitorsBadInputs,
    TooManyBadInputs,
    substitute_next,
)
from data.folder_scan import FolderError, FolderListing, list_class_folders, scan_images
from data.sampling import ResumableDataModule
from data.transforms import CONTROL_NAMES, CenterCropFlip

log = logging.getLogger(__name__)


class CorruptImageError(OSError):
    """An image file could not be decoded (``path`` names it)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ImageFolderDataset(Dataset):
    """Class-labelled image files, centre-cropped, with captions and control metadata.

    Args:
        samples: ``(path, class_index)`` pairs, as in torchvision's ``ImageFolder.samples``.
        class_names: Class folder names, indexed by class label.
        resolution: Output side length in pixels.
        flip_p: Horizontal flip probability (0 for evaluation).
        split: Name of the split, recorded in a latent cache's key.
        counter: Counts bad items and enforces the limit (each loader worker holds its own copy); None raises at the
            first bad item instead of replacing it.
        min_side: Images whose shorter side is below this many pixels are bad input (``too_small``), not upscaled.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        class_names: list[str],
        resolution: int,
        flip_p: float = 0.5,
        split: str = "train",
        counter: BadInputCounter | None = None,
        min_side: int = 1,
    ) -> None:
        if not samples:
            raise ValueError("ImageFolderDataset needs at least one sample")
        self.samples, self.class_names, self.resolution, self.split = samples, class_names, resolution, split
        self.transform = CenterCropFlip(resolution, flip_p)
        self._unflipped = CenterCropFlip(resolution, 0.0)
        self.counter, self.min_side = counter, min_side

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_bad(self) -> int:
        """Bad items met by this process."""
        return 0 if self.counter is None else self.counter.bad

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
            "options": {"num_items": len(self.samples), "files_sha256": listing, "min_side": self.min_side},
            "crops_per_item": 1,
            "flip_moments": self.transform.flip.p > 0,
        }

    def cache_views(self, index: int) -> list[dict]:
        """The views a latent cache stores for item ``index``: unflipped, and mirrored if this split flips."""
        item = substitute_next(lambda i: self._item(i, self._unflipped), index, len(self), self.counter)
        if self.transform.flip.p == 0:
            return [item]
        control = {**item["control"], "flip": torch.ones_like(item["control"]["flip"])}
        return [item, {**item, "image": torch.flip(item["image"], dims=[-1]), "control": control}]

    def __getitem__(self, index: int) -> dict:
        return substitute_next(lambda i: self._item(i, self.transform), index, len(self), self.counter)

    def read(self, path: str) -> Image.Image:
        """The decoded RGB image at ``path``; raises `CorruptImageError` or `BadInputError` (``too_small``)."""
        image = _load_rgb(path)
        if min(image.size) < self.min_side:
            width, height = image.size
            raise BadInputError("too_small", f"{path} is {width}x{height} (< {self.min_side} px)", path=path)
        return image

    def _item(self, index: int, transform: CenterCropFlip) -> dict:
        path, label = self.samples[index]
        tensor, control = transform(self.read(path))
        return {
            "image": tensor,
            "class_label": torch.tensor(label, dtype=torch.int64),
            "caption": f"a photo of {self.class_names[label]}",
            "control": control,
        }


def _load_rgb(path: str) -> Image.Image:
    """Fully decode ``path`` as RGB; any decoding failure becomes a `CorruptImageError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise CorruptImageError(f"cannot read image {path}: {error}", path=path) from error


def _holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic ``(train, val)`` index split holding out ``fraction`` of ``n`` items (at least one)."""
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"val_fraction={fraction} leaves no training images out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class ImageFolderDataModule(MonitorsBadInputs, ResumableDataModule):
    """ImageNet-layout class folders with ADM centre crop, random flip and recorded control metadata.

    Captions are ``"a photo of <class folder name>"``. The training stream is resumable (see `data.sampling`). At
    ``setup`` the folders are listed and scanned once, and one summary is printed (`data.folder_scan`); bad input is
    replaced, counted and limited as everywhere (`data.bad_input`).

    Args:
        root: Dataset root holding ``train/<class>/...`` and optionally ``val/<class>/...``.
        resolution: Output side length in pixels (ADM centre crop).
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes (0 decodes in the main process).
        val_fraction: Fraction of ``train/`` held out for validation when ``val/`` does not exist.
        seed: Seed of the hold-out split and of the training shuffle.
        random_flip: Random horizontal flips (p=0.5) for training; validation is never flipped.
        num_classes: Declared number of classes (ImageNet: 1000), checked against the class folders at ``setup``.
            Declaring it lets a config be parsed and described without the data on disk; ``None`` counts folders.
        latent_cache: Train from a latent cache of the training split (`data.latent_cache`) holding the moments of
            each image and of its flip, so the flip stays a random augmentation: ``"auto"`` uses ``$LDMBENCH_CACHE``
            or ``runs/cache`` in a folder named by what determines the cache, building it on first use when the
            run reads at least half of the images; a path uses that folder (built if absent); None decodes images.
        max_bad_fraction: Stop when more than this fraction of the images was bad (unreadable or too small): checked
            on the scan before training and on the items training reads.
        min_items_before_stop: Items to see before ``max_bad_fraction`` is enforced (a handful says little).
        min_image_side: Images whose shorter side is below this many pixels are bad input (replaced, never
            upscaled); None: an eighth of the resolution, at least 2 (a 1x1 image is never a training image).
        scan: Read every image's header at ``setup`` and print the summary; False skips it (the bad-input policy
            still holds for what training reads).
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
        num_classes: int | None = None,
        latent_cache: str | None = None,
        max_bad_fraction: float = 0.01,
        min_items_before_stop: int = 1000,
        min_image_side: int | None = None,
        scan: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self._declared_num_classes = num_classes
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if min_image_side is not None and min_image_side < 1:
            raise ValueError(f"min_image_side must be >= 1, got {min_image_side}")
        # An undeclared num_classes (None) is counted from the folders and linked into the model; recording the None
        # would clash with the model's count when Lightning merges both hyper-parameter sets for the logger.
        self.save_hyperparameters(ignore=[] if num_classes is not None else ["num_classes"])
        self.root, self._resolution, self.val_fraction = Path(root), resolution, val_fraction
        self.random_flip, self.scan = random_flip, scan
        self.min_image_side = min_image_side if min_image_side is not None else max(2, resolution // 8)
        self._counter_args = (max_bad_fraction, min_items_before_stop)
        self.bad_inputs = BadInputMonitor(
            BadInputCounter(max_bad_fraction, min_items_before_stop, name=f"{self._data_name} train (all workers)")
        )
        self._class_names: list[str] | None = None
        self._scanned_bad: set[str] = set()  # files the scan reported: counted when read, not warned about again
        self._listing: FolderListing | None = None
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        self.latent_cache = latent_cache
        self.cached_train_set: Dataset | None = None

    _data_name = "ImageFolder"  # in messages and counters

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
        """Class folder names (sorted, as torchvision's ImageFolder), indexed by class label.

        Lists the files too (reading none), so that an empty class folder is named while the config is built, before
        any model or Trainer; reading every image's header is left to ``setup``.
        """
        if self._class_names is None:
            self._listing = list_class_folders(self.train_dir)
            self._class_names = self._listing.classes
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

    def _counter(self, split: str) -> BadInputCounter:
        if split == "train":
            return BadInputCounter(*self._counter_args, name=f"{self._data_name} train")
        return BadInputCounter(1.0, name=f"{self._data_name} {split}")  # evaluation never stops on bad input

    def _list_and_scan(self, directory: Path, classes: list[str] | None, split: str) -> FolderListing:
        """List a split; scan it, print its summary (rank zero) and stop now if too much of it is bad."""
        listing = self._listing if split == "train" and self._listing else list_class_folders(directory, classes)
        if not self.scan:
            return listing
        from data.latent_cache import default_cache_root

        result = scan_images(listing, cache_root=default_cache_root())
        lines = result.summary(f"{self._data_name} {directory}", listing, self.resolution, self.min_image_side)
        if _rank_zero():
            print("\n".join(lines), flush=True)
        unreadable, small = list(result.unreadable), result.too_small(listing.samples, self.min_image_side)
        limit = BadInputCounter(*self._counter_args, name=f"{self._data_name} {directory} (scan)")
        try:  # the whole listing is known now: stop before training rather than at the limit's first batch
            limit.merge(len(listing.samples), {"unreadable": len(unreadable), "too_small": len(small)})
        except TooManyBadInputs as error:
            raise FolderError(str(error)) from None  # the CLI prints it as one line, before any step
        self._scanned_bad |= set(unreadable) | set(small)
        return listing

    def _build_datasets(self) -> None:
        train_dir = self.train_dir
        listing = self._list_and_scan(train_dir, None, "train")
        samples, classes = listing.samples, listing.classes
        val_samples = self._val_samples(classes)
        if val_samples is None:
            train_idx, val_idx = _holdout(len(samples), self.val_fraction, self.seed)
            samples, val_samples = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
        self._class_names = classes
        declared = self._declared_num_classes
        if declared is not None and declared != len(classes):
            raise ValueError(f"num_classes={declared} but {train_dir} has {len(classes)} class folders")
        flip_p = 0.5 if self.random_flip else 0.0
        side = self.min_image_side
        train_counter, val_counter = self._counter("train"), self._counter("val")
        for counter in (train_counter, val_counter):
            counter.reported |= self._scanned_bad  # in the summary already: counted when read, not warned again
        self.train_set = ImageFolderDataset(samples, classes, self.resolution, flip_p, "train", train_counter, side)
        self.val_set = ImageFolderDataset(val_samples, classes, self.resolution, 0.0, "val", val_counter, side)

    def _val_samples(self, classes: list[str]) -> list[tuple[str, int]] | None:
        """Samples of ``root/val`` with the train class indices, or None if there is no ``val/``."""
        val_dir = self.root / "val"
        if not val_dir.is_dir():
            return None
        val_classes = sorted(entry.name for entry in os.scandir(val_dir) if entry.is_dir())
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"{val_dir} has class folders absent from train/: {unknown[:10]}")
        listing = self._list_and_scan(val_dir, val_classes, "val")
        index = {name: classes.index(name) for name in val_classes}
        return [(path, index[val_classes[label]]) for path, label in listing.samples]

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


def _rank_zero() -> bool:
    """Whether this process prints (rank zero of a launched job; the environment is set before setup)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0
