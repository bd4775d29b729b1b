"""Write what `ldmbench predict` generates: PNG files and one ADM-format ``samples.npz`` for FID evaluators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.utils import save_image


class ImageWriter(BasePredictionWriter):
    """Save generated images (``predict_step`` outputs in [-1, 1]) as PNGs and, at the end, one ``samples.npz``.

    Images are named by their index in the prediction dataset (the batch's ``index`` field), so a run on any number
    of processes writes the same files. Under DDP the ranks' images are gathered on rank 0, the repeats that the
    distributed sampler pads the last batches with are dropped, and one ``samples.npz`` is written in index order.
    It holds ``arr_0``: (N, H, W, 3) uint8, the sample-batch format of the ADM evaluator (guided-diffusion
    ``evaluations/evaluator.py``) that DiT's ``sample_ddp.py`` writes, and ``index``: (N,) the dataset indices.

    Args:
        output_dir: Folder for ``<index>.png`` files and ``samples.npz``; None (default) writes into the run's
            prediction folder (the logger's ``log_dir``, ``<run>/predict/<checkpoint>/`` under ``ldmbench``).
        write_png: Write one PNG per image.
        write_npz: Write ``samples.npz`` at the end of prediction.
    """

    def __init__(self, output_dir: str | None = None, write_png: bool = True, write_npz: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.write_png = write_png
        self.write_npz = write_npz
        self._arrays: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._dir: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank asks: `trainer.log_dir` is a broadcast from rank 0 under DDP (a collective for all or none).
        log_dir = trainer.log_dir
        self._dir = self.output_dir or Path(log_dir or trainer.default_root_dir)
        self._arrays.clear()
        self._indices.clear()

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
        indices = _batch_indices(batch, batch_indices, batch_idx, trainer, len(images))
        assert self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        if self.write_png:
            for index, image in zip(indices.tolist(), images):
                save_image(image.float() / 255, self._dir / f"{index:06d}.png")
        if self.write_npz:
            self._arrays.append(images.permute(0, 2, 3, 1).numpy())
            self._indices.append(indices)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.write_npz:
            return
        local = (
            (np.concatenate(self._arrays), np.concatenate(self._indices)) if self._arrays else None
        )  # a rank may have had no batch at all
        self._arrays.clear()
        self._indices.clear()
        parts = [local]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            parts = [None] * dist.get_world_size() if trainer.is_global_zero else None
            dist.gather_object(local, parts, dst=0)  # every rank calls it, as a collective must be
        if not trainer.is_global_zero:
            return
        parts = [p for p in parts if p is not None]
        if not parts:
            return
        images, indices = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        # Sorted by index; a padded repeat carries the index of the sample it repeats, so keep one of each.
        indices, first = np.unique(indices, return_index=True)
        assert self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        np.savez(self._dir / "samples.npz", arr_0=images[first], index=indices)


def _batch_indices(batch: Any, batch_indices: Any, batch_idx: int, trainer: pl.Trainer, n: int) -> np.ndarray:
    """Dataset indices of a batch's images: ``batch["index"]``, else Lightning's, else a per-rank running count."""
    if isinstance(batch, dict) and "index" in batch:
        return torch.as_tensor(batch["index"]).cpu().numpy().astype(np.int64)
    if batch_indices is not None and len(batch_indices) == n:
        return np.asarray(batch_indices, dtype=np.int64)
    # Unknown positions: distinct per rank and batch (padded repeats can then not be recognised).
    start = (batch_idx * trainer.world_size + trainer.global_rank) * n
    return np.arange(start, start + n, dtype=np.int64)
