"""Run a suite: train every entry under the suite's budget, evaluate it under the suite's protocol, write one row each.

Each (entry, seed) trains in its own folder ``<output>/<entry>/seed<S>-<key>/`` (checkpoints, CSV logs, the
resolved config), so a run killed during training resumes from its last checkpoint, and one killed during
evaluation re-evaluates the final checkpoint without training again. Rows go to ``results.jsonl`` (rewritten
atomically); finished (entry, seed) pairs whose key is current are skipped, missing and stale ones are (re)done.

Under DDP (``torchrun``/``srun``) every process runs this same loop, each entry's training and evaluation use all
ranks, and rank 0 alone writes rows, grids and READMEs.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import gc
import json
import os
import resource
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback

from benchmark import runs
from benchmark.callbacks.budget import ComputeBudget
from benchmark.callbacks.throughput import LoadWindow, MachineLoad
from benchmark.leaderboard import results as res
from benchmark.leaderboard.parallel import available_cores
from benchmark.leaderboard.suite import Budget, Entry, Preset, Suite, load_suite
from data.sources import diff_hash

_CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
_FINAL = runs.ROW_FINAL
_TRAIN_DONE = runs.ROW_TRAINED


@dataclass
class Job:
    """One (entry, seed) of a run, with the key it would have and the folder it trains in."""

    entry: Entry
    seed: int
    key: str
    run_dir: Path
    threads: int | None = None  # torch threads the row trains with (part of its key)
    train_key: str = ""  # its trained model's key: rows that differ only at sampling share it (and the model)
    code_files: list[Path] = field(default_factory=list)  # the files in its key (source and entry YAML)


# ----------------------------------------------------------------------------------------------- configs
def _is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def parse_entry(config: dict[str, Any]) -> dict[str, Any]:
    """The fully resolved ``fit`` config (every default filled in) without building anything."""
    from benchmark.cli import CLI_KWARGS, LDMBenchCLI

    class _ParseOnly(LDMBenchCLI):
        def _set_seed(self) -> None:  # parsing must not reseed the caller's RNGs
            pass

        def instantiate_classes(self) -> None:  # parse and validate only
            pass

    with _quiet_cli():
        cli = _ParseOnly(**CLI_KWARGS, args=copy.deepcopy(config), run=False, save_config_callback=None)
    return yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))


_FINGERPRINTS: dict[str, dict[str, Any]] = {}


def entry_fingerprint(entry: Entry, seed: int) -> dict[str, Any]:
    """The parts of the entry's resolved config at ``seed`` that decide its numbers (`results.entry_fingerprint`).

    Parsed once per config and process (parsing builds a whole command-line parser, and rendering a suite keys every
    (entry, seed, preset) of its rows); the fingerprint holds no seed (the key has it apart), so seeds share it.
    """
    ident = res.stable_hash(entry.config)
    if ident not in _FINGERPRINTS:
        config = copy.deepcopy(entry.config)
        config["seed_everything"] = seed
        _FINGERPRINTS[ident] = res.entry_fingerprint(parse_entry(config))
    return copy.deepcopy(_FINGERPRINTS[ident])


def in_training_evaluation(preset: Preset | None, protocol: dict[str, Any]) -> dict[str, Any] | None:
    """What a preset's evaluations during training depend on (None when it runs none): part of the training key."""
    if preset is None or preset.eval_every <= 0:
        return None
    return {"every": preset.eval_every, "num_samples": preset.eval_num_samples, "protocol": protocol}


def entry_keys(
    entry: Entry,
    seed: int,
    budget: Budget | None,
    protocol: dict[str, Any],
    threads: int | None = None,
    preset: Preset | None = None,
) -> tuple[str, str]:
    """``(row key, training key)`` of a trained row of ``entry`` at ``seed`` with this checkout, budget, protocol,
    thread count and preset (`results.row_key`, `results.training_key`)."""
    return _keys(entry_fingerprint(entry, seed), seed, budget, protocol, threads, preset)


def _keys(
    fingerprint: dict[str, Any],
    seed: int,
    budget: Budget | None,
    protocol: dict[str, Any],
    threads: int | None,
    preset: Preset | None,
) -> tuple[str, str]:
    budget_fields = None if budget is None else budget.as_dict()
    in_training = in_training_evaluation(preset, protocol)
    if in_training is not None:
        in_training["sampling"] = res._split(fingerprint)[1]  # its evaluations sample with the entry's settings
    kwargs = {"threads": threads, "in_training": in_training}
    return (
        res.row_key(fingerprint, seed, budget_fields, protocol, **kwargs),
        res.training_key(fingerprint, seed, budget_fields, **kwargs),
    )


def entry_key(
    entry: Entry,
    seed: int,
    budget: Budget | None,
    protocol: dict[str, Any],
    threads: int | None = None,
    preset: Preset | None = None,
) -> str:
    """The key a trained row of ``entry`` at ``seed`` has with this checkout, budget, protocol, thread count and
    preset."""
    return entry_keys(entry, seed, budget, protocol, threads, preset)[0]


def training_config(entry: Entry, seed: int, run_dir: Path, preset: Preset, progress: bool) -> dict[str, Any]:
    """The entry's ``fit`` config with the runner's logger, checkpointing and step limits (the recipe untouched)."""
    config = copy.deepcopy(entry.config)
    config["seed_everything"] = seed
    trainer = config.setdefault("trainer", {})
    # Validation loss is not what the suite compares, and the budget, not a step count, ends training.
    for key in ("val_check_interval", "check_val_every_n_epoch", "max_epochs", "max_time", "min_steps"):
        trainer.pop(key, None)
    trainer.update(
        max_steps=-1,  # the budget sets the step limit (and the progress bar's total) when training starts
        max_epochs=-1,  # nor an epoch count (Lightning's default of 1000 epochs warns)
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}},
    )
    callbacks = [
        {
            "class_path": _CHECKPOINT_CLASS,
            "init_args": {
                "dirpath": str(runs.row_checkpoint_dir(run_dir)),
                "save_last": True,
                "every_n_train_steps": max(1, preset.checkpoint_every),
                "save_top_k": 0,
            },
        }
    ]
    if progress:
        callbacks.insert(0, {"class_path": "lightning.pytorch.callbacks.RichProgressBar"})
    trainer["callbacks"] = callbacks
    return config


def instantiate(config: dict[str, Any]) -> Any:
    """Build the LightningCLI (model, datamodule, trainer) for a config dict, without running anything."""
    from benchmark.cli import build_cli

    with _quiet_cli():
        return build_cli(copy.deepcopy(config), run=False)


@contextlib.contextmanager
def _quiet_cli() -> Iterator[None]:
    # The runner passes configs as dicts while sys.argv holds the `leaderboard ...` command line: intended, so
    # LightningCLI's "both args and command line arguments" warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        yield


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
        grid = grid_cb.render(module)
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
        "sampling_images_per_s": pick("sampling_images_per_s", "sample_images_per_s", "images_per_s"),
    }
    # Each number's evaluation-noise SD (bootstrap over the samples), which render combines with the seed spread.
    sources = {"metric": metric, "metric_noguidance": f"{metric}_noguidance"}
    for column in list(columns)[:6]:
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
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
            if trainer.interrupted:
                raise KeyboardInterrupt("training was interrupted")
            trainer.save_checkpoint(final)
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


# ----------------------------------------------------------------------------------------------- the suite
def plan(
    suite: Suite,
    preset: Preset,
    entries: list[str] | None,
    seeds: list[int] | None,
    output: Path,
    threads: int | None = None,
) -> list[Job]:
    """The (entry, seed) jobs of a run, keyed for ``threads`` torch threads (default: this process's count)."""
    budget = suite.budget_for(preset)
    protocol = suite.protocol_for(preset)
    threads = res.torch_threads() if threads is None else threads
    jobs = []
    for entry in suite.entries(entries):
        for seed in seeds or preset.seeds:
            fingerprint = entry_fingerprint(entry, seed)
            key, train_key = _keys(fingerprint, seed, budget, protocol, threads, preset)
            files = [*res.row_code_files(fingerprint), *entry.paths]
            run_dir = runs.row_dir(output, entry.name, seed, train_key)
            job = Job(entry, seed, key, run_dir, threads=threads, train_key=train_key, code_files=files)
            jobs.append(job)
    return jobs


def run_threads(workers: int, callbacks: bool = False) -> tuple[bool, int]:
    """``(rows in worker processes, torch threads per row)`` of a run with ``workers`` jobs.

    A row's numbers hold for its thread count only (part of its key): with several workers every row trains at
    ``cores // workers`` threads, even one that ends up running alone in this process. Under DDP, or with callback
    objects (which cannot cross into workers), rows run here at this process's count.
    """
    # torchrun / srun set these before Lightning initialises the process group.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    distributed = launched or (torch.distributed.is_available() and torch.distributed.is_initialized())
    in_processes = workers > 1 and not distributed and not callbacks
    return in_processes, max(1, available_cores() // workers) if in_processes else res.torch_threads()


def default_output(suite: Suite, preset: Preset) -> Path:
    return Path("runs") / "leaderboards" / suite.name / preset.name


def results_dir_for(suite: Suite, preset: Preset, output: Path | None) -> Path:
    """Where rows, grids and the README go: the suite folder for its default preset, else the output folder."""
    if output is None and preset.name == suite.default_preset:
        return suite.root
    return output if output is not None else default_output(suite, preset)


def run_suite(
    suite_path: str | Path,
    *,
    entries: list[str] | None = None,
    preset: str | None = None,
    seeds: list[int] | None = None,
    output: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    render: bool = True,
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate every missing or stale (entry, seed) of a suite; return the rows written this time.

    Args:
        suite_path: The suite folder.
        entries: Only these entries (default: all of the suite's).
        preset: Budget/evaluation preset (default: the suite's default preset).
        seeds: Seeds to run (default: the preset's).
        output: Folder of the run folders (and of results when given); default ``runs/leaderboards/<suite>/<preset>``
            for training, and the suite folder itself for the default preset's results.
        force: Redo rows that are current too.
        progress: Show the training progress bars. The plan, one line per finished row and the estimate of the time
            left are printed either way (on rank zero).
        callbacks: Extra Lightning callbacks added to every entry's training (e.g. profilers). Callback objects
            cannot cross into worker processes, so with callbacks the rows run one at a time in this process.
        render: Regenerate the README, CSV and plots after every row.
        jobs: Rows trained at once in separate processes (default: the preset's ``jobs``); see
            `benchmark.leaderboard.parallel`. Ignored under DDP, where every rank trains every row, and with
            ``callbacks``.
    """
    from rich.console import Console

    console = Console(quiet=not _is_rank_zero())  # `progress` turns off the bars only; the row lines stay
    suite = load_suite(suite_path)
    preset_obj = suite.preset(preset)
    out = Path(output) if output is not None else default_output(suite, preset_obj)
    results_dir = results_dir_for(suite, preset_obj, None if output is None else out)
    results_file = results_dir / "results.jsonl"
    budget = suite.budget_for(preset_obj)
    protocol = suite.protocol_for(preset_obj)
    workers = jobs if jobs is not None else preset_obj.jobs
    in_processes, threads = run_threads(workers, bool(callbacks))
    planned = plan(suite, preset_obj, entries, seeds, out, threads=threads)
    # A `failed` row (an error that may not come back: a missing file, a killed worker) is retried; `diverged` and
    # `oom` rows are results of the entry under this budget and hardware, and stay.
    existing = {
        (r.get("entry"), r.get("seed"), r.get("key"))
        for r in res.read_rows(results_file)
        if r.get("status") != "failed"
    }
    todo = [j for j in planned if force or (j.entry.name, j.seed, j.key) not in existing]
    if todo:  # before anything trains: a committed suite folder gets rows of committed code only
        protocol_file = suite.raw.get("protocol")
        suite_files = [suite.root / name for name in ("suite.yaml", protocol_file) if isinstance(name, str)]
        res.check_clean_for(results_dir, [f for job in todo for f in job.code_files] + suite_files)
    console.rule(f"[bold]leaderboard {suite.name}[/] · preset {preset_obj.name}")
    console.print(
        f"{len(planned)} rows planned, {len(planned) - len(todo)} current, {len(todo)} to run"
        f" · budget {_budget_text(budget)} · runs in {out} · results in {results_file}"
    )
    written: list[dict[str, Any]] = []
    suite_started = time.perf_counter()

    at_once = workers if in_processes and len(todo) > 1 else 1
    if callbacks and workers > 1 and len(todo) > 1:
        console.print(f"{len(callbacks)} callback(s) given: rows run one at a time in this process, not {workers}")

    def finished(row: dict[str, Any]) -> None:
        if _is_rank_zero() and render:
            from benchmark.leaderboard.render import render_suite

            render_suite(suite.root, results_dir=results_dir, check_keys=False)
        written.append(row)
        elapsed = time.perf_counter() - suite_started
        left = len(todo) - len(written)
        # Rows take about the same time (same budget), `at_once` of them together: the elapsed time per round of rows
        # so far, times the rounds left. (A row's wall_seconds misses its worker's start-up, which dominates short
        # presets: the smoke preset's estimate from it said "~0:16 left" with two 1.5-minute rows to go.)
        rounds = -(-len(written) // at_once), -(-left // at_once)
        eta = f" · ~{_clock(elapsed / rounds[0] * rounds[1])} left" if left else ""
        console.print(f"[{len(written)}/{len(todo)}] {_row_text(row, suite.metric)} · elapsed {_clock(elapsed)}{eta}")

    if at_once > 1:
        _run_parallel(suite, todo, preset_obj, workers, output, out, results_file, force, console, finished)
    else:
        with _torch_threads(threads):
            serial_args = (budget, protocol, progress, callbacks, results_dir, results_file, console, finished)
            _run_serial(suite, todo, preset_obj, *serial_args)
    console.rule(f"done in {_clock(time.perf_counter() - suite_started)} · {results_file}")
    return written


def _run_parallel(
    suite: Suite,
    todo: list[Job],
    preset: Preset,
    workers: int,
    output: str | Path | None,
    out: Path,
    results_file: Path,
    force: bool,
    console: Any,
    finished: Callable[[dict[str, Any]], None],
) -> None:
    """Rows in worker processes, ``workers`` at a time (`benchmark.leaderboard.parallel`)."""
    from benchmark.leaderboard.parallel import run_in_processes

    def started(job: Job, log: Path, threads: int) -> None:
        console.print(f"started {job.entry.name} · seed {job.seed} · {threads} torch threads · log {log}")

    console.print(f"training {min(workers, len(todo))} rows at a time, each in its own process")
    run_in_processes(
        suite.root,
        todo,
        preset=preset.name,
        jobs=workers,
        output=None if output is None else out,
        log_dir=out / "logs",
        results_file=results_file,
        force=force,
        on_start=started,
        on_row=finished,
    )


def _run_serial(
    suite: Suite,
    todo: list[Job],
    preset: Preset,
    budget: Budget,
    protocol: dict[str, Any],
    progress: bool,
    callbacks: list[Callback] | None,
    results_dir: Path,
    results_file: Path,
    console: Any,
    finished: Callable[[dict[str, Any]], None],
) -> None:
    """Rows one after another in this process (all ranks together under DDP)."""
    suite_started = time.perf_counter()
    for index, job in enumerate(todo):
        elapsed = time.perf_counter() - suite_started
        left = f"~{_clock(elapsed / index * (len(todo) - index))} left" if index else "estimating time left"
        console.rule(
            f"[{index + 1}/{len(todo)}] {job.entry.name} · seed {job.seed} · elapsed {_clock(elapsed)} · {left}"
        )
        # Entries on the same data share one latent cache (`latent_cache: auto`): the first encodes the items it
        # reads, in the order it reads them, and the others read the same items in the same order.
        row = run_job(
            suite, job, preset, budget, protocol, progress=progress, callbacks=callbacks, results_dir=results_dir
        )
        if _is_rank_zero():
            res.append_row(results_file, row)
        _barrier()
        finished(row)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Train at ``threads`` torch threads (the count the rows are keyed for), then restore the caller's."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def _budget_text(budget: Budget) -> str:
    parts = []
    if budget.train_flops is not None:
        parts.append(f"{budget.train_flops:.3g} training FLOPs")
    if budget.images is not None:
        parts.append(f"{budget.images:,} images")
    if budget.seconds is not None:
        parts.append(f"{budget.seconds:g} s")
    return " or ".join(parts)


def _row_text(row: dict[str, Any], metric: str) -> str:
    if row.get("status") != "ok":
        return f"{row['entry']} seed {row['seed']}: [red]{row.get('status')}[/] {row.get('error', '')}"
    value = row.get("metric")
    shown = "n/a" if value is None else f"{value:.3g}"
    return (
        f"{row['entry']} seed {row['seed']}: {metric} {shown} · {row.get('images_seen', 0):,} images · "
        f"{row.get('steps')} steps · {row.get('wall_seconds', 0):.0f} s"
    )


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
        res.append_row(results_dir / "results.jsonl", row)
        if render:
            from benchmark.leaderboard.render import render_suite

            render_suite(suite.root, results_dir=results_dir, check_keys=False)
    return row
