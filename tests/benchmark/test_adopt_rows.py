"""A row of the same (entry, seed, key) in a suite named under ``rows_from`` is copied, not trained again."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from benchmark.leaderboard import results as res
from benchmark.leaderboard.runner import _adopt_rows


def _job(name, seed, key):
    return SimpleNamespace(entry=SimpleNamespace(name=name), seed=seed, key=key)


def test_rows_from_a_sibling_suite_are_adopted_by_key(tmp_path):
    source, target = tmp_path / "own", tmp_path / "shared"
    (source / "grids").mkdir(parents=True)
    (source / "grids" / "dit-seed0.png").write_bytes(b"png")
    ok = {"entry": "dit", "seed": 0, "key": "k0", "status": "ok", "suite": "own", "grid": "grids/dit-seed0.png"}
    res.write_row(source, ok)
    res.write_row(source, {"entry": "dit", "seed": 1, "key": "k1", "status": "failed", "suite": "own"})
    res.write_row(source, {"entry": "dit", "seed": 2, "key": "old", "status": "ok", "suite": "own"})
    target.mkdir()
    suite = SimpleNamespace(name="shared", root=target, raw={"rows_from": ["../own"]})
    planned = [_job("dit", 0, "k0"), _job("dit", 1, "k1"), _job("dit", 2, "k2"), _job("mdt", 0, "k0")]
    adopted = _adopt_rows(suite, planned, target, set(), Console(quiet=True))
    assert adopted == {("dit", 0, "k0")}  # a failed row, another key and another entry are trained here
    [row] = res.read_results(target)
    assert (row["suite"], row["copied_from"], row["key"]) == ("shared", "../own", "k0")
    assert (target / "grids" / "dit-seed0.png").read_bytes() == b"png"
    assert _adopt_rows(suite, planned, target, {("dit", 0, "k0")}, Console(quiet=True)) == set()  # already there


def test_no_rows_from_adopts_nothing(tmp_path):
    suite = SimpleNamespace(name="s", root=tmp_path, raw={})
    assert _adopt_rows(suite, [_job("dit", 0, "k")], tmp_path, set(), Console(quiet=True)) == set()


def test_a_new_row_replaces_the_file_of_an_earlier_row_of_the_same_entry_and_seed(tmp_path):
    res.write_row(tmp_path, {"entry": "dit", "seed": 0, "key": "old", "status": "ok"})
    res.write_row(tmp_path, {"entry": "dit", "seed": 1, "key": "old", "status": "ok"})
    res.write_row(tmp_path, {"entry": "dit_ddpm", "seed": 0, "key": "old", "status": "ok"})
    res.write_row(tmp_path, {"entry": "dit", "seed": 0, "key": "ck", "status": "ok", "source": "checkpoint"})
    res.write_row(tmp_path, {"entry": "dit", "seed": 0, "key": "new", "status": "ok"})
    kept = sorted(p.name for p in (tmp_path / "rows").glob("*.json"))
    assert kept == ["dit-s0-ck.json", "dit-s0-new.json", "dit-s1-old.json", "dit_ddpm-s0-old.json"]
