"""Launch the rows of a suite as jobs through submitit: local processes or SLURM jobs (``leaderboard run --launcher``).

Each row is one submitit job running `RowTask`: the runner's own loop for that one (entry, seed), in the job's
process, which writes the row's file (`results.write_row`). The launcher decides no number of a row: this module is
outside the code in the rows' keys (`results._NOT_CODE`), and its settings are outside their fingerprint.

``local`` (submitit's ``LocalExecutor``) keeps the home-made pool's behaviour: at most ``jobs`` rows at once (the
executor itself starts every job at submit), a suite's ``stages`` before the rows that read them, a row whose job
dies without a row gets a ``failed`` row naming its log, and this process's death ends its rows (`RowTask` watches
it), so a ``kill -9`` of the suite leaves no process behind; a rerun resumes the rows from their checkpoints.

``slurm`` (submitit's ``SlurmExecutor``) submits every row as one SLURM job: ``gpus_per_row`` GPUs over ``nodes``
nodes, one task per GPU, and Lightning's DDP over them. Jobs outlive this process. The job id is recorded beside the
row (``rows/<row>.job``) at submit, so a rerun reattaches to the rows still in flight instead of submitting them again.

Preemption has one path, submitit's: SLURM sends USR2 ahead of a preemption or the time limit;
`preemption.PreemptionCheckpoint` lets the running step finish, writes the row's ``last.ckpt`` (the checkpoint the
runner resumes from) and hands over to submitit, which requeues the job. Lightning's own SLURM requeue is off
(`plan.training_config`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import submitit

from benchmark.leaderboard import results as res

LAUNCHERS = ("local", "slurm")
# A row's time limit when neither the preset nor --time-min sets one. submitit's own default (2 minutes locally) would
# stop every real row; locally a week means none.
LOCAL_TIME_MIN = 7 * 24 * 60
SLURM_TIME_MIN = 24 * 60
# sacct states of a job that is still going to write its row (anything else: it ended, with or without a row).
IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
             "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}  # fmt: skip


def check_slurm_tools() -> None:
    """Refuse, naming them, when SLURM's ``sbatch`` or ``srun`` is not on PATH (submitit's own refusal is a traceback
    from inside the first row)."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ValueError(
            f"--launcher slurm needs SLURM's {' and '.join(missing)} on PATH (not found here): run it on a cluster "
            "login node, or use --launcher local"
        )


@dataclass
class Launch:
    """Where and how the rows of a run are launched (the suite preset's ``slurm`` mapping, then the flags).

    Args:
        launcher: ``local`` or ``slurm``.
        jobs: Rows at once with ``local`` (each with ``cores // jobs`` torch threads).
        time_min: Time limit of one row in minutes (default: a week locally, a day on SLURM).
        partition: SLURM partition.
        account: SLURM account.
        gpus_per_row: GPUs of one row, all nodes together (one task per GPU; 0: a CPU job of one task).
        nodes: Nodes of one row.
        cpus_per_task: CPUs per task on SLURM, and the torch threads a row runs with there (part of its key).
        mem_gb: Memory per node on SLURM.
        constraint: SLURM ``--constraint``.
        qos: SLURM ``--qos``.
        poll_s: Seconds between looks at the running jobs (sacct on SLURM).
    """

    launcher: str = "local"
    jobs: int = 1
    time_min: float | None = None
    partition: str | None = None
    account: str | None = None
    gpus_per_row: int = 0
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    constraint: str | None = None
    qos: str | None = None
    poll_s: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, launcher: str, preset_slurm: dict[str, Any], jobs: int, **flags: Any) -> Launch:
        """The preset's settings overridden by the flags that were given (None: not given)."""
        if launcher not in LAUNCHERS:
            raise ValueError(f"--launcher takes one of {list(LAUNCHERS)}, got {launcher!r}")
        given = {k: v for k, v in {**(preset_slurm if launcher == "slurm" else {}), **flags}.items() if v is not None}
        poll = float(os.environ.get("LDMBENCH_SLURM_POLL_S", "30")) if launcher == "slurm" else 0.5
        settings = cls(launcher=launcher, jobs=jobs, poll_s=poll, **given)
        if settings.gpus_per_row % max(1, settings.nodes):
            raise ValueError(f"gpus_per_row {settings.gpus_per_row} is not a multiple of nodes {settings.nodes}")
        return settings

    @property
    def limit_min(self) -> float:
        default = SLURM_TIME_MIN if self.launcher == "slurm" else LOCAL_TIME_MIN
        return float(self.time_min) if self.time_min is not None else default

    def executor(self, folder: Path, name: str) -> submitit.Executor:
        """A submitit executor for one row, its logs and pickles in ``folder``."""
        if self.launcher == "local":
            executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=self.limit_min)
            return executor
        check_slurm_tools()
        executor = submitit.SlurmExecutor(folder=folder)
        per_node = self.gpus_per_row // max(1, self.nodes)
        params: dict[str, Any] = {
            "job_name": name,
            "time": int(round(self.limit_min)),
            "nodes": self.nodes,
            "ntasks_per_node": max(1, per_node),
            "cpus_per_task": self.cpus_per_task,
            "signal_delay_s": 120,
            "additional_parameters": {"requeue": True, **self.extra},
        }
        if per_node:
            params["gpus_per_node"] = per_node
        if self.mem_gb is not None:
            params["mem"] = f"{int(self.mem_gb)}GB"
        for name_ in ("partition", "account", "constraint", "qos"):
            if getattr(self, name_) is not None:
                params[name_] = getattr(self, name_)
        executor.update_parameters(**params)
        return executor

    def threads(self, cores: int) -> int:
        """Torch threads of each row: a share of this machine's cores locally, the job's CPUs per task on SLURM."""
        return self.cpus_per_task if self.launcher == "slurm" else max(1, cores // max(1, self.jobs))


# ----------------------------------------------------------------------------------------------- the job
@dataclass
class RowTask(submitit.helpers.Checkpointable):
    """One row as a submitit job: ``run`` (the runner's ``run_suite``, handed over by the runner, which imports this
    module) for one (entry, seed) in the job's process; returns the row.

    Requeued after a preemption (`preemption.PreemptionCheckpoint`), the same task runs again and the runner resumes
    the row from its ``last.ckpt`` (or re-evaluates its final weights), so nothing is counted twice.
    """

    suite_root: str
    entry: str
    seed: int
    preset: str
    output: str | None
    force: bool
    threads: int
    key: str
    results_dir: str
    run: Callable[..., list[dict[str, Any]]] | None = None  # `runner.run_suite` (pickled by reference)
    callbacks: tuple[Any, ...] = ()  # extra Lightning callbacks of the row's training (picklable ones)

    def __call__(self) -> dict[str, Any]:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(self.threads)
        import torch

        torch.set_num_threads(self.threads)
        from benchmark.leaderboard.preemption import PreemptionCheckpoint

        preemption = PreemptionCheckpoint()
        preemption.install()
        rows = self.run(
            self.suite_root,
            entries=[self.entry],
            seeds=[self.seed],
            preset=self.preset,
            output=self.output,
            force=self.force,
            progress=False,
            render=False,
            # Copies: Lightning binds the module's `log` onto a callback, and a requeue pickles this task again.
            callbacks=[*copy.deepcopy(self.callbacks), preemption],
            jobs=1,
        )
        if rows:
            return rows[0]
        # Current already (an earlier run of this job, or another launcher, wrote it): its file.
        return res.read_row(self.results_dir, self.entry, self.seed, self.key) or {}


@dataclass
class EndWithSuite:
    """A local job's function that ends with the suite process that launched it (its job then leaves nothing behind
    when the suite is killed, even by ``kill -9``, which the suite cannot act on). Requeued as itself."""

    function: Callable[[], Any]
    suite_pid: int

    def __call__(self) -> Any:
        _end_with(self.suite_pid)
        return self.function()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self.function, "checkpoint"):
            return None  # submitit: not checkpointable, not requeued
        return submitit.helpers.DelayedSubmission(self)


def _end_with(suite_pid: int) -> None:
    """End this job (its controller, then itself) once the suite process that launched it is gone: a ``kill -9`` of the
    suite cannot stop its jobs itself. The controller, this process's parent, is the suite's child while it lives."""
    controller = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != controller or _parent_of(controller) != suite_pid:
                for pid in [*_children(os.getpid()), controller]:  # what this job started (data loaders, commands)
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                os._exit(1)

    if _parent_of(controller) is not None:  # Linux's /proc; elsewhere rows outlive a killed suite
        threading.Thread(target=watch, name="end-with-suite", daemon=True).start()


def _children(pid: int) -> list[int]:
    """Every process below ``pid``, deepest first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found = [*frontier, *found]
    return found


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the command name


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class _Running:
    job: Any  # the runner's Job
    handle: Any  # the submitit job
    started: float
    started_at: str


def launch_rows(
    todo: list[Any],
    settings: Launch,
    *,
    task_for: Callable[[Any], Callable[[], Any]],
    results_dir: Path,
    log_dir: Path,
    stages: set[str],
    on_start: Callable[[Any, str, Path], None],
    on_row: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Run ``todo`` (the runner's jobs) as submitit jobs; return the rows in the order they finished.

    Args:
        todo: Jobs (entry, seed, key) to run, stages first.
        settings: The launcher and its settings.
        task_for: The callable a job runs (`RowTask` in the runner; any picklable callable, e.g. in tests).
        results_dir: Where rows (and the job records beside them) go.
        log_dir: Submitit's folders (pickles, logs), one per row.
        stages: Entries whose rows finish before any other row starts (their checkpoints are read by others).
        on_start: Called with (job, job id, log path) when a job is submitted or reattached.
        on_row: Called with each row when its job ends.
    """
    pending, running, rows = list(todo), [], []
    if settings.launcher == "slurm":
        for job in list(pending):
            handle, submitted = _reattach(results_dir, job)
            if handle is not None:
                pending.remove(job)
                running.append(_Running(job, handle, time.perf_counter(), submitted))
                on_start(job, f"{handle.job_id} (reattached)", handle.paths.stdout)
    limit = settings.jobs if settings.launcher == "local" else len(todo) or 1
    try:
        while pending or running:
            while pending and len(running) < limit and _may_start(pending[0], running, stages):
                job = pending.pop(0)
                stem = res.row_stem(job.entry.name, job.seed, job.key)
                executor = settings.executor(log_dir / f"{job.entry.name}-seed{job.seed}", stem)
                task = task_for(job)
                handle = executor.submit(EndWithSuite(task, os.getpid()) if settings.launcher == "local" else task)
                _write_record(results_dir, job, settings.launcher, handle)
                running.append(_Running(job, handle, time.perf_counter(), _now()))
                on_start(job, handle.job_id, handle.paths.stdout)
            time.sleep(settings.poll_s)
            for item in [r for r in running if _done(r.handle, settings)]:
                running.remove(item)
                row = _row_of(item, results_dir)
                rows.append(row)
                on_row(row)
    except BaseException:
        if settings.launcher == "local":  # interrupted: stop the rows; their checkpoints let a rerun resume them
            for item in running:
                item.handle.cancel(check=False)
            for item in running:
                with contextlib.suppress(Exception):
                    item.handle.wait()
        elif running:
            ids = ", ".join(str(r.handle.job_id) for r in running)
            print(f"SLURM jobs {ids} go on; run the same command again to wait for them", file=sys.stderr)
        raise
    return rows


def _may_start(job: Any, running: list[_Running], stages: set[str]) -> bool:
    """A row that reads a stage's checkpoint waits until no stage is running (stages come first in ``todo``), and a
    row whose model another running row trains (same training key) waits for it, then reuses that model."""
    if any(getattr(r.job, "train_key", None) and r.job.train_key == getattr(job, "train_key", None) for r in running):
        return False
    return job.entry.name in stages or not any(r.job.entry.name in stages for r in running)


def _done(handle: Any, settings: Launch) -> bool:
    if settings.launcher == "slurm":
        return handle.done(force_check=True)
    return handle.done()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _record_path(results_dir: Path, job: Any) -> Path:
    return Path(results_dir) / res.ROWS / f"{res.row_stem(job.entry.name, job.seed, job.key)}.job"


def _write_record(results_dir: Path, job: Any, launcher: str, handle: Any) -> None:
    """The job id beside the row, for a rerun to reattach to it."""
    record = {"launcher": launcher, "job_id": str(handle.job_id), "folder": str(handle.paths.folder)}
    res.write_text_atomic(_record_path(results_dir, job), json.dumps({**record, "submitted": _now()}) + "\n")


def _reattach(results_dir: Path, job: Any) -> tuple[Any, str]:
    """The SLURM job recorded beside this row, and when it was submitted, while it is in flight; else None (the row
    is submitted anew)."""
    path = _record_path(results_dir, job)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, ""
    if record.get("launcher") != "slurm":
        return None, ""
    handle = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
    state = str(handle.state).split()[0].upper()
    return (handle, str(record.get("submitted", ""))) if state in IN_FLIGHT else (None, "")


def _row_of(item: _Running, results_dir: Path) -> dict[str, Any]:
    """The row the job returned, or the file it wrote, or a ``failed`` row naming its logs (then written here)."""
    job, handle = item.job, item.handle
    _record_path(results_dir, job).unlink(missing_ok=True)
    try:
        row = handle.result()
        if isinstance(row, dict) and row.get("entry") == job.entry.name:
            return row
        error = f"the job returned no row: {str(row)[:200]}"
    except Exception as exc:  # noqa: BLE001 - a dying row is a failed row; the suite goes on
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
    written = res.read_row(results_dir, job.entry.name, job.seed, job.key)
    if written is not None and str(written.get("created", "")) >= item.started_at:
        return written
    row = {
        "entry": job.entry.name,
        "seed": job.seed,
        "key": job.key,
        "source": "trained",
        "status": "failed",
        "created": _now(),
        "error": f"job {handle.job_id} ended without a row ({handle.paths.stderr}): {_log_tail(handle) or error}"[:500],
        "wall_seconds": time.perf_counter() - item.started,
    }
    res.write_row(results_dir, row)
    return row


def _log_tail(handle: Any) -> str:
    """The last line of the job's error log and of its output that are not submitit's own."""
    tails = []
    for what, path in (("stderr", handle.paths.stderr), ("stdout", handle.paths.stdout)):
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines()]
            mine = [line for line in lines if line and not line.startswith(("submitit ", "The following command"))]
            tails += [f"{what}: {mine[-1]}"] if mine else []
    return " | ".join(tails)


def row_task(
    job: Any,
    run: Callable[..., list[dict[str, Any]]],
    *,
    suite_root: Path,
    preset: str,
    output: Path | None,
    force: bool,
    results_dir: Path,
    callbacks: tuple[Any, ...] = (),
) -> RowTask:
    """The `RowTask` of one of the runner's jobs."""
    return RowTask(
        suite_root=str(suite_root),
        entry=job.entry.name,
        seed=job.seed,
        preset=preset,
        output=None if output is None else str(output),
        force=force,
        threads=job.threads or 1,
        key=job.key,
        results_dir=str(results_dir),
        run=run,
        callbacks=tuple(callbacks),
    )


__all__ = ["LAUNCHERS", "EndWithSuite", "Launch", "RowTask", "launch_rows", "row_task"]
