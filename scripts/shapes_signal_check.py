"""Do Shapes images carry their control metadata? Train a small CNN to read the controls from the pixels alone.

A control-conditioned model can only learn what a control means if the training images show it. This check
renders REAL Shapes items (the renderer, not a generative model), trains a small convolutional network on the
pixels only, and measures on held-out items how well it recovers each control:

- flip: accuracy of a logit (the background is lit from the upper left; mirrored, from the upper right);
- crop offset (``crop_top``, ``crop_left`` as fractions of the original side), crop side (``crop_h``, ``crop_w`` as
  fractions) and original size (``orig`` in pixels relative to the resolution): R² of a regression head.

The bar of issue 24: flip accuracy >= 0.95, crop offset and original size R² >= 0.8. Deterministic for a given
thread count (fixed seeds, fixed data order, CPU).

Measured (1 thread, AMD EPYC, 2 cores shared with other jobs), held-out 1,000 val items:

==========================  ============  =========  ==========  ======  ======  ======
run                         flip acc.     crop_top   crop_left   crop_h  crop_w  orig
==========================  ============  =========  ==========  ======  ======  ======
16,000 items, 14 epochs     0.999         0.868      0.858       0.885   0.900   0.901   (714 s, the default)
8,000 items, 12 epochs      0.992         0.814      0.785       0.836   0.828   0.850   (194 s)
==========================  ============  =========  ==========  ======  ======  ======

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python scripts/shapes_signal_check.py                 # 16,000 train / 1,000 val items
    OMP_NUM_THREADS=1 python scripts/shapes_signal_check.py --train-size 2000 --epochs 6   # quicker, weaker
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Run as a plain script from a checkout: make the repository root importable for ``data.shapes``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.shapes import Shapes  # noqa: E402

TARGETS = ("crop_top", "crop_left", "crop_h", "crop_w", "orig")
"""Regression targets: crop box as fractions of the original side, original side relative to the resolution."""


def render(split: str, count: int, resolution: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(images (N, 3, R, R), flip (N,), targets (N, len(TARGETS)))`` of the first ``count`` items of a split."""
    ds = Shapes(split, resolution, length=count, seed=seed)
    images, flips, targets = [], [], []
    for i in range(count):
        item = ds[i]
        c = item["control"]
        orig = c["orig_size"][0]
        images.append(item["image"])
        flips.append(c["flip"])
        targets.append(torch.stack([*(c["crop_coords"] / orig), *(c["crop_size"] / orig), orig / resolution]))
    return torch.stack(images), torch.stack(flips), torch.stack(targets)


class ControlReader(nn.Module):
    """A small CNN: three stride-2 stages to 4x4, flattened (position matters for crops), one hidden layer."""

    def __init__(self, resolution: int = 32, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(
            block(3, width, 1), block(width, width, 2), block(width, 2 * width, 2), block(2 * width, 2 * width, 2)
        )
        side = resolution // 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 256), nn.SiLU(), nn.Linear(256, 1 + len(TARGETS))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def r2(pred: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination per column."""
    return 1 - ((pred - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0)


def signal_check(
    train_size: int = 16_000,
    val_size: int = 1000,
    epochs: int = 14,
    batch_size: int = 128,
    lr: float = 2e-3,
    resolution: int = 32,
    seed: int = 0,
    log: bool = False,
) -> dict[str, float]:
    """Train the reader on ``train_size`` train items and measure it on ``val_size`` val items.

    Returns:
        ``flip_accuracy`` and ``r2_<target>`` for every target of `TARGETS`, plus ``seconds``.
    """
    start = time.time()
    torch.manual_seed(seed)
    x, flip, y = render("train", train_size, resolution, seed)
    vx, vflip, vy = render("val", val_size, resolution, seed)
    mean, std = y.mean(0), y.std(0).clamp_min(1e-6)
    model = ControlReader(resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (train_size // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(train_size, generator=order)
        for b in range(train_size // batch_size):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            out = model(x[idx])
            loss = F.binary_cross_entropy_with_logits(out[:, 0], flip[idx]) + F.mse_loss(
                out[:, 1:], (y[idx] - mean) / std
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if log:
            print(f"epoch {epoch + 1}/{epochs}  loss {loss.item():.4f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(chunk) for chunk in vx.split(256)])
    scores = r2(out[:, 1:] * std + mean, vy)
    result = {"flip_accuracy": float(((out[:, 0] > 0).float() == vflip).float().mean())}
    result |= {f"r2_{name}": float(s) for name, s in zip(TARGETS, scores)}
    result["seconds"] = round(time.time() - start, 1)
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=16_000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = signal_check(args.train_size, args.val_size, args.epochs, seed=args.seed, log=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
