"""A leaderboard suite: a folder with ``suite.yaml`` (budget, presets, protocol, target, literature) and entry YAMLs.

``suite.yaml`` keys (all but ``name`` optional)::

    name: shapes
    title: one line shown as the README heading
    description: a paragraph for the README
    entries:                        # entries to run, in order; default: every *.yaml but suite/protocol files and
      - dit                         #   shared parts (names starting with "_"); a name means <name>.yaml
      - name: dit_mydata            # or several config files, applied in order as stacked `--config` are (paths
        configs: [dit.yaml, _mydata.yaml]   # relative to the suite folder): a shared part set once for many entries
    budget:                         # per entry; the first limit reached stops training
      train_flops: 2.5e12           # forward + backward FLOPs of the backbone, all images together
      images: null                  # alternative: images seen
      seconds: null                 # alternative: wall-clock seconds of training
    default_preset: default
    presets:                        # named scalings of the budget and the evaluation
      default: {budget_scale: 1.0, seeds: [0], checkpoint_every: 100}
      smoke: {budget_scale: 0.004, seeds: [0], protocol: {num_samples: 20}}
    protocol: {...}                 # the evaluation protocol's fields (see benchmark.leaderboard.evaluation)
    metric: fd_shapes               # the headline metric (lower is better unless higher_is_better: true)
    target: {metric: fd_shapes, value: 60.0, guided: true}   # for "compute to reach target"
    reference_step: {gmacs: 118.6, batch: 256, name: DiT-XL/2}  # states the budget in steps of a known model
    literature: [{entry: DiT-XL/2, fid_guided: 2.27, citation: ...}, ...]

An entry is any ``ldmbench fit`` config (``model``/``data``/``trainer``), or a stack of them (`merge_configs`: later
files override earlier ones key by key, lists are replaced, and a node whose ``class_path`` changes is replaced whole,
as jsonargparse does with stacked ``--config`` files). A YAML whose name starts with ``_`` is a shared part that
entries stack (e.g. ``_mydata.yaml`` setting the data root of every entry once), never an entry of its own. The runner
replaces an entry's logger, callbacks and step limit with the suite's and leaves the recipe alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUITE_FILE = "suite.yaml"
_NOT_ENTRIES = {"suite.yaml", "protocol.yaml"}
SHARED_PREFIX = "_"  # a YAML named _<name>.yaml is a shared part that entries stack, never an entry itself


@dataclass(frozen=True)
class Budget:
    """Per-entry training budget; any limit may be None, at least one is set."""

    train_flops: float | None = None
    images: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.train_flops is None and self.images is None and self.seconds is None:
            raise ValueError("a suite budget needs train_flops, images or seconds")

    def scaled(self, factor: float) -> Budget:
        return Budget(
            train_flops=None if self.train_flops is None else self.train_flops * factor,
            images=None if self.images is None else max(1, round(self.images * factor)),
            seconds=None if self.seconds is None else self.seconds * factor,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"train_flops": self.train_flops, "images": self.images, "seconds": self.seconds}


@dataclass(frozen=True)
class Preset:
    """A named scaling of the suite: budget factor, seeds, checkpoint period and protocol overrides.

    Args:
        name: Preset name (``default``, ``smoke``, ...).
        budget_scale: Factor applied to every limit of the suite's budget.
        seeds: Seeds run for every entry.
        checkpoint_every: Optimizer steps between checkpoints (what a killed run resumes from).
        protocol: Fields of the evaluation protocol that this preset overrides (e.g. fewer samples).
        eval_every: Optimizer steps between in-training evaluations (metric-vs-compute curves); 0 = none.
        eval_num_samples: Samples of each in-training evaluation (with guidance only; the final one uses the
            protocol's number).
        grid_samples_per_class: Columns of the sample grid saved per entry; 0 = no grid.
        jobs: Rows trained at once, each in its own process with ``cores // jobs`` torch threads (``--jobs``
            overrides it). On a small CPU, tiny models gain more from two processes than from a second thread.
        slurm: How ``--launcher slurm`` submits each row (`benchmark.leaderboard.launch.SLURM_KEYS`: partition,
            account, gpus_per_row, nodes, time_min, cpus_per_task, mem_gb, constraint, qos); flags override it.
    """

    name: str
    budget_scale: float = 1.0
    seeds: tuple[int, ...] = (0,)
    checkpoint_every: int = 100
    protocol: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 0
    eval_num_samples: int = 100
    grid_samples_per_class: int = 4
    jobs: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Entry:
    """One entry of a suite: its name, its config file(s) and their merged ``fit`` config.

    ``path`` is the entry's own (last) file; ``paths`` every file of its stack, in the order they apply.
    """

    name: str
    path: Path
    config: dict[str, Any]
    paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = self.paths or [self.path]

    def config_args(self) -> list[str]:
        """The entry's files as ``ldmbench`` arguments: ``--config A --config B``."""
        return [arg for path in self.paths for arg in ("--config", str(path))]

    @property
    def model_class(self) -> str:
        return str(self.config.get("model", {}).get("class_path", "?"))


@dataclass
class Suite:
    """A parsed suite folder."""

    root: Path
    name: str
    title: str
    description: str
    entry_names: list[str]
    budget: Budget
    presets: dict[str, Preset]
    default_preset: str
    protocol: dict[str, Any]
    metric: str
    higher_is_better: bool = False
    target: dict[str, Any] | None = None
    reference_step: dict[str, Any] | None = None
    literature: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    entry_files: dict[str, list[Path]] = field(default_factory=dict)  # entries stacked from several files

    # ------------------------------------------------------------------------------------------- entries
    def entries(self, names: list[str] | None = None) -> list[Entry]:
        """The suite's entries in order, or the named subset (unknown names raise with the valid ones)."""
        available = self.entry_names
        if names:
            unknown = [n for n in names if n not in available]
            if unknown:
                raise ValueError(f"unknown entries {unknown} in suite {self.name!r}; entries: {available}")
            available = [n for n in available if n in names]
        out = []
        for name in available:
            paths = self.entry_files.get(name) or [self.root / f"{name}.yaml"]
            config = merge_configs([_read_yaml(path) for path in paths])
            out.append(Entry(name=name, path=paths[-1], config=config, paths=paths))
        return out

    def preset(self, name: str | None = None) -> Preset:
        name = name or self.default_preset
        if name not in self.presets:
            raise ValueError(f"unknown preset {name!r} in suite {self.name!r}; presets: {sorted(self.presets)}")
        return self.presets[name]

    def budget_for(self, preset: Preset) -> Budget:
        return self.budget.scaled(preset.budget_scale)

    def protocol_for(self, preset: Preset) -> dict[str, Any]:
        """The suite's protocol fields with the preset's overrides applied."""
        protocol = copy.deepcopy(self.protocol)
        protocol.update(copy.deepcopy(preset.protocol))
        return protocol

    def reference_steps(self, train_flops: float | None) -> float | None:
        """The budget in optimizer steps of the suite's reference model (e.g. DiT-XL/2 at batch 256)."""
        ref = self.reference_step
        if not ref or train_flops is None:
            return None
        return train_flops / reference_step_flops(ref["gmacs"], ref["batch"])


def reference_step_flops(gmacs: float, batch: int) -> float:
    """Training FLOPs of one optimizer step: 3 passes (forward + 2 for backward) × 2 FLOPs per MAC × batch."""
    return 3 * gmacs * 1e9 * 2 * batch


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def merge_configs(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Configs applied in order, as stacked ``--config`` files are: a later value replaces an earlier one, mappings
    merge key by key, lists are replaced whole, and a mapping whose ``class_path`` changes replaces the earlier one
    whole (its ``init_args`` belong to the other class)."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged = _merge(merged, config)
    return merged


def _merge(base: Any, override: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    if "class_path" in override and base.get("class_path") not in (None, override["class_path"]):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


def _is_entry_file(path: Path) -> bool:
    return path.name not in _NOT_ENTRIES and not path.name.startswith(SHARED_PREFIX)


def _entries(root: Path, raw: dict[str, Any]) -> tuple[list[str], dict[str, list[Path]]]:
    """The entry names in order, and the files of the entries stacked from several."""
    listed = raw.get("entries")
    if not listed:
        return sorted(p.stem for p in root.glob("*.yaml") if _is_entry_file(p)), {}
    names, stacks = [], {}
    for item in listed:
        if isinstance(item, dict):
            unknown = set(item) - {"name", "configs"}
            if unknown or not item.get("name") or not item.get("configs"):
                raise ValueError(f"suite entry {item!r}: give name and configs (a list of YAML files), nothing else")
            configs = [item["configs"]] if isinstance(item["configs"], str) else item["configs"]
            paths = [root / str(c) for c in configs]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise ValueError(f"suite entry {item['name']!r}: config files {missing} do not exist")
            names.append(str(item["name"]))
            stacks[str(item["name"])] = paths
        elif (root / f"{item}.yaml").is_file():
            names.append(str(item))
        # else: listed but not written yet (e.g. an entry another change adds): skipped rather than failing the suite
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"suite entries {duplicates} are listed twice")
    extra = sorted(p.stem for p in root.glob("*.yaml") if _is_entry_file(p) and p.stem not in names)
    return names + extra, stacks


def _preset(name: str, raw: dict[str, Any]) -> Preset:
    known = {
        "budget_scale",
        "seeds",
        "checkpoint_every",
        "protocol",
        "eval_every",
        "eval_num_samples",
        "grid_samples_per_class",
        "jobs",
        "slurm",
    }
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"preset {name!r}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    scale = float(raw.get("budget_scale", 1.0))
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"preset {name!r}: budget_scale must be > 0, got {scale}")
    seeds = tuple(int(s) for s in raw.get("seeds", [0]))
    if not seeds:
        raise ValueError(f"preset {name!r}: seeds must not be empty")
    return Preset(
        name=name,
        budget_scale=scale,
        seeds=seeds,
        checkpoint_every=int(raw.get("checkpoint_every", 100)),
        protocol=dict(raw.get("protocol") or {}),
        eval_every=int(raw.get("eval_every", 0)),
        eval_num_samples=int(raw.get("eval_num_samples", 100)),
        grid_samples_per_class=int(raw.get("grid_samples_per_class", 4)),
        jobs=_positive_int(raw.get("jobs", 1), f"preset {name!r}: jobs"),
        slurm=_slurm(name, raw.get("slurm")),
    )


_SLURM_KEYS = (
    "partition",
    "account",
    "gpus_per_row",
    "nodes",
    "time_min",
    "cpus_per_task",
    "mem_gb",
    "constraint",
    "qos",
)


def _slurm(name: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - set(_SLURM_KEYS):
        raise ValueError(f"preset {name!r}: slurm takes a mapping of {list(_SLURM_KEYS)}, got {raw!r}")
    return dict(raw)


def _positive_int(value: Any, what: str) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)


def load_suite(path: str | Path) -> Suite:
    """Parse a suite folder (or its ``suite.yaml``)."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    suite_file = root / SUITE_FILE
    if not suite_file.is_file():
        raise FileNotFoundError(f"{suite_file} not found: a suite is a folder with a {SUITE_FILE}")
    with open(suite_file) as f:
        raw = yaml.safe_load(f) or {}
    budget_raw = raw.get("budget") or {}
    budget = Budget(
        train_flops=None if budget_raw.get("train_flops") is None else float(budget_raw["train_flops"]),
        images=None if budget_raw.get("images") is None else int(budget_raw["images"]),
        seconds=None if budget_raw.get("seconds") is None else float(budget_raw["seconds"]),
    )
    presets = {name: _preset(name, p or {}) for name, p in (raw.get("presets") or {"default": {}}).items()}
    default_preset = raw.get("default_preset", "default")
    if default_preset not in presets:
        raise ValueError(f"default_preset {default_preset!r} is not one of the presets {sorted(presets)}")
    protocol = raw.get("protocol") or {}
    if isinstance(protocol, str):  # a path relative to the suite folder
        with open(root / protocol) as f:
            protocol = yaml.safe_load(f) or {}
    entry_names, entry_files = _entries(root, raw)
    target = raw.get("target")
    if target is not None and not {"metric", "value"} <= set(target):
        raise ValueError("target needs 'metric' and 'value'")
    return Suite(
        root=root,
        name=str(raw.get("name", root.name)),
        title=str(raw.get("title", raw.get("name", root.name))),
        description=str(raw.get("description", "")).strip(),
        entry_names=entry_names,
        budget=budget,
        presets=presets,
        default_preset=default_preset,
        protocol=dict(protocol),
        metric=str(raw.get("metric", "fd_shapes")),
        higher_is_better=bool(raw.get("higher_is_better", False)),
        target=target,
        reference_step=raw.get("reference_step"),
        literature=list(raw.get("literature") or []),
        notes=list(raw.get("notes") or []),
        raw=raw,
        entry_files=entry_files,
    )
