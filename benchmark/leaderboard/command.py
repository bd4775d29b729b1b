"""The ``ldmbench leaderboard`` command: ``run``, ``render`` and ``eval`` of a suite folder; ``claims`` of the study."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmark.leaderboard.suite import Suite


def _list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldmbench leaderboard",
        description="Train every entry of a suite under one compute budget, evaluate it under one protocol, and "
        "render the suite's tables.",
    )
    sub = p.add_subparsers(dest="action", required=True)

    run = sub.add_parser("run", help="train and evaluate missing or stale rows, then render")
    run.add_argument("suite", help="suite folder, e.g. leaderboards/shapes")
    run.add_argument("--entries", help="comma-separated entry names (default: all of the suite's)")
    run.add_argument("--preset", help="budget/evaluation preset, e.g. smoke or default (default: the suite's)")
    run.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    run.add_argument("--output", help="folder for run folders and results (default: runs/leaderboards/<suite>/...)")
    run.add_argument(
        "--force",
        action="store_true",
        help="redo rows that are current too: a row whose training finished in its run folder is evaluated again "
        "from its final weights, not trained again (see --retrain)",
    )
    run.add_argument(
        "--retrain",
        action="store_true",
        help="delete the run folders of the selected rows (checkpoints, logs, final weights) and train them again "
        "from step 0, e.g. to re-time them; implies --force. An interrupted --retrain resumes with --force (a second "
        "--retrain starts over)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    run.add_argument(
        "--jobs",
        type=int,
        help="with --launcher local: rows trained at once, each a local job (its own process) with cores/jobs torch "
        "threads, logs in <output>/logs (default: the preset's jobs; ignored under torchrun/srun)",
    )
    run.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="local: rows in this process or as local jobs (--jobs); slurm: every row a SLURM job (sbatch), with the "
        "preset's `slurm` settings and the flags below; a rerun reattaches to the rows still in flight",
    )
    slurm = run.add_argument_group("launcher settings (default: the preset's `slurm` mapping)")
    slurm.add_argument("--time-min", type=float, help="time limit of one row in minutes (local: a week, SLURM: a day)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--gpus-per-row", type=int, help="GPUs of one row, all nodes together (one task per GPU, DDP)")
    slurm.add_argument("--nodes", type=int, help="nodes of one row")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per task, and torch threads per row (default 8)")
    slurm.add_argument("--mem-gb", type=float, help="memory per node in GB")
    run.add_argument("--no-render", action="store_true", help="write rows only; render later with `render`")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the suite, preset and entries and print the plan (each row's key, folder, and whether it is "
        "current or would run); trains and writes nothing",
    )

    render = sub.add_parser("render", help="regenerate README.md, results.csv and plots from the rows")
    render.add_argument("suite")
    render.add_argument(
        "--results", help="folder holding the rows (rows/*.json, or an older results.jsonl; default: the suite folder)"
    )
    render.add_argument("--no-check", action="store_true", help="do not recompute keys to mark stale rows")
    render.add_argument(
        "--describe",
        action="store_true",
        help="fill params / GMACs of entries without a current row from their configs (builds each model on the meta "
        "device: slow at paper scale); kept in sizes.json, which later renders read while configs and code match",
    )

    ev = sub.add_parser("eval", help="add a row for an existing checkpoint or official weight file")
    ev.add_argument("suite")
    ev.add_argument("--entry", required=True, help="the entry whose config builds the model")
    ev.add_argument("--ckpt_path", required=True, help="a Lightning .ckpt, or official weights read by the importer")
    ev.add_argument("--preset", help="evaluation preset (default: the suite's)")
    ev.add_argument("--output", help="folder for results (default: the suite folder for the default preset)")

    claims = sub.add_parser(
        "claims",
        help="call the paper's claims from the suites' current rows by the committed analysis plan",
        description="Call each paper claim (docs/analysis-plan.md: comparisons P1-P12, Holm over all of them) from "
        "the current rows of shapes-ablations, shapes-transfer-res and shapes-transfer-data, and print the table.",
    )
    claims.add_argument("--root", default=".", help="the checkout whose leaderboards/ are read (default: .)")
    claims.add_argument(
        "--write", action="store_true", help="also put the table into README.md and the details into docs/claims.md"
    )
    return p


def main(argv: list[str]) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    if args.action == "claims":
        from benchmark.leaderboard.claims import run

        root = Path(args.root)
        if not (root / "leaderboards").is_dir():
            cli.error(f"{root} has no leaderboards/ folder: give the checkout with --root")
        print(run(root, write=args.write))
        return
    # A wrong suite folder, preset or entry name is the user's input: one line naming it, not a traceback.
    from benchmark.leaderboard.suite import load_suite

    try:
        suite = load_suite(args.suite)
        if getattr(args, "preset", None) is not None:
            suite.preset(args.preset)
        if getattr(args, "entries", None):
            suite.entries(_list(args.entries))
    except (FileNotFoundError, ValueError, KeyError) as error:
        cli.error(str(error).strip("'\""))
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        cli.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.action == "run":
        from benchmark.leaderboard.runner import run_suite

        try:
            seeds = [int(s) for s in _list(args.seeds) or []] or None
        except ValueError:
            cli.error(f"--seeds takes comma-separated integers, e.g. 0,1; got {args.seeds!r}")
        if args.launcher == "slurm":  # inconsistent settings, or no SLURM here: one line before anything is planned
            from benchmark.leaderboard.launch import Launch, check_slurm_tools

            try:
                Launch.of("slurm", suite.preset(args.preset).slurm, 1, **_launch_options(args))
                if not args.dry_run:  # a plan needs no cluster
                    check_slurm_tools()
            except ValueError as error:
                cli.error(str(error))
        if args.dry_run:
            _print_plan(suite, args, seeds)
            return
        if args.retrain:
            _discard_runs(cli, suite, args, seeds)
        rows = run_suite(
            args.suite,
            entries=_list(args.entries),
            preset=args.preset,
            seeds=seeds,
            output=args.output,
            force=args.force or args.retrain,
            progress=not args.no_progress,
            render=not args.no_render,
            jobs=args.jobs,
            launcher=args.launcher,
            launch_options=_launch_options(args),
        )
        failed = [r for r in rows if r.get("status") == "failed"]
        if failed:
            print(f"{len(failed)} entries failed: {', '.join(r['entry'] for r in failed)}", file=sys.stderr)
        from benchmark.leaderboard.runner import results_dir_for

        out = results_dir_for(suite, suite.preset(args.preset), Path(args.output) if args.output else None)
        if out.resolve() != suite.root.resolve() and int(os.environ.get("RANK", "0")) == 0:
            from benchmark.compare_tables import print_beside_committed  # a run of its own: show it beside the suite's

            print_beside_committed(suite.root, out, suite.metric)
    elif args.action == "render":
        from benchmark.leaderboard.render import render_suite

        render_suite(args.suite, results_dir=args.results, check_keys=not args.no_check, describe=args.describe)
    else:
        from benchmark.leaderboard.runner import eval_checkpoint

        row = eval_checkpoint(args.suite, args.entry, args.ckpt_path, preset=args.preset, output=args.output)
        print({k: row.get(k) for k in ("entry", "source", "status", "metric", "metric_noguidance", "error")})


_LAUNCH_FLAGS = ("time_min", "partition", "account", "gpus_per_row", "nodes", "cpus_per_task", "mem_gb")


def _launch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The launcher flags that were given (the others come from the preset)."""
    return {name: getattr(args, name) for name in _LAUNCH_FLAGS if getattr(args, name, None) is not None}


def _threads(suite: Suite, args: argparse.Namespace) -> tuple[bool, int]:
    """``(rows as local jobs, torch threads per row)`` of ``run`` with these arguments (the rows' keys hold them)."""
    from benchmark.leaderboard.launch import Launch
    from benchmark.leaderboard.plan import run_threads

    preset = suite.preset(args.preset)
    jobs = args.jobs if args.jobs is not None else preset.jobs
    if args.launcher == "slurm" and run_threads(2)[0]:
        return True, Launch.of("slurm", preset.slurm, jobs, **_launch_options(args)).threads(0)
    return run_threads(jobs)


def _discard_runs(
    cli: argparse.ArgumentParser, suite: Suite, args: argparse.Namespace, seeds: list[int] | None
) -> None:
    """``--retrain``: delete the run folders of the rows about to run, so that none resumes or reuses a training."""
    from benchmark.leaderboard.plan import default_output, plan

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # Every rank would delete while another may already be reading: the launcher's user deletes them first.
        cli.error("--retrain under torchrun/srun: delete the rows' run folders before launching, then use --force")
    preset = suite.preset(args.preset)
    output = Path(args.output) if args.output else default_output(suite, preset)
    _, threads = _threads(suite, args)
    for job in plan(suite, preset, _list(args.entries), seeds, output, threads=threads):
        # Every folder of the row's trained model: its own, or another cell's that it would reuse.
        for run_dir in sorted(output.glob(f"*/{job.run_dir.name}")):
            shutil.rmtree(run_dir)
            print(f"retrain: deleted {run_dir}")


def _print_plan(suite: Suite, args: argparse.Namespace, seeds: list[int] | None) -> None:
    """``--dry-run``: the rows ``run`` would plan with these arguments, and which of them it would train."""
    from benchmark.leaderboard import results as res
    from benchmark.leaderboard.plan import default_output, plan, results_dir_for

    preset = suite.preset(args.preset)
    output = Path(args.output) if args.output else None
    in_processes, threads = _threads(suite, args)
    results = results_dir_for(suite, preset, output)
    done = {
        (r.get("entry"), r.get("seed"), r.get("key")) for r in res.read_results(results) if r.get("status") != "failed"
    }
    jobs = plan(suite, preset, _list(args.entries), seeds, output or default_output(suite, preset), threads=threads)
    budget = {k: v for k, v in suite.budget_for(preset).as_dict().items() if v is not None}
    at_once = f"{args.jobs or preset.jobs} rows at once" if in_processes else "one row at a time"
    if args.launcher == "slurm" and in_processes:
        at_once = "every row a SLURM job"
    print(f"leaderboard {suite.name} · preset {preset.name} · budget {budget} · {at_once}, {threads} torch thread(s)")
    print(f"results: {results / res.ROWS}")
    elsewhere = {}  # rows `run` would copy from the suites under `rows_from` rather than train
    for other in suite.raw.get("rows_from") or []:
        for r in res.read_results((suite.root / other).resolve()):
            if r.get("status") == "ok":
                elsewhere.setdefault((r.get("entry"), r.get("seed"), r.get("key")), other)
    todo = copied = 0
    for job in jobs:
        ident = (job.entry.name, job.seed, job.key)
        forced = args.force or args.retrain
        state = "to run" if forced or ident not in done else "current"
        if state == "to run" and not forced and ident in elsewhere:
            state, copied = f"copied from {elsewhere[ident]}", copied + 1
        todo += state == "to run"
        print(f"  {job.entry.name} seed {job.seed}: {state} · key {job.key} · {job.run_dir}")
    current = len(jobs) - todo - copied
    to_copy = f", {copied} to copy" if copied else ""
    print(f"{len(jobs)} rows planned, {current} current{to_copy}, {todo} to run; nothing trained (--dry-run)")
