"""The committed suite READMEs are what ``ldmbench leaderboard render`` writes, and every committed row whose key is
not current at this checkout is shown as stale, never as a result."""

from pathlib import Path

import pytest

from benchmark.leaderboard import results as res
from benchmark.leaderboard.render import README, current_keys, render_suite
from benchmark.leaderboard.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted(p.parent for p in (ROOT / "leaderboards").glob("*/suite.yaml"))


@pytest.mark.parametrize("root", SUITES, ids=[p.name for p in SUITES])
def test_a_committed_readme_is_what_render_writes(root):
    text = render_suite(root, write=False)  # from the recorded rows and sizes: nothing trains, nothing is built
    rel = root.relative_to(ROOT)
    assert (root / README).read_text() == text, f"re-render: ldmbench leaderboard render {rel} [--describe]"


@pytest.mark.parametrize("root", [p for p in SUITES if (p / res.ROWS).is_dir()], ids=lambda p: p.name)
def test_every_row_whose_key_is_not_current_is_shown_stale(root):
    rows = res.read_results(root)
    keys = current_keys(load_suite(root), rows)
    trained = [r for r in rows if r.get("source", "trained") == "trained"]
    current = {(r["entry"], r.get("seed")) for r in trained if r.get("key") in keys}
    old = {(r["entry"], r.get("seed")) for r in trained if r.get("key") not in keys} - current
    text = (root / README).read_text()
    other = text.split("## Other rows", 1)[1] if "## Other rows" in text else ""
    stale_lines = {
        tuple(cell.strip() for cell in line.split("|")[1:3]) for line in other.splitlines() if "| stale |" in line
    }
    assert {(entry, str(seed)) for entry, seed in old} <= stale_lines
    table = text.split("## Results", 1)[1].split("\n\n", 2)[1]
    for entry, _ in old:
        if not any(e == entry for e, _ in current):  # no current row of the entry: its table line says so
            (line,) = [line for line in table.splitlines() if line.split("|")[2].strip() == entry]
            assert "stale (rerun)" in line


def test_sizes_are_described_once_and_read_back_while_config_and_code_match(tmp_path, monkeypatch):
    import benchmark.cli
    from benchmark.leaderboard.render import describe_entries

    suite = load_suite(ROOT / "leaderboards" / "shapes")
    calls = []
    monkeypatch.setattr(benchmark.cli, "describe", lambda args: calls.append(args) or {"params": 7, "other": 1})
    cache = tmp_path / "sizes.json"
    assert describe_entries(suite, ["dit"], cache) == {"dit": {"params": 7}} and len(calls) == 1
    assert describe_entries(suite, ["dit"], cache, refresh=False) == {"dit": {"params": 7}} and len(calls) == 1
    (entry,) = suite.entries(["dit"])
    entry.config["model"]["init_args"]["size"] = "DiT-S/2"  # another config: the kept answer is not its answer
    monkeypatch.setattr(type(suite), "entries", lambda self, names=None: [entry])
    assert describe_entries(suite, ["dit"], cache, refresh=False) == {}
