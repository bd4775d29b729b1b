"""Write what `ldmbench predict` generates: PNG files and an ADM-format ``.npz`` for FID evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.utils import save_image


class ImageWriter(BasePredictionWriter):
    """Save generated images (``predict_step`` outputs in [-1, 1]) as PNGs and, at the end, one ``samples.npz``.

    The ``.npz`` holds ``arr_0``: (N, H, W, 3) uint8, the sample-batch format of the ADM evaluator
    (guided-diffusion ``evaluations/evaluator.py``) that DiT's ``sample_ddp.py`` writes.

    Args:
        output_dir: Folder for ``<rank>_<batch>_<i>.png`` files and ``samples.npz``.
        write_png: Write one PNG per image.
        write_npz: Collect all images into ``samples.npz`` on each rank (``samples_rank<r>.npz`` when distributed).
    """

    def __init__(self, output_dir: str = "samples", write_png: bool = True, write_npz: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.write_png = write_png
        self.write_npz = write_npz
        self._arrays: list[np.ndarray] = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        images = ((prediction.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.write_png:
            for i, image in enumerate(images):
                save_image(image.float() / 255, self.output_dir / f"{trainer.global_rank}_{batch_idx:06d}_{i:03d}.png")
        if self.write_npz:
            self._arrays.append(images.permute(0, 2, 3, 1).numpy())

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.write_npz and self._arrays):
            return
        name = "samples.npz" if trainer.world_size == 1 else f"samples_rank{trainer.global_rank}.npz"
        np.savez(self.output_dir / name, arr_0=np.concatenate(self._arrays))
        self._arrays.clear()
