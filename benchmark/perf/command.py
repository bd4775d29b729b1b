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
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from benchmark.perf.impls import MODELS, SIZE_DEFAULTS, Impl, NotMeasured, _max_diff, build_impls
from benchmark.perf.timing import SPLIT_BUCKETS, MatmulProbe, Trainer, peak_memory, ratio_quartiles, time_interleaved

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
