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
OTHER_BUDGET = " (budget)"  # trained under another preset's budget: a different experiment, not a stale one


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
        mark = _mark(old, row)
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


def _mark(old: dict[str, Any], row: dict[str, Any]) -> str:
    # A committed row under another key is never read as a current figure to compare with. When its budget differs
    # (the README's quick preset against the committed default preset) that is the reason, and the reader should be
    # told so rather than that the code moved; otherwise it was made with other code, data, config or protocol.
    if not old or old.get("key") == row.get("key"):
        return ""
    return OTHER_BUDGET if old.get("budget_train_flops") != row.get("budget_train_flops") else STALE


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
    captions = []
    if any(cell.endswith(OTHER_BUDGET) for row in rows[1:] for cell in row):
        presets = sorted({str(r.get("preset")) for r in res.read_results(suite_root) if r.get("preset")})
        captions.append(
            "(budget): the committed row trained under another budget (preset "
            + ", ".join(presets)
            + "); not comparable: run that preset to reproduce it"
        )
    if any(cell.endswith(STALE) for row in rows[1:] for cell in row):
        captions.append("(stale): the committed row was made with other code, data, config or protocol; not comparable")
    if captions:
        table.caption = "\n".join(captions)
    Console().print(table)
