"""scripts/budget_curve.py: the budget curve's table, CSV and picture come from evaluation JSONs (fake ones here)."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "budget_curve.py"


def _load():
    spec = importlib.util.spec_from_file_location("budget_curve", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval(flops: float, step: int, accuracy: float, sd: float, classes: dict[str, float]) -> dict:
    return {
        "checkpoint": f"/tmp/ckpt/flops{flops / 1e12:g}e12-step{step}.ckpt",
        "checkpoint_step": step,
        "images_seen": step * 64,
        "train_flops": flops,
        "class_accuracy": accuracy,
        "class_accuracy_sd": sd,
        "fd_shapes": 40.0 - step / 100,
        "fd_shapes_sd": 1.0,
        "num_samples": 20,
        "eval_seconds": 3.0,
        "per_class_accuracy": {k: {"accuracy": v, "n": 10, "lo": 0.0, "hi": 1.0} for k, v in classes.items()},
    }


def test_wilson_and_per_class():
    bc = _load()
    lo, hi = bc.wilson(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.97  # Wilson 95 % for 8 of 10: (0.490, 0.943)
    assert bc.wilson(10, 10)[1] <= 1.0
    out = bc.per_class([0, 1, 1, 0], [0, 1, 0, 0], ["circle", "square"])
    assert out["circle"]["accuracy"] == pytest.approx(2 / 3) and out["circle"]["n"] == 3
    assert out["square"]["accuracy"] == 1.0


def test_render_picks_the_smallest_budget_that_passes_both_bars(tmp_path):
    bc = _load()
    evals = tmp_path / "evals"
    evals.mkdir()
    fakes = [
        _eval(4e12, 780, 0.86, 0.01, {"circle": 0.9, "star": 0.45}),  # overall passes, one class does not
        _eval(1e12, 195, 0.40, 0.02, {"circle": 0.5, "star": 0.3}),
        _eval(8e12, 1560, 0.90, 0.01, {"circle": 0.95, "star": 0.7}),  # the first that passes both
        _eval(6e12, 1170, 0.81, 0.02, {"circle": 0.9, "star": 0.6}),  # 0.81 - 1.96 x 0.02 < 0.80
    ]
    for i, fake in enumerate(fakes):
        (evals / f"{i}.json").write_text(json.dumps(fake))
    (tmp_path / "README.md").write_text("# Curve\n\nprose kept\n")
    pick = bc.render(tmp_path, "test")
    assert pick["train_flops"] == 8e12 and pick["step"] == 1560
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert [float(r["train_flops"]) for r in rows] == [1e12, 4e12, 6e12, 8e12]
    assert rows[1]["class_min_name"] == "star" and float(rows[1]["class_min"]) == 0.45
    assert (tmp_path / "curve.png").stat().st_size > 1000
    readme = (tmp_path / "README.md").read_text()
    assert "prose kept" in readme and "**8e+12 FLOPs** (step 1560)" in readme
    bc.render(tmp_path, "test")  # re-rendering replaces the table instead of appending a second one
    assert (tmp_path / "README.md").read_text().count(bc.BEGIN) == 1


def test_budget_state_reads_the_compute_budget_callback():
    bc = _load()
    ckpt = {"callbacks": {"ComputeBudget": {"images_seen": 640, "flops_per_image": 8e7, "train_seconds": 2.5}}}
    assert bc.budget_state(ckpt) == {"images_seen": 640, "train_flops": pytest.approx(5.12e10), "train_seconds": 2.5}
    with pytest.raises(ValueError, match="ComputeBudget"):
        bc.budget_state({"callbacks": {}})


def test_time_plan_counts_cpu_seconds_per_row_and_halves_for_two_rows_at_a_time():
    bc = _load()
    # A row measured at 1e12 on a loaded machine: 100 steps in 40 s wall at a quarter of a core = 0.1 CPU s per step.
    row = {"entry": "dit", "status": "ok", "steps": 100, "train_seconds": 40.0, "train_cpu_per_wall": 0.25}
    row.update(eval_seconds=100.0, sampling_cpu_per_wall=0.3, flops_per_image=1e9 / 64, train_load1=8.0)
    table, now, levers = bc.time_plan([row], budget=2e11)  # 200 steps, final evaluation 30 CPU s
    one = 30 / 15 + 0.5
    assert now == pytest.approx(3 * (0.1 * 200 + 30 + 2 * one + bc.OVERHEAD_CPU_S) / 2 / 60)
    assert levers == pytest.approx(3 * (0.1 * 200 + 30 * 0.67 + bc.OVERHEAD_CPU_S) / 2 / 60)
    assert "| dit | 0.100 | 8 | 200 | 20 | 30 |" in table
