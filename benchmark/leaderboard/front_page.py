"""The front page's copy of a suite's main table.

``ldmbench leaderboard render`` of a committed suite (``leaderboards/<name>``) writes the Results section of the suite's
README into the repository README too, between two markers, so the front page never holds a hand-typed figure of it.
A README without the markers of that suite is left alone; so is every render into another folder (``--output`` runs,
tests' copies).
"""

from __future__ import annotations

from pathlib import Path

from data.sources import REPO_ROOT

FRONT_PAGE = REPO_ROOT / "README.md"


def markers(name: str) -> tuple[str, str]:
    """The begin and end lines around suite ``name``'s table in the front page."""
    return (
        f"<!-- leaderboard:{name} begin (written by `ldmbench leaderboard render leaderboards/{name}`; "
        "do not edit) -->",
        f"<!-- leaderboard:{name} end -->",
    )


def results_section(suite_readme: str) -> str:
    """The body of the ``## Results`` section of a rendered suite README (table and the lines under it)."""
    start = suite_readme.index("## Results\n") + len("## Results\n")
    end = suite_readme.find("\n## ", start)
    return suite_readme[start : end if end >= 0 else None].strip("\n")


def with_table(front_page: str, name: str, suite_readme: str) -> str:
    """``front_page`` with the text between suite ``name``'s markers replaced by its Results section."""
    begin, end = markers(name)
    if begin not in front_page or end not in front_page:
        return front_page
    head, rest = front_page.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{results_section(suite_readme)}\n{end}{tail}"


def update_front_page(suite_dir: Path, suite_readme: str, front_page: Path = FRONT_PAGE) -> bool:
    """Write a committed suite's table into the front page; True when the front page changed."""
    suite_dir = Path(suite_dir).resolve()
    if suite_dir != (REPO_ROOT / "leaderboards" / suite_dir.name).resolve() or not front_page.is_file():
        return False
    old = front_page.read_text()
    new = with_table(old, suite_dir.name, suite_readme)
    if new != old:
        front_page.write_text(new)
    return new != old
