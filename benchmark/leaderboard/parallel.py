"""Train several rows of a suite at once, each in its own process (``ldmbench leaderboard run --jobs N``).

On a small CPU the tiny Shapes models use a second core poorly from inside one process: their matrices are too small
to split well between threads. Two processes with one thread each keep both cores busy on whole rows instead. Each row
runs as ``ldmbench leaderboard run <suite> --entries E --seeds S --jobs 1 --no-render``, with ``OMP_NUM_THREADS`` set
to ``cores // N``. Its output goes to ``<output>/logs/<entry>-seed<S>.log``. Rows are appended to ``results.jsonl``
under a file lock (`results.append_row`), and this process renders after each finished row. A worker that dies
without writing its row gets a ``failed`` row that points at its log, and the suite goes on.

Entries a suite lists under ``stages`` (pre-training stages whose checkpoints transferred entries read) all finish
before any other row starts. Killed, a rerun redoes what is missing exactly as a serial run does: interrupted rows
resume from their checkpoints. On GPUs use DDP (``torchrun``) instead, where every rank trains every row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from benchmark.leaderboard import results as res


@dataclass
class _Worker:
    job: Any
    process: subprocess.Popen
    log: Path
    handle: IO[str]
    started: float
    started_at: str  # UTC, as rows write their "created": a row older than this is not the worker's


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_command(suite_root: Path, job: Any, preset: str, output: Path | None, force: bool) -> list[str]:
    """The command line that trains and evaluates one (entry, seed) of the suite and appends its row."""
    command = [sys.executable, "-m", "benchmark", "leaderboard", "run", str(suite_root)]
    command += ["--entries", job.entry.name, "--seeds", str(job.seed), "--preset", preset]
    command += ["--jobs", "1", "--no-render", "--no-progress"]
    if output is not None:
        command += ["--output", str(output)]
    return command + (["--force"] if force else [])


def run_in_processes(
    suite_root: Path,
    todo: list[Any],
    *,
    preset: str,
    jobs: int,
    output: Path | None,
    log_dir: Path,
    results_file: Path,
    force: bool,
    on_start: Callable[[Any, Path, int], None],
    on_row: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Run ``todo`` with at most ``jobs`` worker processes; return the rows in the order they finished.

    Args:
        suite_root: The suite folder.
        todo: The runner's jobs (entry, seed, key) still to do.
        preset: Preset name.
        jobs: Worker processes at once.
        output: The ``--output`` the user gave (None: the default), passed on so workers write where this run does.
        log_dir: Folder of the workers' logs.
        results_file: The ``results.jsonl`` the workers append to.
        force: Redo current rows too.
        on_start: Called with (job, log path, threads) when a worker starts.
        on_row: Called with each row when its worker ends.
    """
    threads = max(1, available_cores() // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_dir.mkdir(parents=True, exist_ok=True)
    stages = _stages(suite_root)
    pending, running, rows = list(todo), [], []
    try:
        while pending or running:
            while pending and len(running) < jobs and _may_start(pending[0], running, stages):
                job = pending.pop(0)
                log = log_dir / f"{job.entry.name}-seed{job.seed}.log"
                handle = open(log, "w")  # noqa: SIM115 - closed when the worker ends
                command = worker_command(suite_root, job, preset, output, force)
                process = subprocess.Popen(
                    command, stdout=handle, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
                )
                now = datetime.now(UTC).isoformat(timespec="seconds")
                running.append(_Worker(job, process, log, handle, time.perf_counter(), now))
                on_start(job, log, threads)
            time.sleep(0.5)
            for worker in [w for w in running if w.process.poll() is not None]:
                running.remove(worker)
                worker.handle.close()
                row = _row_of(worker, results_file)
                rows.append(row)
                on_row(row)
    finally:
        for worker in running:  # interrupted: stop the workers; their checkpoints let a rerun resume them
            worker.process.terminate()
            worker.process.wait()
            worker.handle.close()
    return rows


def _die_with_parent() -> None:
    """In the worker, before it runs: ask Linux to send it SIGTERM when this process dies. A ``kill -9`` of the
    suite then stops its workers too, instead of leaving them training beside the rerun (elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stages(suite_root: Path) -> set[str]:
    from benchmark.leaderboard.suite import load_suite

    return set(load_suite(suite_root).raw.get("stages") or [])


def _may_start(job: Any, running: list[_Worker], stages: set[str]) -> bool:
    """A row that reads a stage's checkpoint waits until no stage is running (stages come first in ``todo``), and a
    row whose model another running row trains (same training key) waits for it, then reuses that model."""
    if any(getattr(w.job, "train_key", None) and w.job.train_key == getattr(job, "train_key", None) for w in running):
        return False
    return job.entry.name in stages or not any(w.job.entry.name in stages for w in running)


def _row_of(worker: _Worker, results_file: Path) -> dict[str, Any]:
    """The row the worker appended, or a ``failed`` row naming its exit code and log (then appended here)."""
    job = worker.job
    for row in reversed(res.read_rows(results_file)):
        mine = (row.get("entry"), row.get("seed"), row.get("key")) == (job.entry.name, job.seed, job.key)
        if mine and str(row.get("created", "")) >= worker.started_at:
            return row
    tail = worker.log.read_text(errors="replace").strip().splitlines()[-1:] if worker.log.is_file() else []
    row = {
        "entry": job.entry.name,
        "seed": job.seed,
        "key": job.key,
        "source": "trained",
        "status": "failed",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": f"worker exited with code {worker.process.returncode} without a row ({worker.log}): "
        + (tail[0] if tail else "no output"),
        "wall_seconds": time.perf_counter() - worker.started,
    }
    res.append_row(results_file, row)
    return row
