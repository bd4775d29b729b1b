"""Shapes: the embedded, procedural default dataset (no files, no network).

Each item is a photograph-like view of one filled shape of a named colour on a lit background of another named
colour. The "original photo" is a square canvas of random side (in pixels) of at most the training resolution,
rendered at that size; a random crop of it is then resized to the training resolution (bicubic) and maybe
mirrored. The control metadata (original size, crop box, flip) is the geometry of that real augmentation, and each
control shows in the pixels, as it does on photographs (SDXL's reason for micro-conditioning):

- **original size**: a small original is upsampled and visibly soft (8 px at 32 px training is blown up 4x);
- **crop**: crops reach well inside the canvas and can cut the object; the background is lit from the upper left
  (a linear brightness ramp), so the brightness at the image edges tells which part of the canvas was kept;
- **flip**: mirroring moves the light to the upper right, which a human (and a small CNN) sees on every kind.

A fixed share of the items (``reference_fraction``) is the reference view: the whole canvas at the largest original
size, never cropped, drawn sharp. Its control is `conditioning.conditioner.default_control` (orig = crop = the
resolution, no flip), the control that sampling and fd use by default, so that control is in distribution.

The class label is the shape kind; the caption describes the FINAL image ("a large red triangle on a blue
background"). Crops keep at least ``_MIN_VISIBLE`` of the shape's bounding box, so the label stays true.

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
_SUPERSAMPLE = 4  # the original canvas is drawn at 4x its size, then area-averaged: antialiased edges
_MIN_VISIBLE = 0.6  # a crop must keep at least this fraction of the shape's bounding box (the class stays readable)
_CROP_TRIES = 10  # crops drawn before falling back to the whole canvas
_UNCROPPED = 0.2  # share of the non-reference items shown whole (a clean original-size axis)
# Object-centric, like ImageNet photos: a large shape near the canvas centre (learnable in minutes on a CPU).
_SHAPE_SIDE = (0.55, 0.8)  # shape bounding-box side as a fraction of the canvas side
_CENTRE_SPREAD = 0.3  # the bbox centre ranges over this middle fraction of the positions that keep it on the canvas
_LIGHT = 0.2  # background brightness ramp: +_LIGHT (towards white) at the lit corner, -_LIGHT (towards black) opposite
# Upper bounds on the visible bbox's area as a fraction of the final image: about a third of the items each
# (tertiles of 4000 training items).
_SIZE_WORDS = ((0.50, "small"), (0.64, "medium"), (math.inf, "large"))

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
    """Procedural coloured shapes with class labels, captions and real original-size / crop / flip metadata.

    Args:
        split: ``"train"`` or ``"val"``; the splits use different random streams.
        resolution: Output side length in pixels.
        length: Number of items.
        seed: Dataset seed; item ``i`` depends only on ``(seed, split, i)``.
        min_scale: Smallest random-resized-crop area, as a fraction of the canvas area.
        max_canvas_factor: The largest original canvas side, as a multiple of ``resolution`` (the reference view's
            size; 1 keeps the reference control equal to `conditioning.conditioner.default_control`).
        min_canvas_factor: The smallest original canvas side, as a multiple of ``resolution``.
        reference_fraction: Share of the items that are the reference view (largest canvas, uncropped).
        augment: Random original size, crop and flip; if False every item is the reference view, never flipped.
    """

    CLASS_NAMES: tuple[str, ...] = tuple(_UNIT_SHAPES)
    COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

    def __init__(
        self,
        split: str = "train",
        resolution: int = 32,
        length: int = 100_000,
        seed: int = 0,
        min_scale: float = 0.25,
        max_canvas_factor: float = 1.0,
        min_canvas_factor: float = 0.25,
        reference_fraction: float = 0.15,
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
        if not 0.0 < min_canvas_factor <= max_canvas_factor:
            raise ValueError(
                f"need 0 < min_canvas_factor <= max_canvas_factor, got {min_canvas_factor}, {max_canvas_factor}"
            )
        if not 0.0 <= reference_fraction <= 1.0:
            raise ValueError(f"reference_fraction must be in [0, 1], got {reference_fraction}")
        self.split, self.resolution, self.length, self.seed = split, resolution, length, seed
        self.min_scale, self.max_canvas_factor, self.augment = min_scale, max_canvas_factor, augment
        self.min_canvas_factor, self.reference_fraction = min_canvas_factor, reference_fraction

    @property
    def class_names(self) -> list[str]:
        """Shape kinds, indexed by class label."""
        return list(self.CLASS_NAMES)

    @property
    def canvas_range(self) -> tuple[int, int]:
        """Smallest and largest original canvas side in pixels (the largest is the reference view's).

        The smallest is at least 4 px (a shape needs a few pixels to have a kind), or the largest if that is less.
        """
        hi = max(1, round(self.max_canvas_factor * self.resolution))
        return min(hi, max(4, round(self.min_canvas_factor * self.resolution))), hi

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
        scene, crop, drawn = self._layout(index)
        flip = drawn if flip is None else flip
        image = self._draw(scene, crop)
        return {
            "image": torch.flip(image, dims=[-1]) if flip else image,
            "class_label": torch.from_numpy(np.array(scene.kind, dtype=np.int64)),
            "caption": self._caption(scene, crop, flip),
            "control": make_control((scene.canvas, scene.canvas), crop, flip),
        }

    def describe(self, index: int) -> dict:
        """Caption, class label and flip of item ``index`` without drawing it (the same draws as `sample`)."""
        scene, crop, flip = self._layout(index)
        return {"caption": self._caption(scene, crop, flip), "label": scene.kind, "flip": float(flip)}

    def control(self, index: int) -> dict[str, Tensor]:
        """Control metadata of item ``index`` without drawing it (the same draws as `sample`)."""
        scene, crop, flip = self._layout(index)
        return make_control((scene.canvas, scene.canvas), crop, flip)

    def visible_fraction(self, index: int, grid: int = 256) -> float:
        """Fraction of item ``index``'s shape AREA (not bbox) inside its crop, from a ``grid``-px mask of the canvas.

        The renderer's own ground truth for cut objects: 1.0 means the whole shape is in the image.
        """
        scene, crop, _ = self._layout(index)
        scale = grid / scene.canvas
        mask = Image.new("L", (grid, grid), 0)
        unit = _UNIT_SHAPES[self.CLASS_NAMES[scene.kind]]
        points = (unit * (scene.side / 2) + (scene.cx, scene.cy)) * scale
        ImageDraw.Draw(mask).polygon(points.ravel().tolist(), fill=255)
        m = np.asarray(mask, dtype=np.float64)
        x0, y0 = round(crop.left * scale), round(crop.top * scale)
        x1, y1 = round((crop.left + crop.width) * scale), round((crop.top + crop.height) * scale)
        return float(m[y0:y1, x0:x1].sum() / max(m.sum(), 1.0))

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
                "min_canvas_factor": self.min_canvas_factor,
                "reference_fraction": self.reference_fraction,
                "augment": self.augment,
                "renderer": "photo-v2",  # original-size / crop / lighting renderer of issue 24
            },
            "crops_per_item": 1,
            "flip_moments": False,
        }

    def cache_views(self, index: int) -> list[dict]:
        """The views a latent cache stores for item ``index``: the item itself."""
        return [self.sample(index)]

    def _layout(self, index: int) -> tuple[_Scene, CropBox, bool]:
        """The scene, crop and drawn flip of item ``index`` (every random draw of the item, in a fixed order)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for Shapes of length {self.length}")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        lo, hi = self.canvas_range
        u_ref, u_whole, u_canvas = rng.random(3)  # always consumed, so every option changes only what it names
        reference = not self.augment or u_ref < self.reference_fraction
        canvas = hi if reference else lo + min(int(u_canvas * (hi - lo + 1)), hi - lo)
        scene = self._scene(index, canvas, rng)
        whole = reference or u_whole < _UNCROPPED
        crop = CropBox(0, 0, canvas, canvas) if whole else self._crop(scene, rng)
        drawn = self.augment and bool(rng.random() < 0.5)
        return scene, crop, drawn

    def _scene(self, index: int, canvas: int, rng: np.random.Generator) -> _Scene:
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
        # Rejection keeps most of the subject in view, so labels and captions stay true of the final image; crops
        # may still cut it (up to 1 - _MIN_VISIBLE of its bbox).
        for _ in range(_CROP_TRIES):
            crop = sample_resized_crop(scene.canvas, scene.canvas, rng, scale=(self.min_scale, 1.0))
            if _visible_fraction(scene, crop) >= _MIN_VISIBLE:
                return crop
        return CropBox(0, 0, scene.canvas, scene.canvas)

    def _draw(self, scene: _Scene, crop: CropBox) -> Tensor:
        # 1. The original "photo": the canvas at its own pixel size, the shape antialiased by area averaging.
        n, big = scene.canvas, scene.canvas * _SUPERSAMPLE
        mask = Image.new("L", (big, big), 0)
        points = _UNIT_SHAPES[self.CLASS_NAMES[scene.kind]] * (scene.side / 2) + (scene.cx, scene.cy)
        ImageDraw.Draw(mask).polygon((points * _SUPERSAMPLE).ravel().tolist(), fill=255)
        alpha = np.asarray(mask.reduce(_SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
        # Light from the upper-left corner: a linear ramp in x + y, towards white where lit, towards black opposite.
        coords = (np.arange(n, dtype=np.float32) + 0.5) / n
        light = _LIGHT * (1.0 - coords[None, :] - coords[:, None])[..., None]  # (n, n, 1) in [-_LIGHT, _LIGHT]
        bg = np.asarray(COLOURS[scene.background], dtype=np.float32)
        lit = np.where(light > 0, bg + light * (255.0 - bg), bg * (1.0 + light))
        rgb = lit * (1.0 - alpha) + np.asarray(COLOURS[scene.colour], dtype=np.float32) * alpha
        photo = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
        # 2. The crop, resized to the training resolution: small originals are upsampled, hence soft.
        if crop.width == crop.height == n == self.resolution:
            return to_tensor(photo)  # the reference view at 1x: no resampling
        size = (self.resolution, self.resolution)
        return to_tensor(photo.resize(size, Image.Resampling.BICUBIC, box=crop.pil_box()))

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
        augment: Random original size, crop and flip; if False every item is the reference view (largest canvas,
            uncropped), never flipped.
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
        min_scale: float = 0.25,
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
