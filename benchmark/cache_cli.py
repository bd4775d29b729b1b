"""``ldmbench cache-latents``: build the latent cache of a config's training split once, for every entry of a suite.

    ldmbench cache-latents --config leaderboards/shapes/dit.yaml [--output DIR] [--batch-size 512] [--device cuda]
    torchrun --nproc-per-node 8 -m benchmark cache-latents --config leaderboards/imagenet-256/dit.yaml   # 8 GPUs
    ldmbench cache-latents --config ... --rank 3 --world-size 16      # one part per job (e.g. a SLURM array) ...
    ldmbench cache-latents --config ... --world-size 16 --merge       # ... then merge the manifest once

Any other argument is a config override, as for ``fit``. The cache goes where ``fit`` with ``latent_cache: auto``
looks for it (``$LDMBENCH_CACHE`` or ``runs/cache``, in a folder named by what determines the cache) unless
``--output`` names a folder; a killed build resumes when run again. Under ``torchrun`` (or with ``--world-size``)
each rank encodes a disjoint part and rank 0 merges the manifest (`data.parallel_cache`). DataModules over tar
shards (`data.webdataset.WebDatasetDataModule`) are cached through their ``cache_dataset()``. Ends with one summary
line.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path

import torch


def cache_latents(argv: list[str]) -> dict:
    """Parse ``argv`` like ``fit`` (plus the options above), build the cache, print and return a summary.

    Args:
        argv: The command line after ``cache-latents``.

    Returns:
        ``{"directory", "items", "shards", "seconds", "items_per_s"}``.
    """
    from benchmark.cli import CLI_KWARGS, _DescribeCLI
    from data.latent_cache import build_cache, cache_key, default_cache_dir, read_manifest
    from data.parallel_cache import build_parallel, merge_parts, part_name

    parser = argparse.ArgumentParser(
        prog="ldmbench cache-latents",
        add_help=False,
        usage="ldmbench cache-latents --config CONFIG.yaml [--config ...] [options] [--data.*]",
        description="Encode a dataset's training split once with the config's autoencoder; every later run with "
        "`latent_cache: auto` trains on the stored latents. Parts (--rank/--world-size) can run on several machines.",
    )
    parser.add_argument("--output", default=None, help="cache folder (default: the folder `latent_cache: auto` uses)")
    parser.add_argument("--batch-size", type=int, default=512, help="items per autoencoder forward")
    parser.add_argument("--device", default=None, help="where the autoencoder runs (default: cuda if available)")
    parser.add_argument("--shard-size", type=int, default=4096, help="items per shard file")
    parser.add_argument("--rank", type=int, default=None, help="this part (default: torchrun's RANK, else 0)")
    parser.add_argument("--world-size", type=int, default=None, help="number of parts (default: torchrun's, else 1)")
    parser.add_argument("--merge", action="store_true", help="only merge the manifest of complete parts")
    ours, rest = parser.parse_known_args(argv)
    if any(a in ("-h", "--help") for a in rest):
        parser.print_help()
        print("\nthe config's options (as for `ldmbench fit`):\n")
    rank, world = _ranks(ours.rank, ours.world_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        cli = _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=rest, run=False)
    datamodule, autoencoder = cli.datamodule, cli.model.autoencoder
    if hasattr(datamodule, "cache_dataset"):
        dataset = datamodule.cache_dataset()  # tar shards as an indexable dataset
    else:
        if hasattr(datamodule, "_build_datasets") and getattr(datamodule, "train_set", None) is None:
            datamodule._build_datasets()  # ImageFolder scans its folders lazily
        dataset = getattr(datamodule, "train_set", None)
    if dataset is None or not hasattr(dataset, "cache_views"):
        raise SystemExit(f"{type(datamodule).__name__} has no cacheable training set (needs cache_key/cache_views)")
    key = cache_key(dataset, autoencoder)
    directory = Path(ours.output) if ours.output else default_cache_dir(key)
    device = ours.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    build = {
        "shard_size": ours.shard_size,
        "batch_size": ours.batch_size,
        "num_workers": getattr(datamodule, "num_workers", 0),
        "device": device,
    }
    start = time.perf_counter()
    if ours.merge:
        manifest = merge_parts(directory, world, key)
    elif world == 1 and rank == 0:
        manifest = build_cache(dataset, autoencoder, directory, key=key, **build)
    else:
        manifest = build_parallel(dataset, autoencoder, directory, rank, world, **build)
        if manifest is None:  # not rank 0, or parts still missing: report this rank's part
            manifest = read_manifest(directory / part_name(rank, world)) or {"num_items": 0, "shards": []}
            directory = directory / part_name(rank, world)
    seconds = time.perf_counter() - start
    items = manifest["num_items"]
    summary = {
        "directory": str(directory),
        "items": items,
        "shards": len(manifest["shards"]),
        "seconds": round(seconds, 2),
        "items_per_s": round(items / max(seconds, 1e-9), 1),
    }
    print(
        f"latent cache {directory}: {items} items, {summary['shards']} shards, {seconds:.1f} s, "
        f"{summary['items_per_s']} items/s"
    )
    return summary


def _ranks(rank: int | None, world: int | None) -> tuple[int, int]:
    """This process's part and the number of parts: explicit, else from torchrun (joining its process group)."""
    import torch.distributed as dist

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None and world is None and env_world > 1:
        if not dist.is_initialized():
            # Only a barrier is needed: gloo (CPU) with a long timeout, since parts of unequal size (tar shards)
            # finish at different times and NCCL's default timeout would abort the waiting ranks.
            dist.init_process_group("gloo", timeout=timedelta(hours=48))
        return dist.get_rank(), dist.get_world_size()
    world = world if world is not None else 1
    rank = rank if rank is not None else 0
    if not 0 <= rank < world:
        raise SystemExit(f"need 0 <= --rank < --world-size, got {rank} and {world}")
    return rank, world
