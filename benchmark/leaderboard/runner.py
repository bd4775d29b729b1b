"""Run a suite: plan its rows, build the missing or stale ones (in this process or as jobs), render as they finish.

The jobs of a run are planned by `benchmark.leaderboard.plan`, each row is built by `benchmark.leaderboard.rows`
(train or resume, then evaluate), rows run as local or SLURM jobs through `benchmark.leaderboard.launch`, and
`benchmark.leaderboard.render` draws the tables. Every row goes to its own file (``<results>/rows/``, written
atomically); finished (entry, seed) pairs whose key is current are skipped, missing and stale ones are (re)done.

Under DDP (``torchrun``/``srun``) every process runs this same loop, each entry's training and evaluation use all
ranks, and rank 0 alone writes rows, grids and READMEs.

The names this module held before the split stay importable from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from benchmark.leaderboard import results as res
from benchmark.leaderboard.plan import (  # noqa: F401 - re-exported: their import path before the split
    Job,
    _barrier,
    _is_rank_zero,
    _keys,
    _quiet_cli,
    available_cores,
    default_output,
    entry_fingerprint,
    entry_keys,
    in_training_evaluation,
    instantiate,
    parse_entry,
    plan,
    results_dir_for,
    run_threads,
    training_config,
)
from benchmark.leaderboard.rows import (  # noqa: F401 - re-exported: their import path before the split
    classify_failure,
    describe_module,
    environment,
    eval_checkpoint,
    eval_sampler_name,
    evaluate_module,
    make_protocol,
    metric_columns,
    peak_memory_gb,
    read_curve,
    run_job,
    save_grid,
)
from benchmark.leaderboard.suite import Budget, Preset, Suite, load_suite


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
    launcher: str = "local",
    launch_options: dict[str, Any] | None = None,
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
        jobs: Rows trained at once as local jobs, each its own process (default: the preset's ``jobs``); see
            `benchmark.leaderboard.launch`. Ignored under DDP, where every rank trains every row, and with
            ``callbacks``.
        launcher: ``local`` (rows in this process, or ``jobs`` local jobs at once) or ``slurm`` (every row a SLURM
            job; `benchmark.leaderboard.launch`).
        launch_options: Settings of the launcher that override the preset's ``slurm`` mapping (`launch.Launch`:
            ``time_min``, ``partition``, ``account``, ``gpus_per_row``, ``nodes``, ``cpus_per_task``, ...).
    """
    from rich.console import Console

    console = Console(quiet=not _is_rank_zero())  # `progress` turns off the bars only; the row lines stay
    suite = load_suite(suite_path)
    preset_obj = suite.preset(preset)
    out = Path(output) if output is not None else default_output(suite, preset_obj)
    results_dir = results_dir_for(suite, preset_obj, None if output is None else out)
    results_file = results_dir / res.ROWS
    budget = suite.budget_for(preset_obj)
    protocol = suite.protocol_for(preset_obj)
    workers = jobs if jobs is not None else preset_obj.jobs
    in_processes, threads = run_threads(workers, bool(callbacks))
    settings = _launch_settings(launcher, preset_obj, workers, in_processes, bool(callbacks), launch_options)
    if settings is not None and settings.launcher == "slurm":
        threads = settings.threads(0)  # the job's CPUs, not this machine's: the rows are keyed for them
    planned = plan(suite, preset_obj, entries, seeds, out, threads=threads)
    # A `failed` row (an error that may not come back: a missing file, a killed worker) is retried; `diverged` and
    # `oom` rows are results of the entry under this budget and hardware, and stay.
    existing = {
        (r.get("entry"), r.get("seed"), r.get("key"))
        for r in res.read_results(results_dir)
        if r.get("status") != "failed"
    }
    if not force:
        existing |= _adopt_rows(suite, planned, results_dir, existing, console)
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

    as_jobs = settings is not None and (settings.launcher == "slurm" or (in_processes and len(todo) > 1))
    at_once = (len(todo) if settings.launcher == "slurm" else workers) if as_jobs and settings is not None else 1
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

    if as_jobs and todo and settings is not None:
        _run_jobs(suite, todo, preset_obj, settings, output, out, results_dir, force, console, finished)
    else:
        with _torch_threads(threads):
            serial_args = (budget, protocol, progress, callbacks, results_dir, console, finished)
            _run_serial(suite, todo, preset_obj, *serial_args)
    console.rule(f"done in {_clock(time.perf_counter() - suite_started)} · {results_file}")
    return written


def _adopt_rows(
    suite: Suite, planned: list[Job], results_dir: Path, existing: set[tuple[Any, Any, Any]], console: Any
) -> set[tuple[Any, Any, Any]]:
    """Copy rows that a suite named under ``rows_from`` (suite.yaml) already holds for a planned (entry, seed, key).

    The key holds everything that decides a row's numbers (resolved config, code, budget, protocol, threads), so an
    entry shared by two suites, like the reference ``dit`` of both views of the embedded suite, is trained once; the
    copy records where it came from (``copied_from``) and brings its sample grid. Returns the adopted rows' idents.
    """
    adopted: set[tuple[Any, Any, Any]] = set()
    wanted = {(j.entry.name, j.seed, j.key) for j in planned} - existing
    for other in suite.raw.get("rows_from") or []:
        source = (suite.root / other).resolve()
        for row in res.read_results(source):
            ident = (row.get("entry"), row.get("seed"), row.get("key"))
            if ident not in wanted or ident in adopted or row.get("status") != "ok":
                continue
            row = {**row, "suite": suite.name, "copied_from": os.path.relpath(source, suite.root)}
            grid = row.get("grid")
            if grid and (source / grid).is_file():
                (results_dir / grid).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / grid, results_dir / grid)
            res.write_row(results_dir, row)
            adopted.add(ident)
            console.print(f"{ident[0]} seed {ident[1]}: the same row (key {ident[2]}) copied from {other}")
    return adopted


def _launch_settings(
    launcher: str, preset: Preset, workers: int, in_processes: bool, callbacks: bool, options: dict[str, Any] | None
) -> Any:
    """The launcher's settings when rows run as jobs; None when they run in this process (under torchrun/srun, where
    every rank runs the rows together, and with callback objects, which cannot cross into a job)."""
    from benchmark.leaderboard.launch import Launch

    if launcher == "slurm":
        distributed = not run_threads(2)[0]
        return None if distributed or callbacks else Launch.of("slurm", preset.slurm, workers, **(options or {}))
    return Launch.of(launcher, {}, workers, **(options or {})) if in_processes else None


def _run_jobs(
    suite: Suite,
    todo: list[Job],
    preset: Preset,
    settings: Any,
    output: str | Path | None,
    out: Path,
    results_dir: Path,
    force: bool,
    console: Any,
    finished: Callable[[dict[str, Any]], None],
) -> None:
    """Rows as submitit jobs: local processes ``jobs`` at a time, or SLURM jobs (`benchmark.leaderboard.launch`)."""
    from benchmark.leaderboard.launch import launch_rows, row_task

    def started(job: Job, job_id: str, log: Path) -> None:
        threads = f"{job.threads} torch threads"
        console.print(f"started {job.entry.name} · seed {job.seed} · job {job_id} · {threads} · log {log}")

    where = "SLURM jobs" if settings.launcher == "slurm" else f"local jobs, {min(settings.jobs, len(todo))} at a time"
    console.print(f"rows as {where}")
    options = {"suite_root": suite.root, "preset": preset.name, "output": None if output is None else out}
    launch_rows(
        todo,
        settings,
        task_for=lambda job: row_task(job, run_suite, force=force, results_dir=results_dir, **options),
        results_dir=results_dir,
        log_dir=out / "logs",
        stages=set(suite.raw.get("stages") or []),
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
            res.write_row(results_dir, row)
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
