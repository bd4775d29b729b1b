"""Where a run writes, which run ``--ckpt_path last`` resumes, and how checkpoint files are read.

Layout (``root`` is ``--trainer.default_root_dir``, ``runs`` by default; ``entry`` is ``--run_name`` or
``<first config file's stem>-<model class>``, e.g. ``dit-DiTModule`` for ``leaderboards/shapes/dit.yaml``)::

    <root>/<entry>/version_<N>/              one training run; a resumed run keeps writing here
        config.yaml  hparams.yaml  metrics.csv
        checkpoints/last.ckpt, step=...ckpt        last.ckpt: the newest state (the final one once training ended)
        samples/step_<step>.png              SampleGrid
        <validate|test|predict>/<ckpt>/      evaluations of this run's checkpoint <ckpt>.ckpt (predict: PNGs,
                                             samples.npz)

A leaderboard row (`benchmark.leaderboard.runner`) trains in ``<output>/<entry>/seed<S>-<training key>/``
(`row_dir`): ``checkpoints/last.ckpt`` (the final state once training ended; ``final.ckpt`` is the same weights),
``train.json`` when training finished, ``lightning_logs/version_<N>/metrics.csv``. A row whose trained model another
entry's row already made (same training key: they differ only at sampling) evaluates that folder's model instead
(`trained_row_dir`).

Every decision about these paths is made here, so the CLI, the runner, the callbacks and the tests agree. A config
therefore never names a checkpoint folder: ``ModelCheckpoint.dirpath`` is refused (`refuse_fixed_paths`), since a fixed
folder is shared by every run of the config (a second run overwrites the first's ``last.ckpt``) and is written
relative to whatever folder the command runs from.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

DEFAULT_ROOT = "runs"
_VERSION = re.compile(r"version_(\d+)")


class PlacementError(ValueError):
    """A config names a folder that this module decides."""


class CheckpointError(ValueError):
    """A file given as a checkpoint cannot be read as one."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file (a FileNotFoundError too, for callers that look for one)."""


def read_checkpoint(path: str | os.PathLike, allow: Iterable[type] = (), mmap: bool = False) -> Any:
    """``torch.load`` a checkpoint safely (tensors and plain data only), with an error that names the file.

    Args:
        path: The checkpoint file.
        allow: Extra classes the file may contain (e.g. ``argparse.Namespace`` in official DiT training checkpoints).
        mmap: Map the file instead of reading it (cheap for large checkpoints when only a few entries are needed).

    Raises:
        MissingCheckpointError: The file does not exist (a ``FileNotFoundError``).
        CheckpointError: The file is not a checkpoint this project can read (corrupt, truncated, another format, or
            holding Python objects other than tensors and plain data, which are never loaded since loading them can
            run code).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(allow)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not (mmap and "mmap" in str(error)):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # noqa: BLE001 - every failure of torch.load means the same thing to the user
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        why = (
            f"it contains a Python object ({found.group(1)}); only tensors and plain data are loaded"
            if found
            else "the file is corrupt, truncated or not a PyTorch checkpoint"
        )
        # `from None`: torch's own message would advise loading with weights_only=False, i.e. running the file's code.
        raise CheckpointError(f"{path} is not a valid checkpoint: {why}") from None


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint (None if it has none); raises `CheckpointError`."""
    if (Path(path) / "meta.pt").is_file():  # a sharded (FSDP) checkpoint folder: its non-tensor state
        path = Path(path) / "meta.pt"
    state = read_checkpoint(path, mmap=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a valid checkpoint: it holds a {type(state).__name__}, not a dict")
    step = state.get("global_step")
    return int(step) if step is not None else None


def entry_name(class_path: str, config_files: list[str], run_name: str | None = None) -> str:
    """The folder name of an entry: ``run_name`` if given, else ``<first config's stem>-<model class>``.

    The model class is part of the name so that a copied config with another ``class_path`` never shares (and
    resumes) the original's checkpoints.
    """
    if run_name:
        if Path(run_name).name != run_name or run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {run_name!r}")
        return run_name
    model = class_path.rsplit(".", 1)[-1] or "model"
    return f"{Path(config_files[0]).stem}-{model}" if config_files else model


def versions(entry_dir: Path) -> list[int]:
    """The version numbers of ``<entry_dir>/version_<N>`` folders, ascending."""
    if not entry_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in entry_dir.iterdir() if p.is_dir() and (m := _VERSION.fullmatch(p.name)))


def newest_checkpoint(root: str | os.PathLike, entry: str) -> Path | None:
    """The checkpoint ``--ckpt_path last`` resumes: the most recently written one of the entry's newest version.

    That is ``last.ckpt`` after a step-interval save and the time-interval checkpoint when that one is younger.
    """
    entry_dir = Path(root) / entry
    for version in reversed(versions(entry_dir)):
        folder = entry_dir / f"version_{version}" / "checkpoints"
        found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
        if found:
            return found[-1]
    return None


def run_of_checkpoint(path: str | os.PathLike) -> tuple[Path, str, int] | None:
    """``(root, entry, version)`` when ``path`` is ``<root>/<entry>/version_<N>/checkpoints/<file>``, else None."""
    path = Path(path).absolute()
    match = _VERSION.fullmatch(path.parent.parent.name)
    if path.parent.name != "checkpoints" or match is None:
        return None
    return path.parents[3], path.parents[2].name, int(match.group(1))


def _callbacks(config: Any) -> list[Any]:
    trainer = config.get("trainer") if hasattr(config, "get") else getattr(config, "trainer", None)
    callbacks = (trainer.get("callbacks") if hasattr(trainer, "get") else None) or []
    return list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]


def refuse_fixed_paths(config: Any) -> None:
    """Refuse a config whose checkpoint callback names its own folder (``ModelCheckpoint.dirpath``).

    Refused rather than overridden: a Lightning user who writes ``dirpath`` expects the files there, so moving them
    elsewhere with a warning (easily lost among Lightning's) would leave them looking in the wrong folder; the error
    comes before anything is built and says what to write instead. (A logger's ``save_dir`` is placed instead of
    refused: loggers require it, so a config that names a logger cannot leave it out.)

    Args:
        config: A parsed ``fit``/``validate``/``test``/``predict`` config (jsonargparse namespace or dict).

    Raises:
        PlacementError: naming the callback and what to use instead.
    """
    for index, callback in enumerate(_callbacks(config)):
        init_args = callback.get("init_args") if hasattr(callback, "get") else None
        dirpath = init_args.get("dirpath") if hasattr(init_args, "get") else None
        if dirpath is not None:
            name = str(callback.get("class_path", "callback")).rsplit(".", 1)[-1]
            raise PlacementError(
                f"trainer.callbacks[{index}] ({name}) sets dirpath: {dirpath}; ldmbench places checkpoints in "
                "<default_root_dir>/<run_name>/version_<N>/checkpoints so that runs never overwrite each other and "
                "`--ckpt_path last` finds them: remove dirpath and choose the folder with --trainer.default_root_dir "
                "and --run_name"
            )


ROW_CHECKPOINTS = "checkpoints"
ROW_FINAL = "final.ckpt"
ROW_TRAINED = "train.json"  # written once training ended: the model is final, the row only needs evaluating


def row_dir(output: str | os.PathLike, entry: str, seed: int, training_key: str) -> Path:
    """The folder a leaderboard row trains in: ``<output>/<entry>/seed<S>-<first 12 of its training key>``."""
    return Path(output) / entry / f"seed{seed}-{training_key[:12]}"


def trained_row_dir(run_dir: str | os.PathLike) -> Path:
    """The folder a row trains in or reuses: its own (`row_dir`) when that exists, else the folder of another entry
    whose model finished training under the same training key (``<output>/*/seed<S>-<key>/train.json``), else its
    own. Cells that differ only at sampling thus share one trained model."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        return run_dir
    done = sorted(p.parent for p in run_dir.parent.parent.glob(f"*/{run_dir.name}/{ROW_TRAINED}"))
    return done[0] if done else run_dir


def row_checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Where a leaderboard row's ``ModelCheckpoint`` writes (``last.ckpt`` is what an interrupted row resumes)."""
    return Path(run_dir) / ROW_CHECKPOINTS


def replace_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` over ``target`` atomically (a reader sees the old file or the new one, never half of one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted.

    Rows of steps at or after ``resume_step`` are dropped: they were logged after the checkpoint the run resumes
    from, and the resumed run logs those steps again.
    """

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        path = Path(log_dir) / self.NAME_METRICS_FILE
        if resume_step is None or not path.is_file():
            super().__init__(log_dir)  # a new run: Lightning's writer warns about and deletes an old metrics.csv
            return
        # Read the rows before Lightning's constructor deletes the file (its public behaviour), then write back those
        # logged before the checkpoint; the warning about a non-empty folder is expected when resuming.
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            keys, rows = list(reader.fieldnames or []), list(reader)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            super().__init__(log_dir)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < resume_step]
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = keys  # the header written above: later rows append under it


class RunLogger(CSVLogger):
    """`CSVLogger` that continues a resumed run's ``metrics.csv`` (Lightning's would delete it).

    Args:
        save_dir: Root folder (``--trainer.default_root_dir``).
        name: Entry folder name.
        version: Version number or folder name; None takes the next free ``version_<N>``.
        resume_step: Global step of the checkpoint being resumed; rows from this step on are dropped from the log.
        prefix: Prefix of every metric name.
        flush_logs_every_n_steps: How often metrics are written to disk.
    """

    def __init__(
        self,
        save_dir: str = DEFAULT_ROOT,
        name: str = "lightning_logs",
        version: int | str | None = None,
        resume_step: int | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self.resume_step)
        return self._experiment
