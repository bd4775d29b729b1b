"""Cut-object rate: how often a Shapes sample shows its object cut by the image border (SDXL's Fig. 4, as a number).

Models trained on random crops without crop conditioning learn to draw cut objects even when asked for a whole
image; crop conditioning should let the uncropped control give whole objects. On Shapes the object has one flat
palette colour on a lit background of another palette colour, so a sample counts as **cut** when object-colour
pixels touch the border:

1. every pixel takes the nearest palette colour (`data.shapes.COLOURS`; the background lighting of ±20 % stays
   nearest to its own colour);
2. the background is the palette colour with the most border pixels; the object is the most frequent other colour
   in the image (blurred edges make a few pixels of in-between colours, far fewer than the object's);
3. cut when at least ``min_border_pixels`` (2) border pixels have the object's colour (nearest palette colour and
   at least 70 % of the way from the background colour: a blurred halo is not the object).

If a crop shows mostly the object, both colours touch the border and the sample is cut whichever is called the
object, so step 2 cannot turn a cut into a whole object. Checked against the renderer's own ground truth (cut when
`data.shapes.Shapes.visible_fraction` < 0.999) on 1,500 real training renders: 95.4 % agreement at a cut rate of
42 %; the misses are slivers (visible fraction 0.97-0.999, under a pixel at 32 px) and the false cuts small
originals whose 4x-upsampled edge reaches the border. ``tests/benchmark/evaluation/test_cut_objects.py`` checks it
on 200 items.

A view entirely inside the object (one colour only) is not counted as cut: with no second colour there is no
border to find. Shapes crops never do this (they keep at least 60 % of the object's bounding box).

`CutObjectRate` is a `benchmark.evaluation.metrics.FeatureMetric` over the per-sample indicator `cut_features`;
`cut_object_rates` samples a model with the uncropped reference control and with crops drawn from training and
reports both rates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.metrics import FeatureMetric
from data.shapes import COLOURS

__all__ = ["CutObjectRate", "cut_features", "cut_object_rates"]

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (P, 3) in 0..255


def _border(mask: Tensor) -> Tensor:
    """(N, 4 * (S - 1)) values of a (N, S, S) map on the one-pixel border, each border pixel once."""
    return torch.cat([mask[:, 0, :], mask[:, -1, :], mask[:, 1:-1, 0], mask[:, 1:-1, -1]], dim=1)


def cut_features(images: Tensor, min_border_pixels: int = 2, min_alpha: float = 0.7) -> Tensor:
    """(N, 1) float: 1 where the object's colour touches the border (cut), for (N, 3, H, W) images in [-1, 1].

    A pixel has the object's colour when its nearest palette colour is the object's and it is at least
    ``min_alpha`` of the way from the background colour to the object colour (an upsampled small original blurs
    the object's edge over a few pixels: a faint halo on the border is not a cut).
    """
    rgb = (images.float().clamp(-1, 1) + 1) * 127.5  # (N, 3, H, W)
    palette = _PALETTE.to(rgb.device)
    distance = ((rgb[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)  # (N, P, H, W)
    label = distance.argmin(1)  # (N, H, W)
    n, p = label.shape[0], palette.shape[0]
    rows = torch.arange(n, device=rgb.device)
    onehot = torch.nn.functional.one_hot(label, p).permute(0, 3, 1, 2)  # (N, P, H, W)
    border_counts = _border(onehot.reshape(n * p, *label.shape[1:])).reshape(n, p, -1).sum(-1)
    background = border_counts.argmax(1)  # (N,)
    counts = onehot.sum((2, 3)).clone()  # (N, P)
    counts[rows, background] = -1
    obj = counts.argmax(1)
    step = palette[obj] - palette[background]  # (N, 3)
    alpha = ((rgb - palette[background][:, :, None, None]) * step[:, :, None, None]).sum(1)
    alpha = alpha / (step * step).sum(1).clamp_min(1.0)[:, None, None]
    is_object = (label == obj[:, None, None]) & (alpha >= min_alpha)
    return (_border(is_object.float()).sum(1) >= min_border_pixels).float()[:, None]


class CutObjectRate(FeatureMetric):
    """Fraction of samples whose object is cut by the border; ``features`` = `cut_features` rows (N, 1)."""

    name = "cut_object_rate"
    higher_is_better = False

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        return float(features[:, 0].mean())


def training_controls(datamodule: Any, n: int, seed: int = 0) -> dict[str, Tensor]:
    """The controls of ``n`` training items (the crops the data actually produces), batched, flip forced off."""
    dataset = datamodule.train_set
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=n, replace=len(dataset) < n)
    controls = [dataset.sample(int(i), flip=False)["control"] for i in indices]
    return {key: torch.stack([c[key] for c in controls]) for key in controls[0]}


@torch.no_grad()
def cut_object_rates(
    module: Any, datamodule: Any, n: int = 64, seed: int = 0, bootstrap_reps: int = 200
) -> dict[str, float]:
    """Sample ``n`` images with the uncropped reference control and ``n`` with training crops; both cut rates.

    Args:
        module: A control-conditioned module with ``sample_images(labels=..., control=..., seed=...)`` and
            ``default_control(n)``, ``num_classes``.
        datamodule: The Shapes data the module trained on (its training crops are drawn).
        n: Samples per condition (classes cycle through ``range(num_classes)``).
        seed: Noise seed (the same noise for both conditions) and crop-draw seed.

    Returns:
        ``cut_object_rate_uncropped`` and ``cut_object_rate_train_crops``, each with its ``_sd``.
    """
    labels = torch.arange(n, device=module.device) % module.num_classes
    out: dict[str, float] = {}
    for name, control in (
        ("uncropped", module.default_control(n)),
        ("train_crops", training_controls(datamodule, n, seed)),
    ):
        control = {k: v.to(module.device) for k, v in control.items()}
        images = module.sample_images(labels=labels, control=control, seed=seed)
        metric = CutObjectRate(name=f"cut_object_rate_{name}", bootstrap_reps=bootstrap_reps, seed=seed)
        metric.update(cut_features(images.cpu()))
        out.update(metric.compute())
    return out
