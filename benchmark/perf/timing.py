"""Timing primitives of `ldmbench perf`: the matmul ceiling probe, peak memory, one implementation's training
step (:class:`Trainer`), the interleaved timing loop and the profiler's time split of a step."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# What the time split counts as matrix work (self time of these ops; wrappers such as aten::linear are "other").
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}
ATTENTION_MARKS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
SPLIT_BUCKETS = ("gemm", "conv", "attention", "optimizer", "other_ops", "outside_ops")


# --------------------------------------------------------------------------------------------------------------------
# Timing primitives
# --------------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(m: int, k: int, n: int, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """FLOP/s of an fp32 ``(m, k) @ (k, n)`` matmul, the best of ``repeats`` timings (the ceiling, not the median).

    Args:
        m, k, n: the matmul's shape (``batch·tokens``, width, 4·width for a transformer MLP).
        device: where to run it.
        repeats: timed calls after one warm-up.

    Returns:
        2·m·k·n / seconds of the fastest call.
    """
    probe = MatmulProbe(m, k, n, torch.device(device))
    probe()
    return max(2 * m * k * n / probe() for _ in range(repeats))


class MatmulProbe:
    """One timed fp32 matmul at a fixed shape; calling it returns the seconds it took."""

    def __init__(self, m: int, k: int, n: int, device: torch.device) -> None:
        self.a = torch.randn(m, k, device=device)
        self.b = torch.randn(k, n, device=device)
        self.flops = 2 * m * k * n
        self.device = device

    def __call__(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        self.a @ self.b
        _sync(self.device)
        return time.perf_counter() - start


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of tensors allocated while ``fn()`` runs, over what was allocated before.

    On a GPU, CUDA's ``max_memory_allocated``. On a CPU, the same quantity from the profiler's allocation record
    (``profile_memory``): the running sum of every allocation and free, in time order, at its maximum. (The
    process's RSS cannot show it: the allocator keeps freed pages, so a second model reuses the first one's.)
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return max(itertools.accumulate(nbytes for _, nbytes in events), default=0)


# --------------------------------------------------------------------------------------------------------------------
# What is measured: an implementation with its inputs and its training step
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Impl:
    """A backbone with a closure that runs it on fixed inputs.

    Attributes:
        label: name in the table ("ours", "diffusers", ...).
        module: the backbone (trained by the step).
        forward: runs the training forward on the fixed inputs; returns the output tensors the loss reads.
        sample_forward: one sampling evaluation (defaults to ``forward``).
    """

    label: str
    module: nn.Module
    forward: Callable[[], Sequence[Tensor]]
    sample_forward: Callable[[], Sequence[Tensor]] | None = None


class Trainer:
    """The training step of one implementation: forward + loss + backward + AdamW step, optionally under autocast."""

    def __init__(self, impl: Impl, precision: str, device: torch.device) -> None:
        self.impl, self.device = impl, device
        self.optimizer = torch.optim.AdamW([p for p in impl.module.parameters() if p.requires_grad], lr=1e-4)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def loss(self) -> Tensor:
        with self.autocast:
            outputs = self.impl.forward()
            return sum(out.float().square().mean() for out in outputs)

    def step(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sample(self) -> None:
        with torch.no_grad(), self.autocast:
            (self.impl.sample_forward or self.impl.forward)()

    def timed(self, fn: Callable[[], None]) -> float:
        _sync(self.device)
        start = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - start

    def train_flops(self) -> int:
        """FLOPs of one training forward + backward (math attention, so the counter sees every matmul)."""
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            self.loss().backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def time_split(self) -> dict[str, object]:
        """Where one training step's time goes, from the profiler: see :func:`time_split`."""
        return time_split(self.step, self.device)


def _classify(event: object) -> str:
    """The time-split bucket of one profiler event (by its name, and by its ancestors for the optimizer)."""
    name = event.name
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        parent = parent.cpu_parent
    if name in GEMM_OPS:
        return "gemm"
    if any(mark in name for mark in ATTENTION_MARKS):
        return "attention"
    if "conv" in name and name.startswith("aten::"):
        return "conv"
    return "other_ops"


def time_split(step: Callable[[], None], device: torch.device) -> dict[str, object]:
    """Profile one call of ``step`` and split its wall time into what bounds it and what code can remove.

    Buckets (fractions of the profiled wall time): ``gemm`` (matrix products: ``mm``, ``addmm``, ``bmm``, ...),
    ``conv`` (convolutions and their gradients), ``attention`` (the SDPA kernels, forward and backward),
    ``optimizer`` (everything inside ``Optimizer.step`` / ``zero_grad``), ``other_ops`` (every other op:
    normalisation, activations, elementwise, copies, reshapes, autograd bookkeeping) and ``outside_ops`` (time in no
    op: Python between ops, or on a GPU the time the device is idle). On a CPU each op counts its self CPU time; on
    a GPU its self device time (the kernels it launched). ``attention_kernels`` names the SDPA implementations that
    ran (e.g. ``flash_attention_for_cpu``, ``flash_attention``, ``efficient_attention``, ``cudnn_attention``,
    ``math`` when SDPA decomposed into matmuls).

    The profiler adds a few microseconds to every op, so at the Shapes size (thousands of small ops) the profiled
    step is slower than the timed one and ``other_ops`` is inflated; the GEMM / conv / attention share is then a lower
    bound of the unprofiled one.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        _sync(device)
        wall = time.perf_counter() - start
    buckets = dict.fromkeys(SPLIT_BUCKETS[:-1], 0.0)  # outside_ops is what they leave of the wall time
    kernels: set[str] = set()
    sdpa_called = False
    for event in prof.events():
        if event.device_type.name != "CPU":  # kernels themselves; their time is on the op that launched them
            continue
        seconds = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        buckets[_classify(event)] += seconds
        if event.name == "aten::scaled_dot_product_attention":
            sdpa_called = True
        if event.name.startswith("aten::_scaled_dot_product_") and "backward" not in event.name:
            kernels.add(event.name.removeprefix("aten::_scaled_dot_product_").removeprefix("attention_math"))
    if sdpa_called and not kernels:
        kernels.add("math")
    busy = sum(buckets.values())
    split: dict[str, object] = {key: value / wall for key, value in buckets.items()}
    split["outside_ops"] = max(0.0, wall - busy) / wall
    split["profiled_s"] = wall
    split["attention_kernels"] = ", ".join(sorted(k or "math" for k in kernels)) or "none"
    return split


def time_interleaved(
    trainers: Sequence[Trainer], probe: MatmulProbe, repeats: int, warmup: int = 1
) -> tuple[list[dict[str, float]], float]:
    """Median step and sampling seconds of each trainer and the median matmul-probe FLOP/s, timed in rotation.

    The probe's median (not its best) is the ceiling: on a shared machine the best call is a lucky moment, while
    the medians of the probe and of the steps are taken under the same load.

    Args:
        trainers: the implementations to compare (same configuration).
        probe: the matmul ceiling probe, timed in the same rotation.
        repeats: timed rounds; every round times each trainer's step, then each one's sampling call, then the probe.
        warmup: untimed rounds first (allocator and kernel warm-up).
    """
    for _ in range(warmup):
        for tr in trainers:
            tr.step()
            tr.sample()
        probe()
    train = [[] for _ in trainers]
    sample = [[] for _ in trainers]
    probes = []
    for _ in range(repeats):
        for i, tr in enumerate(trainers):
            train[i].append(tr.timed(tr.step))
        for i, tr in enumerate(trainers):
            sample[i].append(tr.timed(tr.sample))
        probes.append(probe())
    return [
        {"train_s": statistics.median(a), "sample_s": statistics.median(b), "train_rounds": a, "sample_rounds": b}
        for a, b in zip(train, sample, strict=True)
    ], probe.flops / statistics.median(probes)


def ratio_quartiles(ours: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """First and third quartile of the per-round ratio reference / ours (> 1: ours faster).

    Each round times both implementations back to back, so a round's ratio cancels the load of that moment; the
    spread of the round ratios says whether a median ratio near 1 is a difference or a tie.
    """
    ratios = [r / o for o, r in zip(ours, reference, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, q3
