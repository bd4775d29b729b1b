"""`ldmbench perf`: training and sampling throughput of every baseline next to its reference implementation.

    python -m benchmark.cli perf --models dit,mdt --size tiny --batch 64 --precision fp32,bf16 --repeats 7 \
        --threads 1 --output leaderboards/perf/README.md

For each model at the chosen size the command builds *our* backbone and, where one is installable, the reference
implementation at the same configuration with our weights converted by our converters (so both compute the same
function; the largest output difference is reported as ``max |Δ|``):

==========  ==================================================  ============================================
model       ours                                                reference
==========  ==================================================  ============================================
dit         ``baselines.dit.DiT``                               diffusers ``DiTTransformer2DModel``
pixart      ``baselines.pixart_alpha.PixArt`` (text tokens)     diffusers ``PixArtTransformer2DModel``
mmdit       ``baselines.mmdit.MMDiT`` (text tokens + pooled)    diffusers ``SD3Transformer2DModel``
mdt         ``baselines.mdt.MDTv2`` (full + masked pass)        our DiT at equal width, depth and tokens
ldm         ``baselines.ldm_unet.LDMUNet`` (LDM-4's shape)       diffusers ``UNet2DConditionModel``
sdxl        ``baselines.ldm_unet.LDMUNet`` (SDXL's shape)        diffusers ``UNet2DConditionModel``
==========  ==================================================  ============================================

MDT has no installable reference; it is compared to a DiT of the same width and tokens, and the table gives the
FLOP ratio (its masked second pass and side-interpolater are extra work), so that ``ratio × FLOP ratio`` is the
work-normalised speed. A model whose module is not in the checkout is listed as skipped.

Measured, per model and precision, INTERLEAVED in one loop (ours, reference, matmul probe, ours, reference, ...) so
that a machine whose load changes during the run slows all of them alike; every figure is the median of
``--repeats``:

- training images/s: backbone forward + a mean-square loss + backward + ``AdamW.step`` + ``zero_grad``;
- sampling images/s: one denoiser forward under ``no_grad``, divided by ``--steps`` (one image needs ``steps``
  evaluations; classifier-free guidance would double them);
- achieved FLOP/s: the training step's FLOPs (``torch.utils.flop_counter.FlopCounterMode`` on the math SDPA
  backend, forward + backward) over its time, and its fraction of the fp32 matmul ceiling, measured in the same
  loop by a ``(batch·tokens, D) @ (D, 4D)`` matmul probe (the MLP's shape; median of its timings);
- peak tensor memory of one training step: ``torch.cuda.max_memory_allocated`` on a GPU, the profiler's allocation
  record on a CPU (:func:`peak_memory`).

``--breakdown`` profiles one more step of each implementation and splits it (:func:`time_split`): GEMM, convolution,
attention (naming the SDPA kernel that ran), optimizer, other ops and time outside any op, with the best ratio our
step could reach if only its GEMM, convolution and attention time were left. On a GPU the table adds MFU against
the data-sheet peak (`benchmark.callbacks.throughput.GPU_PEAK_TFLOPS`); ``--size XL`` is DiT-XL/2's configuration
(256 tokens, batch 32). ``scripts/gpu_perf.sh`` runs the GPU checks in one call.

bf16 means ``torch.autocast(dtype=torch.bfloat16)`` around forward and loss, with fp32 weights and optimizer.
``--compile`` times our backbone under ``torch.compile`` (inductor) against the eager reference and names the
compilation time in the row (minutes per model and precision on a 2-core CPU).

Official DiT comparison by hand (its ``models.py`` is not a package): clone facebookresearch/DiT at ed81ce2, then in
that directory ``from models import DiT_models; ref = DiT_models["DiT-S/2"](input_size=32, num_classes=1000)``,
``ref.load_state_dict({k.replace("adaLN_modulation.linear.", "adaLN_modulation.1."): v for k, v in
ours.state_dict().items()})`` with ``ours = baselines.dit.DiT(input_size=32, **dit_size("DiT-S/2"))``, and time it
with :func:`time_interleaved` exactly like the reference here, calling ``ref(x, t * 1000, labels)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conditioning.types import Cond

MODELS = ("dit", "mdt", "pixart", "mmdit", "ldm", "sdxl")
# Per size: (our size suffix, default tokens, default batch). "tiny" is the Shapes suite's size (8x8 latents); "B" and
# "XL" are for a GPU (DiT-XL/2 at 256 tokens is the 256x256 ImageNet model; batch 32 fills an H100's step).
SIZE_DEFAULTS = {"S": ("S/2", 256, 8), "tiny": ("tiny/2", 16, 64), "B": ("B/2", 256, 8), "XL": ("XL/2", 256, 32)}
# The UNets' rows of `baselines.ldm_unet.SIZES` at each size (no SDXL at B: its sizes are S, base and tiny).
UNET_SIZES = {
    "ldm": {"tiny": "LDM-tiny", "S": "LDM-S", "B": "LDM-B", "XL": "LDM-4"},
    "sdxl": {"tiny": "SDXL-tiny", "S": "SDXL-S", "XL": "SDXL"},
}
# What the time split counts as matrix work (self time of these ops; wrappers such as aten::linear are "other").
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}
ATTENTION_MARKS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
SPLIT_BUCKETS = ("gemm", "conv", "attention", "optimizer", "other_ops", "outside_ops")


class NotMeasured(Exception):
    """A model that has no configuration at the requested size (listed as skipped, like a missing module)."""


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


# --------------------------------------------------------------------------------------------------------------------
# Models: ours and the reference at the same configuration
# --------------------------------------------------------------------------------------------------------------------


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Small random weights (away from the zero init, where every comparison would be trivially 0 == 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _side(tokens: int, patch: int) -> int:
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"--tokens must be a square number, got {tokens}")
    return side * patch


def build_impls(name: str, size: str, batch: int, tokens: int, device: torch.device) -> tuple[list[Impl], str]:
    """Our implementation and its reference for ``name`` at ``size`` with ``tokens`` image tokens.

    Returns:
        ([ours, reference], note); raises ImportError when the model's module is not in this checkout.
    """
    suffix = SIZE_DEFAULTS[size][0]
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(batch, generator=gen).to(device)
    labels = (torch.arange(batch) % 10).to(device)

    if name in ("dit", "mdt"):
        from baselines.dit import DiT, dit_size
        from baselines.dit_convert import diffusers_config, to_diffusers_state_dict

        if name == "dit":
            kw = dit_size(f"DiT-{suffix}")
            side = _side(tokens, kw["patch_size"])
            ours = _randomise(DiT(input_size=side, num_classes=10, **kw)).to(device)
            ours.t_embedder.downscale_freq_shift = 1.0  # diffusers' frequency spacing, for the parity check
            import diffusers

            ref = diffusers.DiTTransformer2DModel(**diffusers_config(ours)).to(device)
            ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
            x = torch.randn(batch, 4, side, side, generator=gen).to(device)
            cond = Cond(label=labels)
            steps = t * 1000
            return [
                Impl("ours", ours, lambda: [ours(x, t, cond)]),
                Impl("diffusers", ref, lambda: [ref(x, timestep=steps, class_labels=labels).sample]),
            ], "diffusers DiTTransformer2DModel"
        from baselines.mdt import MDTv2, mdt_size

        kw = mdt_size(f"MDTv2-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ours = _randomise(MDTv2(input_size=side, num_classes=10, **kw)).to(device)
        n_blocks = len(list(ours.blocks()))
        dit_kw = {k: kw[k] for k in ("hidden_size", "num_heads", "patch_size")}
        dit = _randomise(DiT(input_size=side, num_classes=10, depth=kw["depth"], **dit_kw)).to(device)
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        cond = Cond(label=labels)
        return [
            Impl(
                "ours",
                ours,
                lambda: [ours(x, t, cond), ours(x, t, cond, mask_ratio=0.4)],  # the recipe's full + masked pass
                lambda: [ours(x, t, cond)],
            ),
            Impl("DiT (same width/depth)", dit, lambda: [dit(x, t, cond)]),
        ], f"our DiT, depth {kw['depth']} ({n_blocks} MDT blocks)"

    if name == "pixart":
        import diffusers

        from baselines.pixart_alpha import PixArt, diffusers_config, pixart_size, to_diffusers_state_dict

        kw = pixart_size(f"PixArt-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ctx_len, ctx_dim = (8, 32) if size == "tiny" else (77, 768)
        ours = _randomise(PixArt(input_size=side, context_dim=ctx_dim, **kw)).to(device)
        ref = diffusers.PixArtTransformer2DModel(**diffusers_config(ours)).to(device)
        ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        tokens_ = torch.randn(batch, ctx_len, ctx_dim, generator=gen).to(device)
        mask = torch.ones(batch, ctx_len, dtype=torch.bool, device=device)
        cond = Cond(tokens=tokens_, token_mask=mask)
        steps = t * 1000
        extra = {"resolution": None, "aspect_ratio": None}
        return [
            Impl("ours", ours, lambda: [ours(x, t, cond)]),
            Impl(
                "diffusers",
                ref,
                lambda: [
                    ref(
                        x,
                        encoder_hidden_states=tokens_,
                        timestep=steps,
                        encoder_attention_mask=mask,
                        added_cond_kwargs=extra,
                    ).sample
                ],
            ),
        ], f"diffusers PixArtTransformer2DModel, {ctx_len} text tokens of width {ctx_dim}"

    if name == "mmdit":
        import diffusers

        from baselines.mmdit import MMDiT, diffusers_config, mmdit_size, to_diffusers_state_dict

        kw = mmdit_size(f"mmDiT-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ctx_len, ctx_dim, pooled_dim = (8, 32, 24) if size == "tiny" else (77, 768, 768)
        ours = _randomise(MMDiT(input_size=side, context_dim=ctx_dim, pooled_dim=pooled_dim, **kw)).to(device)
        ref = diffusers.SD3Transformer2DModel(**diffusers_config(ours)).to(device)
        ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        tokens_ = torch.randn(batch, ctx_len, ctx_dim, generator=gen).to(device)
        pooled = torch.randn(batch, pooled_dim, generator=gen).to(device)
        cond = Cond(tokens=tokens_, pooled=pooled)
        steps = t * 1000
        return [
            Impl("ours", ours, lambda: [ours(x, t, cond)]),
            Impl(
                "diffusers",
                ref,
                lambda: [ref(x, encoder_hidden_states=tokens_, pooled_projections=pooled, timestep=steps).sample],
            ),
        ], f"diffusers SD3Transformer2DModel, {ctx_len} text tokens of width {ctx_dim}"

    if name in ("ldm", "sdxl"):
        return _unet_impls(name, size, batch, tokens, device, t, labels, gen)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


# SDXL's micro-conditioning: original size, crop corner and target size, added to the time embedding.
SDXL_CONTROLS = ["orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w"]


def unet_kwargs(size_name: str) -> dict[str, object]:
    """``LDMUNet`` keyword arguments of a row of the UNet size table (conditioning widths as the row sets them)."""
    from baselines.ldm_unet import ldm_unet_size

    spec = ldm_unet_size(size_name)
    names = ("model_channels", "channel_mult", "num_res_blocks", "transformer_depth", "mid_transformer_depth")
    names += ("num_heads", "head_dim", "context_dim", "time_scale_shift", "norm_groups")
    return {key: getattr(spec, key) for key in names}


def _unet_impls(
    name: str,
    size: str,
    batch: int,
    tokens: int,
    device: torch.device,
    t: Tensor,
    labels: Tensor,
    gen: torch.Generator,
) -> tuple[list[Impl], str]:
    """Our LDM UNet (``ldm``: LDM-4's shape, class token; ``sdxl``: SDXL's, text + pooled + size/crop) and diffusers'
    ``UNet2DConditionModel`` with our weights converted by ``baselines/ldm_unet_convert.py``.

    The latent is the transformers' (side = 2·√tokens: 32x32 at S, 8x8 at tiny), so every row trains on the same
    input. diffusers' UNet has no class table: it receives our table's rows as its one context token, precomputed
    (a lookup, no FLOPs), so both compute the same function.
    """
    import diffusers

    from baselines.ldm_unet import LDMUNet
    from baselines.ldm_unet_convert import diffusers_config, to_diffusers

    side = _side(tokens, 2)
    if size not in UNET_SIZES[name]:
        raise NotMeasured(f"no {name} UNet at size {size} (sizes: {', '.join(UNET_SIZES[name])})")
    size_name = UNET_SIZES[name][size]
    kw = unet_kwargs(size_name)
    x = torch.randn(batch, 4, side, side, generator=gen).to(device)
    steps = t * 1000
    if name == "ldm":
        ours = _randomise(LDMUNet(in_channels=4, num_classes=10, **kw)).to(device)
        cond = Cond(label=labels)
        table = ours.class_embedder.embedding_table.weight.detach().clone()
        context, added, linear = table[labels][:, None], None, False  # LDM: 1x1-convolution projections
        note = f"diffusers UNet2DConditionModel ({size_name}, 1x1-conv projections, class as one context token)"
    else:
        ctx_len, pooled_dim = (8, 12) if size == "tiny" else (77, 1280)
        ours = LDMUNet(in_channels=4, num_classes=None, pooled_dim=pooled_dim, control_names=SDXL_CONTROLS, **kw)
        ours = _randomise(ours).to(device)
        context = torch.randn(batch, ctx_len, int(kw["context_dim"]), generator=gen).to(device)
        pooled = torch.randn(batch, pooled_dim, generator=gen).to(device)
        control = (torch.rand(batch, len(SDXL_CONTROLS), generator=gen) * 8 * side).to(device)
        cond = Cond(tokens=context, pooled=pooled, control=control)
        added, linear = {"text_embeds": pooled, "time_ids": control}, True
        note = f"diffusers UNet2DConditionModel ({size_name}, {ctx_len} text tokens, pooled + size/crop)"
    ref = diffusers.UNet2DConditionModel(**diffusers_config(ours, sample_size=side, linear_projection=linear))
    state, _ = to_diffusers(ours, linear_projection=linear)
    ref.load_state_dict(state)
    ref = ref.to(device)
    return [
        Impl("ours", ours, lambda: [ours(x, t, cond)]),
        Impl("diffusers", ref, lambda: [ref(x, steps, context, added_cond_kwargs=added).sample]),
    ], note


def _max_diff(impls: list[Impl]) -> float:
    """Largest output difference of ours and the converted reference, in eval mode (diffusers' DiT drops labels
    at random in train mode); NaN where the second implementation is not a conversion of ours (MDT)."""
    if impls[1].label != "diffusers":
        return float("nan")
    modes = [impl.module.training for impl in impls]
    try:
        with torch.no_grad():
            for impl in impls:
                impl.module.eval()
            a, b = (impl.forward()[0] for impl in impls)
    finally:
        for impl, mode in zip(impls, modes, strict=True):
            impl.module.train(mode)
    return float((a - b).abs().max())


# --------------------------------------------------------------------------------------------------------------------
# The run and its table
# --------------------------------------------------------------------------------------------------------------------


def measure(
    models: Sequence[str],
    size: str = "tiny",
    batch: int | None = None,
    tokens: int | None = None,
    precisions: Sequence[str] = ("fp32", "bf16"),
    repeats: int = 7,
    steps: int = 250,
    device: str = "cpu",
    compile: bool = False,
    breakdown: bool = False,
    channels_last: bool = False,
    gradient_checkpointing: bool = False,
) -> list[dict[str, object]]:
    """Measure every model × precision; one row per implementation (see the module docstring for the figures).

    Args:
        models: names from :data:`MODELS`.
        size: "S" (DiT-S/2 widths) or "tiny" (the Shapes suite's size).
        batch: images per step (default 8 at S, 64 at tiny).
        tokens: image tokens (default 256 at S = 32x32 latents, 16 at tiny = 8x8 latents).
        precisions: "fp32" and/or "bf16" (autocast).
        repeats: timed rounds (medians are reported).
        steps: sampler steps per image, for sampling images/s.
        device: "cpu" or "cuda".
        compile: time our backbone under ``torch.compile`` (inductor); its FLOPs and output difference are the eager
            model's, and the first compiled step + sampling call (compilation included) is reported as ``compile_s``.
        breakdown: profile one more step of each implementation and add its :func:`time_split` to the row
            (``split``), with ``ratio_bound`` on our row: the ratio ours / reference if everything in our step but
            its GEMMs, convolutions and attention took no time.
        channels_last: store both implementations' 4-D weights channels-last (NHWC convolutions; for the UNets).
        gradient_checkpointing: recompute blocks in the backward pass in both implementations (ours through
            `benchmark.callbacks.fast_paths.GradientCheckpointing`, diffusers' ``enable_gradient_checkpointing``).
    """
    if size not in SIZE_DEFAULTS:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZE_DEFAULTS)}")
    dev = torch.device(device)
    batch = batch or SIZE_DEFAULTS[size][2]
    tokens = tokens or SIZE_DEFAULTS[size][1]
    rows: list[dict[str, object]] = []
    for name in models:
        try:
            impls, note = build_impls(name, size, batch, tokens, dev)
        except ImportError as err:
            hint = "; `pip install diffusers` for the reference" if (err.name or "").startswith("diffusers") else ""
            rows.append({"model": name, "impl": "skipped", "note": f"not available in this checkout ({err}){hint}"})
            continue
        except NotMeasured as err:
            rows.append({"model": name, "impl": "skipped", "note": str(err)})
            continue
        _apply_options(impls, channels_last, gradient_checkpointing)
        diff = _max_diff(impls)
        width = next(m for m in impls[0].module.modules() if isinstance(m, nn.Linear)).in_features
        width = getattr(impls[0].module, "hidden_size", width)
        probe = MatmulProbe(batch * tokens, width, 4 * width, dev)
        # FLOPs are counted on the eager models, before any compilation (the counter does not see compiled kernels).
        plans = []
        for precision in precisions:
            trainers = [Trainer(impl, precision, dev) for impl in impls]
            plans.append((precision, trainers, [tr.train_flops() for tr in trainers]))
        if compile:
            impls[0].module.compile()
        for precision, trainers, flops in plans:
            compile_s = None
            if compile:  # the first call compiles (again for each precision: autocast changes the graph)
                start = time.perf_counter()
                trainers[0].step()
                trainers[0].sample()
                compile_s = time.perf_counter() - start
            mem = [peak_memory(tr.step, dev) for tr in trainers]
            times, ceiling = time_interleaved(trainers, probe, repeats)
            splits = [tr.time_split() for tr in trainers] if breakdown else [None] * len(trainers)
            peak = _device_peak(dev, precision)
            for i, (impl, tm) in enumerate(zip(impls, times, strict=True)):
                label = impl.label
                if i == 0 and compile_s is not None:
                    label = f"{label} (torch.compile: {compile_s:.0f} s to compile)"
                rows.append(
                    {
                        "model": name,
                        "impl": label,
                        "compile_s": compile_s if i == 0 else None,
                        "precision": precision,
                        "train_img_s": batch / tm["train_s"],
                        "sample_img_s": batch / (tm["sample_s"] * steps),
                        "train_gflop_img": flops[i] / batch / 1e9,
                        "achieved_gflop_s": flops[i] / tm["train_s"] / 1e9,
                        "ceiling_gflop_s": ceiling / 1e9,
                        "fraction_of_ceiling": flops[i] / tm["train_s"] / ceiling,
                        "mfu": flops[i] / tm["train_s"] / peak if peak else None,
                        "peak_mib": mem[i] / 2**20,
                        "ratio_train": times[1]["train_s"] / tm["train_s"] if i == 0 else 1.0,
                        "ratio_sample": times[1]["sample_s"] / tm["sample_s"] if i == 0 else 1.0,
                        "ratio_train_iqr": (
                            ratio_quartiles(tm["train_rounds"], times[1]["train_rounds"]) if i == 0 else None
                        ),
                        "flop_ratio": flops[0] / flops[1] if i == 0 else 1.0,
                        "max_diff": diff,
                        "note": note,
                        "split": splits[i],
                        "ratio_bound": _ratio_bound(splits) if i == 0 and breakdown else None,
                    }
                )
        del plans
    return rows


def _apply_options(impls: Sequence[Impl], channels_last: bool, gradient_checkpointing: bool) -> None:
    """The memory options, applied alike to every implementation of a row."""
    from benchmark.callbacks.fast_paths import GradientCheckpointing

    for impl in impls:
        if channels_last:
            impl.module.to(memory_format=torch.channels_last)
        if gradient_checkpointing:
            if hasattr(impl.module, "enable_gradient_checkpointing"):  # a diffusers model
                impl.module.enable_gradient_checkpointing()
            else:
                GradientCheckpointing().enable(impl.module)


def _device_peak(device: torch.device, precision: str) -> float | None:
    """The GPU's data-sheet peak FLOP/s at ``precision`` (for MFU); None on a CPU, where the measured matmul probe
    is the ceiling (the table's "% fp32 matmul ceiling")."""
    if device.type != "cuda":
        return None
    from benchmark.callbacks.throughput import device_peak_tflops

    tflops = device_peak_tflops(device, precision)
    return tflops * 1e12 if tflops else None


def _compute_share(split: dict[str, object]) -> float:
    return float(split["gemm"]) + float(split["conv"]) + float(split["attention"])


def _ratio_bound(splits: Sequence[dict[str, object] | None]) -> float | None:
    """ours / reference if our step kept only its GEMM, convolution and attention time (profiled times of both)."""
    if len(splits) < 2 or splits[0] is None or splits[1] is None:
        return None
    ours, ref = splits[0], splits[1]
    return float(ref["profiled_s"]) / (float(ours["profiled_s"]) * _compute_share(ours))


def hardware(device: str, threads: int) -> str:
    """One line: CPU model (from /proc/cpuinfo), threads, GPU if any, torch version, load average."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return f"{cpu} ({os.cpu_count()} cores), {threads} torch thread(s){gpu}, torch {torch.__version__}"


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def render(rows: list[dict[str, object]], header: str) -> str:
    """The markdown table of :func:`measure`'s rows under ``header``."""
    lines = [
        header,
        "",
        "| model | impl | precision | train img/s | ours/ref | sample img/s | ours/ref | train GFLOP/img | "
        "GFLOP/s | % fp32 matmul ceiling | MFU | FLOP ratio | peak MiB | max abs diff |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["impl"] == "skipped":
            lines.append(f"| {r['model']} | skipped: {r['note']} | | | | | | | | | | | | |")
            continue
        mine = str(r["impl"]).startswith("ours")
        ratio_train = f"{r['ratio_train']:.2f}x" if mine else ""
        if mine and r.get("ratio_train_iqr"):
            ratio_train += " [{:.2f}, {:.2f}]".format(*r["ratio_train_iqr"])
        ratio_sample = f"{r['ratio_sample']:.2f}x" if mine else ""
        flop_ratio = f"{r['flop_ratio']:.2f}" if mine else ""
        diff = f"{r['max_diff']:.1e}" if mine and r["max_diff"] == r["max_diff"] else ""
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['precision']} | {r['train_img_s']:.3g} | {ratio_train} | "
            f"{r['sample_img_s']:.3g} | {ratio_sample} | {r['train_gflop_img']:.3f} | {r['achieved_gflop_s']:.1f} | "
            f"{100 * r['fraction_of_ceiling']:.0f} % | {_percent(r.get('mfu'))} | {flop_ratio} | "
            f"{r['peak_mib']:.0f} | {diff} |"
        )
    split_rows = [r for r in rows if r.get("split")]
    if split_rows:
        lines += ["", *render_split(split_rows)]
    return "\n".join(lines) + "\n"


def _percent(value: object) -> str:
    return "" if value is None else f"{100 * float(value):.1f} %"


def render_split(rows: list[dict[str, object]]) -> list[str]:
    """Markdown lines of the time split of each row (:func:`time_split`) and our rows' ratio bound."""
    lines = [
        "Where one profiled training step goes (share of its wall time; see `time_split`). `bound` is ours / "
        "reference if everything in our step but GEMM, convolution and attention took no time.",
        "",
        "| model | impl | precision | profiled ms | GEMM | conv | attention | optimizer | other ops | outside ops | "
        "attention kernel | bound |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        sp = r["split"]
        bound = "" if r.get("ratio_bound") is None else f"{r['ratio_bound']:.2f}x"
        shares = " | ".join(f"{100 * float(sp[k]):.0f} %" for k in SPLIT_BUCKETS)
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['precision']} | {1e3 * float(sp['profiled_s']):.1f} | {shares} | "
            f"{sp['attention_kernels']} | {bound} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> str:
    """Parse ``ldmbench perf`` arguments, measure, print the table and write it to ``--output`` (if given)."""
    parser = argparse.ArgumentParser(prog="ldmbench perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="dit,mdt,pixart,mmdit,ldm,sdxl", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--size", default="tiny", choices=list(SIZE_DEFAULTS))
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 8 at S, 64 at tiny)")
    parser.add_argument("--tokens", type=int, default=None, help="image tokens (default: 256 at S, 16 at tiny)")
    parser.add_argument("--resolution", type=int, default=None, help="latent side; sets tokens = (side / 2)^2")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=250, help="sampler steps per image (sampling images/s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="markdown file to write (e.g. leaderboards/perf/README.md)")
    parser.add_argument(
        "--compile", action="store_true", help="time our backbone under torch.compile (minutes to compile on a CPU)"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="NHWC weights in both implementations (UNet convolutions)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute blocks in the backward pass in both implementations (memory for compute)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="profile one more step of each implementation: where its time goes (GEMM, conv, attention, optimizer, "
        "other ops, outside ops), the attention kernel that ran, and the best ratio our GEMMs would allow",
    )
    args = parser.parse_args(argv)
    # The profiler (peak memory, --breakdown) would print kineto's start/stop trace lines and, on a CUDA build without
    # a GPU, a device-count error around the table; a user's own KINETO_LOG_LEVEL wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    unknown = [m for m in args.models.split(",") if m and m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    tokens = (args.resolution // 2) ** 2 if args.resolution else args.tokens
    load_before = _load()
    rows = measure(
        [m for m in args.models.split(",") if m],
        size=args.size,
        batch=args.batch,
        tokens=tokens,
        precisions=[p for p in args.precision.split(",") if p],
        repeats=args.repeats,
        steps=args.steps,
        device=args.device,
        compile=args.compile,
        breakdown=args.breakdown,
        channels_last=args.channels_last,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    command = "ldmbench perf " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    header = (
        f"Hardware: {hardware(args.device, args.threads)}; load average (1/5/15 min) {load_before} before, "
        f"{_load()} after.\n\nCommand: `{command}`\n\n"
        + "".join(
            f"Option: {label} in both implementations.\n\n"
            for label, on in (
                ("channels-last weights", args.channels_last),
                ("gradient checkpointing", args.gradient_checkpointing),
            )
            if on
        )
        + f"Ratios are ours / reference (> 1: ours faster), timed interleaved, median of {args.repeats}; the "
        "training ratio's brackets are the quartiles of the per-round ratios (a range that holds 1.0 is a tie); "
        f"sampling images/s is one denoiser forward per step × {args.steps} steps (no CFG)."
    )
    table = render(rows, header)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    return table


if __name__ == "__main__":
    main()
