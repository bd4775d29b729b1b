"""Building a latent cache with many GPUs at once: each rank encodes a disjoint part, rank 0 merges the manifest.

ImageNet (1.28M images) or CC12M (about 10M pairs) take hours to encode on one GPU; split over ``W`` ranks they take
``1/W`` of that. The split is by items for an indexable dataset (ImageFolder: contiguous ranges) and by whole shards
for tar shards (`data.webdataset.TarIndexDataset.split_parts`, so that a rank opens only its own shards). Each part
is an ordinary latent cache built by `data.latent_cache.build_cache` in a sub-folder::

    <cache>/manifest.json                       merged: every part's shards in rank order, global item ranges
    <cache>/part-00000-of-00004/manifest.json   the part's own cache (resumable on its own)
    <cache>/part-00000-of-00004/shard-00000.safetensors
    ...

so it inherits the writer's guarantees: shards renamed into place, recorded in the part manifest with their sha256,
and a killed build resumes after the last verified shard, with no item lost or duplicated. When every part is
complete, rank 0 writes the merged manifest (by rename), whose key is the key of the whole dataset; the cache is
then read by `data.latent_cache.LatentCacheDataset` like one built on a single device (the ``index`` tensor stored in
a shard counts from the start of its part).

Ranks come from ``torch.distributed`` (``torchrun``) or are given explicitly (``--rank`` / ``--world-size`` of
``ldmbench cache-latents``, e.g. one SLURM array task per rank, then one ``--merge`` run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset

from data.latent_cache import MANIFEST, _atomic_write_json, _check_key, build_cache, cache_key, read_manifest

log = logging.getLogger(__name__)


def part_name(rank: int, world_size: int) -> str:
    """The sub-folder of rank ``rank``'s part."""
    return f"part-{rank:05d}-of-{world_size:05d}"


class _Range(Dataset):
    """Items ``[start, stop)`` of an indexable dataset, as a cacheable dataset of its own."""

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def cache_key(self) -> dict:
        return {**self.dataset.cache_key(), "part": [self.start, self.stop]}

    def cache_views(self, index: int) -> list[dict]:
        return self.dataset.cache_views(self.start + index)


def split_parts(dataset: Any, world_size: int) -> list[Any]:
    """One cacheable part per rank: the dataset's own split (whole shards) if it has one, else contiguous ranges."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if hasattr(dataset, "split_parts"):
        return dataset.split_parts(world_size)
    bounds = np.linspace(0, len(dataset), world_size + 1).round().astype(int)
    return [_Range(dataset, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def build_part(
    dataset: Any,
    autoencoder: Any,
    directory: str | Path,
    rank: int,
    world_size: int,
    **build_kwargs: Any,
) -> dict[str, Any]:
    """Build (or resume) rank ``rank``'s part of the cache of ``dataset`` in ``directory``.

    Args:
        dataset: The whole split (``cache_key`` / ``cache_views``, optionally ``split_parts``).
        autoencoder: The frozen autoencoder.
        directory: The cache folder (the part goes into a sub-folder).
        rank: This rank.
        world_size: Number of ranks (parts).
        **build_kwargs: Passed to `data.latent_cache.build_cache` (shard_size, batch_size, num_workers, device).

    Returns:
        The part's complete manifest.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    part = split_parts(dataset, world_size)[rank]
    target = Path(directory) / part_name(rank, world_size)
    return build_cache(part, autoencoder, target, **build_kwargs)


def merge_parts(directory: str | Path, world_size: int, key: dict[str, Any]) -> dict[str, Any]:
    """Write the merged manifest of a cache whose ``world_size`` parts are complete.

    Args:
        directory: The cache folder.
        world_size: Number of parts.
        key: The key of the whole dataset (`data.latent_cache.cache_key`).

    Raises:
        FileNotFoundError: If a part is missing or incomplete (naming it: run that rank again).
    """
    directory = Path(directory)
    existing = read_manifest(directory)
    if existing is not None:
        _check_key(directory, existing["key"], key)
        if existing.get("complete"):
            return existing
    shards, start, parts = [], 0, []
    for rank in range(world_size):
        name = part_name(rank, world_size)
        manifest = read_manifest(directory / name)
        if manifest is None or not manifest["complete"]:
            raise FileNotFoundError(f"latent cache part {directory / name} is not complete; run rank {rank} again")
        for shard in manifest["shards"]:
            shards.append({**shard, "file": f"{name}/{shard['file']}", "start": start + shard["start"]})
        parts.append({"folder": name, "start": start, "count": manifest["num_items"]})
        start += manifest["num_items"]
    merged = {
        "key": key,
        "num_items": start,
        "shard_size": max((s["count"] for s in shards), default=0),
        "shards": shards,
        "parts": parts,
        "complete": True,
    }
    _atomic_write_json(directory / MANIFEST, merged)
    return merged


def build_parallel(
    dataset: Any,
    autoencoder: Any,
    directory: str | Path,
    rank: int | None = None,
    world_size: int | None = None,
    barrier: Callable[[], None] | None = None,
    merge: bool = True,
    **build_kwargs: Any,
) -> dict[str, Any] | None:
    """Build this rank's part, wait for every rank, and let rank 0 merge the manifest.

    Args:
        dataset: The whole split.
        autoencoder: The frozen autoencoder.
        directory: The cache folder.
        rank: This rank (default: ``torch.distributed``'s, else 0).
        world_size: Number of ranks (default: ``torch.distributed``'s, else 1).
        barrier: Waits for every rank (default: ``torch.distributed.barrier`` when initialised). Without one, the
            rank that completes the last missing part merges; or merge later with `merge_parts`.
        merge: Merge when every part is complete (on rank 0 when there is a barrier).
        **build_kwargs: Passed to `data.latent_cache.build_cache`.

    Returns:
        The merged manifest where this call merged (None elsewhere, or while parts are still missing).
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
    if barrier is None and distributed:
        barrier = dist.barrier
    key = cache_key(dataset, autoencoder)
    directory = Path(directory)
    merged = read_manifest(directory)
    if merged is not None and merged.get("complete"):
        _check_key(directory, merged["key"], key)
        return merged if rank == 0 else None
    start = time.perf_counter()
    part = build_part(dataset, autoencoder, directory, rank, world_size, **build_kwargs)
    log.info("rank %d: part of %d items done in %.1f s", rank, part["num_items"], time.perf_counter() - start)
    if barrier is not None:
        barrier()
    # With a barrier every part is done now and rank 0 merges; without one (independent jobs), whichever rank finds
    # every part complete merges (concurrent merges write the same manifest, each by an atomic rename).
    if not merge or (barrier is not None and rank != 0):
        return None
    try:
        return merge_parts(directory, world_size, key)
    except FileNotFoundError as error:
        if barrier is not None:
            raise
        log.info("%s; merge when every rank is done (ldmbench cache-latents --merge)", error)
        return None
