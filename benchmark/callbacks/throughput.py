"""Training throughput and cost: images/s, step time, achieved FLOP/s, MFU, peak memory, sampling images/s.

Logged metrics (units in the names), averaged over the steps since the last log and excluding the first
``warmup_steps`` steps of the run (compilation, allocator growth, data-loader start-up):

- ``perf/train_images_per_s``: training images per second, all ranks together.
- ``perf/step_time_s``: wall time of one optimizer step (data loading included).
- ``perf/achieved_tflop_per_s``: ``train_gflops_per_image`` × images/s, all ranks together. The per-image cost is
  the engine's count of one forward + backward of the training loss (``benchmark.flops``), so it is the model's
  useful work, not the hardware's.
- ``perf/mfu``: achieved FLOP/s over the peak of the device × number of devices, where the peak is known (a table
  of GPU dense bf16 / fp32 peaks; on CPUs a matmul probe measured once and cached in
  ``~/.cache/ldmbench/cpu_peak.json``).
- ``perf/peak_memory_gib``: peak allocated accelerator memory (CUDA), or the process's peak resident memory on CPU.
- ``perf/sampling_images_per_s``: images per second under an evaluation protocol, measured at the end of training
  (and every ``sampling_every_n_steps``) when a protocol is given.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["GPU_PEAK_TFLOPS", "Throughput", "cpu_peak_tflops", "device_peak_tflops"]

log = logging.getLogger(__name__)

GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # Dense (no sparsity) peaks from the vendors' data sheets, TFLOP/s; bf16 on tensor cores, fp32 without TF32.
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 SXM": {"bf16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "A10G": {"bf16": 70.0, "fp32": 31.2},  # A10G: bf16 dense 70 (tensor), fp32 31.2
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "RTX 4090": {"bf16": 165.0, "fp32": 82.6},
    "RTX 3090": {"bf16": 71.0, "fp32": 35.6},
    "V100": {"bf16": 0.0, "fp32": 15.7},  # no bf16 tensor cores
    "T4": {"bf16": 0.0, "fp32": 8.1},
}
"""Per-GPU peaks in TFLOP/s, matched by substring of ``torch.cuda.get_device_name()`` (longest name first)."""


def _precision_kind(precision: str | int | None) -> str:
    return "bf16" if precision is not None and ("bf16" in str(precision) or "16" in str(precision)) else "fp32"


def cpu_peak_tflops(threads: int | None = None, cache: Path | None = None) -> float:
    """fp32 matmul FLOP/s of this CPU at the current thread count, measured once and cached (TFLOP/s).

    Args:
        threads: Thread count the probe runs at (default: ``torch.get_num_threads()``); part of the cache key.
        cache: Cache file (default ``~/.cache/ldmbench/cpu_peak.json``).
    """
    threads = threads or torch.get_num_threads()
    cache = cache or Path.home() / ".cache" / "ldmbench" / "cpu_peak.json"
    key = f"{_cpu_name()}|threads={threads}|torch={torch.__version__}"
    table: dict[str, float] = {}
    if cache.exists():
        try:
            table = json.loads(cache.read_text())
        except json.JSONDecodeError:
            table = {}
    if key in table:
        return table[key]
    n, repeats = 1024, 5
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    peak = 2 * n**3 / best / 1e12
    table[key] = peak
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(table, indent=2))
    return peak


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def device_peak_tflops(device: torch.device, precision: str | int | None = None) -> float | None:
    """Peak TFLOP/s of one device at the training precision, or None when unknown."""
    kind = _precision_kind(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
            if gpu in name:
                peak = GPU_PEAK_TFLOPS[gpu][kind]
                return peak or None
        return None
    if device.type == "cpu":
        return cpu_peak_tflops()
    return None


def train_gflops_per_image(module: Any) -> float:
    """The engine's training cost per image (GFLOPs), from ``benchmark.flops.train_gflops_per_image``."""
    from benchmark import flops

    return float(flops.train_gflops_per_image(module))


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class Throughput(pl.Callback):
    """Log training throughput, achieved FLOP/s, MFU and peak memory; optionally sampling speed.

    Args:
        warmup_steps: Steps at the start of training left out of every measurement.
        log_every_n_steps: Steps per logged average.
        protocol: Optional evaluation protocol (``benchmark.evaluation.EvalProtocol``); its sampler, steps and
            guidance are used to time ``sampling_images`` images at the end of training.
        sampling_images: Images generated for the sampling measurement.
        sampling_every_n_steps: Also measure sampling every this many steps (0: only at the end of training).
    """

    def __init__(
        self,
        warmup_steps: int = 10,
        log_every_n_steps: int = 50,
        protocol: Any | None = None,
        sampling_images: int = 64,
        sampling_every_n_steps: int = 0,
    ) -> None:
        if warmup_steps < 0 or log_every_n_steps < 1 or sampling_images < 1 or sampling_every_n_steps < 0:
            raise ValueError("warmup_steps, sampling_every_n_steps >= 0; log_every_n_steps, sampling_images >= 1")
        self.warmup_steps = warmup_steps
        self.log_every_n_steps = log_every_n_steps
        self.protocol = protocol
        self.sampling_images = sampling_images
        self.sampling_every_n_steps = sampling_every_n_steps
        self.gflops_per_image: float | None = None
        self.last: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self._images = 0
        self._seconds = 0.0
        self._steps = 0
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self.gflops_per_image = train_gflops_per_image(pl_module)
        except Exception as e:  # noqa: BLE001  (a model the counter cannot trace still gets images/s)
            log.warning("Throughput: could not count training FLOPs (%s); FLOP/s and MFU are not logged", e)
            self.gflops_per_image = None
        self._peak = device_peak_tflops(pl_module.device, trainer.precision)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        step = trainer.global_step
        if self._start is None or step <= self.warmup_steps:
            return
        self._seconds += time.perf_counter() - self._start
        self._images += _batch_size(batch) * trainer.world_size
        self._steps += 1
        if self._steps >= self.log_every_n_steps:
            self._log(trainer, pl_module)
        if self.sampling_every_n_steps and step % self.sampling_every_n_steps == 0:
            self._log_sampling(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._steps:
            self._log(trainer, pl_module)
        if self.protocol is not None:
            self._log_sampling(pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = max(self._seconds, 1e-9)
        metrics = {
            "perf/train_images_per_s": self._images / seconds,
            "perf/step_time_s": seconds / self._steps,
            "perf/peak_memory_gib": _peak_memory_gib(pl_module.device),
        }
        if self.gflops_per_image is not None:
            achieved = self.gflops_per_image * self._images / seconds / 1e3  # TFLOP/s
            metrics["perf/achieved_tflop_per_s"] = achieved
            if self._peak:
                metrics["perf/mfu"] = achieved / (self._peak * trainer.world_size)
        self.last.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._reset()

    def _log_sampling(self, pl_module: pl.LightningModule) -> None:
        if self.protocol is None:
            return
        from benchmark.evaluation.generate import generate

        protocol = self.protocol.replace(num_samples=self.sampling_images, batch_size=self.sampling_images)
        generated = generate(pl_module, protocol, protocol.guidance_scale)
        self.last["perf/sampling_images_per_s"] = generated.images_per_s
        trainer = pl_module.trainer
        for logger in trainer.loggers:
            logger.log_metrics({"perf/sampling_images_per_s": generated.images_per_s}, step=trainer.global_step)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("image", "latent", "class_label"):
            if key in batch and hasattr(batch[key], "shape"):
                return int(batch[key].shape[0])
        for value in batch.values():
            if hasattr(value, "shape") and value.dim() > 0:
                return int(value.shape[0])
    if isinstance(batch, list | tuple) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    raise ValueError("Throughput: cannot tell the batch size of this batch")
