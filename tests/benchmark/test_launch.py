"""Suite rows as submitit jobs (`benchmark.leaderboard.launch`): the local throttle, stages first, a dying row, no
orphans after a ``kill -9`` of the suite, SLURM through a fake ``sbatch``, and a row preempted and requeued.

The fast cases run jobs that are small Python commands (`submitit.helpers.CommandFunction`), not trainings; the cases
that train real rows are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import submitit

from benchmark.leaderboard import launch
from benchmark.leaderboard import results as res

ROOT = Path(__file__).resolve().parents[2]


def _job(name: str, seed: int = 0, train_key: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(entry=SimpleNamespace(name=name), seed=seed, key=f"k{name}{seed}", train_key=train_key)


def _writing_row(job, results: Path, events: Path, *, sleep: float = 0.15, wait_for: Path | None = None):
    """A job that logs its start and end, writes its row file (as `RowTask` does through the runner) and ends."""
    row = {"entry": job.entry.name, "seed": job.seed, "key": job.key, "status": "ok", "source": "trained"}
    code = f"""
        import json, os, pathlib, tempfile, time
        from datetime import UTC, datetime
        events = open({str(events)!r}, "a")
        events.write(f"start {job.entry.name} {{time.time()}}\\n"); events.flush()
        while {str(wait_for)!r} != "None" and not pathlib.Path({str(wait_for)!r}).exists():
            time.sleep(0.05)
        time.sleep({sleep})
        row = {{**{row!r}, "created": datetime.now(UTC).isoformat(timespec="seconds")}}
        path = pathlib.Path({str(res.row_path(results, row))!r}); path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row))
        events.write(f"end {job.entry.name} {{time.time()}}\\n")
    """
    return submitit.helpers.CommandFunction([sys.executable, "-c", textwrap.dedent(code)])


def _dying(job):
    return submitit.helpers.CommandFunction([sys.executable, "-c", f"print('boom in {job.entry.name}'); exit(3)"])


def test_local_jobs_run_two_at_a_time_stages_first_and_a_dying_row_becomes_a_failed_row(tmp_path):
    results, events = tmp_path / "results", tmp_path / "events.txt"
    todo = [_job("stage"), _job("a"), _job("b"), _job("dies")]
    settings = launch.Launch.of("local", {}, jobs=2)
    assert settings.executor(tmp_path / "x", "x").parameters["timeout_min"] == launch.LOCAL_TIME_MIN  # not 2 min
    started = []
    rows = launch.launch_rows(
        todo,
        settings,
        task_for=lambda job: _dying(job) if job.entry.name == "dies" else _writing_row(job, results, events),
        results_dir=results,
        log_dir=tmp_path / "logs",
        stages={"stage"},
        on_start=lambda job, job_id, log: started.append(job.entry.name),
        on_row=lambda row: None,
    )
    assert started == ["stage", "a", "b", "dies"]
    lines = [line.split() for line in events.read_text().splitlines()]
    at_once = max(sum(1 for s, e in _pairs(lines) if s <= t < e) for t, _ in _pairs(lines))
    assert at_once == 2, "two rows at a time, never more"
    stage_end = max(float(at) for what, name, at in lines if name == "stage" and what == "end")
    assert stage_end < min(float(at) for what, name, at in lines if name != "stage" and what == "start")
    by_entry = {r["entry"]: r for r in rows}
    assert by_entry["dies"]["status"] == "failed" and "boom in dies" in by_entry["dies"]["error"]
    assert {by_entry[n]["status"] for n in ("a", "b", "stage")} == {"ok"}
    files = sorted(p.name for p in (results / res.ROWS).iterdir())
    assert files == sorted(f"{res.row_stem(j.entry.name, j.seed, j.key)}.json" for j in todo)  # no job records left


def _pairs(lines):
    """(start, end) times of each job, in order of their starts."""
    starts, out = {}, []
    for what, name, at in lines:
        if what == "start":
            starts.setdefault(name, []).append(float(at))
        else:
            out.append((starts[name].pop(0), float(at)))
    return out


_SUITE_PROCESS = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
import submitit
from benchmark.leaderboard import launch
tmp = Path(sys.argv[1])
jobs = [SimpleNamespace(entry=SimpleNamespace(name=n), seed=0, key="k" + n, train_key=None) for n in ("a", "b")]
sleeper = submitit.helpers.CommandFunction([sys.executable, "-c", "import time; time.sleep(120)"])
launch.launch_rows(jobs, launch.Launch.of("local", {}, jobs=2), task_for=lambda job: sleeper, results_dir=tmp / "r",
                   log_dir=tmp / "logs", stages=set(), on_start=lambda *a: print("started", flush=True),
                   on_row=lambda row: None)
"""


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_and_check_no_orphans(suite: subprocess.Popen, rows: set[int]) -> None:
    """SIGKILL the suite process; every process of its rows must end within 10 s."""
    suite.send_signal(signal.SIGKILL)
    suite.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in rows) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in rows if _alive(p)], "orphans of a killed suite"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from Linux's /proc")
def test_a_kill_9_of_the_suite_process_leaves_no_process_of_its_rows(tmp_path):
    suite = subprocess.Popen([sys.executable, "-c", _SUITE_PROCESS, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert suite.stdout.readline().strip() == "started" and suite.stdout.readline().strip() == "started"
        deadline = time.time() + 30
        while len(_descendants(suite.pid)) < 6 and time.time() < deadline:  # 2 x (controller, task, command)
            time.sleep(0.1)
        rows = _descendants(suite.pid)
        assert len(rows) >= 6
        _kill_and_check_no_orphans(suite, rows)
    finally:
        for pid in _descendants(suite.pid) | ({suite.pid} if suite.poll() is None else set()):
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- SLURM, faked
_SBATCH = """
import os, pathlib, subprocess, sys
d = pathlib.Path(os.environ["FAKE_SLURM"])
n = 1000 + len(list(d.glob("job-*.sh")))
(d / f"job-{n}.sh").write_text(pathlib.Path(sys.argv[-1]).read_text())
env = {**os.environ, "SLURM_JOB_ID": str(n), "SLURM_JOBID": str(n), "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost",
       "SLURM_JOB_NAME": "row"}
command = f"bash {sys.argv[-1]}; touch {d}/done-{n}"
subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
print(f"Submitted batch job {n}")
"""
_SRUN = """
import os, sys
args, files = sys.argv[1:], {}
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        files[flag] = args.pop(0).replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0")
for flag, fd in (("--output", 1), ("--error", 2)):
    if flag in files:
        os.dup2(os.open(files[flag], os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
os.execvp(args[0], args)
"""
_SACCT = """
import os, pathlib, sys
d = pathlib.Path(os.environ["FAKE_SLURM"])
print("JobID|State|NodeList")
for i, arg in enumerate(sys.argv):
    if arg == "-j":
        n = sys.argv[i + 1]
        state = "COMPLETED" if (d / f"done-{n}").exists() else "RUNNING" if (d / f"job-{n}.sh").exists() else "FAILED"
        print(f"{n}|{state}|localhost")
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` (records its script, runs it here in the background, answers "Submitted batch job N"), ``srun``,
    ``sacct`` and ``scontrol`` on PATH; the folder they record in."""
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, code in (("sbatch", _SBATCH), ("srun", _SRUN), ("sacct", _SACCT), ("scontrol", "")):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{textwrap.dedent(code)}")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(record))
    monkeypatch.setenv("LDMBENCH_SLURM_POLL_S", "0.3")
    return record


def test_slurm_rows_are_sbatch_jobs_with_their_resources_and_a_rerun_reattaches(tmp_path, fake_slurm):
    results, events, go = tmp_path / "results", tmp_path / "events.txt", tmp_path / "go"
    preset = {"partition": "gpu", "account": "proj", "gpus_per_row": 8, "nodes": 2, "time_min": 90}
    settings = launch.Launch.of("slurm", preset, jobs=2, time_min=120)  # a flag overrides the preset
    todo = [_job("dit")]
    kwargs = {"results_dir": results, "log_dir": tmp_path / "logs", "stages": set(), "on_row": lambda row: None}
    task = _writing_row(todo[0], results, events, sleep=0, wait_for=go)

    def submitter_dies(job, job_id, log):  # the submitting process goes away once the job is in
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch.launch_rows(todo, settings, task_for=lambda job: task, on_start=submitter_dies, **kwargs)
    (script,) = fake_slurm.glob("job-*.sh")
    text = script.read_text()
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=2", "--time=120", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in text, line
    assert "#SBATCH --account=proj\n" in text and "#SBATCH --requeue\n" in text and "#SBATCH --signal=USR2@" in text
    assert "srun " in text and "-m submitit.core._submit" in text  # the command: the row's pickled task
    assert json.loads(next((results / res.ROWS).glob("*.job")).read_text())["job_id"] == "1000"

    # The job outlived its submitter; a rerun reattaches to it by its recorded id instead of submitting it again.
    seen = []

    def reattached(job, job_id, log):
        seen.append(job_id)
        go.touch()

    (row,) = launch.launch_rows(todo, settings, task_for=lambda job: task, on_start=reattached, **kwargs)
    assert seen == ["1000 (reattached)"] and len(list(fake_slurm.glob("job-*.sh"))) == 1
    assert row["entry"] == "dit" and row["status"] == "ok"
    assert [p.name for p in (results / res.ROWS).iterdir()] == ["dit-s0-kdit0.json"]


def test_the_slurm_settings_come_from_the_preset_then_the_flags():
    settings = launch.Launch.of("slurm", {"gpus_per_row": 8, "partition": "a"}, jobs=2, partition="b", nodes=None)
    assert (settings.gpus_per_row, settings.partition, settings.nodes, settings.limit_min) == (8, "b", 1, 24 * 60)
    with pytest.raises(ValueError, match="multiple of nodes"):
        launch.Launch.of("slurm", {"gpus_per_row": 3, "nodes": 2}, jobs=1)
    with pytest.raises(ValueError, match="--launcher"):
        launch.Launch.of("kubernetes", {}, jobs=1)


def test_slurm_without_sbatch_is_one_line_naming_what_is_missing(monkeypatch, capsys):
    from benchmark.leaderboard.command import main

    monkeypatch.setattr(launch.shutil, "which", lambda tool: None if tool == "srun" else f"/usr/bin/{tool}")
    with pytest.raises(ValueError, match="needs SLURM's srun on PATH"):
        launch.check_slurm_tools()
    monkeypatch.setattr(launch.shutil, "which", lambda tool: None)
    with pytest.raises(SystemExit) as info:
        main(["run", "leaderboards/shapes", "--preset", "smoke", "--entries", "dit", "--launcher", "slurm"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--launcher slurm needs SLURM's sbatch and srun" in err and "Traceback" not in err


def test_under_slurm_lightnings_own_requeue_is_off(tmp_path, monkeypatch):
    """One preemption path: in a SLURM job the trainer gets a SLURM environment without auto-requeue."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from benchmark.leaderboard.plan import in_slurm_job, training_config
    from benchmark.leaderboard.suite import load_suite

    suite = load_suite(ROOT / "leaderboards" / "shapes")
    (entry,) = suite.entries(["dit"])
    assert "plugins" not in training_config(entry, 0, tmp_path, suite.preset("smoke"), False)["trainer"]
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "row", "SLURM_NODELIST": "n1", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert in_slurm_job()
    config = training_config(entry, 0, tmp_path, suite.preset("smoke"), False)
    (plugin,) = config["trainer"]["plugins"]
    module, _, name = plugin["class_path"].rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is SLURMEnvironment
    assert plugin["init_args"] == {"auto_requeue": False}  # the rows under the fake SLURM below are built with it


# ----------------------------------------------------------------------------------------------- real rows (slow)
SHAPES = ROOT / "leaderboards" / "shapes"
_SAME = ("metric", "metric_noguidance", "class_accuracy", "images_seen", "train_flops", "steps", "global_batch")


def _one_entry_suite(tmp_path: Path, seeds=(0,), **smoke) -> Path:
    """A copy of the Shapes suite with its DiT entry only and the smoke preset changed by ``smoke``."""
    import shutil

    import yaml

    suite = tmp_path / "suite"
    suite.mkdir()
    raw = yaml.safe_load((SHAPES / "suite.yaml").read_text())
    raw.update(entries=["dit"], literature=[])
    raw["presets"]["smoke"].update(seeds=list(seeds), grid_samples_per_class=0, **smoke)
    (suite / "suite.yaml").write_text(yaml.safe_dump(raw))
    for name in ("dit.yaml", *([raw["protocol"]] if isinstance(raw.get("protocol"), str) else [])):
        shutil.copy(SHAPES / name, suite / name)
    return suite


class PreemptAt(pl.Callback):
    """Sends this process submitit's preemption signal at the start of step ``step``, once (a marker file says so)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))


@pytest.mark.slow
def test_a_row_preempted_with_submitits_signal_is_requeued_and_ends_as_an_uninterrupted_row(tmp_path, monkeypatch):
    """USR2 at step 1 of 3: the step ends, `last.ckpt` is written (no periodic checkpoint would exist: one every 1000
    steps), submitit requeues the job, and the runner resumes from that file: same numbers, nothing counted twice."""
    import cloudpickle

    from benchmark.leaderboard.plan import plan
    from benchmark.leaderboard.runner import run_suite
    from benchmark.leaderboard.suite import load_suite

    cloudpickle.register_pickle_by_value(sys.modules[PreemptAt.__module__])  # the job cannot import this test module
    root = _one_entry_suite(tmp_path, budget_scale=0.0075, checkpoint_every=1000)
    suite = load_suite(root)
    settings = launch.Launch.of("local", {}, jobs=1)
    rows = {}
    for name, callbacks in (("plain", ()), ("preempted", (PreemptAt(1, str(tmp_path / "signalled")),))):
        out = tmp_path / name
        (job,) = plan(suite, suite.preset("smoke"), None, None, out, threads=1)
        task = launch.row_task(
            job,
            run_suite,
            suite_root=root,
            preset="smoke",
            output=out,
            force=False,
            results_dir=out,
            callbacks=callbacks,
        )
        kwargs = {"results_dir": out, "log_dir": out / "logs", "stages": set(), "on_row": lambda row: None}
        kwargs["task_for"] = lambda job, task=task: task
        (rows[name],) = launch.launch_rows([job], settings, on_start=lambda *a: None, **kwargs)
    plain, preempted = rows["plain"], rows["preempted"]
    assert (tmp_path / "signalled").is_file()
    assert plain["status"] == preempted["status"] == "ok", preempted.get("error")
    assert preempted["resumed_from_step"] == 2 and plain["resumed_from_step"] is None and plain["steps"] == 3
    assert {k: preempted[k] for k in _SAME} == {k: plain[k] for k in _SAME}
    (log,) = (tmp_path / "preempted" / "logs" / "dit-seed0").glob("*_0_log.err")
    assert "Requeued job" in log.read_text() or "Requeued" in (log.with_suffix(".out")).read_text()


@pytest.mark.slow
def test_a_kill_9_of_a_suite_training_rows_leaves_no_process_and_a_rerun_writes_each_row_once(tmp_path):
    root = _one_entry_suite(tmp_path, seeds=(0, 1), jobs=2)
    command = [sys.executable, "-m", "benchmark", "leaderboard", "run", str(root), "--preset", "smoke"]
    command += ["--output", str(tmp_path / "out"), "--no-render", "--no-progress"]
    suite = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        started = 0
        while started < 2:
            line = suite.stdout.readline()
            assert line, "the suite ended before both rows started"
            started += line.startswith("started dit")
        deadline = time.time() + 120
        while len(list((tmp_path / "out" / "dit").glob("seed*/key.json"))) < 2 and time.time() < deadline:
            time.sleep(0.2)  # both rows are building their models
        rows = _descendants(suite.pid)
        assert len(rows) >= 4
        _kill_and_check_no_orphans(suite, rows)
    finally:
        for pid in _descendants(suite.pid):
            os.kill(pid, signal.SIGKILL)
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out" / res.ROWS).iterdir())
    assert len(files) == 2 and all(f.startswith(("dit-s0-", "dit-s1-")) for f in files), files  # no *.job left
    assert {r["status"] for r in res.read_results(tmp_path / "out")} == {"ok"}


@pytest.mark.slow
def test_the_smoke_row_through_the_slurm_launcher_equals_the_one_built_here(tmp_path, fake_slurm):
    """``leaderboard run --launcher slurm`` through the fake ``sbatch`` (the job runs here under SLURM's variables,
    so with Lightning's SLURM environment, its requeue off) gives the row `run_suite` builds in this process."""
    from benchmark.leaderboard.runner import run_suite

    root = _one_entry_suite(tmp_path)
    command = [sys.executable, "-m", "benchmark", "leaderboard", "run", str(root), "--preset", "smoke", "--no-progress"]
    command += ["--output", str(tmp_path / "slurm"), "--launcher", "slurm", "--cpus-per-task", "1", "--time-min", "30"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "#SBATCH --time=30\n" in next(fake_slurm.glob("job-*.sh")).read_text()
    (row,) = res.read_results(tmp_path / "slurm")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the job's: --cpus-per-task 1 (the key holds the thread count)
    try:
        (here,) = run_suite(root, preset="smoke", output=tmp_path / "here", progress=False, render=False, jobs=1)
    finally:
        torch.set_num_threads(before)
    assert row["status"] == here["status"] == "ok" and row["key"] == here["key"]
    assert {k: row[k] for k in _SAME} == {k: here[k] for k in _SAME}


@pytest.mark.slow
def test_a_two_process_leaderboard_run_spends_what_one_process_spends(tmp_path):
    """``torchrun --nproc_per_node 2 -m benchmark leaderboard run`` of one entry (DDP over gloo, half the batch per
    rank): rank 0 alone writes the row, with the steps, images, global batch, training FLOPs and metrics of one
    process (each rank draws its samples' noise, timesteps and dropout as one process does: `benchmark.batch_draws`;
    before it, fd_shapes was 185.00 for 2 processes against 185.74 for 1)."""
    import yaml

    root = _one_entry_suite(tmp_path)
    config = yaml.safe_load((root / "dit.yaml").read_text())
    config["trainer"].update(devices=2, strategy="ddp")
    config["data"]["init_args"]["batch_size"] //= 2
    (root / "dit2.yaml").write_text(yaml.safe_dump(config))
    raw = yaml.safe_load((root / "suite.yaml").read_text())
    (root / "suite.yaml").write_text(yaml.safe_dump({**raw, "entries": ["dit", "dit2"]}))
    rows = {}
    for entry, launcher in (("dit", [sys.executable, "-m"]), ("dit2", ["torchrun", "--nproc_per_node", "2", "-m"])):
        command = [*launcher, "benchmark", "leaderboard", "run", str(root), "--preset", "smoke", "--entries", entry]
        command += ["--output", str(tmp_path / entry), "--no-render", "--no-progress"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (rows[entry],) = res.read_results(tmp_path / entry)  # one row: rank 0 wrote it, rank 1 did not
    one, two = rows["dit"], rows["dit2"]
    assert one["status"] == two["status"] == "ok" and (one["world_size"], two["world_size"]) == (1, 2)
    spent = ("steps", "images_seen", "global_batch", "train_flops", "stopped_by")
    assert {k: two[k] for k in spent} == {k: one[k] for k in spent}
    assert two["metrics"]["num_samples"] == one["metrics"]["num_samples"] == 20
    timing = ("time", "seconds", "per_s", "throughput", "memory", "load")
    numbers = {k for k, v in one["metrics"].items() if isinstance(v, float) and not any(t in k for t in timing)}
    assert numbers >= {"fd_shapes", "class_accuracy"}
    for k in sorted(numbers):  # gradients summed in another order across ranks: float tolerance, not bit equality
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-4, abs=1e-6), k
