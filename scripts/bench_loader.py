"""Loader throughput on this CPU: samples/s from raw JPEGs (ImageNet folder, webdataset shards) vs the latent cache.

    OMP_NUM_THREADS=1 python scripts/bench_loader.py [--images 256] [--resolution 256] [--batch-size 32]

Writes ``--images`` synthetic photos (ImageNet's typical 500x375, JPEG quality 90) as an ImageNet-layout folder and as
webdataset shards, caches their latents with an autoencoder of SD-VAE's latent shape (4 x res/8 x res/8; its weights
do not matter for reading speed), then times one pass of each loader, single process (``num_workers=0``), one thread.
Prints one line per loader and a JSON summary. Decoding scales with loader workers; the ratio is what carries over.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

from data.autoencoder import Autoencoder
from data.crop_policy import CropPolicy
from data.imagenet import ImageNetDataModule
from data.latent_cache import LatentCacheDataset, build_cache
from data.webdataset import WebDatasetDataModule


def _photos(root: Path, n: int) -> None:
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "wds").mkdir(parents=True)
    with tarfile.open(root / "wds" / "00000.tar", "w") as tar:
        for i in range(n):
            # smooth noise upsampled: compresses like a photo, unlike white noise
            small = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            data = buffer.getvalue()
            folder = root / "imagenet" / "train" / f"n{i % 8:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.JPEG").write_bytes(data)
            for name, payload in ((f"{i:06d}.jpg", data), (f"{i:06d}.txt", f"a photo number {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def _sd_shaped_autoencoder(folder: Path) -> Autoencoder:
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    vae.save_pretrained(folder)
    return Autoencoder(str(folder))


def _time(loader, n: int) -> float:
    start = time.perf_counter()
    seen = sum(len(batch["caption"]) for batch in loader)
    seconds = time.perf_counter() - start
    assert seen >= n // 2, (seen, n)
    return seen / seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; returns samples/s per loader."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _photos(root, args.images)
        common = dict(resolution=args.resolution, batch_size=args.batch_size, num_workers=0)
        imagenet = ImageNetDataModule(root=str(root / "imagenet"), num_classes=8, val_fraction=0.01, **common)
        imagenet.setup("validate")
        out["imagenet_jpeg_adm_center"] = _time(imagenet.train_dataloader(), len(imagenet.train_set))
        wds = WebDatasetDataModule(
            root=str(root / "wds"), train_shards="*.tar", crop_policy=CropPolicy("random_crop"), **common
        )
        wds.setup("fit")
        out["webdataset_jpeg_random_crop"] = _time(wds.train_dataloader(), args.images)
        autoencoder = _sd_shaped_autoencoder(root / "vae")
        build_cache(imagenet.train_set, autoencoder, root / "cache", batch_size=16, progress=False)
        cached = LatentCacheDataset(root / "cache")
        loader = DataLoader(cached, batch_size=args.batch_size, shuffle=True, drop_last=True)
        out["latent_cache"] = _time(loader, len(cached))
        shape = tuple(cached[0]["latent_mean"].shape)
    for name, rate in out.items():
        print(f"{name:30s} {rate:9.1f} samples/s")
    print(json.dumps({"latent_shape": shape, **{k: round(v, 1) for k, v in out.items()}}))
    return out


if __name__ == "__main__":
    main()
