"""The latent cache's store: shards of posterior moments, their manifest, the writer and the reader.

Layout of a cache directory::

    manifest.json              what determines the content (the key), item order, shard list with ranges and sha256
    shard-00000.safetensors    mean/std (N, V, C, h, w) float32, class_label (N,), control (N, V, 7), index (N,);
    shard-00001.safetensors    captions as JSON in the safetensors metadata
    ...

- Shards are written in item order, each to a temporary file renamed into place, then recorded in the manifest
  (also written by rename). A killed build resumes: shards listed in the manifest are verified by sha256 and kept,
  anything after the last recorded shard is rebuilt, so no item is lost or duplicated.
- Builders hold an exclusive ``fcntl`` lock on ``<cache>.lock``: a second builder waits, then finds the cache
  complete.
- The reader memory-maps shards and refuses, by name, one that is missing, truncated or altered.
The overview (item orders, views, where caches live) is in `data.latent_cache`; the key in `data.latent_key`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.latent_key import _check_key, cache_key

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# The control dict of one item as a flat float32 row: key and width (0 = scalar), in `make_control`'s order.
CONTROL_LAYOUT: tuple[tuple[str, int], ...] = (("orig_size", 2), ("crop_coords", 2), ("crop_size", 2), ("flip", 0))


# ------------------------------------------------------------------------------------------------ file helpers
def _atomic_write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of a cache directory, or None if there is none."""
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``<directory>.lock``: a second builder blocks here until the first is done."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / (directory.name + ".lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building latent cache %s; waiting for it", directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ the writer
def _flat_control(control: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([control[name].reshape(-1).float() for name, _ in CONTROL_LAYOUT])


class _Views(Dataset):
    """Item at cache position ``start + i`` as its stacked views, for the build loader (rendering/decoding runs in
    loader workers). ``order`` maps cache positions to dataset indices (None: the identity)."""

    def __init__(self, dataset: Any, start: int, stop: int, order: np.ndarray | None = None) -> None:
        self.dataset, self.start, self.stop, self.order = dataset, start, stop, order

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        position = self.start + i
        views = self.dataset.cache_views(position if self.order is None else int(self.order[position]))
        return {
            "image": torch.stack([v["image"] for v in views]),
            "class_label": torch.as_tensor(views[0]["class_label"], dtype=torch.int64),
            "control": torch.stack([_flat_control(v["control"]) for v in views]),
            "caption": [v.get("caption", "") for v in views],
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "class_label": torch.stack([it["class_label"] for it in items]),
        "control": torch.stack([it["control"] for it in items]),
        "caption": [it["caption"] for it in items],
    }


@torch.no_grad()
def _moments(autoencoder: Any, images: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    vae = autoencoder.vae
    if vae.device != device:
        vae.to(device)
    posterior = vae.encode(images.to(device, autoencoder.dtype)).latent_dist
    return posterior.mean.float().cpu(), posterior.std.float().cpu()


def build_cache(
    dataset: Any,
    autoencoder: Any,
    directory: str | Path,
    key: Mapping[str, Any] | None = None,
    shard_size: int = 4096,
    batch_size: int = 512,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    order_seed: int | None = None,
    upto: int | None = None,
) -> dict[str, Any]:
    """Encode items of ``dataset`` once and store their posterior moments (resumable, locked, atomic).

    Args:
        dataset: The split to cache (``cache_key`` / ``cache_views`` as in `cache_key`).
        autoencoder: The frozen autoencoder.
        directory: The cache folder (created).
        key: The precomputed `cache_key` (computed if None).
        shard_size: Items per shard file.
        batch_size: Items per autoencoder forward.
        num_workers: Loader workers that render or decode items while the autoencoder runs.
        device: Where the autoencoder runs.
        progress: Show a progress bar.
        order_seed: Store items in the order the training stream reads them under this seed (epoch 0's
            `data.sampling.epoch_permutation`); None stores them in index order. A cache that exists keeps its order.
        upto: Cover only the first ``upto`` items of that order (what a run reads); None covers every item. A cache
            that already covers them is returned as it is, one that covers fewer is extended. A cache stored in
            another order than ``order_seed`` asks for is completed instead, since its prefix is not the run's.

    Returns:
        The manifest (``complete`` once every item is stored).

    Raises:
        CacheMismatchError: If the folder holds a cache built for another key.
    """
    directory = Path(directory)
    key = dict(key) if key is not None else cache_key(dataset, autoencoder)
    with build_lock(directory):
        manifest = read_manifest(directory)
        if manifest is not None:
            _check_key(directory, manifest["key"], key)
            target = _target(manifest, len(dataset), order_seed, upto)
            if manifest["complete"] or covered_items(manifest) >= target:
                return manifest
            manifest["shards"] = _verified_prefix(directory, manifest["shards"])
        else:
            directory.mkdir(parents=True, exist_ok=True)
            manifest = {
                "key": key,
                "num_items": len(dataset),
                "order_seed": order_seed,
                "shard_size": shard_size,
                "shards": [],
                "complete": False,
            }
            target = _target(manifest, len(dataset), order_seed, upto)
        _atomic_write_json(directory / MANIFEST, manifest)
        _write_shards(
            dataset,
            autoencoder,
            directory,
            manifest,
            target,
            batch_size,
            num_workers,
            torch.device(device),
            progress,
        )
        manifest["complete"] = covered_items(manifest) == manifest["num_items"]
        _atomic_write_json(directory / MANIFEST, manifest)
        return manifest


def covered_items(manifest: Mapping[str, Any]) -> int:
    """How many items (from the start of the cache's order) the recorded shards hold."""
    return sum(int(s["count"]) for s in manifest["shards"])


def cache_order(manifest: Mapping[str, Any]) -> np.ndarray | None:
    """Dataset index of each cache position (None: index order, position = index)."""
    seed = manifest.get("order_seed")
    if seed is None:
        return None
    from data.sampling import epoch_permutation

    return epoch_permutation(int(seed), 0, int(manifest["num_items"]))


def _target(manifest: Mapping[str, Any], num_items: int, order_seed: int | None, upto: int | None) -> int:
    if upto is None or manifest.get("order_seed") != order_seed:
        return num_items
    return max(0, min(int(upto), num_items))


def _verified_prefix(directory: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded shards up to the first one that is missing or corrupt (those after it are rebuilt)."""
    kept: list[dict[str, Any]] = []
    for shard in shards:
        path = directory / shard["file"]
        if not path.is_file() or _sha256_file(path) != shard["sha256"]:
            log.warning("latent cache shard %s is missing or corrupt; rebuilding from item %d", path, shard["start"])
            break
        kept.append(shard)
    return kept


def _write_shards(
    dataset: Any,
    autoencoder: Any,
    directory: Path,
    manifest: dict[str, Any],
    target: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    done, shard_size, order = covered_items(manifest), manifest["shard_size"], cache_order(manifest)
    desc = f"caching latents -> {directory.name}"
    bar = tqdm(total=target, initial=done, unit="item", desc=desc, disable=not progress)
    try:
        for start in range(done, target, shard_size):
            stop = min(start + shard_size, target)
            loader = DataLoader(
                _Views(dataset, start, stop, order),
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=_collate,
            )
            parts: dict[str, list[Tensor]] = {"mean": [], "std": [], "class_label": [], "control": []}
            captions: list[list[str]] = []
            for batch in loader:
                n, v = batch["image"].shape[:2]
                mean, std = _moments(autoencoder, batch["image"].flatten(0, 1), device)
                parts["mean"].append(mean.unflatten(0, (n, v)))
                parts["std"].append(std.unflatten(0, (n, v)))
                parts["class_label"].append(batch["class_label"])
                parts["control"].append(batch["control"])
                captions.extend(batch["caption"])
                bar.update(n)
            tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
            positions = torch.arange(start, stop, dtype=torch.int64)
            tensors["index"] = positions if order is None else torch.from_numpy(order[start:stop].astype(np.int64))
            name = f"shard-{len(manifest['shards']):05d}.safetensors"
            tmp = directory / f".{name}.tmp{os.getpid()}"
            save_file(tensors, str(tmp), metadata={"captions": json.dumps(captions)})
            os.chmod(tmp, 0o644)  # shared by every entry (and user) of a suite
            os.replace(tmp, directory / name)  # a killed build never leaves a half-written shard under this name
            manifest["shards"].append(
                {"file": name, "start": start, "count": stop - start, "sha256": _sha256_file(directory / name)}
            )
            _atomic_write_json(directory / MANIFEST, manifest)
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------ the reader
def _safetensors_layout(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return 8 + length, header


_NUMPY_DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
VERIFY_HASH_BELOW = 2**31  # bytes: a smaller shard is hashed when first opened (a larger one costs a full read)


def _checked_layout(path: Path, shard: Mapping[str, Any], directory: Path) -> tuple[int, dict[str, Any]]:
    """A shard's safetensors layout, refusing a shard that is missing, truncated or altered, by name."""
    why = None
    try:
        offset, header = _safetensors_layout(path)
        end = max((info["data_offsets"][1] for n, info in header.items() if n != "__metadata__"), default=0)
        size = path.stat().st_size
        if size != offset + end:
            why = f"{size} bytes where its header describes {offset + end}"
        elif size < VERIFY_HASH_BELOW and "sha256" in shard and _sha256_file(path) != shard["sha256"]:
            why = "its sha256 differs from the manifest's"
    except (OSError, ValueError, KeyError, struct.error) as error:
        why = f"unreadable ({type(error).__name__}: {error})"
    if why is not None:
        raise CacheCorruptError(
            f"latent cache shard {path} is corrupt: {why}; delete {directory} and rerun to rebuild the cache"
        )
    return offset, header


class CacheCorruptError(ValueError):
    """A latent-cache shard is missing, truncated or altered since it was written."""


class LatentCacheDataset(Dataset):
    """Items of a latent cache: posterior moments, class label, caption and control metadata.

    Shards are memory-mapped (opened lazily in each process), so a cache larger than memory reads only what a batch
    needs. Items with two stored views (an image and its flip) pick one per draw: item ``index`` at global stream
    position ``p`` (passed by the training sampler as ``(index, p)``) is flipped when a generator seeded by
    ``(seed, p)`` says so, which is random per epoch and identical in a resumed run.

    Args:
        directory: The cache folder.
        key: If given, the cache must have been built for exactly this key.
        flip_p: Flip probability for caches with flip moments (0 always takes the unflipped view).
        seed: Seed of the flip draws.
        require_complete: Refuse a cache that holds only the first items of its order (a training run's reads);
            reading an item it lacks raises a KeyError that says so.
    """

    wants_stream_position = True

    def __init__(
        self,
        directory: str | Path,
        key: Mapping[str, Any] | None = None,
        flip_p: float = 0.5,
        seed: int = 0,
        require_complete: bool = True,
    ) -> None:
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None or (require_complete and not manifest["complete"]):
            raise FileNotFoundError(f"no complete latent cache in {self.directory}; build it: ldmbench cache-latents")
        if key is not None:
            _check_key(self.directory, manifest["key"], key)
        self.manifest, self.flip_p, self.seed = manifest, flip_p, seed
        self.starts = np.array([s["start"] for s in manifest["shards"]], dtype=np.int64)
        self.covered = covered_items(manifest)
        order = cache_order(manifest)
        self._position_of: np.ndarray | None = None  # dataset index -> cache position, for stream-ordered caches
        if order is not None:
            self._position_of = np.empty_like(order)
            self._position_of[order] = np.arange(len(order))
        self._arrays: list[dict[str, np.ndarray]] | None = None
        self._captions: list[list[list[str]]] | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def num_views(self) -> int:
        """Stored views per item (2 when the flip's moments are stored)."""
        return 2 if self.manifest["key"].get("flip_moments") else 1

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._arrays is None:
            arrays, captions = [], []
            for shard in self.manifest["shards"]:
                path = self.directory / shard["file"]
                offset, header = _checked_layout(path, shard, self.directory)
                meta = header.pop("__metadata__", {})
                arrays.append(
                    {
                        name: np.memmap(
                            path,
                            dtype=_NUMPY_DTYPES[info["dtype"]],
                            mode="r",
                            offset=offset + info["data_offsets"][0],
                            shape=tuple(info["shape"]),
                        )
                        for name, info in header.items()
                    }
                )
                captions.append(json.loads(meta.get("captions", "[]")))
            self._arrays, self._captions = arrays, captions
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None, "_captions": None}  # workers map the files themselves

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, position = item if isinstance(item, tuple) else (item, None)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a latent cache of {len(self)} items")
        slot = index if self._position_of is None else int(self._position_of[index])  # its place in the cache
        if slot >= self.covered:
            raise KeyError(
                f"item {index} is not in latent cache {self.directory}: it holds the first {self.covered} of "
                f"{len(self)} items in the order the training stream reads them, and this run read past them. A "
                "rerun extends it to what the run plans (max_steps or the budget); `ldmbench cache-latents` caches all"
            )
        arrays = self._open()
        s = int(np.searchsorted(self.starts, slot, side="right")) - 1
        shard, row = arrays[s], slot - int(self.starts[s])
        view = 0
        if self.num_views == 2 and self.flip_p > 0:
            draw = np.random.default_rng([self.seed, 0 if position is None else position + 1, index]).random()
            view = int(draw < self.flip_p)
        control = torch.from_numpy(np.array(shard["control"][row, view]))
        out: dict[str, Any] = {
            "latent_mean": torch.from_numpy(np.array(shard["mean"][row, view])),
            "latent_std": torch.from_numpy(np.array(shard["std"][row, view])),
            "class_label": torch.tensor(int(shard["class_label"][row]), dtype=torch.int64),
            "control": {},
        }
        at = 0
        for name, width in CONTROL_LAYOUT:
            out["control"][name] = control[at] if width == 0 else control[at : at + width]
            at += max(width, 1)
        assert self._captions is not None
        out["caption"] = self._captions[s][row][view]
        return out


def sample_latent(autoencoder: Any, mean: Tensor, std: Tensor) -> Tensor:
    """A normalised latent from stored posterior moments, as ``autoencoder.encode`` would return it.

    ``mean + std * randn_like(mean)`` draws the same noise from the same RNG state as the diffusers posterior
    sample of the uncached path; with ``sample_posterior=False`` the mean is used.
    """
    z = mean + std * torch.randn_like(mean) if autoencoder.sample_posterior else mean
    return (z - autoencoder.shift_factor) * autoencoder.scaling_factor
