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

Whether the machine was free while a throughput was measured (`MachineLoad` for training steps, `LoadWindow` for any
block): the 1-minute load average at the end and the process's CPU time over wall time. A figure is flagged
(`throughput_flag`) when the load exceeded the cores, or, on the CPU, when CPU/wall fell below 0.9 × the torch
threads (the process did not get the cores it asked for). Leaderboard rows record both and the flag; a table never
shows a flagged figure where an unflagged one of the same row exists.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = [
    "GPU_PEAK_TFLOPS",
    "LoadWindow",
    "MachineLoad",
    "Throughput",
    "cpu_peak_tflops",
    "device_peak_tflops",
    "throughput_flag",
]

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


# ------------------------------------------------------------------------------------------------ machine load
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def throughput_flag(
    load1: float | None, cores: int, cpu_per_wall: float | None, threads: int, on_cpu: bool = True
) -> str | None:
    """Why a throughput measured with this machine load is not an idle machine's figure (None: it is).

    Args:
        load1: 1-minute load average at the end of the measurement.
        cores: Cores this process may run on.
        cpu_per_wall: The process's CPU time over wall time during the measurement.
        threads: torch threads it ran with.
        on_cpu: Whether the work ran on the CPU (on a GPU, CPU/wall says nothing about contention).
    """
    reasons = []
    if load1 is not None and load1 > cores:
        reasons.append(f"load {load1:.2f} > {cores} cores")
    if on_cpu and cpu_per_wall is not None and cpu_per_wall < 0.9 * threads:
        reasons.append(f"CPU/wall {cpu_per_wall:.2f} < 0.9 x {threads} threads")
    return "; ".join(reasons) or None


class LoadWindow:
    """The machine's load over a block: ``with LoadWindow() as w: ...`` then ``w.summary(prefix, on_cpu)``."""

    def __enter__(self) -> LoadWindow:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu

    def summary(self, prefix: str, on_cpu: bool = True) -> dict[str, Any]:
        """``<prefix>_load1``, ``<prefix>_cpu_per_wall`` and ``<prefix>_throughput_flag``."""
        return _load_summary(prefix, self.cpu_seconds, self.seconds, on_cpu)


def _load_summary(prefix: str, cpu_seconds: float, seconds: float, on_cpu: bool) -> dict[str, Any]:
    load1, threads, cores = _load1(), torch.get_num_threads(), _cores()
    ratio = cpu_seconds / seconds if seconds > 0 else None
    return {
        f"{prefix}_load1": load1,
        f"{prefix}_cpu_per_wall": ratio,
        f"{prefix}_throughput_flag": throughput_flag(load1, cores, ratio, threads, on_cpu),
    }


class MachineLoad(pl.Callback):
    """The machine's load while training steps ran: CPU time over wall time of the steps after ``warmup_steps``
    (from batch start to batch end: forward, backward, optimizer, not data loading or checkpoint writing) and the
    1-minute load average when training ends (`summary`)."""

    def __init__(self, warmup_steps: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self.seconds = self.cpu_seconds = 0.0
        self._start: tuple[float, float] | None = None
        self._on_cpu = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_cpu = pl_module.device.type == "cpu"
        self._first_step = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._start is None or trainer.global_step - self._first_step <= self.warmup_steps:
            return
        self.seconds += time.perf_counter() - self._start[0]
        self.cpu_seconds += time.process_time() - self._start[1]

    def summary(self, prefix: str = "train") -> dict[str, Any]:
        """``<prefix>_load1``, ``<prefix>_cpu_per_wall`` (None before any step after warm-up) and the flag."""
        return _load_summary(prefix, self.cpu_seconds, self.seconds, self._on_cpu)
