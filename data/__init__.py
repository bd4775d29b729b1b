"""Datasets and DataModules: embedded Shapes, ImageFolder (ImageNet), control-metadata transforms, resumable sampling.

Names are imported lazily (PEP 562) so ``import data`` stays cheap: Lightning, torchvision and PIL load only when a
name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONTROL_NAMES": "data.transforms",
    "CenterCropFlip": "data.transforms",
    "CropBox": "data.transforms",
    "RandomResizedCropFlip": "data.transforms",
    "RecordedFlip": "data.transforms",
    "center_crop_arr": "data.transforms",
    "center_crop_geometry": "data.transforms",
    "control_to_tensor": "data.transforms",
    "make_control": "data.transforms",
    "sample_resized_crop": "data.transforms",
    "ResumableDataModule": "data.sampling",
    "ResumableSampler": "data.sampling",
    "Shapes": "data.shapes",
    "ShapesDataModule": "data.shapes",
    "CorruptImageError": "data.imagefolder",
    "ImageFolderDataModule": "data.imagefolder",
    "ImageFolderDataset": "data.imagefolder",
    "LatentCacheDataset": "data.latent_cache",
    "build_cache": "data.latent_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
