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

`CutObjectRate` is a `benchmark.evaluation.metrics.FeatureMetric` over the per-sample indicator `cut_features`.
`cut_object_rates` samples an entry through the evaluation protocol (its sampler, steps, guidance scale and noise)
with the uncropped reference control and with crops drawn from training (`condition_sets`), and reports both rates;
`benchmark.evaluation.evaluate.evaluate` adds them to the row of every control-conditioned Shapes entry, beside
control disentanglement. An entry that learned the crop control draws whole objects for the first (0 % of real
reference views are cut) and cuts for the second (about 42 % of real training items).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.metrics import FeatureMetric
from data.shapes import COLOURS

__all__ = ["DEFAULT_SAMPLES", "CutObjectRate", "condition_sets", "cut_features", "cut_object_rates", "training_items"]

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


DEFAULT_SAMPLES = 200
"""Samples per condition in a row (at most the protocol's ``num_samples``): the rate's bootstrap SD is then about
0.035 at a rate of 0.5."""


def _control_dict(controls: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.stack([c[key] for c in controls]) for key in controls[0]}


def training_items(resolution: int, datamodule: Any = None) -> Any:
    """The training split of Shapes with the data's own settings (`shapes_reference.shapes_reference_dataset`).

    At least 100,000 items long: item ``i`` is a pure function of (settings, split, i), so a longer set only adds
    items of the same distribution, and a small training set (tests, smoke runs) still has enough reference views.
    """
    from benchmark.evaluation.shapes_reference import shapes_reference_dataset

    source = getattr(datamodule, "train_set", None)
    length = max(len(source) if source is not None else 0, 100_000)
    return shapes_reference_dataset("shapes:train", resolution, datamodule, length)


def condition_sets(dataset: Any, n: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The two conditions of the measure, drawn from the training items of ``dataset`` (a `data.shapes.Shapes`).

    - ``uncropped``: ``n`` reference-view items (largest original, uncropped; their control is the default control
      that sampling and fd use), with their own class label and caption;
    - ``train_crops``: ``n`` items in the order a seeded permutation gives them, with their own crop (the crops
      the data produces, cut objects included), class label and caption.

    Flip is forced off in both (the reference control is unflipped; a caption then names the unflipped direction), so
    only the crop differs between the conditions. Each is ``{"indices": [int], "labels": (n,) int64, "captions":
    [str], "control": {name: (n, ...)}}``. The same ``(dataset settings, n, seed)`` give the same items.
    """
    reference = None
    if hasattr(dataset, "canvas_range"):
        side = float(dataset.canvas_range[1])
        reference = (side, side, 0.0, 0.0, side, side)  # orig, crop offset, crop size of the uncropped view
    order = np.random.default_rng(seed).permutation(len(dataset))
    picked: dict[str, list[dict[str, Any]]] = {"uncropped": [], "train_crops": []}
    for index in order:
        if len(picked["uncropped"]) >= n and len(picked["train_crops"]) >= n:
            break
        item = dataset.sample(int(index), flip=False)
        item["index"] = int(index)
        c = item["control"]
        box = tuple(float(v) for key in ("orig_size", "crop_coords", "crop_size") for v in c[key].reshape(-1))
        if len(picked["train_crops"]) < n:
            picked["train_crops"].append(item)
        if box == reference and len(picked["uncropped"]) < n:
            picked["uncropped"].append(item)
    out = {}
    for name, items in picked.items():
        if len(items) < n:
            raise ValueError(f"only {len(items)} {name} items among {len(dataset)} training items, {n} needed")
        out[name] = {
            "indices": [it["index"] for it in items],
            "labels": torch.stack([torch.as_tensor(it["class_label"]) for it in items]).long(),
            "captions": [it["caption"] for it in items],
            "control": _control_dict([it["control"] for it in items]),
        }
    return out


@torch.no_grad()
def cut_object_rates(
    module: Any,
    protocol: Any,
    datamodule: Any = None,
    *,
    num_samples: int | None = None,
    bootstrap_reps: int | None = None,
) -> dict[str, Any]:
    """The row's cut-object rates: samples with the uncropped control and with training crops, through ``protocol``.

    Sampling is the protocol's (sampler, steps, semantic guidance scale, EMA), as for fd. Sample ``i`` of either
    condition starts from the protocol's noise of sample ``i`` (``sample_seed(protocol.seed, i)``), so the two rates
    are paired. The semantic condition is the item's own: its class label for class-conditional entries, its caption
    for caption-conditioned ones (the caption of the view the control asks for), none for unconditional ones.

    Args:
        module: A Shapes entry conditioned on control metadata.
        protocol: The suite's `benchmark.evaluation.protocol.EvalProtocol`.
        datamodule: The entry's data: the training items are drawn from a Shapes built with its settings (see
            `benchmark.evaluation.shapes_reference.shapes_reference_dataset`); None uses the Shapes defaults.
        num_samples: Samples per condition (default ``min(DEFAULT_SAMPLES, protocol.num_samples)``).
        bootstrap_reps: Bootstrap resamples of the ``_sd`` (default the protocol's).

    Returns:
        ``cut_object_rate_uncropped``, ``cut_object_rate_train_crops``, each with ``_sd`` (bootstrap over samples),
        and ``cut_object_samples``.
    """
    from benchmark.evaluation.generate import per_sample_noise
    from benchmark.evaluation.protocol import sample_seed

    if not getattr(module.conditioner, "control_names", ()):
        raise ValueError("the cut-object rate needs an entry conditioned on control metadata")
    n = min(DEFAULT_SAMPLES, protocol.num_samples) if num_samples is None else int(num_samples)
    conditions = condition_sets(training_items(module.resolution, datamodule), n, protocol.seed)
    semantic = getattr(module.conditioner, "semantic", "none")
    seeds = [sample_seed(protocol.seed, i) for i in range(n)]
    noise = torch.stack([torch.randn(module.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    reps = protocol.bootstrap_reps if bootstrap_reps is None else bootstrap_reps
    out: dict[str, Any] = {}
    was_training = module.training
    module.eval()
    try:
        with protocol.apply(module, protocol.guidance_scale if semantic != "none" else 1.0):
            for name, condition in conditions.items():
                generators = [torch.Generator().manual_seed(s) for s in seeds]
                with per_sample_noise(generators):
                    images = module.sample_images(
                        labels=condition["labels"] if semantic == "class" else None,
                        captions=condition["captions"] if semantic == "caption" else None,
                        control={k: v.to(module.device) for k, v in condition["control"].items()},
                        num_samples=n,
                        use_ema=protocol.use_ema,
                        noise=noise.to(module.device),
                        generators=generators,
                    )
                metric = CutObjectRate(name=f"cut_object_rate_{name}", bootstrap_reps=reps, seed=protocol.seed)
                metric.update(cut_features(images.float().cpu()))
                out.update(metric.compute())
    finally:
        module.train(was_training)
    out["cut_object_samples"] = n
    return out
