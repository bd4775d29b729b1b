"""Train the embedded Shapes autoencoder ("shapes-vae") shipped in ``data/weights/shapes-vae/``.

A tiny ``diffusers.AutoencoderKL`` (f=4: 32x32x3 images -> 8x8x4 latents) trained on CPU in about ten
minutes with the LDM "KL-f" recipe minus the perceptual/GAN terms: pixel reconstruction (L1 + MSE) of a
*sampled* posterior plus a small KL weight. Sampling the posterior during training keeps the decoder
robust to small latent perturbations, and the KL term keeps latents bounded, which is what a diffusion
model trained on top of them needs; the weight is small so that reconstructions stay sharp.

After training, the latent normalisation is measured on held-out images exactly as for the SD VAE
(``scaling_factor = 1 / std(z)``) and, like Flux, the mean is stored as ``shift_factor`` so that
``(z - shift) * scale`` is zero-mean and unit-variance; both go into ``config.json``, where
``data.autoencoder.Autoencoder`` reads them.

Usage (from the repository root)::

    python scripts/train_shapes_vae.py --out data/weights/shapes-vae
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

# Run as a plain script from a checkout: make the repository root importable for ``data.shapes``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.shapes import Shapes  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed namespace.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2400, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (every image is a fresh sample)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay to 5%%)")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--kl-weight", type=float, default=1e-5, help="weight of the per-latent-element mean KL")
    p.add_argument("--block-out-channels", type=int, nargs="+", default=[16, 32, 64], help="channels per level")
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--norm-groups", type=int, default=8, help="GroupNorm groups (must divide every width)")
    p.add_argument("--mid-attention", action=argparse.BooleanOptionalAction, default=False, help="mid-block attn")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--val-size", type=int, default=256, help="held-out val images for reconstruction metrics")
    p.add_argument("--stats-size", type=int, default=1024, help="held-out images for the latent statistics")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/weights/shapes-vae"), help="output folder")
    p.add_argument("--init", type=Path, default=None, help="continue from the weights in this folder (same sizes)")
    return p.parse_args(argv)


def build_vae(args: argparse.Namespace) -> AutoencoderKL:
    """Build the untrained autoencoder described by the CLI arguments.

    Args:
        args: Parsed arguments (architecture fields).

    Returns:
        A freshly initialised ``AutoencoderKL``.
    """
    n = len(args.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=1,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_groups,
        sample_size=args.resolution,
        mid_block_add_attention=args.mid_attention,
    )


def load_images(split: str, start: int, count: int, resolution: int, seed: int) -> torch.Tensor:
    """Render ``count`` Shapes images of a split into one tensor.

    Args:
        split: ``"train"`` or ``"val"``.
        start: Index of the first item.
        count: Number of items.
        resolution: Image side length.
        seed: Dataset seed.

    Returns:
        (count, 3, resolution, resolution) images in [-1, 1].
    """
    ds = Shapes(split=split, resolution=resolution, length=start + count, seed=seed)
    return torch.stack([ds[i]["image"] for i in range(start, start + count)])


@torch.no_grad()
def reconstruction_metrics(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """Reconstruction error of the posterior mean, the way the frozen wrapper is evaluated.

    Args:
        vae: The autoencoder (switched to eval here).
        images: (N, 3, H, W) images in [-1, 1].
        batch_size: Evaluation batch size.

    Returns:
        ``mse`` and ``l1`` in [-1, 1] units, and ``psnr`` in dB for images mapped to [0, 1].
    """
    vae.eval()
    sq, ab = 0.0, 0.0
    for batch in images.split(batch_size):
        recon = vae.decode(vae.encode(batch).latent_dist.mode()).sample.clamp(-1, 1)
        sq += F.mse_loss(recon, batch, reduction="sum").item()
        ab += F.l1_loss(recon, batch, reduction="sum").item()
    mse = sq / images.numel()
    # [-1, 1] -> [0, 1] divides errors by 2, so the [0, 1]-scale MSE is mse / 4.
    return {"mse": mse, "l1": ab / images.numel(), "psnr": 10 * math.log10(4.0 / mse)}


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 128) -> dict:
    """Mean and std of posterior samples over held-out images (the SD recipe uses samples, not means).

    Args:
        vae: The autoencoder.
        images: (N, 3, H, W) images in [-1, 1].
        batch_size: Encoding batch size.

    Returns:
        Scalar ``mean``/``std`` and per-channel lists ``channel_mean``/``channel_std``.
    """
    vae.eval()
    gen = torch.Generator().manual_seed(0)
    z = torch.cat([vae.encode(b).latent_dist.sample(generator=gen) for b in images.split(batch_size)])
    return {
        "mean": z.mean().item(),
        "std": z.std().item(),
        "channel_mean": z.mean(dim=(0, 2, 3)).tolist(),
        "channel_std": z.std(dim=(0, 2, 3)).tolist(),
    }


def main(argv: list[str] | None = None) -> dict:
    """Train, measure and save the Shapes VAE.

    Args:
        argv: Command-line arguments.

    Returns:
        The final metrics and latent statistics (also printed as JSON).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    # Continuing from shipped weights adapts them to a changed Shapes at a fraction of the cost of a fresh run.
    vae = build_vae(args) if args.init is None else AutoencoderKL.from_pretrained(args.init)
    n_params = sum(p.numel() for p in vae.parameters())
    print(f"AutoencoderKL {tuple(args.block_out_channels)}: {n_params / 1e6:.3f}M parameters", flush=True)

    # Held-out images: val split, disjoint index ranges for metrics and for the latent statistics.
    val_images = load_images("val", 0, args.val_size, args.resolution, args.seed)
    stats_images = load_images("val", 50_000, args.stats_size, args.resolution, args.seed)

    # Every training image is a fresh procedural sample: no epochs, no overfitting to a fixed pool.
    train_set = Shapes(split="train", resolution=args.resolution, length=args.steps * args.batch_size, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=False, num_workers=0, drop_last=True)

    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(args.seed)
    running: dict[str, float] = {"rec": 0.0, "kl": 0.0}
    for step, batch in enumerate(loader):
        vae.train()
        x = batch["image"]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        # diffusers' kl() sums over latent elements; average it so the weight does not depend on the latent size.
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        running["rec"] += rec.item()
        running["kl"] += kl.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            val = reconstruction_metrics(vae, val_images[:64])
            print(
                f"step {step + 1:5d}  rec {running['rec'] / k:.4f}  kl/elem {running['kl'] / k:.2f}  "
                f"val64 mse {val['mse']:.5f} psnr {val['psnr']:.2f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
            running = {"rec": 0.0, "kl": 0.0}

    train_seconds = time.perf_counter() - start
    metrics = reconstruction_metrics(vae, val_images)
    stats = latent_statistics(vae, stats_images)
    # The SD recipe: scale so that latents have unit std; shifting by the mean (Flux) also centres them.
    vae.register_to_config(scaling_factor=1.0 / stats["std"], shift_factor=stats["mean"])
    vae.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(args.out, safe_serialization=True)

    report = {
        "command": " ".join(["python", "scripts/train_shapes_vae.py", *(argv if argv is not None else sys.argv[1:])]),
        "parameters": n_params,
        "train_seconds": round(train_seconds, 1),
        "images_seen": args.steps * args.batch_size,
        "val": {k: round(v, 6) for k, v in metrics.items()} | {"images": args.val_size},
        "latent_stats": stats,
        "scaling_factor": 1.0 / stats["std"],
        "shift_factor": stats["mean"],
    }
    print(json.dumps(report, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()
