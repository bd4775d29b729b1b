"""A latent cache: every item of a training split encoded once by the frozen autoencoder, shared by a suite.

The frozen autoencoder's encode is a large share of a small model's training step, and every entry of a suite
encodes the same images again. The cache stores, per item, the autoencoder's posterior moments (mean and std of
``q(z|x)``, in the autoencoder's raw latent space) with the item's class label, caption and control metadata.
Training then samples ``z = mean + std * noise`` inside the training step's seeded RNG (`sample_latent`, called
by ``DiffusionModule.encode``), which draws exactly the noise the uncached encode would draw, so a resumed run
still continues bit for bit.

Three modules: `data.latent_key` (what determines the content, and the folder it lives in), `data.latent_store`
(shards, manifest, writer, reader: the layout of a cache directory is described there) and this one, the DataModule
glue (how much a training run needs, building it on rank 0). Every name of the first two is re-exported here, so
``data.latent_cache.<name>`` keeps working.

Items are stored in one of two orders. ``ldmbench cache-latents`` stores every item in index order. A training run
(`resolve_train_cache`) stores them in the order its shuffled stream reads them (epoch 0's permutation,
`data.sampling.epoch_permutation`, recorded as ``order_seed``) and only as far as the run will read. The runs of a
suite use the same data seed, so they read the same items in the same order: the first entry encodes what it reads,
once, at the builder's batch size; every later entry reads it back; a run that reads further extends the cache.
A short run therefore costs one encode of what it reads, never a build of the whole split.

``V`` is the number of stored views of an item: 1 for Shapes (its crop and flip are a pure function of the item
index, so the cache is exact), 2 for ImageFolder (the image and its horizontal flip, so the flip stays a random
augmentation and its control metadata stays true). Random crops that a cache would freeze are not cached: no
dataset here draws them per epoch (``crops_per_item`` in the key records the one stored crop).

Correctness rules:

- The key (dataset class and options, split, resolution, autoencoder id, dtype and a hash of its weights, crops per
  item, flip moments, and the code: a hash of the dataset's and the autoencoder's source files and the versions of
  the libraries that draw and encode, `cache_code`) is compared with the config; a cache built for something else
  is refused with a message naming the differing keys. The default location is named by a hash of the key, so
  different configs never meet.
- Shards are written in item order, each to a temporary file renamed into place, then recorded in the manifest
  (also written by rename). A killed build resumes: shards listed in the manifest are verified by sha256 and kept,
  anything after the last recorded shard is rebuilt, so no item is lost or duplicated.
- Builders hold an exclusive ``fcntl`` lock on ``<cache>.lock``: a second builder waits, then finds the cache
  complete. Under DDP, rank 0 builds while the other ranks wait at a barrier, then all ranks read it.

Where it lives: ``latent_cache="auto"`` (the shipped Shapes configs) uses ``$LDMBENCH_CACHE`` or else ``runs/cache``
(the run root, relative to the working directory), in a sub-folder named by the key. A path uses that folder;
``None`` or ``"none"`` disables the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from data.latent_key import (
    DEFAULT_ROOT,
    ENV_ROOT,
    FORMAT_VERSION,
    CacheMismatchError,
    cache_code,
    cache_key,
    default_cache_dir,
    default_cache_root,
    key_differences,
    key_digest,
    weights_sha256,
)
from data.latent_key import _check_key as _check_key
from data.latent_store import (
    CONTROL_LAYOUT,
    MANIFEST,
    VERIFY_HASH_BELOW,
    CacheCorruptError,
    LatentCacheDataset,
    build_cache,
    build_lock,
    cache_order,
    covered_items,
    read_manifest,
    sample_latent,
)

# Helpers of the store that other modules of the cache family (text_cache, parallel_cache) and tests import from here.
from data.latent_store import _atomic_write_json as _atomic_write_json
from data.latent_store import _sha256_file as _sha256_file
from data.latent_store import _verified_prefix as _verified_prefix
from data.latent_store import _write_shards as _write_shards

__all__ = [
    "CONTROL_LAYOUT",
    "DEFAULT_ROOT",
    "ENV_ROOT",
    "FORMAT_VERSION",
    "MANIFEST",
    "VERIFY_HASH_BELOW",
    "CacheCorruptError",
    "CacheMismatchError",
    "LatentCacheDataset",
    "build_cache",
    "build_lock",
    "cache_code",
    "cache_key",
    "cache_order",
    "covered_items",
    "default_cache_dir",
    "default_cache_root",
    "items_to_cover",
    "key_differences",
    "key_digest",
    "read_manifest",
    "resolve_train_cache",
    "sample_latent",
    "weights_sha256",
]

log = logging.getLogger(__name__)

# Batches a run may read beyond its planned steps (loader prefetch, the step that trips a budget); per worker,
# Lightning's default prefetch factor of 2. A run's cache covers its planned items plus this.
_MARGIN_BATCHES, _MARGIN_BATCHES_PER_WORKER = 4, 2


# ------------------------------------------------------------------------------------------------ DataModule glue
def _planned_items(trainer: Any, batch_size: int) -> float:
    """Training items this run will read in all (inf when unbounded): how far its cache must reach."""
    if getattr(trainer, "fast_dev_run", False):
        return 0
    global_batch = batch_size * trainer.accumulate_grad_batches * trainer.world_size
    steps = trainer.max_steps
    if steps is None or steps < 0:
        steps = _budget_steps(trainer, global_batch)
    return float("inf") if steps is None else steps * global_batch


def items_to_cover(trainer: Any, batch_size: int, num_workers: int, num_items: int) -> int | None:
    """How many items of the stream order a run's cache must hold: its planned reads plus what the loader may
    prefetch beyond them (None: every item, for a run with no planned end)."""
    planned = _planned_items(trainer, batch_size)
    if planned == float("inf"):
        return None
    global_batch = batch_size * trainer.accumulate_grad_batches * trainer.world_size
    margin = global_batch * (_MARGIN_BATCHES + _MARGIN_BATCHES_PER_WORKER * num_workers)
    return min(num_items, int(planned) + margin)


def _budget_steps(trainer: Any, global_batch: int) -> int | None:
    """Steps a compute / images budget callback allows (a leaderboard run has no max_steps), or None.

    A budget callback is any callback with ``planned_steps(global_batch, pl_module)`` (the engine's
    ``ComputeBudget``); the data floor asks it by that method rather than importing the engine."""
    module = getattr(trainer, "lightning_module", None)
    for callback in getattr(trainer, "callbacks", []):
        if not hasattr(callback, "planned_steps"):
            continue
        steps = callback.planned_steps(global_batch, module)
        if steps is not None:
            return steps
    return None


def resolve_train_cache(datamodule: Any, dataset: Any, option: str | None, flip_p: float = 0.0) -> Dataset | None:
    """The cached training set a DataModule should use, building it if the option says so; None to use images.

    Called from a DataModule's ``setup("fit")`` with a trainer attached (the model's autoencoder is the one the
    cache must match). Under DDP, rank 0 builds while the others wait at a barrier; the file lock additionally keeps
    separate jobs from writing the same cache at once.

    Args:
        datamodule: The DataModule (its ``trainer``, ``batch_size``, ``num_workers`` and ``seed`` are read).
        dataset: Its training dataset.
        option: ``None``/``"none"``: no cache; ``"auto"``: the default location; else a folder path.
        flip_p: Flip probability for datasets that store flip moments.
    """
    if option is None or str(option).lower() == "none":
        return None
    trainer = datamodule.trainer
    module = getattr(trainer, "lightning_module", None) if trainer is not None else None
    autoencoder = getattr(module, "autoencoder", None)
    if autoencoder is None:
        log.warning("latent_cache=%r ignored: no model with an autoencoder is attached", option)
        return None
    key = cache_key(dataset, autoencoder)
    if trainer.world_size > 1:
        # Every rank uses rank 0's key: a source file saved between the ranks' starts would otherwise give them two
        # keys, two folders, and a rank waiting at the barrier below that another rank skips.
        key = trainer.strategy.broadcast(key, src=0)
    directory = default_cache_dir(key) if str(option).lower() == "auto" else Path(option)
    manifest = read_manifest(directory)
    if manifest is not None:
        _check_key(directory, manifest["key"], key)
    # The cache holds what this run reads, in the order it reads it: the items of the stream's first epoch under the
    # DataModule's seed, as far as the run's plan reaches (every item for an unbounded run or one past an epoch).
    upto = items_to_cover(trainer, datamodule.batch_size, datamodule.num_workers, len(dataset))
    order_seed = datamodule.seed
    if not _covers(manifest, order_seed, upto):
        if trainer.global_rank == 0:
            _info(trainer, _build_message(directory, manifest, order_seed, upto, len(dataset)))
            start = time.perf_counter()
            build_cache(
                dataset,
                autoencoder,
                directory,
                key=key,
                num_workers=datamodule.num_workers,
                device=trainer.strategy.root_device,
                order_seed=order_seed,
                upto=upto,
            )
            _info(trainer, f"latent cache built in {time.perf_counter() - start:.1f} s")
        if trainer.world_size > 1:
            trainer.strategy.barrier("latent_cache")
    _info(trainer, f"training from latent cache {directory}")
    return LatentCacheDataset(directory, key=key, flip_p=flip_p, seed=datamodule.seed, require_complete=False)


def _covers(manifest: Mapping[str, Any] | None, order_seed: int, upto: int | None) -> bool:
    if manifest is None:
        return False
    if manifest["complete"]:
        return True
    return upto is not None and manifest.get("order_seed") == order_seed and covered_items(manifest) >= upto


def _build_message(directory: Path, manifest: Mapping[str, Any] | None, seed: int, upto: int | None, total: int) -> str:
    want = total if upto is None or (manifest is not None and manifest.get("order_seed") != seed) else upto
    what = f"{want:,} of {total:,} training items" + (
        "" if want == total else f", the ones this run reads, in its order (seed {seed})"
    )
    if manifest is None:
        return f"building latent cache {directory}: {what}"
    return f"extending latent cache {directory} from {covered_items(manifest):,} items to {what}"


def _info(trainer: Any, message: str) -> None:
    if trainer is None or trainer.global_rank == 0:
        print(message, flush=True)
        log.info(message)
