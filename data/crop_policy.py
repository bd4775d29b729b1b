"""Crop policy per resolution: how a photo of any shape becomes a square training image, and what was applied.

Recipes differ here, and the transfer study compares them, so the policy is a configurable object rather than a
constant of a DataModule:

- ``adm_center``: ADM's centre crop (BOX halvings, BICUBIC resize of the short side, centre crop) and a random flip;
  the preprocessing of ADM, DiT, MDT and of ADM's ImageNet FID reference batches.
- ``center``: a BICUBIC resize of the short side and a centre crop (torchvision ``Resize`` + ``CenterCrop``, as
  PixArt-α's data pipeline).
- ``random_crop``: the same resize, then a crop at a uniformly random offset along the long side (SDXL's random
  crop, whose offsets its micro-conditioning exists to record).
- ``aspect_preserving``: the whole image, its long side resized to the output size and centred on a grey canvas
  (about 0 in ``[-1, 1]``); the recorded "crop" is the square around the image, so its top / left are negative
  and its size is the long side.
- ``random_resized_crop``: torchvision's random-resized crop with a ``scale`` and ``ratio`` range.

Every policy can flip with ``flip_p``. ``by_resolution`` picks another policy at given output sizes (e.g. random crop
at 256, centre crop at 512). The control metadata returned is measured from the geometry actually applied, in
original pixels (`data.transforms.make_control`): original ``(h, w)``, crop ``(top, left)`` and ``(h, w)``, flip.
All randomness comes from an explicit ``numpy.random.Generator``, so a sample is a pure function of its seed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from torch import Tensor

from data.transforms import CropBox, center_crop_with_box, make_control, sample_resized_crop, to_tensor

Policy = Literal["adm_center", "center", "random_crop", "aspect_preserving", "random_resized_crop"]
POLICIES: tuple[str, ...] = ("adm_center", "center", "random_crop", "aspect_preserving", "random_resized_crop")
_RANDOM_CROPS = ("random_crop", "random_resized_crop")


class CropPolicy:
    """A square-output crop policy with a random horizontal flip, returning the control metadata it applied.

    Args:
        policy: The policy at every resolution not in ``by_resolution`` (see the module docstring).
        flip_p: Probability of a horizontal flip (0 disables flips; evaluation never flips).
        by_resolution: Other policies at given output sizes, e.g. ``{256: random_crop, 512: center}``.
        scale: ``random_resized_crop``: range of the crop area as a fraction of the image area.
        ratio: ``random_resized_crop``: range of the crop's aspect ratio (width / height).
    """

    def __init__(
        self,
        policy: Policy = "adm_center",
        flip_p: float = 0.5,
        by_resolution: dict[int, Policy] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        by_resolution = {int(k): v for k, v in (by_resolution or {}).items()}
        for name in [policy, *by_resolution.values()]:
            if name not in POLICIES:
                raise ValueError(f"unknown crop policy {name!r}; valid policies: {', '.join(POLICIES)}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.policy, self.flip_p, self.by_resolution = policy, flip_p, by_resolution
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def policy_at(self, size: int) -> str:
        """The policy used for output side ``size``."""
        return self.by_resolution.get(int(size), self.policy)

    def is_random(self, size: int) -> bool:
        """Whether the crop itself (not only the flip) is drawn per sample at this size."""
        return self.policy_at(size) in _RANDOM_CROPS

    def describe(self, size: int) -> dict[str, object]:
        """What determines the output at ``size`` (recorded in a latent cache's key)."""
        out: dict[str, object] = {"policy": self.policy_at(size), "flip_p": self.flip_p}
        if self.policy_at(size) == "random_resized_crop":
            out.update(scale=list(self.scale), ratio=list(self.ratio))
        return out

    def __call__(
        self,
        image: Image.Image,
        size: int,
        rng: np.random.Generator | None = None,
        flip: bool | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Crop ``image`` to ``size x size`` and maybe flip it.

        Args:
            image: The decoded photo (converted to RGB here).
            size: Output side length in pixels.
            rng: Source of the random crop offsets and flip (required unless the crop is deterministic and ``flip``
                is given, as when caching).
            flip: Force the flip (True / False) instead of drawing it.

        Returns:
            ``(3, size, size)`` float tensor in ``[-1, 1]`` and the control dict of what was applied.
        """
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        image = image.convert("RGB")
        policy = self.policy_at(size)
        if rng is None and (policy in _RANDOM_CROPS or (flip is None and self.flip_p > 0)):
            raise ValueError(f"crop policy {policy!r} with flip_p={self.flip_p} needs a random generator")
        if policy == "adm_center":
            out, crop = center_crop_with_box(image, size)
        elif policy == "random_resized_crop":
            crop = sample_resized_crop(image.height, image.width, rng, self.scale, self.ratio)
            out = image.resize((size, size), Image.Resampling.BICUBIC, box=crop.pil_box())
        elif policy == "aspect_preserving":
            out, crop = _letterbox(image, size)
        else:
            out, crop = _short_side_crop(image, size, rng if policy == "random_crop" else None)
        if flip is None:
            flip = bool(rng.random() < self.flip_p) if self.flip_p > 0 else False
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out), make_control((image.height, image.width), crop, flip)


def _short_side_crop(image: Image.Image, size: int, rng: np.random.Generator | None) -> tuple[Image.Image, CropBox]:
    """Resize the short side to ``size`` (BICUBIC), then crop centrally (``rng`` None) or at a random offset."""
    h, w = image.height, image.width
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if rng is None:
        top, left = (new_h - size) // 2, (new_w - size) // 2
    else:
        top, left = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
    sy, sx = new_h / h, new_w / w  # resized pixels per original pixel, per axis
    return resized.crop((left, top, left + size, top + size)), CropBox(top / sy, left / sx, size / sy, size / sx)


def _letterbox(image: Image.Image, size: int) -> tuple[Image.Image, CropBox]:
    """The whole image, long side resized to ``size``, centred on grey; the box is the square around it."""
    h, w = image.height, image.width
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (127, 127, 127))  # 127 -> -0.004 in [-1, 1]: the neutral grey
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), (left, top))
    sy, sx = new_h / h, new_w / w
    return canvas, CropBox(-top / sy, -left / sx, size / sy, size / sx)
