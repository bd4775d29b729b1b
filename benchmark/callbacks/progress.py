"""A progress bar that counts what a step-budgeted run is measured in: optimizer steps out of ``max_steps``."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """`RichProgressBar` showing ``Step <global step>/<max_steps>`` and no ``v_num``.

    Lightning's bar counts batches of the current epoch and shows ``Epoch k/max_epochs - 1``. Runs of this benchmark
    are one long epoch bounded by ``max_steps`` (so ``max_epochs`` is -1), and a resumed run restarts the batch
    count mid-epoch, which printed ``Epoch 0/-2`` and ``400/149``. With ``max_steps`` unset it behaves as Lightning's.
    Takes `RichProgressBar`'s arguments.
    """

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._counts_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The parent shows `batch_idx + 1` as done; in step mode that is the number of optimizer steps taken.
        done = trainer.global_step - 1 if self._counts_steps() else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run folder's version number, shown as a float: not a metric
        return metrics
