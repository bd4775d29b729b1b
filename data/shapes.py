"""Shapes: the embedded, procedural default dataset (no files, no network).

Each item is one filled shape of a named colour on a plain background of another named colour, drawn on a square
canvas of random original size, then random-resized-cropped and maybe flipped. The class label is the shape kind;
the caption describes the FINAL image ("a large red triangle on a blue background"); the control
metadata (original size, crop box, flip) is the geometry of the real augmentation, so models conditioned on it can
learn what it means, as with SDXL micro-conditioning on real photos.

Item ``i`` is a pure function of ``(seed, split, i)``: all randomness comes from
``numpy.random.default_rng([seed, split_id, i])``, so it is bit-identical across calls, workers and processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.sampling import ResumableDataModule
from data.transforms import CONTROL_NAMES, CropBox, make_control, sample_resized_crop, to_tensor

_SPLITS = {"train": 0, "val": 1}
_SUPERSAMPLE = 4  # render at 4x the output resolution, then area-average: clean antialiased edges
_MIN_VISIBLE = 0.75  # a crop must keep at least this fraction of the shape's bounding box
_CROP_TRIES = 10  # crops drawn before falling back to the whole canvas
# Object-centric, like ImageNet photos: a large shape near the canvas centre. This is what makes the embedded suite
# learnable in minutes: with sides of 0.25-0.6 placed anywhere and crops down to 35% of the area, tiny DiT still drew
# blobs after 5000 steps; with these values it draws recognisable shapes after about 1000 (measured on a 2-core CPU).
_SHAPE_SIDE = (0.55, 0.8)  # shape bounding-box side as a fraction of the canvas side
_CENTRE_SPREAD = 0.3  # the bbox centre ranges over this middle fraction of the positions that keep it on the canvas
# Upper bounds on the visible bbox's area as a fraction of the final image: about a third of the items each. Captions
# name no position: with _CENTRE_SPREAD the shape is in the middle third of 3998 of 4000 items checked.
_SIZE_WORDS = ((0.46, "small"), (0.58, "medium"), (math.inf, "large"))

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
"""The palette for both shapes and backgrounds; a shape never has its background's colour."""


def _normalise(points: np.ndarray) -> np.ndarray:
    """Scale a polygon so its bounding box is exactly ``[-1, 1]^2``: the drawn bbox is then the placement bbox."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (2 * (points - lo) / (hi - lo) - 1).astype(np.float64)


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int) -> np.ndarray:
    angles = np.linspace(start, stop, n)
    return np.stack([cx + r * np.cos(angles), cy - r * np.sin(angles)], axis=1)  # y grows downwards (image rows)


def _star() -> np.ndarray:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _crescent() -> np.ndarray:
    """A disc minus a disc shifted right: a crescent that opens to the right."""
    c, r = 0.6, 0.75  # inner disc centre (c, 0) and radius; outer disc is the unit disc
    x = (1 - r * r + c * c) / (2 * c)  # the circles intersect at (x, +-y)
    y = math.sqrt(1 - x * x)
    outer = _arc(0, 0, 1, math.atan2(y, x), 2 * math.pi - math.atan2(y, x), 40)
    inner = _arc(c, 0, r, 2 * math.pi - math.atan2(y, x - c), math.atan2(y, x - c), 30)
    return np.concatenate([outer, inner])


# The asymmetric kinds have thick strokes (arrow shaft 35%, L arms 40% of the side) so that they survive 8x8 latents.
_POLYGONS: dict[str, list[tuple[float, float]] | np.ndarray] = {
    "circle": _arc(0, 0, 1, 0, 2 * math.pi, 64),
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3)]
    + [(-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "heart": _heart(),
    "arrow": [(-1, -0.35), (-0.2, -0.35), (-0.2, -1), (1, 0), (-0.2, 1), (-0.2, 0.35), (-1, 0.35)],
    "crescent": _crescent(),
    "L shape": [(-1, -1), (-0.2, -1), (-0.2, 0.2), (1, 0.2), (1, 1), (-1, 1)],
}
_UNIT_SHAPES = {name: _normalise(np.asarray(points, dtype=np.float64)) for name, points in _POLYGONS.items()}

# Caption names; "{dir}" marks a shape that is not mirror-symmetric, whose name states the direction it faces in the
# final image (drawn facing right, so a flip says "left").
_CAPTION_NAMES = {
    "arrow": "arrow pointing {dir}",
    "crescent": "crescent opening to the {dir}",
    "L shape": "L shape facing {dir}",
}


@dataclass(frozen=True)
class _Scene:
    """What to draw, in canvas pixels: a ``kind`` shape with bbox centre ``(cx, cy)`` and side ``side``."""

    canvas: int
    background: str
    colour: str
    kind: int
    cx: float
    cy: float
    side: float

    def bbox(self) -> tuple[float, float, float, float]:
        half = self.side / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


def _visible_box(scene: _Scene, crop: CropBox) -> tuple[float, float, float, float]:
    """The shape's bbox clipped to the crop, as fractions ``(x0, y0, x1, y1)`` of the crop (0..1)."""
    x0, y0, x1, y1 = scene.bbox()
    fx0 = (max(x0, crop.left) - crop.left) / crop.width
    fx1 = (min(x1, crop.left + crop.width) - crop.left) / crop.width
    fy0 = (max(y0, crop.top) - crop.top) / crop.height
    fy1 = (min(y1, crop.top + crop.height) - crop.top) / crop.height
    return fx0, fy0, max(fx1, fx0), max(fy1, fy0)


def _visible_fraction(scene: _Scene, crop: CropBox) -> float:
    fx0, fy0, fx1, fy1 = _visible_box(scene, crop)
    return (fx1 - fx0) * crop.width * (fy1 - fy0) * crop.height / scene.side**2


class Shapes(Dataset):
    """Procedural coloured shapes with class labels, captions and real crop/flip control metadata.

    Args:
        split: ``"train"`` or ``"val"``; the splits use different random streams.
        resolution: Output side length in pixels.
        length: Number of items.
        seed: Dataset seed; item ``i`` depends only on ``(seed, split, i)``.
        min_scale: Smallest random-resized-crop area, as a fraction of the canvas area.
        max_canvas_factor: The original canvas side is uniform in ``[resolution, max_canvas_factor * resolution]``.
        augment: Random-resized-crop and flip; if False the whole canvas is resized and never flipped.
    """

    CLASS_NAMES: tuple[str, ...] = tuple(_UNIT_SHAPES)
    COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        length: int = 100_000,
        seed: int = 0,
        min_scale: float = 0.8,
        max_canvas_factor: float = 2.0,
        augment: bool = True,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if max_canvas_factor < 1.0:
            raise ValueError(f"max_canvas_factor must be >= 1, got {max_canvas_factor}")
        self.split, self.resolution, self.length, self.seed = split, resolution, length, seed
        self.min_scale, self.max_canvas_factor, self.augment = min_scale, max_canvas_factor, augment

    @property
    def class_names(self) -> list[str]:
        """Shape kinds, indexed by class label."""
        return list(self.CLASS_NAMES)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, flip: bool | None = None) -> dict:
        """Item ``index``, optionally with the flip forced.

        Args:
            index: Item index in ``[0, length)``.
            flip: Force the horizontal flip on or off; None uses the item's own random draw. Everything else, the
                crop included, is unchanged, so ``sample(i, True)`` mirrors ``sample(i, False)`` exactly.

        Returns:
            ``{"image": (3, H, W) float32 in [-1, 1], "class_label": int64 scalar, "caption": str,
            "control": {"orig_size", "crop_coords", "crop_size": (2,), "flip": ()} float32}``.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for Shapes of length {self.length}")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        scene = self._scene(index, rng)
        crop = self._crop(scene, rng) if self.augment else CropBox(0, 0, scene.canvas, scene.canvas)
        drawn = self.augment and bool(rng.random() < 0.5)  # always consumed, so forcing `flip` changes nothing else
        flip = drawn if flip is None else flip
        image = self._draw(scene, crop)
        return {
            "image": torch.flip(image, dims=[-1]) if flip else image,
            "class_label": torch.from_numpy(np.array(scene.kind, dtype=np.int64)),
            "caption": self._caption(scene, crop, flip),
            "control": make_control((scene.canvas, scene.canvas), crop, flip),
        }

    def cache_key(self) -> dict:
        """What determines a latent cache of this split (see `data.latent_cache`).

        Item ``i``'s crop and flip are a pure function of ``(seed, split, i)``, the same in every epoch, so one
        stored view per item reproduces the uncached stream exactly.
        """
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "split": self.split,
            "resolution": self.resolution,
            "options": {
                "length": self.length,
                "seed": self.seed,
                "min_scale": self.min_scale,
                "max_canvas_factor": self.max_canvas_factor,
                "augment": self.augment,
            },
            "crops_per_item": 1,
            "flip_moments": False,
        }

    def cache_views(self, index: int) -> list[dict]:
        """The views a latent cache stores for item ``index``: the item itself."""
        return [self.sample(index)]

    def _scene(self, index: int, rng: np.random.Generator) -> _Scene:
        canvas = int(rng.integers(self.resolution, int(self.max_canvas_factor * self.resolution) + 1))
        n_colours = len(COLOURS)
        background = int(rng.integers(n_colours))
        colour = (background + 1 + int(rng.integers(n_colours - 1))) % n_colours  # never the background colour
        u_side, u_x, u_y = rng.random(3)
        side = canvas * (_SHAPE_SIDE[0] + (_SHAPE_SIDE[1] - _SHAPE_SIDE[0]) * u_side)
        u_x, u_y = 0.5 + _CENTRE_SPREAD * (u_x - 0.5), 0.5 + _CENTRE_SPREAD * (u_y - 0.5)
        return _Scene(
            canvas=canvas,
            background=self.COLOUR_NAMES[background],
            colour=self.COLOUR_NAMES[colour],
            kind=index % len(self.CLASS_NAMES),  # balanced classes, also in any contiguous slice
            cx=side / 2 + (canvas - side) * u_x,
            cy=side / 2 + (canvas - side) * u_y,
            side=side,
        )

    def _crop(self, scene: _Scene, rng: np.random.Generator) -> CropBox:
        # Rejection keeps the subject in view, so labels and captions stay true of the final image.
        for _ in range(_CROP_TRIES):
            crop = sample_resized_crop(scene.canvas, scene.canvas, rng, scale=(self.min_scale, 1.0))
            if _visible_fraction(scene, crop) >= _MIN_VISIBLE:
                return crop
        return CropBox(0, 0, scene.canvas, scene.canvas)

    def _draw(self, scene: _Scene, crop: CropBox) -> Tensor:
        # Render only the crop, at _SUPERSAMPLE x the output size (the crop's resize folded into the polygon
        # coordinates), then box-reduce: exact area-averaged antialiasing at a fixed, small cost per item.
        size = self.resolution * _SUPERSAMPLE
        image = Image.new("RGB", (size, size), COLOURS[scene.background])
        unit = _UNIT_SHAPES[self.CLASS_NAMES[scene.kind]]
        points = unit * (scene.side / 2) + (scene.cx - crop.left, scene.cy - crop.top)
        points *= (size / crop.width, size / crop.height)
        ImageDraw.Draw(image).polygon(points.ravel().tolist(), fill=COLOURS[scene.colour])
        return to_tensor(image.reduce(_SUPERSAMPLE))

    def _caption(self, scene: _Scene, crop: CropBox, flip: bool) -> str:
        fx0, fy0, fx1, fy1 = _visible_box(scene, crop)
        area = (fx1 - fx0) * (fy1 - fy0)
        size = next(word for bound, word in _SIZE_WORDS if area < bound)
        kind = self.CLASS_NAMES[scene.kind]
        name = _CAPTION_NAMES.get(kind, kind).format(dir="left" if flip else "right")
        article = "an" if scene.background[0] in "aeiou" else "a"
        return f"a {size} {scene.colour} {name} on {article} {scene.background} background"


class ShapesDataModule(ResumableDataModule):
    """The embedded default data: procedural Shapes, class labels, captions and control metadata.

    The training stream is resumable (see `data.sampling`): a run resumed from a checkpoint continues where the
    data stream stopped.

    Args:
        resolution: Image side length in pixels.
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes (0 renders in the main process).
        train_length: Items in the training split (one epoch).
        val_length: Items in the validation split, also used for test and predict.
        seed: Dataset seed (item content) and training shuffle seed.
        augment: Random-resized-crop and flip; if False whole canvases, never flipped.
        min_scale: Smallest random-resized-crop area as a fraction of the canvas; lower it for stronger crops
            (more varied control metadata, slower learning).
        latent_cache: Train from a latent cache of the training split (`data.latent_cache`): ``"auto"`` uses
            ``$LDMBENCH_CACHE`` or ``runs/cache``, in a folder named by what determines the cache, and builds it on
            first use when the run reads at least half of the items; a path uses that folder (built if absent);
            None trains from rendered images. The cache is exact: an item's crop and flip are fixed by its index.
    """

    def __init__(
        self,
        resolution: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        train_length: int = 100_000,
        val_length: int = 512,
        seed: int = 0,
        augment: bool = True,
        min_scale: float = 0.8,
        latent_cache: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        self.train_set = Shapes("train", resolution, train_length, seed=seed, min_scale=min_scale, augment=augment)
        self.val_set = Shapes("val", resolution, val_length, seed=seed, min_scale=min_scale, augment=augment)
        self.latent_cache = latent_cache
        self.cached_train_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """For ``fit``, find (or build) the latent cache of the training split when ``latent_cache`` is set."""
        if stage in ("fit", None) and self.latent_cache is not None and self.cached_train_set is None:
            from data.latent_cache import resolve_train_cache

            self.cached_train_set = resolve_train_cache(self, self.train_set, self.latent_cache)

    @property
    def num_classes(self) -> int:
        """Number of shape classes."""
        return len(Shapes.CLASS_NAMES)

    @property
    def resolution(self) -> int:
        """Image side length in pixels."""
        return self.train_set.resolution

    @property
    def class_names(self) -> list[str]:
        """Shape kinds, indexed by class label."""
        return list(Shapes.CLASS_NAMES)

    @property
    def control_names(self) -> tuple[str, ...]:
        """Control scalars this data records, in `data.transforms.CONTROL_NAMES` order."""
        return CONTROL_NAMES

    def train_dataloader(self) -> DataLoader:
        """Resumable shuffled stream of whole batches (cached latents instead of images when a cache is in use)."""
        dataset = self.cached_train_set if self.cached_train_set is not None else self.train_set
        return self._train_loader(dataset, len(dataset))

    def val_dataloader(self) -> DataLoader:
        """The validation split in fixed order."""
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """Same as `val_dataloader`."""
        return self._eval_loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        """Same as `val_dataloader`."""
        return self._eval_loader(self.val_set)
