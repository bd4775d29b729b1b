"""Training images/s of one Shapes entry from rendered images vs from the latent cache, side by side in one process.

The same model, optimizer and EMA train in alternating blocks: ``--block`` steps whose batches come from the images
(the autoencoder encodes them in the step), then ``--block`` steps whose batches come from the latent cache (the
step samples the stored posterior), for ``--rounds`` rounds. Alternating blocks put both arms under the same machine
load, so the ratio holds even where the absolute rates do not. Each arm has its own loader with the config's
``num_workers`` (as in training: rendering or reading overlaps the step). Builds the cache first if it is missing,
and reports the build's wall time and items/s.

Usage (from the repository root)::

    python scripts/bench_cache.py --config leaderboards/shapes/dit.yaml --rounds 5 --block 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.leaderboard.runner import instantiate  # noqa: E402
from data import latent_cache as lc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="leaderboards/shapes/dit.yaml")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    p.add_argument("--block", type=int, default=10, help="optimizer steps per arm per round")
    p.add_argument("--cache", default=None, help="cache folder (default: the config's 'auto' location)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = yaml.safe_load(Path(args.config).read_text())
    config["data"]["init_args"].update(latent_cache=None)
    config.setdefault("trainer", {}).update(logger=False, enable_checkpointing=False, callbacks=[])
    cli = instantiate(config)
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    dataset = datamodule.train_set
    key = lc.cache_key(dataset, module.autoencoder)
    directory = Path(args.cache) if args.cache else lc.default_cache_dir(key)
    manifest = lc.read_manifest(directory)
    build = None
    if manifest is None or not manifest["complete"]:
        start = time.perf_counter()
        cpu_start = time.process_time()
        lc.build_cache(
            dataset,
            module.autoencoder,
            directory,
            key=key,
            num_workers=datamodule.num_workers,
            device=torch.device("cpu"),
        )
        wall = time.perf_counter() - start
        build = {"items": len(dataset), "wall_s": wall, "cpu_s": time.process_time() - cpu_start}
        build["items_per_s"] = len(dataset) / wall
        print(f"built {directory}: {len(dataset)} items in {wall:.1f} s ({len(dataset) / wall:.1f} items/s)")
    cached = lc.LatentCacheDataset(directory, key=key, seed=datamodule.seed)

    images_loader = _loader(datamodule, dataset)
    cache_loader = _loader(datamodule, cached)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    arms = {"images": iter(images_loader), "cache": iter(cache_loader)}
    rates: dict[str, list[float]] = {"images": [], "cache": []}
    batch_size = datamodule.batch_size
    for name in arms:  # warm-up: one block each, not timed
        _block(module, optimizer, arms[name], args.block)
    for r in range(args.rounds):
        for name in ("images", "cache"):
            seconds = _block(module, optimizer, arms[name], args.block)
            rates[name].append(args.block * batch_size / seconds)
        print(f"round {r + 1}: images {rates['images'][-1]:.1f} img/s · cache {rates['cache'][-1]:.1f} img/s")
    med = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "config": args.config,
        "threads": torch.get_num_threads(),
        "block_steps": args.block,
        "batch_size": batch_size,
        "rates_images_per_s": rates,
        "median_images_per_s": med,
        "speedup": med["cache"] / med["images"],
        "build": build,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def _loader(datamodule, dataset) -> torch.utils.data.DataLoader:
    workers = datamodule.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=datamodule.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )


def _block(module, optimizer, batches, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        loss = module.training_loss(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        module.ema.update(module.backbone)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
