"""After ``ldmbench leaderboard run ... --output DIR``: the rows just written beside the suite's committed rows.

A run into its own folder (the README's first command) leaves the committed table alone; this prints, per entry and
seed, the suite's metric, the unguided metric and the training throughput of the new row next to the committed row
of the same entry and seed, so a user sees at once whether their machine reproduced the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.leaderboard import results as res

__all__ = ["beside_committed", "print_beside_committed"]


STALE = " (stale)"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "-"


def beside_committed(suite_root: str | Path, results_dir: str | Path, metric: str) -> list[list[str]]:
    """Header and rows of the comparison (one row per entry and seed of the new results, in their order)."""
    mine = res.latest_rows(res.read_results(results_dir), None)
    committed = {
        (r.get("entry"), r.get("seed")): r
        for r in res.latest_rows(res.read_results(suite_root), None)
        if r.get("source", "trained") == "trained"
    }
    # Short headers, so the table fits 80 columns (a pipe, a CI log): "committed" / "then" is the committed row's value
    # of the column to its left.
    table = [["entry", "seed", metric, "committed", "no CFG", "committed", "img/s", "then"]]
    for row in mine:
        if row.get("source", "trained") != "trained":
            continue
        old = committed.get((row.get("entry"), row.get("seed")), {})
        # A committed row under another key was made with other code, data, config or protocol: never read it as a
        # current figure to compare with (STALE marks it).
        mark = STALE if old and old.get("key") != row.get("key") else ""
        if row.get("status") != "ok":
            table.append([str(row.get("entry")), str(row.get("seed")), str(row.get("status")), "", "", "", "", ""])
            continue
        table.append(
            [
                str(row.get("entry")),
                str(row.get("seed")),
                _number(row.get("metric")),
                _number(old.get("metric")) + mark,
                _number(row.get("metric_noguidance")),
                _number(old.get("metric_noguidance")) + mark,
                _number(row.get("train_images_per_s")),
                _number(old.get("train_images_per_s")) + mark,
            ]
        )
    return table


def print_beside_committed(suite_root: str | Path, results_dir: str | Path, metric: str) -> None:
    """Print `beside_committed` as a table, with where both tables are."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = beside_committed(suite_root, results_dir, metric)
    if len(rows) == 1:
        return
    title = f"this run ({Path(results_dir) / 'README.md'})\nbeside the committed one ({Path(suite_root) / 'README.md'})"
    table = Table(title=title, box=box.SIMPLE, pad_edge=False)
    for name in rows[0]:
        table.add_column(name, justify="left" if name in ("entry", "seed") else "right")
    for row in rows[1:]:
        table.add_row(*row)
    if any(cell.endswith(STALE) for row in rows[1:] for cell in row):
        table.caption = "(stale): the committed row was made with other code, data, config or protocol; not comparable"
    Console().print(table)
