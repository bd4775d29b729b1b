"""Stop training when a compute budget is spent: training FLOPs, images seen or wall-clock seconds.

A fixed-budget comparison states its budget in a unit that does not drift with hardware: training FLOPs, counted as
the backbone's forward + backward FLOPs per image (from the FLOP counter, so every architecture is measured the same
way) times the images seen (global batch × optimizer steps × gradient accumulation). Images seen and wall-clock
seconds are offered as alternatives; whichever limit is reached first stops the run, at an optimizer-step boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from data.compat import set_max_steps


def train_flops_per_image(module: pl.LightningModule) -> float:
    """Training FLOPs (forward + backward, not MACs) of one image for ``module``, from the engine's FLOP counter.

    ``benchmark.flops.train_gflops_per_image`` accounts for recipes that call the backbone more than once per image.
    """
    from benchmark import flops

    return float(flops.train_gflops_per_image(module)) * 1e9


def batch_size_of(batch: Any) -> int:
    """Number of images in a batch dict (``image`` or ``latent``), tensor or sequence."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for key in ("image", "latent"):
            if key in batch:
                return int(batch[key].shape[0])
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return int(value.shape[0])
    if isinstance(batch, list | tuple) and batch:
        return batch_size_of(batch[0])
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__}")


class ComputeBudget(pl.Callback):
    """Stop ``fit`` when the training-FLOPs, images-seen or wall-clock budget is spent.

    Images are counted per micro-batch on each rank and multiplied by the world size, so the count is the global
    number of images the optimizer has seen, whatever the batch size, accumulation or number of devices. FLOPs used
    are ``flops_per_image × images_seen``. The check runs after each optimizer step, so a run stops at the first
    step whose total reaches the budget: ``ceil(budget / (flops_per_image × global_batch))`` steps for a fixed
    global batch. When the global batch is known at the start (``batch_size`` of the DataModule), the trainer's
    ``max_steps`` is set to that number too, so progress bars show the right total.

    The counters are saved in checkpoints, so a resumed run continues spending the same budget. Logged every step:
    ``budget/train_flops``, ``budget/images_seen``, ``budget/fraction`` (of the tightest budget) and
    ``budget/train_seconds``.

    Args:
        train_flops: Budget in training FLOPs (forward + backward, all ranks together); None for no FLOPs limit.
        images: Budget in images seen; None for no limit.
        seconds: Budget in wall-clock seconds of training steps, summed over attempts (a resumed run does not
            restart the clock); None for no limit. The clock runs from the end of one step's callbacks to the end of
            the next optimizer step (data loading, forward, backward, optimizer, EMA), so in-training evaluation,
            sample grids and checkpoint writing neither spend the budget nor lower ``train_images_per_s``.
        flops_per_image: Training FLOPs per image; None measures it from the module with the FLOP counter.
        warmup_steps: Optimizer steps left out of the throughput estimate (``images_per_second``).
    """

    def __init__(
        self,
        train_flops: float | None = None,
        images: int | None = None,
        seconds: float | None = None,
        flops_per_image: float | None = None,
        warmup_steps: int = 2,
    ) -> None:
        if train_flops is None and images is None and seconds is None:
            raise ValueError("ComputeBudget needs at least one of train_flops, images, seconds")
        for name, value in (("train_flops", train_flops), ("images", images), ("seconds", seconds)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.train_flops = None if train_flops is None else float(train_flops)
        self.images = None if images is None else int(images)
        self.seconds = None if seconds is None else float(seconds)
        self.flops_per_image = flops_per_image
        self.warmup_steps = warmup_steps
        # Saved in checkpoints.
        self.images_seen = 0
        self.train_seconds = 0.0
        self.stopped_by: str | None = None
        # Per attempt only.
        self._clock: float | None = None
        self._last_step = -1
        self._rate_start: tuple[float, int] | None = None  # (train_seconds, images_seen) at the end of warm-up
        self._rate_steps = 0

    # ------------------------------------------------------------------------------------------- accounting
    @property
    def flops_used(self) -> float:
        return float(self.flops_per_image or 0.0) * self.images_seen

    def fraction(self) -> float:
        """The largest spent fraction among the budgets set (1.0 = the run is over)."""
        parts = []
        if self.train_flops is not None:
            parts.append(self.flops_used / self.train_flops)
        if self.images is not None:
            parts.append(self.images_seen / self.images)
        if self.seconds is not None:
            parts.append(self.train_seconds / self.seconds)
        return max(parts)

    def images_per_second(self) -> float | None:
        """Training throughput after warm-up (global images per second), None before enough steps."""
        if self._rate_start is None:
            return None
        seconds, images = self.train_seconds - self._rate_start[0], self.images_seen - self._rate_start[1]
        return images / seconds if seconds > 0 and images > 0 else None

    def planned_steps(self, global_batch: int, pl_module: pl.LightningModule | None = None) -> int | None:
        """Optimizer steps the FLOPs / images budget allows at a fixed global batch (None: only a time limit).

        Args:
            global_batch: Images per optimizer step, all ranks together.
            pl_module: Measures ``flops_per_image`` from it first if unknown, as ``on_fit_start`` would (a latent
                cache asks before the fit starts how far the run will read).
        """
        if self.flops_per_image is None and pl_module is not None:
            self.flops_per_image = train_flops_per_image(pl_module)
        limits = []
        if self.train_flops is not None:
            limits.append(self.train_flops / (self.flops_per_image * global_batch))
        if self.images is not None:
            limits.append(self.images / global_batch)
        return max(1, math.ceil(min(limits) - 1e-9)) if limits else None

    def summary(self) -> dict[str, Any]:
        return {
            "budget_train_flops": self.train_flops,
            "budget_images": self.images,
            "budget_seconds": self.seconds,
            "flops_per_image": self.flops_per_image,
            "train_flops": self.flops_used,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "train_images_per_s": self.images_per_second(),
            "stopped_by": self.stopped_by,
        }

    # ------------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flops_per_image is None:
            self.flops_per_image = train_flops_per_image(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        batch = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
        if isinstance(batch, int) and batch > 0:
            planned = self.planned_steps(batch * trainer.accumulate_grad_batches * trainer.world_size)
            if planned is not None:
                set_max_steps(trainer, planned if trainer.max_steps < 0 else min(trainer.max_steps, planned))
        self._clock = time.perf_counter()
        if not any(isinstance(c, _RestartClock) and c.budget is self for c in trainer.callbacks):
            trainer.callbacks.append(_RestartClock(self))  # last: runs after every other callback's batch end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.train_seconds += now - self._clock
        self._clock = now
        self.images_seen += batch_size_of(batch) * trainer.world_size
        if trainer.global_step == self._last_step:  # inside gradient accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        self._rate_steps += 1
        if self._rate_steps == self.warmup_steps:
            self._rate_start = (self.train_seconds, self.images_seen)
        self._check(trainer, pl_module)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank counts the same images (world_size × its own batch), so every rank reaches the same decision.
        # The wall clock may differ slightly between ranks: rank 0 decides and broadcasts.
        reasons = []
        if self.train_flops is not None and self.flops_used >= self.train_flops:
            reasons.append("train_flops")
        if self.images is not None and self.images_seen >= self.images:
            reasons.append("images")
        if self.seconds is not None:
            spent = trainer.strategy.broadcast(self.train_seconds, src=0)
            if spent >= self.seconds:
                reasons.append("seconds")
        pl_module.log_dict(
            {
                "budget/train_flops": self.flops_used,
                "budget/images_seen": float(self.images_seen),
                "budget/fraction": self.fraction(),
                "budget/train_seconds": self.train_seconds,
            },
            on_step=True,
            on_epoch=False,
            batch_size=1,
        )
        if reasons:
            self.stopped_by = reasons[0]
            trainer.should_stop = True

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "flops_per_image": self.flops_per_image,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = int(state_dict["images_seen"])
        self.train_seconds = float(state_dict["train_seconds"])
        if self.flops_per_image is None:
            self.flops_per_image = state_dict.get("flops_per_image")


class _RestartClock(pl.Callback):
    """Restarts a `ComputeBudget`'s clock after every other callback's ``on_train_batch_end`` has run.

    Appended to the end of ``trainer.callbacks`` when training starts (after the checkpoint callbacks, which
    Lightning already moves to the end), so the time those callbacks take is not counted as training time.
    """

    def __init__(self, budget: ComputeBudget) -> None:
        self.budget = budget

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.budget._clock = time.perf_counter()
