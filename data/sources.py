"""Hashes of the project's source files and library versions: what caches and result rows record about the code.

A cached artefact (encoded latents, reference statistics) or a result row is valid only for the code that made it.
`source_hash` hashes the files of the named modules and of the project modules they import, so a change to, e.g.,
the Shapes renderer gives its latent cache and its reference statistics new keys. Modules outside the project's
packages count by their own file when they are a user's (a dataset beside its config); an installed library's
files never count (their bytes are not the same from one install of a version to the next).

Two ways to follow imports:

- ``deep=False`` (caches): imports at module level only, without the parent packages' ``__init__``. A cache is made by
  a few functions of a few modules (the dataset, the autoencoder, the extractor); following imports inside functions
  would reach the whole engine (a dataset that imports an evaluation helper inside one method) and rebuild every
  cache at each unrelated change.
- ``deep=True`` (result rows): every import, inside functions too, with each parent package's ``__init__`` (Python
  runs it on import): a row runs through the whole training loop, so anything it may call counts.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "baselines", "conditioning", "data")


def module_file(module: str) -> Path:
    """The file of a project module (a package's ``__init__.py``); it may not exist."""
    base = REPO_ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def project_module(name: str) -> str | None:
    """The longest prefix of a dotted name that is a module of the project's packages (None outside them)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        if module_file(module).is_file():
            return module
    return None


def _imported_names(tree: ast.Module, deep: bool) -> list[str]:
    nodes = ast.walk(tree) if deep else _top_level(tree.body)
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _top_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements that run on import: the module body, into ``if``/``try`` blocks but not into functions."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)


def import_closure(roots: Iterable[str], deep: bool = True) -> set[str]:
    """Project modules the roots import, directly or not (see the module docstring for ``deep``)."""
    todo = [m for m in (project_module(r) for r in roots) if m]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if deep:
            parts = module.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__
        path = module_file(module)
        stat = path.stat()
        todo += _project_imports(path, stat.st_mtime_ns, stat.st_size, deep)
    return seen


@lru_cache(maxsize=4096)
def _project_imports(path: Path, mtime_ns: int, size: int, deep: bool) -> list[str]:
    """The project modules one file imports; kept per (file, modification time, size), since every row key and
    every cache key walks the same closure again (parsing it was most of `leaderboard run --dry-run`'s time)."""
    tree = ast.parse(path.read_text())
    return [m for m in (project_module(n) for n in _imported_names(tree, deep)) if m]


@cache
def _library_dirs() -> tuple[Path, ...]:
    """Where installed libraries and the standard library live."""
    import site
    import sysconfig

    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(Path(d).resolve() for d in dirs if d)


def _outside_file(module: str) -> Path | None:
    """The file of a user's module outside the project's packages; None for an installed library's (its code is
    that of its version, which caches record apart, and its bytes differ between builds and installs of one
    version: a CUDA and a CPU wheel of torch, say) and for modules without a ``.py`` file."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    path = Path(origin).resolve()
    return None if any(path.is_relative_to(d) for d in _library_dirs()) else path


def source_files(modules: Iterable[str], deep: bool = False) -> list[Path]:
    """The files `source_hash` reads: the project modules' import closure plus outside modules' own files."""
    modules = list(modules)
    files = {module_file(m) for m in import_closure(modules, deep)}
    files |= {f for m in modules if project_module(m) is None and (f := _outside_file(m)) is not None}
    return sorted(f for f in files if f.is_file())


def source_hash(modules: Iterable[str], deep: bool = False) -> str:
    """sha256 (16 hex digits) of the source files of ``modules`` and the project modules they import."""
    digest = hashlib.sha256()
    for path in source_files(modules, deep):
        name = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else path.name
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@cache
def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of the named distributions (None where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------ git
def _git(*args: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


@cache
def git_commit() -> str | None:
    """The checked-out commit (10 hex digits), never suffixed: what ``git checkout`` takes; None outside git.

    Whether the files that made a result differed from it is recorded apart (`dirty_files`, `diff_hash`).
    """
    head = _git("rev-parse", "--short=10", "HEAD")
    return head.strip() or None if head is not None else None


def _relative(paths: Iterable[str | Path]) -> list[str]:
    out = []
    for path in paths:
        path = Path(path)
        path = path.absolute() if not path.is_absolute() else path
        out.append(path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path))
    return sorted(set(out))


def _untracked(paths: list[str]) -> list[str]:
    out = _git("ls-files", "--others", "--exclude-standard", "--", *paths) if paths else None
    return [line for line in (out or "").splitlines() if line]


def dirty_files(paths: Iterable[str | Path]) -> list[str]:
    """Those of ``paths`` whose content is not HEAD's (modified, or not committed at all), repository-relative;
    [] outside git."""
    paths = _relative(paths)
    if not paths:
        return []
    changed = (_git("diff", "HEAD", "--name-only", "--", *paths) or "").splitlines()
    return sorted({line for line in changed if line} | set(_untracked(paths)))


def diff_hash(paths: Iterable[str | Path]) -> str | None:
    """sha256 (16 hex digits) of how ``paths`` differ from HEAD (``git diff HEAD`` plus files not committed): with
    the commit it names the exact files a result came from; None when they are HEAD's (or outside git)."""
    paths = _relative(paths)
    if not paths or not (_git("diff", "HEAD", "--name-only", "--", *paths) or _untracked(paths)):
        return None
    digest = hashlib.sha256((_git("diff", "HEAD", "--binary", "--", *paths) or "").encode())
    for name in _untracked(paths):
        digest.update(name.encode() + hashlib.sha256((REPO_ROOT / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


def is_tracked(path: str | Path) -> bool:
    """Whether git tracks a file at or under ``path`` (e.g. a committed suite folder)."""
    rel = _relative([path])
    return bool(rel) and bool((_git("ls-files", "--", rel[0]) or "").strip())
