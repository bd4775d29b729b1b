"""Reconstruction quality of the embedded Shapes autoencoder at several image resolutions.

The embedded ``shapes-vae`` was trained on 32 px Shapes; the resolution-transfer suite trains at 64 px on its
latents (16x16x4 instead of 8x8x4). This measures, on the same Shapes val items rendered at each resolution, the
reconstruction through the posterior mean (no sampling): MSE in [-1, 1] units and PSNR in dB of images in [0, 1],
plus the mean and std of the normalised latents (the diffusion model's inputs, which should stay near 0 and 1).

Usage (from the repository root; single thread, about a minute on a CPU)::

    OMP_NUM_THREADS=1 python scripts/vae_resolution_psnr.py --resolutions 32 64 --count 256
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.autoencoder import Autoencoder  # noqa: E402
from data.shapes import Shapes  # noqa: E402


@torch.no_grad()
def measure(autoencoder: Autoencoder, resolution: int, count: int, batch_size: int) -> dict[str, float]:
    """Reconstruction MSE / PSNR and normalised-latent statistics of ``count`` val images at ``resolution``.

    Args:
        autoencoder: The frozen autoencoder (posterior mean, no sampling).
        resolution: Image side in pixels.
        count: Val items (the first ``count``; the same scenes at every resolution).
        batch_size: Images per forward.
    """
    data = Shapes("val", resolution=resolution, length=count)
    squared, latents, psnrs = 0.0, [], []
    for start in range(0, count, batch_size):
        images = torch.stack([data[i]["image"] for i in range(start, min(start + batch_size, count))])
        z = autoencoder.encode(images)
        recon = autoencoder.decode(z)
        err = (recon - images).pow(2).flatten(1).mean(1)  # per image, in [-1, 1] units
        squared += float(err.sum())
        psnrs += (10 * torch.log10(4.0 / err.clamp_min(1e-12))).tolist()  # [0, 1] images: MSE / 4
        latents.append(z)
    z = torch.cat(latents)
    mse = squared / count
    return {
        "resolution": resolution,
        "latent": list(z.shape[1:]),
        "images": count,
        "mse": round(mse, 6),
        "psnr_db": round(10 * math.log10(4.0 / mse), 3),
        "psnr_db_mean_per_image": round(sum(psnrs) / len(psnrs), 3),
        "latent_mean": round(float(z.mean()), 4),
        "latent_std": round(float(z.std()), 4),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    p.add_argument("--count", type=int, default=256, help="val images per resolution")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--autoencoder", default="embedded:shapes-vae")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    autoencoder = Autoencoder(args.autoencoder, sample_posterior=False)
    for resolution in args.resolutions:
        started = time.perf_counter()
        row = measure(autoencoder, resolution, args.count, args.batch_size)
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
