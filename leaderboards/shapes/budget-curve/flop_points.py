"""A checkpoint at each of several training-FLOP points of one run: the budget curve's checkpoints.

A suite row stops at the first optimizer step whose FLOPs reach its budget (`benchmark.callbacks.ComputeBudget`);
with a constant learning rate the weights at that step of one long run are the weights such a row ends with (the
curve's 1e12 checkpoint and the suite's 1e12 row of DiT score the same to all digits). Used by `_train.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from benchmark.callbacks.budget import ComputeBudget


class FlopPoints(pl.Callback):
    """Save ``flops<P>e12-step<N>.ckpt`` at the first step whose training FLOPs reach each point.

    Args:
        points: Training FLOPs at which to save.
        folder: Where; default ``<the run's log folder>/flop-points``.
    """

    def __init__(self, points: list[float], folder: str | None = None) -> None:
        self.points = sorted(float(p) for p in points)
        self.folder = folder

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # The ComputeBudget callback of the run has already counted this step (it is listed first).
        budget = next(cb for cb in trainer.callbacks if isinstance(cb, ComputeBudget))
        while self.points and budget.flops_used >= self.points[0]:
            point = self.points.pop(0)
            folder = Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "flop-points")
            folder.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(folder / f"flops{point / 1e12:g}e12-step{trainer.global_step}.ckpt"))
