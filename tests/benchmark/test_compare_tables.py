"""A leaderboard run into its own folder is shown beside the suite's committed rows."""

import json

from benchmark.compare_tables import beside_committed, print_beside_committed


def _rows(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_new_rows_are_printed_beside_the_committed_row_of_the_same_entry_and_seed(tmp_path, capsys):
    base = {"source": "trained", "status": "ok", "key": "k"}
    _rows(
        tmp_path / "suite",
        [
            {**base, "entry": "dit", "seed": 0, "metric": 17.6, "metric_noguidance": 16.5, "train_images_per_s": 269},
            {**base, "entry": "dit", "seed": 1, "metric": 14.0, "metric_noguidance": 16.4, "train_images_per_s": 270},
            {**base, "entry": "mdt", "seed": 0, "metric": 19.2, "metric_noguidance": 18.1, "train_images_per_s": 236},
        ],
    )
    _rows(
        tmp_path / "mine",
        [
            {**base, "entry": "dit", "seed": 0, "metric": 17.61, "metric_noguidance": 16.5, "train_images_per_s": 99},
            {**base, "entry": "mdt", "seed": 0, "status": "failed"},
            {**base, "entry": "new", "seed": 0, "metric": 30.0, "metric_noguidance": 31.0},
        ],
    )
    table = beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    assert table[0][:4] == ["entry", "seed", "fd_shapes", "committed"]
    assert table[1] == ["dit", "0", "17.6", "17.6", "16.5", "16.5", "99", "269"]
    assert table[2][:3] == ["mdt", "0", "failed"]
    assert table[3][:4] == ["new", "0", "30", "-"]  # an entry the committed table does not have
    print_beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    assert "beside the committed one" in capsys.readouterr().out


def test_a_committed_row_under_another_key_is_marked_stale_not_compared_as_current(tmp_path, capsys):
    row = {"source": "trained", "status": "ok", "entry": "dit", "seed": 0, "metric_noguidance": 16.5}
    _rows(tmp_path / "suite", [{**row, "key": "old", "metric": 17.6, "train_images_per_s": 269}])
    _rows(tmp_path / "mine", [{**row, "key": "new", "metric": 18.0, "train_images_per_s": 454}])
    table = beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    assert table[1] == ["dit", "0", "18", "17.6 (stale)", "16.5", "16.5 (stale)", "454", "269 (stale)"]
    print_beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    assert "not comparable" in capsys.readouterr().out


def test_a_committed_row_of_another_budget_is_marked_as_such_not_as_stale(tmp_path, capsys):
    # The README's first command runs the quick preset; the committed table is the default preset's (9x the budget).
    row = {"source": "trained", "status": "ok", "entry": "dit", "seed": 0, "metric_noguidance": 16.5}
    committed = {**row, "key": "a", "metric": 7.5, "train_images_per_s": 639, "budget_train_flops": 1.8e13}
    _rows(tmp_path / "suite", [{**committed, "preset": "default"}])
    mine = {**row, "key": "b", "metric": 18.0, "train_images_per_s": 347, "budget_train_flops": 2e12}
    _rows(tmp_path / "mine", [mine])
    table = beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    assert table[1] == ["dit", "0", "18", "7.5 (budget)", "16.5", "16.5 (budget)", "347", "639 (budget)"]
    print_beside_committed(tmp_path / "suite", tmp_path / "mine", "fd_shapes")
    out = capsys.readouterr().out
    assert "preset default" in out and "(stale)" not in out
