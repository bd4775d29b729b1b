"""Docs that cannot drift: every relative link resolves, every documented `ldmbench` command parses, and the README's
Shapes table is what `ldmbench leaderboard render` writes.

A command is parsed in-process, never run: `fit` / `validate` / `test` / `predict` / `evaluate` / `sample` /
`cache-latents` / `describe` with ``--print_config``, `leaderboard run` with ``--dry-run`` (the suite, preset and
entries resolved and the plan printed), `leaderboard render` / `eval` by the leaderboard parser and the suite, `perf`
with its measurement stubbed, and any line asking for help as written. A command line is a line of a code block
(fenced, or indented by four spaces) that starts with ``ldmbench ``, or a part of an ``&&`` chain that does. A file a
command names and the page defines ("save this as `mine.yaml`" before a code block) is written to a temporary folder
first. A command that needs the network is marked so in the doc itself, with ``# needs network`` on its line, and is
then skipped with that reason.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK_PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "leaderboards").rglob("README.md")],
)
COMMAND_PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NETWORK_MARK = "needs network"
PARSED_BY_CLI = {"fit", "validate", "test", "predict", "evaluate", "sample", "cache-latents", "describe"}

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
SAVE_AS = re.compile(r"[Ss]ave (?:this|it) as `([^`]+)`")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------------------------------------------------- links
def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code spans (links there are examples, not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    anchors = set()
    for line in _prose(page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... (not checked offline)
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no {_rel(resolved)})")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {_rel(resolved)})")
    return broken


@pytest.mark.parametrize("page", LINK_PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    assert _broken_links(page) == [], f"{_rel(page)} links to what does not exist"


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text(
        "[ok](there.md#here-it-is) [gone](missing.md) [anchor](there.md#nowhere) `[code](x.md)` [web](https://x.org)\n"
    )
    broken = _broken_links(page)
    assert [b.split(" ")[0] for b in broken] == ["missing.md", "there.md#nowhere"]


# ---------------------------------------------------------------------------------------------------------- commands
def _saved_files(lines: list[str]) -> dict[int, tuple[str, list[str]]]:
    """Code blocks a page asks to save as a file: {first line number: (file name, block lines)}."""
    files, i = {}, 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start, j = i, i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            before = " ".join(lines[max(0, start - 3) : start])
            named = SAVE_AS.findall(before)
            if named:
                files[start] = (named[-1], lines[start + 1 : j])
            i = j
        i += 1
    return files


def _commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of every `ldmbench` command line of a page, continuation lines joined."""
    lines = page.read_text().splitlines()
    found, fenced = [], False
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            fenced = not fenced
        in_code = fenced or lines[i].startswith("    ")  # a fenced or an indented code block; prose is neither
        line, number = lines[i].strip().removeprefix("$ "), i + 1
        if not in_code:
            i += 1
            continue
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        for part in line.split("&&"):
            if part.strip().startswith("ldmbench "):
                found.append((number, part.strip()))
        i += 1
    return found


def _command_params() -> list:
    params = []
    for page in COMMAND_PAGES:
        for number, command in _commands(page):
            marks = [pytest.mark.skip(reason=f"{_rel(page)}:{number} is marked '{NETWORK_MARK}'")]
            params.append(
                pytest.param(page, command, id=f"{_rel(page)}:{number}", marks=marks if NETWORK_MARK in command else ())
            )
    return params


def _argv(page: Path, command: str, tmp_path: Path) -> list[str]:
    """The command's arguments, comments dropped and files the page defines written under ``tmp_path``."""
    argv = shlex.split(command, comments=True)[1:]
    defined = {name: body for name, body in _saved_files(page.read_text().splitlines()).values()}
    for name, body in defined.items():
        (tmp_path / name).write_text("\n".join(body) + "\n")
    return [str(tmp_path / a) if a in defined else a for a in argv]


def parse_command(argv: list[str], tmp_path: Path) -> str:
    """Parse one `ldmbench` command in-process without running it; return what it printed."""
    from benchmark.cli import main

    out = io.StringIO()
    wants_help = any(a in ("-h", "--help") or a.endswith(".help") for a in argv)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if not argv or wants_help:
                main(argv)
            elif argv[0] in PARSED_BY_CLI:
                main([*argv, "--print_config"])
            elif argv[0] == "leaderboard" and argv[1:2] == ["run"]:
                main([*argv, "--dry-run"] if "--dry-run" not in argv else argv)
            elif argv[0] == "leaderboard":
                _parse_leaderboard(argv[1:])
            elif argv[0] == "perf":
                _parse_perf(argv[1:], tmp_path)
            else:
                pytest.fail(f"unknown command {argv[0]!r}")
        except SystemExit as done:
            if done.code not in (0, None):
                pytest.fail(f"`ldmbench {shlex.join(argv)}` exits with {done.code}:\n{out.getvalue()[-3000:]}")
    return out.getvalue()


def _parse_leaderboard(argv: list[str]) -> None:
    """`render` and `eval`: their arguments, the suite, the preset and the entry (nothing written)."""
    from benchmark.leaderboard.command import parser
    from benchmark.leaderboard.suite import load_suite

    args = parser().parse_args(argv)
    suite = load_suite(args.suite)
    suite.preset(getattr(args, "preset", None))
    if getattr(args, "entry", None):
        suite.entries([args.entry])


def _parse_perf(argv: list[str], tmp_path: Path) -> None:
    """`perf`: the whole command line, with the measurement stubbed and any output written under ``tmp_path``."""
    from unittest import mock

    import benchmark.perf.command as perf

    if "--output" in argv:
        argv = list(argv)
        argv[argv.index("--output") + 1] = str(tmp_path / "perf.md")
    with mock.patch.object(perf, "measure", lambda *a, **k: []):
        perf.main(argv)


@pytest.mark.parametrize(("page", "command"), _command_params())
def test_every_documented_command_parses(page, command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in the docs are relative to the repository root
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts config folders on it
    saved = _saved_files(page.read_text().splitlines()).values()
    modules = [Path(name).stem for name, _ in saved if name.endswith(".py")]
    for name in modules:  # a page's own module (mymodel.py) is imported from this test's folder, and not kept
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        parse_command(_argv(page, command, tmp_path), tmp_path)
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def test_the_command_check_finds_commands_and_fails_a_wrong_one(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "ldmbench is prose here.\n\nSave this as `mine.yaml`:\n\n```yaml\ntrainer: {max_steps: 3}\n```\n\n```bash\n"
        "pip install x && ldmbench fit --config leaderboards/shapes/dit.yaml \\\n    --config mine.yaml  # note\n"
        "ldmbench fit --config leaderboards/shapes/dit.yaml --trainer.no_such_key 1\n```\n"
    )
    (number, first), (_, wrong) = _commands(page)
    assert number == 10 and first.endswith("--config mine.yaml  # note")
    monkeypatch.chdir(ROOT)
    argv = _argv(page, first, tmp_path)
    assert (
        argv[-1] == str(tmp_path / "mine.yaml") and (tmp_path / "mine.yaml").read_text() == "trainer: {max_steps: 3}\n"
    )
    assert "max_steps: 3" in parse_command(argv, tmp_path)
    with pytest.raises(pytest.fail.Exception, match="exits with 2"):
        parse_command(_argv(page, wrong, tmp_path), tmp_path)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out_dir = tmp_path / "quick"
    argv = [
        "leaderboard",
        "run",
        "leaderboards/shapes",
        "--preset",
        "smoke",
        "--entries",
        "dit",
        "--output",
        str(out_dir),
    ]
    printed = parse_command([*argv, "--dry-run"], tmp_path)
    assert "dit seed 0: to run" in printed and "1 rows planned, 0 current, 1 to run" in printed
    assert not out_dir.exists()
    key = re.search(r"key (\w+)", printed).group(1)
    out_dir.mkdir()
    (out_dir / "results.jsonl").write_text(f'{{"entry": "dit", "seed": 0, "key": "{key}", "status": "ok"}}\n')
    assert "dit seed 0: current" in parse_command([*argv, "--dry-run"], tmp_path)
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.jsonl"]


# ----------------------------------------------------------------------------------------------------------- README
def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_readme_shapes_table_is_what_render_writes():
    """The README's table is `render`'s Results section of the committed suite, not a hand-typed copy."""
    from benchmark.leaderboard.front_page import markers, with_table
    from benchmark.leaderboard.render import render_suite

    readme = (ROOT / "README.md").read_text()
    assert all(marker in readme for marker in markers("shapes"))
    rendered = render_suite(ROOT / "leaderboards" / "shapes", write=False)
    assert with_table(readme, "shapes", rendered) == readme, "run `ldmbench leaderboard render leaderboards/shapes`"


def test_render_writes_the_table_into_the_front_page_of_a_committed_suite_only(tmp_path):
    from benchmark.leaderboard.front_page import markers, update_front_page, with_table

    begin, end = markers("shapes")
    front = tmp_path / "README.md"
    front.write_text(f"intro\n{begin}\nold\n{end}\noutro\n")
    suite_readme = "# t\n\n## Results\n\n| a |\n|---|\n| 1 |\n\n## Next\n\nmore\n"
    assert (
        with_table(front.read_text(), "shapes", suite_readme) == f"intro\n{begin}\n| a |\n|---|\n| 1 |\n{end}\noutro\n"
    )
    assert with_table("no markers\n", "shapes", suite_readme) == "no markers\n"
    copy = tmp_path / "leaderboards" / "shapes"  # a copy of the suite elsewhere (a test's, an --output run's)
    copy.mkdir(parents=True)
    assert not update_front_page(copy, suite_readme, front) and "old" in front.read_text()
    assert update_front_page(ROOT / "leaderboards" / "shapes", suite_readme, front) and "| 1 |" in front.read_text()
