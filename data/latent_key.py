"""The latent cache's key: what determines a cache's content, and where a cache with that content lives.

The key (dataset class and options, split, resolution, autoencoder id, dtype and a hash of its weights, crops per
item, flip moments, and the code: a hash of the dataset's and the autoencoder's source files and of the cache's
writer, and the versions of the libraries that draw and encode, `cache_code`) is compared with the config; a cache
built for something else is refused with a message naming the differing keys. The default location is named by a
hash of the key, so different configs never meet. The overview is in `data.latent_cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from data.sources import library_versions, source_hash

FORMAT_VERSION = 1
ENV_ROOT = "LDMBENCH_CACHE"
DEFAULT_ROOT = "runs/cache"
# The module that writes a cache's content (it imports this one): its code is part of the key.
_WRITER = "data.latent_store"


class CacheMismatchError(ValueError):
    """A latent cache exists at the path but was built for a different config."""


# ------------------------------------------------------------------------------------------------ keys and paths
def default_cache_root() -> Path:
    """``$LDMBENCH_CACHE`` if set, else ``runs/cache`` under the working directory."""
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def weights_sha256(autoencoder: Any) -> str:
    """sha256 of the autoencoder's weights (names, dtypes, shapes and bytes of its state dict, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.vae.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(dataset: Any, autoencoder: Any) -> dict[str, Any]:
    """Everything that determines a cache's content: the dataset's own key plus the autoencoder's identity.

    Args:
        dataset: A dataset with ``cache_key() -> dict`` (``class``, ``split``, ``resolution``, options,
            ``crops_per_item``, ``flip_moments``) and ``cache_views(index) -> list[item]``.
        autoencoder: The frozen `data.autoencoder.Autoencoder` the model trains with.
    """
    key = {"format": FORMAT_VERSION, **dataset.cache_key()}
    weights = weights_sha256(autoencoder)
    key["autoencoder"] = {"id": autoencoder.name, "dtype": str(autoencoder.dtype), "weights": weights}
    key["code"] = cache_code(dataset, autoencoder)
    return key


# Libraries that draw, transform or encode the cached items (Pillow rasterises Shapes, diffusers' VAE encodes).
_CACHE_LIBRARIES = ("torch", "torchvision", "diffusers", "numpy", "Pillow")


def cache_code(dataset: Any, autoencoder: Any) -> dict[str, Any]:
    """The code a cache's content comes from: the dataset's and the autoencoder's modules (with the project modules
    they import, `data.sources.source_hash`), the cache's writer and key, and the versions of the libraries that
    draw and encode.

    Without it a change to, e.g., the Shapes renderer would read back latents of the old drawings.
    """
    modules = (type(dataset).__module__, type(autoencoder).__module__, _WRITER)
    return {"source": source_hash(modules), "versions": library_versions(_CACHE_LIBRARIES)}


def key_digest(key: Mapping[str, Any]) -> str:
    """A short stable hash of a key (canonical JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir(key: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """``<root>/<dataset>-<split>-<hash of the key>``; root defaults to `default_cache_root`."""
    name = str(key["class"]).rsplit(".", 1)[-1].lower()
    return Path(root if root is not None else default_cache_root()) / f"{name}-{key['split']}-{key_digest(key)}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def key_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Dotted names of the keys whose values differ (or exist on one side only), sorted."""
    a, b = _flatten(stored), _flatten(wanted)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def _check_key(directory: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    diff = key_differences(stored, wanted)
    if diff:
        flat_s, flat_w = _flatten(stored), _flatten(wanted)
        details = "; ".join(
            f"{k}: cache has {flat_s.get(k, '<missing>')!r}, config wants {flat_w.get(k, '<missing>')!r}" for k in diff
        )
        raise CacheMismatchError(
            f"latent cache {directory} was built for a different config or code ({details}); "
            "point latent_cache at another folder, use 'auto', or delete this one"
        )
