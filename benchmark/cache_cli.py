"""``ldmbench cache-latents``: build the latent cache of a config's training split once, for every entry of a suite.

    ldmbench cache-latents --config leaderboards/shapes/dit.yaml [--output DIR] [--batch-size 512] [--device cuda]

Any other argument is a config override, as for ``fit``. The cache goes where ``fit`` with ``latent_cache: auto``
looks for it (``$LDMBENCH_CACHE`` or ``runs/cache``, in a folder named by what determines the cache) unless
``--output`` names a folder; a killed build resumes when run again. Ends with one summary line.
"""

from __future__ import annotations

import argparse
import time
import warnings
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
    from data.latent_cache import build_cache, cache_key, default_cache_dir

    parser = argparse.ArgumentParser(prog="ldmbench cache-latents", add_help=False)
    parser.add_argument("--output", default=None, help="cache folder (default: the folder `latent_cache: auto` uses)")
    parser.add_argument("--batch-size", type=int, default=512, help="items per autoencoder forward")
    parser.add_argument("--device", default=None, help="where the autoencoder runs (default: cuda if available)")
    parser.add_argument("--shard-size", type=int, default=4096, help="items per shard file")
    ours, rest = parser.parse_known_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        cli = _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=rest, run=False)
    datamodule, autoencoder = cli.datamodule, cli.model.autoencoder
    if hasattr(datamodule, "_build_datasets") and getattr(datamodule, "train_set", None) is None:
        datamodule._build_datasets()  # ImageFolder scans its folders lazily
    dataset = getattr(datamodule, "train_set", None)
    if dataset is None or not hasattr(dataset, "cache_views"):
        raise SystemExit(f"{type(datamodule).__name__} has no cacheable training set (needs cache_key/cache_views)")
    key = cache_key(dataset, autoencoder)
    directory = Path(ours.output) if ours.output else default_cache_dir(key)
    device = ours.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    manifest = build_cache(
        dataset,
        autoencoder,
        directory,
        key=key,
        shard_size=ours.shard_size,
        batch_size=ours.batch_size,
        num_workers=getattr(datamodule, "num_workers", 0),
        device=device,
    )
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
