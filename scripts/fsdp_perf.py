"""Speed and peak memory of FSDP training (`benchmark.sharding.FSDPStrategy`) against the plain strategy, one device.

    python scripts/fsdp_perf.py --device cuda --size DiT-XL/2 --batch 32 --steps 20      # a GPU (scripts/gpu_perf.sh)
    python scripts/fsdp_perf.py --device cpu --size DiT-tiny/2 --batch 4 --steps 4       # a dry run on a CPU

Rows: Lightning's plain strategy with ``bf16-mixed`` (what a DDP row does per GPU), then FSDP bf16 without and with
activation checkpointing, and FSDP fp32. On one device FSDP shards nothing; its rows give the cost of its bf16 and of
activation checkpointing (peak memory, seconds per step after warm-up), which carry over per GPU to N devices, where
weights, gradients, optimizer state and EMA also drop to 1/N. Synthetic latents of the embedded VAE's 4 channels at
32x32 (256 tokens at patch 2, DiT-XL/2's 256-px shape); the backbone is what is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines.dit import DiTModule  # noqa: E402
from benchmark.objectives import RectifiedFlow  # noqa: E402
from benchmark.samplers import EulerSampler  # noqa: E402
from benchmark.sharding import FSDPStrategy  # noqa: E402
from data.autoencoder import Autoencoder  # noqa: E402


class Timer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, 0.0, 0

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(module)
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps += 1

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.start) / max(self.steps, 1)


def measure(args: argparse.Namespace, strategy: object, precision: str) -> tuple[float, float]:
    pl.seed_everything(0, verbose=False)
    module = DiTModule(
        size=args.size,
        num_classes=1000,
        resolution=128,  # 32x32 latents of the embedded VAE (4x downsampling)
        autoencoder=Autoencoder("embedded:shapes-vae"),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=2),
        ema_decay=0.9999,
    )
    latents = torch.randn(args.batch * (args.steps + 1), *module.latent_shape)
    items = [{"latent": latent, "class_label": torch.tensor(i % 1000)} for i, latent in enumerate(latents)]
    loader = torch.utils.data.DataLoader(items, batch_size=args.batch)
    timer = Timer(warmup=min(3, args.steps - 1))
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        strategy=strategy,
        precision=precision,
        max_steps=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, loader)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    return timer.seconds_per_step(), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="DiT-XL/2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = [
        ("plain, bf16-mixed (a DDP rank)", "auto", "bf16-mixed"),
        ("FSDP bf16", FSDPStrategy(mixed_precision="bf16"), "32-true"),
        (
            "FSDP bf16 + activation checkpointing",
            FSDPStrategy(mixed_precision="bf16", activation_checkpointing=True),
            "32-true",
        ),
        ("FSDP fp32", FSDPStrategy(mixed_precision="fp32"), "32-true"),
    ]
    print(f"| {args.size}, batch {args.batch}, {args.device} | s/step | peak GiB |\n|---|---|---|")
    for name, strategy, precision in rows:
        seconds, peak = measure(args, strategy, precision)
        print(f"| {name} | {seconds:.4f} | {peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
