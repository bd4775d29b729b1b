"""Sample grids of EMA weights at fixed seeds and classes: the picture people look at first."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid, save_image

_PADDING = 2  # make_grid's padding between cells, in pixels

log = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """Write a PNG grid of EMA samples every ``every_n_steps`` training steps and at the end of training.

    Row ``i`` shows class ``i`` (for class-conditional models), columns are fixed seeds, so grids from different
    steps and runs are directly comparable. Files go to ``<log_dir>/samples/step_XXXXXXX.png`` and the grid is
    also sent to the logger when it can show images (W&B, TensorBoard).

    Args:
        every_n_steps: Sampling period in optimizer steps; 0 samples only at the end of training.
        num_classes: How many classes (rows) to show; ``None`` shows every class of the model, up to 16.
        samples_per_class: Number of columns (seeds) per row.
        seed: Seed of the sampling noise; the same seed gives the same starting noise at every step.
        upscale: Nearest-neighbour upscaling factor of the saved PNG so that small images are visible.
        use_ema: Sample with the EMA weights (the DiT protocol) rather than the raw weights.
        label_rows: Write each row's class name in a left margin, when the DataModule has ``class_names``.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_classes: int | None = None,
        samples_per_class: int = 8,
        seed: int = 0,
        upscale: int = 4,
        use_ema: bool = True,
        label_rows: bool = True,
    ) -> None:
        if every_n_steps < 0 or samples_per_class < 1 or upscale < 1:
            raise ValueError("every_n_steps must be >= 0, samples_per_class and upscale >= 1")
        self.every_n_steps = every_n_steps
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.upscale = upscale
        self.use_ema = use_ema
        self.label_rows = label_rows
        self.last_path: Path | None = None
        self._last_step: int | None = None  # the step whose grid was drawn last

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._write(trainer, pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            self._write(trainer, pl_module, trainer.global_step)

    def labels(self, pl_module: pl.LightningModule) -> torch.Tensor | None:
        if pl_module.conditioner.semantic != "class":
            return None
        total = getattr(pl_module, "num_classes", None) or getattr(pl_module.backbone, "num_classes", None) or 16
        rows = min(self.num_classes or min(total, 16), total)
        return torch.arange(rows).repeat_interleave(self.samples_per_class)

    def captions(self, pl_module: pl.LightningModule, datamodule: Any = None) -> list[str] | None:
        """For caption models: one caption per row, the first validation items' when the data can tell them without
        drawing (Shapes' ``describe``), else `conditioning.conditioner.EXAMPLE_CAPTIONS` (a Shapes model asked for
        "a photo of a cat" would show nothing about what it learned)."""
        if pl_module.conditioner.semantic != "caption":
            return None
        from conditioning.conditioner import EXAMPLE_CAPTIONS

        rows = min(self.num_classes or 4, len(EXAMPLE_CAPTIONS))
        val_set = getattr(datamodule, "val_set", None)
        if hasattr(val_set, "describe"):
            chosen = [val_set.describe(i)["caption"] for i in range(rows)]
        else:
            chosen = list(EXAMPLE_CAPTIONS[:rows])
        return [caption for caption in chosen for _ in range(self.samples_per_class)]

    def render(self, pl_module: pl.LightningModule, datamodule: Any = None) -> torch.Tensor:
        """The grid as a (3, H, W) float tensor in [0, 1]; ``datamodule`` gives caption models their rows' captions."""
        labels, captions = self.labels(pl_module), self.captions(pl_module, datamodule)
        rows = 4 if labels is None else labels.shape[0] // self.samples_per_class
        rows = rows if captions is None else len(captions) // self.samples_per_class
        # One noise per column, shared by every row: rows then differ only by their class.
        generator = torch.Generator().manual_seed(self.seed)
        columns = torch.randn((self.samples_per_class, *pl_module.latent_shape), generator=generator)
        noise = columns.repeat(rows, 1, 1, 1)
        images = pl_module.sample_images(
            labels=labels, captions=captions, num_samples=noise.shape[0], use_ema=self.use_ema, noise=noise
        )
        images = (images.float().cpu() + 1) / 2
        if self.upscale > 1:
            images = F.interpolate(images, scale_factor=self.upscale, mode="nearest")
        return make_grid(images, nrow=self.samples_per_class, padding=_PADDING, pad_value=1.0)

    def row_names(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str] | None:
        """The class name of each row, or None when rows are not classes or the data does not name them."""
        names = getattr(trainer.datamodule, "class_names", None) if self.label_rows else None
        labels = self.labels(pl_module) if names else None
        if labels is None:
            return None
        return [str(names[int(k)]) for k in labels[:: self.samples_per_class]]

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Draw and save the grid of ``step`` once (not again at train end, nor per accumulated micro-batch)."""
        if step == self._last_step:
            return
        self._last_step = step
        # Called on every rank: under DDP `trainer.log_dir` is a broadcast from rank 0, and a collective that rank 0
        # calls alone waits for ever. Only the sampling and the file are rank 0's.
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        if trainer.is_global_zero:
            self._save(trainer, pl_module, out_dir / f"step_{step:07d}.png")
        elif getattr(pl_module, "device_mesh", None) is not None:  # a sharded (FSDP) EMA samples collectively
            self.render(pl_module, trainer.datamodule)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path) -> None:
        grid = self.render(pl_module, trainer.datamodule)
        names = self.row_names(trainer, pl_module)
        if names is not None:
            grid = label_rows(grid, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        self.last_path = path
        log.info("sample grid written to %s", path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=trainer.global_step)


def label_rows(grid: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Prefix a (3, H, W) grid in [0, 1] with a white margin holding one name per row, vertically centred."""
    image = to_pil_image(grid.clamp(0, 1))
    font = ImageFont.load_default()
    width = max(int(font.getlength(name)) for name in names) + 3 * _PADDING
    canvas = Image.new("RGB", (image.width + width, image.height), "white")
    canvas.paste(image, (width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = (image.height - _PADDING) / len(names)
    for row, name in enumerate(names):
        top, bottom = font.getbbox(name)[1::2]  # centre by hand: the bitmap fallback font has no text anchors
        centre = _PADDING + (row + 0.5) * row_height
        draw.text((_PADDING, centre - (top + bottom) / 2), name, fill="black", font=font)
    return pil_to_tensor(canvas).float() / 255
