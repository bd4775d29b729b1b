"""Result rows: their key, the environment they record, and the files they live in (one per row, `write_row`).

A row is keyed by a hash of everything that decides its numbers: the resolved entry config (model, data, the
trainer settings that change training), the seed, the budget, the evaluation protocol, the code, the versions of
the libraries in `ROW_LIBRARIES` and torch's thread count. "The code" is a hash of the engine's sources and shipped
weights plus the entry's own baseline module (and the baseline modules it imports) rather than the git commit, so a
commit that only touches documentation, results or another baseline keeps rows current.

Provenance: a row records the commit it ran at (`data.sources.git_commit`, never ``-dirty``) and, when the files in
its key differed from that commit, ``code_diff``, a hash of the difference (`data.sources.diff_hash`). The runner
refuses to write rows into a committed suite folder while files in their keys differ from HEAD
(`check_clean_for`): a committed row can then always be reproduced from its commit.
A row whose key differs from the one the current checkout computes is *stale*: shown as such, never mixed in, and
redone by the next run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from data.sources import PACKAGES as _PACKAGES
from data.sources import REPO_ROOT, diff_hash, dirty_files, import_closure, is_tracked, module_file
from data.sources import git_commit as git_commit  # the one helper; rows record it
from data.sources import library_versions as _library_versions

_CODE_SUFFIXES = {".py", ".json", ".safetensors", ".yaml", ".npz", ".pt"}
# Files that cannot change a number of a row: how rows are keyed, stored and drawn, how the command line is read,
# how rows are launched as jobs (each row still trains in one job; the threads it had are in its key and `hardware`,
# and a preempted row resumes exactly), and the side-by-side speed tool (which no entry imports).
_NOT_CODE = {
    "benchmark/leaderboard/render.py",
    "benchmark/leaderboard/tables.py",
    "benchmark/leaderboard/front_page.py",
    "benchmark/leaderboard/command.py",
    "benchmark/leaderboard/parallel.py",
    "benchmark/leaderboard/launch.py",
    "benchmark/leaderboard/preemption.py",
    "benchmark/leaderboard/runner.py",
    "benchmark/leaderboard/results.py",
    "benchmark/perf/__init__.py",
    "benchmark/perf/__main__.py",
    "benchmark/perf/command.py",
    "benchmark/perf/impls.py",
    "benchmark/perf/profile.py",
    "benchmark/perf/timing.py",
    "benchmark/perf_profile.py",
    "data/sources.py",
}
# Trainer settings that change what is trained (everything else, e.g. loggers and callbacks, is the runner's).
TRAINER_KEYS = (
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "deterministic",
    "devices",
    "num_nodes",
)


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of an object's canonical JSON (sorted keys), as hex."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# Modules every trained row runs through, whatever its entry: the training loop, the row builder and the evaluation.
_RUN_ROOTS = ("benchmark.module", "benchmark.leaderboard.rows", "benchmark.evaluation")
# Files read at run time by path rather than imported (embedded autoencoder, Shapes CLIP, their configs).
_DATA_FILES = ("data/weights",)


@cache
def code_hash(class_paths: tuple[str, ...] | str | None = None) -> str:
    """Hash of the source files and shipped weights that can change an entry's numbers.

    The files are the import closure (followed through the project's own packages, with each package's
    ``__init__``) of the modules a row runs through: the training loop, the runner and the evaluation, plus the
    module of every ``class_path`` in the entry's resolved config (model, data, objective, sampler, conditioner,
    autoencoder, ...); and the shipped weights, which are read by path. A new module that no entry imports, or an
    edit to another entry's baseline, therefore leaves a row current. ``None`` hashes every file of the packages.
    Documentation and results never count.
    """
    if isinstance(class_paths, str):
        class_paths = (class_paths,)
    digest = hashlib.sha256()
    for path in _code_files(class_paths):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _code_files(class_paths: tuple[str, ...] | None) -> list[Path]:
    if class_paths is None:
        candidates = [p for package in _PACKAGES for p in (REPO_ROOT / package).rglob("*")]
    else:
        roots = [*_RUN_ROOTS, *(c.rpartition(".")[0] for c in class_paths if "." in c)]
        candidates = [module_file(m) for m in import_closure(roots, deep=True)]
        candidates += [p for folder in _DATA_FILES for p in (REPO_ROOT / folder).rglob("*")]
    files = set()
    for path in candidates:
        rel = path.relative_to(REPO_ROOT).as_posix()
        if path.is_file() and "__pycache__" not in rel and path.suffix in _CODE_SUFFIXES and rel not in _NOT_CODE:
            files.add(path)
    return sorted(files)


# Libraries whose changes can move a number: the engine (torch, lightning), the autoencoder (diffusers), the text
# encoders and the Shapes CLIP (transformers), the data (torchvision, Pillow's rasteriser, numpy), the evaluation
# (scipy's sqrtm, torch-fidelity's Inception).
ROW_LIBRARIES = (
    "torch",
    "lightning",
    "diffusers",
    "transformers",
    "torchvision",
    "numpy",
    "scipy",
    "Pillow",
    "torch-fidelity",
)


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose changes can move a number (`ROW_LIBRARIES`)."""
    return dict(_library_versions(ROW_LIBRARIES))


@cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(world_size: int = 1) -> str:
    """The hardware a row ran on, e.g. ``1x NVIDIA H100 80GB HBM3`` or ``AMD EPYC 7B13 (2 cores)``."""
    import torch

    if torch.cuda.is_available():
        return f"{world_size}x {torch.cuda.get_device_name()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    prefix = f"{world_size}x " if world_size > 1 else ""
    threads = torch.get_num_threads()
    return f"{prefix}{_cpu_name()} ({cores} cores, {threads} torch thread{'' if threads == 1 else 's'})"


def entry_fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved ``fit`` config that decide the numbers (model, data, seed, training settings)."""
    trainer = resolved.get("trainer") or {}
    return {
        "model": resolved.get("model"),
        "data": resolved.get("data"),
        "trainer": {k: trainer.get(k) for k in TRAINER_KEYS},
    }


# Model arguments that act only when sampling: two cells that differ only here share one trained model.
SAMPLING_ARGS = ("sampler", "guidance")


def _split(fingerprint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fingerprint without the sampling-only model arguments, those arguments)."""
    training = copy.deepcopy(fingerprint)
    init_args = (training.get("model") or {}).get("init_args") or {}
    sampling = {name: init_args.pop(name, None) for name in SAMPLING_ARGS}
    return training, sampling


def training_key(
    fingerprint: dict[str, Any],
    seed: int,
    budget: dict[str, Any] | None,
    *,
    threads: int | None = None,
    in_training: dict[str, Any] | None = None,
) -> str:
    """The key of a row's trained model: what would have to be equal for a rerun to train the same weights.

    The entry's config without its sampler and guidance, the seed, budget, code, library versions and threads.
    ``in_training`` holds what evaluations during training depend on (protocol, sampling, their period and size)
    when a preset runs them, since their numbers are logged in the training's folder and become the row's curve.
    """
    training, _ = _split(fingerprint)
    return stable_hash(
        {
            "entry": training,
            "seed": seed,
            "budget": budget,
            "code": code_hash(_class_paths(fingerprint)),
            "versions": library_versions(),
            "threads": torch_threads() if threads is None else int(threads),
            "in_training": in_training,
        }
    )


def row_key(
    fingerprint: dict[str, Any],
    seed: int,
    budget: dict[str, Any] | None,
    protocol: dict[str, Any],
    *,
    source: str = "trained",
    threads: int | None = None,
    in_training: dict[str, Any] | None = None,
) -> str:
    """The key of a row: what would have to be equal for a rerun to reproduce it.

    Its trained model's `training_key`, plus what acts at sampling only (the entry's sampler and guidance, the
    evaluation protocol) and the row's source. ``threads`` is the torch thread count the row runs with (default:
    this process's): results are deterministic per thread count only, so a rerun at another count is another row.
    """
    _, sampling = _split(fingerprint)
    trained = training_key(fingerprint, seed, budget, threads=threads, in_training=in_training)
    return stable_hash({"training": trained, "sampling": sampling, "protocol": protocol, "source": source})


def torch_threads() -> int:
    """This process's torch thread count (what a row trained here runs with)."""
    import torch

    return torch.get_num_threads()


def row_code_files(fingerprint: dict[str, Any]) -> list[Path]:
    """The source files in a row's key (`code_hash` of the classes its config names)."""
    return _code_files(_class_paths(fingerprint))


def code_diff(fingerprint: dict[str, Any]) -> str | None:
    """Hash of how the files in a row's key differ from the commit it records (None: they are the commit's)."""
    return diff_hash(row_code_files(fingerprint))


def _class_paths(fingerprint: Any) -> tuple[str, ...]:
    """Every ``class_path`` in a resolved config, sorted."""
    found: set[str] = set()
    if isinstance(fingerprint, dict):
        if isinstance(fingerprint.get("class_path"), str):
            found.add(fingerprint["class_path"])
        for value in fingerprint.values():
            found.update(_class_paths(value))
    elif isinstance(fingerprint, list):
        for value in fingerprint:
            found.update(_class_paths(value))
    return tuple(sorted(found))


# ----------------------------------------------------------------------------------------------- the file
def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``results.jsonl`` in file order ([] when it does not exist); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all rows atomically: a temporary file in the same folder, then one ``os.replace``."""
    text = "".join(json.dumps(row, sort_keys=False, default=_json_default) + "\n" for row in rows)
    write_text_atomic(path, text)


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Add one row to a single ``results.jsonl`` (the layout before row files; one writer at a time): an older row of
    the same (entry, seed, key) is replaced, keeping its throughput when the new one's was measured on a loaded
    machine and its own was not (`keep_unflagged_throughput`). The runner writes row files instead (`write_row`)."""
    path = Path(path)
    same = (row.get("entry"), row.get("seed"), row["key"])
    rows, replaced = [], []
    for r in read_rows(path):
        (replaced if (r.get("entry"), r.get("seed"), r.get("key")) == same else rows).append(r)
    for old in replaced:
        row = keep_unflagged_throughput(row, old)
    write_rows(path, [*rows, row])


# ----------------------------------------------------------------------------------------------- row files
ROWS = "rows"  # a results folder's row files: one JSON file per row, named by the row (`row_path`)
LEGACY = "results.jsonl"  # the one file rows were appended to before; still read (`read_results`)


def row_stem(entry: str, seed: Any, key: str) -> str:
    """The name (without suffix) of a row's file: its entry, seed and key, so that one row has one file."""
    return f"{entry}-s{seed}-{key}"


def row_path(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """``<results_dir>/rows/<entry>-s<seed>-<key>.json``."""
    return Path(results_dir) / ROWS / f"{row_stem(row['entry'], row.get('seed'), row['key'])}.json"


def write_row(results_dir: str | Path, row: dict[str, Any]) -> Path:
    """Write one row to its own file, atomically (a temporary file in the same folder, then ``os.replace``).

    No lock: every row has its own file, so rows finished at once by several processes (or cluster jobs) never meet,
    and two writers of the same row (two launchers, a resubmitted job) leave one file. A row that replaces an earlier
    file of the same key keeps that file's throughput where its own was measured on a loaded machine
    (`keep_unflagged_throughput`).
    """
    path = row_path(results_dir, row)
    old = _read_json(path)
    if old is not None:
        row = keep_unflagged_throughput(row, old)
    write_text_atomic(path, json.dumps(row, default=_json_default, indent=1) + "\n")
    _drop_superseded(path, row)
    return path


def _drop_superseded(path: Path, row: dict[str, Any]) -> None:
    """Remove the files of earlier rows of the same (entry, seed, source) under other keys: a results folder holds
    one row per (entry, seed, source), the one `render` shows (a rerun under new code replaces the stale row)."""
    source = row.get("source", "trained")
    for other in path.parent.glob(f"{row_stem(row['entry'], row.get('seed'), '*')}.json"):
        if other == path:
            continue
        earlier = _read_json(other)
        same = earlier is not None and (earlier.get("entry"), earlier.get("seed")) == (row["entry"], row.get("seed"))
        if same and earlier.get("source", "trained") == source:
            other.unlink(missing_ok=True)


def read_row(results_dir: str | Path, entry: str, seed: Any, key: str) -> dict[str, Any] | None:
    """The row file of (entry, seed, key), None when there is none (or it cannot be read)."""
    return _read_json(Path(results_dir) / ROWS / f"{row_stem(entry, seed, key)}.json")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and one ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_order(path: Path, row: dict[str, Any]) -> tuple[Any, ...]:
    # Rows migrated from a results.jsonl first, in its order (`legacy_line`: where their (entry, seed) first appeared
    # there, which is the order render lists them in); then the others as they were made.
    if isinstance(row.get("legacy_line"), int):
        return (0, row["legacy_line"], "", "")
    return (1, 0, str(row.get("created", "")), path.name)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of a results folder, oldest first: its row files merged with a ``results.jsonl`` of the older layout.

    One row per (entry, seed, key): a row file replaces a ``results.jsonl`` line of the same row. Row files are ordered
    by the time their rows were made (``created``), then by name, so the newest row of an (entry, seed) comes last, as
    it did in the appended file; rows migrated from such a file keep its order (``legacy_line``).
    """
    results_dir = Path(results_dir)
    files = [(path, _read_json(path)) for path in (results_dir / ROWS).glob("*.json")]
    rows = sorted(((p, r) for p, r in files if r is not None), key=lambda pr: _file_order(*pr))
    merged: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for row in [*read_rows(results_dir / LEGACY), *(r for _, r in rows)]:
        ident = (row.get("entry"), row.get("seed"), row.get("key"))
        merged.pop(ident, None)  # the newer one, at the newer place
        merged[ident] = row
    return list(merged.values())


# Throughput figures, the prefix of their load fields (`benchmark.callbacks.throughput`) and their flag.
THROUGHPUTS = {"train_images_per_s": "train", "sampling_images_per_s": "sampling"}


def keep_unflagged_throughput(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``new``, except that a throughput measured on a loaded machine (flagged) never replaces one of the same row
    (same key) that was not: the older figure and its load fields are kept, and ``<figure>_from`` names its row."""
    new = dict(new)
    for figure, prefix in THROUGHPUTS.items():
        flag = f"{prefix}_throughput_flag"
        if new.get(flag) and old.get(figure) is not None and not old.get(flag) and old.get("status") == "ok":
            for field in (figure, f"{prefix}_load1", f"{prefix}_cpu_per_wall", flag):
                new[field] = old.get(field)
            new[f"{figure}_from"] = old.get(f"{figure}_from") or old.get("created")
    return new


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def latest_rows(rows: list[dict[str, Any]], current_keys: set[str] | None) -> list[dict[str, Any]]:
    """One row per (entry, seed, source): the current one when it exists, else the newest, flagged ``stale``.

    ``current_keys`` holds the keys this checkout computes for the suite's trained rows; None skips the check (rows
    are then shown as they are). Rows of other sources (evaluated checkpoints) carry their own key and are current.
    """
    newest: dict[tuple[Any, Any, str], dict[str, Any]] = {}
    current: dict[tuple[Any, Any, str], dict[str, Any]] = {}
    for row in rows:
        ident = (row.get("entry"), row.get("seed"), row.get("source", "trained"))
        newest[ident] = row
        if current_keys is None or ident[2] != "trained" or row.get("key") in current_keys:
            current[ident] = row
    return [{**current[i], "stale": False} if i in current else {**row, "stale": True} for i, row in newest.items()]


def check_clean_for(results_dir: str | Path, files: Iterable[str | Path]) -> None:
    """Refuse to write rows into ``results_dir`` when git tracks it and any of ``files`` (what the rows' keys hold)
    differs from HEAD.

    A row written there would name a commit that does not hold the code it ran. Other changes (documentation,
    tests, baselines the rows do not use) are allowed: the rows' code is then the commit's. Elsewhere (``--output``)
    rows are always written and record the difference as ``code_diff``.

    Raises:
        ValueError: naming the changed files and the two ways out.
    """
    if not is_tracked(results_dir):
        return
    dirty = dirty_files(files)
    if dirty:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise ValueError(
            f"{results_dir} is committed, and files in these rows' keys differ from HEAD ({shown}): a row written "
            "now would name a commit that does not hold its code. Commit them first, or write the rows elsewhere "
            "with --output"
        )
