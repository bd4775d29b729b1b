"""Plan a suite run: each (entry, seed) row's key, training key and run folder, and the config it trains with.

Nothing here trains or writes: `plan` resolves the rows of a run, `entry_keys` keys them (`results.row_key`), and
`training_config` is the ``fit`` config a row trains with (the entry's recipe with the runner's logger, checkpointing
and step limits). `benchmark.leaderboard.rows` builds a row from them, and `benchmark.leaderboard.launch` runs rows as
jobs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from benchmark import runs
from benchmark.leaderboard import results as res
from benchmark.leaderboard.suite import Budget, Entry, Preset, Suite

_CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
# Preemption has one path, submitit's (`benchmark.leaderboard.launch`): Lightning's own SLURM requeue stays off.
_SLURM_ENVIRONMENT = "lightning.pytorch.plugins.environments.SLURMEnvironment"


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
    from data.compat import without_seeding

    class _ParseOnly(without_seeding(LDMBenchCLI)):  # parsing must not reseed the caller's RNGs
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
    if in_slurm_job() and not trainer.get("plugins"):
        # One preemption path: submitit's signal, handled by `launch.RowTask`, which saves the `last.ckpt` this
        # runner resumes from. Lightning's own SLURM requeue (SIGUSR1, hpc_ckpt_*.ckpt, which `ckpt_path` would
        # never read) is turned off.
        trainer["plugins"] = [{"class_path": _SLURM_ENVIRONMENT, "init_args": {"auto_requeue": False}}]
    return config


def in_slurm_job() -> bool:
    """Whether this process is a task of a SLURM job (Lightning's own test: ``SLURM_NTASKS``, not interactive)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


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


# ----------------------------------------------------------------------------------------------- the rows of a run
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


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
