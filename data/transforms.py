"""Image augmentations that return the control metadata they applied.

Every DataModule in ``data/`` reports, per sample, the geometry of the augmentation that actually produced the image
(original size, crop box in original pixels, horizontal flip). The conditioning models of the study (SDXL-style
micro-conditioning and the proposed control embedder) consume these numbers, so they must be measured from the real
transform, never reconstructed afterwards. Two transforms are provided:

- `sample_resized_crop` + `RandomResizedCropFlip`: torchvision's random-resized-crop, driven by an explicit
  ``numpy.random.Generator`` so a dataset can make every sample a pure function of its index.
- `center_crop_arr` + `CenterCropFlip`: ADM's centre crop (the ImageNet preprocessing of ADM, DiT and MDT), with the
  crop box mapped back to original-image coordinates.

All control values are float32 tensors; `control_to_tensor` packs them into columns `CONTROL_NAMES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from conditioning.conditioner import CONTROL_NAMES, control_matrix  # the column order is the conditioning contract


@dataclass(frozen=True)
class CropBox:
    """An axis-aligned crop, in pixels of the image it was taken from (may be fractional after rescaling).

    Attributes:
        top: Row of the crop's top edge.
        left: Column of the crop's left edge.
        height: Crop height.
        width: Crop width.
    """

    top: float
    left: float
    height: float
    width: float

    def pil_box(self, scale: float = 1.0) -> tuple[float, float, float, float]:
        """The crop as PIL's ``(left, upper, right, lower)`` box, optionally rescaled to a larger rendering."""
        return (self.left * scale, self.top * scale, (self.left + self.width) * scale, (self.top + self.height) * scale)


def make_control(orig_size: tuple[float, float], crop: CropBox, flip: bool) -> dict[str, Tensor]:
    """Build one sample's control dict (unbatched: ``(2,)`` tensors and a scalar ``flip``).

    Args:
        orig_size: ``(h, w)`` of the original image or canvas, in pixels.
        crop: The crop actually taken, in original pixels.
        flip: Whether the output was mirrored left-right.

    Returns:
        ``{"orig_size", "crop_coords", "crop_size", "flip"}`` as float32 tensors.
    """
    # One allocation, sliced into views: this runs once per sample, and per-tensor construction costs add up.
    values = np.array((*orig_size, crop.top, crop.left, crop.height, crop.width, float(flip)), dtype=np.float32)
    flat = torch.from_numpy(values)
    return {"orig_size": flat[0:2], "crop_coords": flat[2:4], "crop_size": flat[4:6], "flip": flat[6]}


def control_to_tensor(control: Mapping[str, Tensor]) -> Tensor:
    """Pack a control dict into one float32 tensor with columns `CONTROL_NAMES`.

    Args:
        control: Batched (``(B, 2)`` / ``(B,)``) or unbatched (``(2,)`` / ``()``) control tensors.

    Returns:
        ``(B, 7)`` for a batch, ``(7,)`` for a single sample.

    Raises:
        KeyError: If a required control entry is missing.
    """
    single = "flip" in control and control["flip"].dim() == 0
    if single:  # one sample: give every entry a batch dimension of 1
        control = {key: value[None] for key, value in control.items()}
    packed = control_matrix(control, CONTROL_NAMES)
    return packed[0] if single else packed


# uint8 -> [-1, 1] lookup table, computed with the same float32 ops as ``x.float() / 127.5 - 1``; a table lookup is
# about twice as fast as the torch ops on small images, which matters for the procedural dataset's throughput.
_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_tensor(image: Image.Image) -> Tensor:
    """Convert a PIL image to a float32 ``(3, H, W)`` tensor in ``[-1, 1]`` (``x / 127.5 - 1``)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(_TO_UNIT[np.asarray(image).transpose(2, 0, 1)])


def sample_resized_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> CropBox:
    """Draw a random-resized-crop box with torchvision's algorithm, from an explicit generator.

    torchvision's ``RandomResizedCrop.get_params`` reads the global torch RNG, which would make a sample depend on
    which worker produced it; taking the generator as an argument keeps samples a pure function of their seed.

    Args:
        height: Source image height in pixels.
        width: Source image width in pixels.
        rng: Generator that supplies all randomness.
        scale: Range of the crop area as a fraction of the source area.
        ratio: Range of the crop aspect ratio (width / height), sampled log-uniformly.
        attempts: Tries before falling back to the largest centred crop within ``ratio``.

    Returns:
        The crop box, with integer coordinates.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u_area, u_ratio, u_top, u_left = rng.random(4)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


class RandomResizedCropFlip:
    """Random-resized-crop to a square, then a random horizontal flip, returning the control metadata.

    Args:
        size: Output side length in pixels.
        scale: Range of the crop area as a fraction of the source area.
        ratio: Range of the crop aspect ratio (width / height).
        flip_p: Probability of a horizontal flip.
        resample: PIL resampling filter for the resize.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.size, self.scale, self.ratio, self.flip_p, self.resample = size, scale, ratio, flip_p, resample

    def __call__(
        self, image: Image.Image, rng: np.random.Generator, flip: bool | None = None
    ) -> tuple[Image.Image, dict[str, Tensor]]:
        """Crop, resize and maybe flip ``image``; ``flip`` overrides the random draw (which is still consumed)."""
        crop = sample_resized_crop(image.height, image.width, rng, self.scale, self.ratio)
        drawn = bool(rng.random() < self.flip_p)
        flip = drawn if flip is None else flip
        out = image.resize((self.size, self.size), self.resample, box=crop.pil_box())
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out, make_control((image.height, image.width), crop, flip)


def center_crop_geometry(height: int, width: int, image_size: int) -> tuple[list[tuple[int, int]], CropBox]:
    """The exact geometry of ADM's `center_crop_arr` for an image of ``(height, width)``.

    Args:
        height: Original height in pixels.
        width: Original width in pixels.
        image_size: Output side length.

    Returns:
        ``(sizes, crop)``: the PIL ``(w, h)`` sizes of each resize step (BOX halvings, then the final BICUBIC), and
        the centre crop box expressed in ORIGINAL pixels (fractional in general).
    """
    if image_size < 1 or height < 1 or width < 1:
        raise ValueError(f"need positive sizes, got image {height}x{width} and image_size {image_size}")
    sizes = []
    w, h = width, height
    while min(w, h) >= 2 * image_size:  # ADM halves with a BOX filter first: cheap, alias-free downsampling
        w, h = w // 2, h // 2
        sizes.append((w, h))
    scale = image_size / min(w, h)
    w, h = round(w * scale), round(h * scale)
    sizes.append((w, h))
    top, left = (h - image_size) // 2, (w - image_size) // 2
    # Each PIL resize maps the full source extent onto the full target extent, so the composite map from
    # original to final pixels is a pure per-axis scale of final/original size.
    sy, sx = h / height, w / width
    return sizes, CropBox(top / sy, left / sx, image_size / sy, image_size / sx)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion ``image_datasets.py``), pixel-identical to the reference.

    Repeated BOX halving while the short side is at least ``2 * image_size``, a BICUBIC resize that makes the short
    side exactly ``image_size``, then a centre crop to ``image_size x image_size``.

    Args:
        pil_image: Source image (any mode PIL can resize; RGB in practice).
        image_size: Output side length.

    Returns:
        The ``image_size x image_size`` crop.
    """
    return center_crop_with_box(pil_image, image_size)[0]


def center_crop_with_box(image: Image.Image, image_size: int) -> tuple[Image.Image, CropBox]:
    """`center_crop_arr` that also returns the crop box in original pixels (see `center_crop_geometry`)."""
    sizes, crop = center_crop_geometry(image.height, image.width, image_size)
    for size in sizes[:-1]:
        image = image.resize(size, resample=Image.Resampling.BOX)
    image = image.resize(sizes[-1], resample=Image.Resampling.BICUBIC)
    w, h = sizes[-1]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size)), crop


class RecordedFlip:
    """Random horizontal flip of a ``(..., H, W)`` tensor that reports whether it flipped.

    Args:
        p: Flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, bool]:
        """Flip with probability ``p`` (drawn from ``generator``, else torch's per-worker global RNG)."""
        flip = bool(torch.rand((), generator=generator) < self.p) if self.p > 0 else False
        return (torch.flip(image, dims=[-1]) if flip else image), flip


class CenterCropFlip:
    """ADM centre crop, tensor conversion to ``[-1, 1]`` and a recorded random horizontal flip.

    Args:
        size: Output side length in pixels.
        flip_p: Probability of a horizontal flip (0 for evaluation).
    """

    def __init__(self, size: int, flip_p: float = 0.5) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.flip = RecordedFlip(flip_p)

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the ``(3, size, size)`` tensor and its control dict."""
        image = image.convert("RGB")
        cropped, crop = center_crop_with_box(image, self.size)
        tensor, flipped = self.flip(to_tensor(cropped), generator)
        return tensor, make_control((image.height, image.width), crop, flipped)
