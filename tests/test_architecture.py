"""The floors hold: imports only go downward, no import cycles, no module over 600 lines.

Floors, bottom to top (docs and README's Layout paragraph):
  0. ``data`` and ``conditioning``;
  1. the engine: every ``benchmark`` module that is not an entry point;
  2. ``baselines``;
  3. the entry points (:data:`ENTRY_POINTS`): the commands and what only they use.
A module may import from its own floor and the floors below. How imports are read:
- every ``import``/``from … import`` statement counts, at module level and inside functions (a lazy import still
  runs, and still ties the two modules together);
- imports under ``if TYPE_CHECKING:`` are excluded from the cycle check (they never run: annotations only), but
  they still count for the floors (a lower floor naming an upper floor's types still depends on it);
- ``from pkg import name`` is an edge to the module ``pkg.name`` when that is a module, else to ``pkg`` itself (its
  ``__init__``, which runs); ``import a.b`` is an edge to ``a.b``; string imports (``importlib``) are not seen.
Every test is parametrized per module so xdist splits them.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "conditioning", "benchmark", "baselines")
MAX_LINES = 600

BOTTOM, ENGINE, BASELINES, ENTRY = 0, 1, 2, 3
FLOOR_NAMES = {BOTTOM: "data/conditioning", ENGINE: "engine", BASELINES: "baselines", ENTRY: "entry points"}

# The entry points: a module named here, or inside a package named here, is on the top floor.
ENTRY_POINTS = (
    "benchmark.__main__",
    "benchmark.cli",  # `ldmbench` itself
    "benchmark.cache_cli",  # `ldmbench cache-latents`
    "benchmark.sample_cli",  # `ldmbench sample`
    "benchmark.evaluation.command",  # `ldmbench evaluate` (the command, not the evaluation it runs)
    "benchmark.leaderboard",  # `ldmbench leaderboard …`
    "benchmark.compare_tables",  # the leaderboard command's "beside the committed table" view
    "benchmark.perf",  # `ldmbench perf` and the measuring tools
    "benchmark.perf_profile",  # old import path of benchmark.perf.profile (a re-export)
    "benchmark.transfer_entries",  # transfer entries
    "benchmark.transfer",  # their initialisation: reads checkpoints through the baselines' importers and layers
)


# ------------------------------------------------------------------------------------------------------- reading
def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported dotted name, line, under TYPE_CHECKING) for every import statement of ``source``, nested ones too.

    ``from x import y`` yields ``x.y`` (the caller resolves it to a module or to ``x``)."""
    tree = ast.parse(source)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            typing_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        checking = id(node) in typing_only
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, checking) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source_module = ".".join(base + ([node.module] if node.module else []))
            else:
                source_module = node.module or ""
            out += [
                (f"{source_module}.{alias.name}" if alias.name != "*" else source_module, node.lineno, checking)
                for alias in node.names
            ]
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name loads: the longest dotted prefix that is a module (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported project module, line, under TYPE_CHECKING)], self-imports dropped."""
    modules = _module_files()
    out = {}
    for module, path in modules.items():
        edges = []
        for name, line, checking in imports_of(path.read_text(), module, path.name == "__init__.py"):
            target = _resolve(name, modules)
            if target is not None and target != module:
                edges.append((target, line, checking))
        out[module] = edges
    return out


def floor(module: str) -> int:
    if any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS):
        return ENTRY
    top = module.split(".")[0]
    return {"data": BOTTOM, "conditioning": BOTTOM, "benchmark": ENGINE, "baselines": BASELINES}[top]


@functools.cache
def cycles() -> dict[str, list[str]]:
    """module -> the import cycle (strongly connected component) of the runtime import graph it sits in."""
    return components({m: sorted({t for t, _, checking in edges if not checking}) for m, edges in graph().items()})


def components(runtime: dict[str, list[str]]) -> dict[str, list[str]]:
    """node -> its strongly connected component, for the nodes in one of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: dict[str, list[str]] = {}

    def visit(v: str) -> None:  # Tarjan; the graph has ~200 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in runtime[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                for w in component:
                    out[w] = sorted(component)

    for v in runtime:
        if v not in index:
            visit(v)
    return out


# Private APIs of Lightning and jsonargparse break silently on an upgrade: only `data.compat` may use them, each pinned
# by a test there. Flagged: importing an underscored name or module from these libraries, and these private names
# (attributes, getattr strings, overridden methods) wherever they appear.
COMPAT_MODULE = "data.compat"
PRIVATE_LIBRARIES = ("lightning", "lightning_fabric", "pytorch_lightning", "jsonargparse", "torchmetrics")
PRIVATE_NAMES = frozenset(
    {
        "_lazy_class_type",  # jsonargparse lazy_instance internals
        "_lazy_kwargs",
        "_given_hyperparameters",  # LightningCLI -> save_hyperparameters
        "_check_log_dir_exists",  # Lightning's CSV writer
        "_set_seed",  # LightningCLI
        "_instantiate_trainer",
        "_accelerator_connector",  # Trainer
        "_format_summary_table",  # ModelSummary
        "_device_mesh",  # LightningModule (public: device_mesh)
        "_trainer",  # LightningModule (public: trainer, which raises when none is attached)
        "epoch_loop",  # trainer.fit_loop.epoch_loop.max_steps
    }
)


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of a private Lightning / jsonargparse API in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if parts[0] in PRIVATE_LIBRARIES:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if any(p.startswith("_") for p in parts) or private:
                    out.append((node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"))
        elif isinstance(node, ast.Import):
            out += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] in PRIVATE_LIBRARIES and any(p.startswith("_") for p in a.name.split("."))
            ]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            out.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PRIVATE_NAMES:
            out.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.FunctionDef) and node.name in PRIVATE_NAMES:
            out.append((node.lineno, f"def {node.name}"))
    return sorted(out)


def _rel(module: str) -> str:
    return _module_files()[module].relative_to(ROOT).as_posix()


def _python_files() -> list[str]:
    """Every Python file of the repository (packages, tests, scripts), outside hidden and generated folders."""
    out = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if not any(part.startswith(".") or part in {"ldmbench.egg-info", "runs", "build"} for part in parts[:-1]):
            out.append("/".join(parts))
    return sorted(out)


MODULES = sorted(_module_files())


# --------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("module", MODULES)
def test_imports_only_go_downward(module: str) -> None:
    own = floor(module)
    upward = [
        f"  line {line}: {target} ({FLOOR_NAMES[floor(target)]}){' [TYPE_CHECKING]' if checking else ''}"
        for target, line, checking in graph()[module]
        if floor(target) > own
    ]
    assert not upward, f"{_rel(module)} ({FLOOR_NAMES[own]}) imports from a floor above it:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", MODULES)
def test_no_import_cycle(module: str) -> None:
    component = cycles().get(module, [])
    ties = [
        f"  line {line}: {target}"
        for target, line, checking in graph()[module]
        if not checking and target in component and target != module
    ]
    assert not component, f"{module} is in an import cycle with {component}; its imports inside it:\n" + "\n".join(ties)


@pytest.mark.parametrize("module", MODULES)
def test_private_library_apis_only_in_compat(module: str) -> None:
    if module == COMPAT_MODULE:
        return
    uses = private_uses(_module_files()[module].read_text())
    assert not uses, (
        f"{_rel(module)} uses private APIs of Lightning / jsonargparse; go through {COMPAT_MODULE} (or a public "
        "hook) instead:\n" + "\n".join(f"  line {line}: {what}" for line, what in uses)
    )


@pytest.mark.parametrize("path", _python_files())
def test_module_length(path: str) -> None:
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_lists_name_real_modules() -> None:
    """The entry-point list names modules that exist (a stale name would hide nothing)."""
    modules = _module_files()
    for entry in ENTRY_POINTS:
        assert entry in modules, f"ENTRY_POINTS names {entry}, which is not a module"


def test_every_floor_has_modules() -> None:
    floors = {floor(m) for m in MODULES}
    assert floors == {BOTTOM, ENGINE, BASELINES, ENTRY}


def test_reader_sees_lazy_relative_and_typing_imports() -> None:
    """The checks above can fail: the reader finds imports inside functions, resolves relative ones and marks
    TYPE_CHECKING ones; the cycle finder finds a planted cycle; the floors are ordered as documented."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from benchmark.module import DiffusionModule\n"
        "def f():\n"
        "    from ..callbacks import budget\n"
        "    import baselines.dit\n"
    )
    found = imports_of(source, "data.pkg.mod", is_package=False)
    assert ("data.pkg.sibling", 2, False) in found
    assert ("benchmark.module.DiffusionModule", 4, True) in found
    assert ("data.callbacks.budget", 6, False) in found
    assert ("baselines.dit", 7, False) in found
    assert components({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == dict.fromkeys("abc", ["a", "b", "c"])
    assert floor("data.latent_cache") < floor("benchmark.module") < floor("baselines.dit") < floor("benchmark.cli")
    assert floor("benchmark.leaderboard.suite") == ENTRY and floor("benchmark.evaluation.metrics") == ENGINE
    private = (
        "from lightning.fabric.loggers.csv_logs import _ExperimentWriter\n"
        "import jsonargparse._typehints\n"
        "x = getattr(c, '_lazy_kwargs')\n"
        "trainer.fit_loop.epoch_loop.max_steps = 3\n"
        "class C:\n"
        "    def _set_seed(self): pass\n"
        "from lightning.pytorch.cli import LightningCLI\n"
    )
    assert [line for line, _ in private_uses(private)] == [1, 2, 3, 4, 6]
    assert COMPAT_MODULE in MODULES
