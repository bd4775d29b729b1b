"""Build one row: train (or resume) an entry under the suite's budget, evaluate it under the suite's protocol.

Each (entry, seed) trains in its own folder ``<output>/<entry>/seed<S>-<key>/`` (checkpoints, CSV logs, the
resolved config), so a row killed during training resumes from its last checkpoint, and one killed during evaluation
re-evaluates the final weights without training again. `eval_checkpoint` builds a row from an existing checkpoint or
official weight file instead. Under DDP every rank builds the row together, and rank 0 alone writes it.
"""

from __future__ import annotations

import csv
import gc
import json
import resource
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from benchmark import runs
from benchmark.callbacks.budget import ComputeBudget
from benchmark.callbacks.throughput import LoadWindow, MachineLoad
from benchmark.leaderboard import results as res
from benchmark.leaderboard.plan import (
    Job,
    _barrier,
    _is_rank_zero,
    instantiate,
    parse_entry,
    results_dir_for,
    training_config,
)
from benchmark.leaderboard.suite import Budget, Preset, Suite, load_suite
from data.sources import diff_hash

_FINAL = runs.ROW_FINAL
_TRAIN_DONE = runs.ROW_TRAINED


# ----------------------------------------------------------------------------------------------- evaluation
def make_protocol(protocol: dict[str, Any]) -> Any:
    """The evaluation protocol object for a suite's protocol fields (None when evaluation is not installed)."""
    try:
        from benchmark.evaluation import EvalProtocol
    except ImportError:
        return None
    return EvalProtocol.from_dict(protocol) if hasattr(EvalProtocol, "from_dict") else EvalProtocol(**protocol)


def evaluate_module(module: Any, protocol: Any, datamodule: Any, device: torch.device | None) -> dict[str, Any]:
    """Metrics of ``module`` under ``protocol`` (the evaluation package's ``evaluate``), {} without one."""
    if protocol is None:
        return {}
    from benchmark.evaluation import evaluate

    return dict(evaluate(module, protocol, datamodule, device=device, progress=False))


def eval_sampler_name(module: Any, protocol: Any) -> str:
    """The sampler the protocol uses for this entry, e.g. ``Euler-50`` (the entry's own one without a protocol)."""
    sampler = module.sampler
    if protocol is not None and hasattr(protocol, "sampler_for"):
        try:
            sampler = protocol.sampler_for(module)
        except (TypeError, ValueError):
            pass
    name = type(sampler).__name__.removesuffix("Sampler")
    steps = getattr(sampler, "steps", None)
    return f"{name}-{steps}" if steps else name


def save_grid(module: Any, datamodule: Any, protocol: Any, path: Path, samples_per_class: int) -> None:
    """A labelled sample grid (one row per class, fixed seeds) drawn with the protocol's sampler and guidance."""
    from contextlib import nullcontext

    from torchvision.utils import save_image

    from benchmark.callbacks.samples import SampleGrid, label_rows

    grid_cb = SampleGrid(samples_per_class=samples_per_class, upscale=2, every_n_steps=0)
    apply = protocol.apply(module) if protocol is not None and hasattr(protocol, "apply") else nullcontext()
    with apply:
        grid = grid_cb.render(module, datamodule)
    names = getattr(datamodule, "class_names", None)
    labels = grid_cb.labels(module)
    if names and labels is not None:
        grid = label_rows(grid, [str(names[int(k)]) for k in labels[::samples_per_class]])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


# ----------------------------------------------------------------------------------------------- rows
def environment(world_size: int, precision: Any, code_files: list[Path] | None = None) -> dict[str, Any]:
    """Where and with what a row ran: hardware, threads, commit (and how the files in its key differ from it)."""
    return {
        "hardware": res.hardware(world_size),
        "world_size": world_size,
        "precision": str(precision),
        "threads": res.torch_threads(),
        "commit": res.git_commit(),
        "code_diff": diff_hash(code_files or []),
        "code": res.code_hash(),
        "versions": res.library_versions(),
    }


def peak_memory_gb(device: torch.device | None) -> tuple[float, str]:
    """Peak accelerator memory of this entry, or the process's peak resident memory on the CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss"


def read_curve(run_dir: Path, metric: str, flops_per_step: float | None) -> list[list[float]]:
    """(training FLOPs, metric) points logged during training by an in-training evaluation callback."""
    points: dict[int, float] = {}
    for path in sorted(run_dir.glob("**/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                for column, value in row.items():
                    name = column.rsplit("/", 1)[-1]
                    if name != metric or not value or row.get("step") in (None, ""):
                        continue
                    points[int(float(row["step"]))] = float(value)
    if not flops_per_step:
        return []
    return [[step * flops_per_step, value] for step, value in sorted(points.items())]


def metric_columns(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """The headline numbers of an evaluation: metric with and without guidance, class accuracy, CLIP, control."""

    def pick(*names: str) -> Any:
        for name in names:
            if metrics.get(name) is not None:
                return metrics[name]
        return None

    columns = {
        "metric": pick(metric),
        "metric_noguidance": pick(f"{metric}_noguidance"),
        "class_accuracy": pick("class_accuracy"),
        "class_accuracy_noguidance": pick("class_accuracy_noguidance"),
        "clip_score": pick("clip_score"),
        "control_disentanglement": pick("control_disentanglement"),
        # Control-conditioned Shapes entries: the share of samples whose object touches the border (SDXL's cut
        # objects), with the uncropped control and with training crops.
        "cut_object_rate_uncropped": pick("cut_object_rate_uncropped"),
        "cut_object_rate_train_crops": pick("cut_object_rate_train_crops"),
        "sampling_images_per_s": pick("sampling_images_per_s", "sample_images_per_s", "images_per_s"),
    }
    # Each number's evaluation-noise SD (bootstrap over the samples), which render combines with the seed spread.
    sources = {"metric": metric, "metric_noguidance": f"{metric}_noguidance"}
    for column in [c for c in columns if c != "sampling_images_per_s"]:
        columns[f"{column}_sd"] = pick(f"{sources.get(column, column)}_sd")
    # Its bootstrap replicates for the ranked columns: replicate r of every entry resamples the same samples (same
    # noise and labels), so render pairs entries with them.
    for column in ("metric", "class_accuracy"):
        columns[f"{column}_boot"] = pick(f"{sources.get(column, column)}_boot")
    return columns


def classify_failure(error: BaseException) -> str:
    if isinstance(error, FloatingPointError):
        return "diverged"
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return "oom"
    return "failed"


# ----------------------------------------------------------------------------------------------- one job
def run_job(
    suite: Suite,
    job: Job,
    preset: Preset,
    budget: Budget,
    protocol_fields: dict[str, Any],
    *,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    results_dir: Path,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one (entry, seed); return its row (rank 0 writes it)."""
    started = time.perf_counter()
    run_dir = runs.trained_row_dir(job.run_dir)  # another cell's model when only sampling differs
    config = training_config(job.entry, job.seed, run_dir, preset, progress)
    row: dict[str, Any] = {
        "suite": suite.name,
        "entry": job.entry.name,
        "seed": job.seed,
        "key": job.key,
        "training_key": job.train_key,
        "source": "trained",
        "preset": preset.name,
        "model": job.entry.model_class.rsplit(".", 1)[-1],
        "budget": budget.as_dict(),
        "protocol": protocol_fields,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if run_dir != job.run_dir:
        row["trained_by"] = run_dir.parent.name  # the entry whose row trained the model this row evaluates
    if _is_rank_zero() and not run_dir.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        key_fields = {"training_key": job.train_key, "entry": job.entry.name, "seed": job.seed}
        (run_dir / "key.json").write_text(json.dumps(key_fields))
    device = None
    try:
        cli = instantiate(config)
        module, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
        budget_cb = ComputeBudget(train_flops=budget.train_flops, images=budget.images, seconds=budget.seconds)
        # First, so that a checkpoint written at a step already holds that step's images in the budget's counters.
        trainer.callbacks.insert(0, budget_cb)
        load_cb = MachineLoad(warmup_steps=budget_cb.warmup_steps)  # was the machine free while it was measured?
        trainer.callbacks.append(load_cb)
        trainer.callbacks.extend(callbacks or [])
        protocol = make_protocol(protocol_fields)
        if protocol is not None and preset.eval_every > 0:
            # In-training evaluations for the metric-against-compute curve: guided only, fewer samples; the final
            # evaluation below is the full protocol. Logged as eval/<metric> at its step.
            from benchmark.callbacks.evaluation import Evaluation

            curve_cb = Evaluation(
                protocol.replace(no_guidance=False),
                every_n_steps=preset.eval_every,
                num_samples=min(preset.eval_num_samples, protocol.num_samples),
                at_end=False,
            )
            trainer.callbacks.insert(1, curve_cb)
        done_file, final = run_dir / _TRAIN_DONE, run_dir / _FINAL
        if done_file.is_file() and final.is_file():
            # Training finished before a kill during evaluation: evaluate the final weights again.
            checkpoint = torch.load(final, map_location="cpu", weights_only=True)
            module.load_state_dict(checkpoint["state_dict"])
            train = json.loads(done_file.read_text())
        else:
            last = runs.row_checkpoint_dir(run_dir) / "last.ckpt"
            resumed_from = None
            if last.is_file():
                resumed_from = int(torch.load(last, map_location="cpu", weights_only=True).get("global_step", 0))
            # weights_only: our checkpoints are tensors and plain data (and torch warns when it is left unset).
            ckpt = str(last) if last.is_file() else None
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True if ckpt else None)
            if trainer.interrupted:
                raise KeyboardInterrupt("training was interrupted")
            trainer.save_checkpoint(final, weights_only=False)  # the full state: last.ckpt is a copy
            if _is_rank_zero():
                # `last.ckpt` is the final state, as after `fit` (the periodic save may be steps behind the budget's
                # stop); `final.ckpt` stays for the transfer entries that read it.
                runs.replace_file(final, last)
            global_batch = datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size
            train = {
                **budget_cb.summary(),
                **load_cb.summary("train"),
                "steps": trainer.global_step,
                "global_batch": global_batch,
                "resumed_from_step": resumed_from,
            }
            if _is_rank_zero():
                done_file.write_text(json.dumps(train))
            _barrier()
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        module.to(device)
        row.update(train)
        flops_per_step = (train.get("flops_per_image") or 0) * (train.get("global_batch") or 0)
        row.update(describe_module(module))
        row["train_gflops_per_image"] = None if not train.get("flops_per_image") else train["flops_per_image"] / 1e9
        row["objective"] = type(module.objective).__name__
        row["eval_sampler"] = eval_sampler_name(module, protocol)
        row.update(environment(trainer.world_size, trainer.precision, job.code_files))
        eval_started = time.perf_counter()
        with LoadWindow() as eval_load:
            metrics = evaluate_module(module, protocol, datamodule, device)
        row["eval_seconds"] = time.perf_counter() - eval_started
        row.update(eval_load.summary("sampling", on_cpu=device.type == "cpu"))
        row["metrics"] = metrics
        row.update(metric_columns(metrics, suite.metric))
        row["curve"] = read_curve(run_dir, suite.metric, flops_per_step)
        if row["metric"] is not None and row.get("train_flops"):
            row["curve"].append([row["train_flops"], row["metric"]])
        if preset.grid_samples_per_class > 0 and _is_rank_zero():
            grid = results_dir / "grids" / f"{job.entry.name}-seed{job.seed}.png"
            save_grid(module, datamodule, protocol, grid, preset.grid_samples_per_class)
            row["grid"] = grid.relative_to(results_dir).as_posix()
        row["peak_memory_gb"], row["peak_memory_kind"] = peak_memory_gb(device)
        row["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - a failed entry is a row, and the suite goes on
        row["status"] = classify_failure(error)
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[
            :500
        ]
        row["traceback"] = traceback.format_exc(limit=6)[-2000:]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["wall_seconds"] = time.perf_counter() - started
    gc.collect()
    return row


def describe_module(module: Any) -> dict[str, Any]:
    try:
        info = module.describe()
    except Exception:  # noqa: BLE001 - a missing size must not lose a trained row
        return {}
    return {k: info.get(k) for k in ("params", "gmacs_per_forward", "tokens", "resolution")}


# ----------------------------------------------------------------------------------------------- checkpoints
def _file_hash(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def eval_checkpoint(
    suite_path: str | Path,
    entry_name: str,
    ckpt_path: str | Path,
    *,
    preset: str | None = None,
    output: str | Path | None = None,
    progress: bool = True,
    render: bool = True,
) -> dict[str, Any]:
    """Evaluate an existing checkpoint of an entry under the suite's protocol and add it as a marked row.

    A Lightning checkpoint (``.ckpt`` with a ``state_dict``) is loaded into the entry's module; any other file is
    treated as official weights and read through the entry's importer (the model's ``init_from`` argument, as
    DiT's). The row's ``source`` is ``checkpoint`` or ``official`` and its key includes the file's hash.
    """
    suite = load_suite(suite_path)
    preset_obj = suite.preset(preset)
    protocol_fields = suite.protocol_for(preset_obj)
    results_dir = results_dir_for(suite, preset_obj, None if output is None else Path(output))
    (entry,) = suite.entries([entry_name])
    ckpt_path = Path(ckpt_path)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.suffix == ".ckpt" else None
    source = "checkpoint" if isinstance(checkpoint, dict) and "state_dict" in checkpoint else "official"
    config = training_config(entry, 0, results_dir / "eval-runs" / entry.name, preset_obj, progress=False)
    config["trainer"]["logger"] = False
    config["trainer"]["callbacks"] = []
    if source == "official":
        config["model"].setdefault("init_args", {})["init_from"] = str(ckpt_path)
    fingerprint = res.entry_fingerprint(parse_entry(config))
    key = res.row_key({**fingerprint, "weights": _file_hash(ckpt_path)}, 0, None, protocol_fields, source=source)
    code_files = [*res.row_code_files(fingerprint), *entry.paths]
    res.check_clean_for(results_dir, code_files)
    started = time.perf_counter()
    row: dict[str, Any] = {
        "suite": suite.name,
        "entry": entry.name,
        "seed": 0,
        "key": key,
        "source": source,
        "weights": str(ckpt_path),
        "preset": preset_obj.name,
        "model": entry.model_class.rsplit(".", 1)[-1],
        "protocol": protocol_fields,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        cli = instantiate(config)
        module, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
        if checkpoint is not None and source == "checkpoint":
            module.load_state_dict(checkpoint["state_dict"])
            row["steps"] = checkpoint.get("global_step")
        device = trainer.strategy.root_device
        module.to(device)
        protocol = make_protocol(protocol_fields)
        row.update(describe_module(module))
        row["objective"] = type(module.objective).__name__
        row["eval_sampler"] = eval_sampler_name(module, protocol)
        row.update(environment(trainer.world_size, trainer.precision, code_files))
        metrics = evaluate_module(module, protocol, datamodule, device)
        row["metrics"] = metrics
        row.update(metric_columns(metrics, suite.metric))
        row["status"] = "ok"
    except Exception as error:  # noqa: BLE001
        row["status"] = classify_failure(error)
        row["error"] = f"{type(error).__name__}: {error}"[:500]
    row["wall_seconds"] = time.perf_counter() - started
    if _is_rank_zero():
        res.write_row(results_dir, row)
        if render:
            from benchmark.leaderboard.render import render_suite

            render_suite(suite.root, results_dir=results_dir, check_keys=False)
    return row
