"""In-training evaluation: the suite's metrics every N steps, so metric-vs-compute curves come from one run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from benchmark.evaluation.protocol import EvalProtocol

__all__ = ["Evaluation"]

log = logging.getLogger(__name__)


class Evaluation(pl.Callback):
    """Run `benchmark.evaluation.evaluate` every ``every_n_steps`` steps (and at the end) with fewer samples.

    Numeric metrics are logged as ``eval/<name>`` together with ``eval/train_images_seen`` and, when the engine's
    FLOP counter works for the model, ``eval/train_pflop`` (training compute so far), so a logger's table plots metric
    against compute directly. Every evaluation is also appended as one JSON line to
    ``<log_dir>/evaluation.jsonl`` (protocol and step included). All ranks take part in sampling (each generates a
    disjoint slice); rank 0 writes.

    Args:
        protocol: The suite's protocol; ``num_samples`` is replaced by ``num_samples`` below.
        every_n_steps: Evaluation period in optimizer steps (0: only at the end of training).
        num_samples: Samples per guidance setting in each evaluation (fewer than a final evaluation).
        at_end: Also evaluate at the end of training.
    """

    def __init__(
        self,
        protocol: EvalProtocol | None = None,
        every_n_steps: int = 500,
        num_samples: int = 200,
        at_end: bool = True,
    ) -> None:
        if every_n_steps < 0 or num_samples < 2:
            raise ValueError("every_n_steps must be >= 0 and num_samples >= 2")
        self.protocol = (protocol or EvalProtocol()).replace(num_samples=num_samples)
        self.every_n_steps = every_n_steps
        self.at_end = at_end
        self.history: list[dict[str, Any]] = []
        self._gflops: float | None = None
        self._images_seen = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from benchmark.callbacks.throughput import train_gflops_per_image

        try:
            self._gflops = train_gflops_per_image(pl_module)
        except Exception as e:  # noqa: BLE001
            log.warning("Evaluation: no FLOP count for this model (%s); curves are against steps and images", e)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, *args) -> None:
        from benchmark.callbacks.throughput import _batch_size

        self._images_seen += _batch_size(batch) * trainer.world_size
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = self.history and self.history[-1]["step"] == trainer.global_step
        if self.at_end and trainer.global_step > 0 and not done:
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Evaluate now, log and record the metrics; returns them."""
        from benchmark.evaluation import evaluate

        metrics = evaluate(pl_module, self.protocol, trainer.datamodule, progress=False)
        metrics["step"] = trainer.global_step
        metrics["train_images_seen"] = self._images_seen
        if self._gflops is not None:
            metrics["train_pflop"] = self._gflops * self._images_seen / 1e6
        self.history.append(metrics)
        numeric = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float) and v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
        if trainer.is_global_zero:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "evaluation.jsonl", "a") as f:
                f.write(json.dumps(metrics, default=str) + "\n")
        return metrics
