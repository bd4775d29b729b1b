"""The transfer suites as shipped (order, references, shift per resolution) and how pre-training stages render."""

from pathlib import Path

import pytest
import yaml

from benchmark.leaderboard import results as res
from benchmark.leaderboard.render import plot_curves, render_suite
from benchmark.leaderboard.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]


def _model_args(entry) -> dict:
    return entry.config["model"]["init_args"]


@pytest.mark.parametrize("name", ["shapes-transfer-res", "shapes-transfer-data"])
def test_every_transfer_reads_a_stage_that_runs_before_it(name):
    suite = load_suite(ROOT / "leaderboards" / name)
    stages = suite.raw["stages"]
    assert suite.entry_names[: len(stages)] == stages
    assert {"smoke", "default"} <= set(suite.presets)
    for index, entry in enumerate(suite.entries()):
        transfer = _model_args(entry).get("transfer")
        if transfer is None:
            continue
        source = transfer["checkpoint"].removeprefix("entry:")
        assert source in stages and suite.entry_names.index(source) < index, entry.name


def test_resolution_suite_shifts_by_resolution():
    suite = load_suite(ROOT / "leaderboards/shapes-transfer-res")
    for entry in suite.entries():
        resolution = entry.config["data"]["init_args"]["resolution"]
        shift = _model_args(entry)["objective"]["init_args"]["shift"]
        expected = 1.0 if resolution == 32 or entry.name.endswith("noshift") else (resolution / 32)
        assert shift == expected, entry.name
    strategies = {(_model_args(e).get("transfer") or {}).get("pos_embed") for e in suite.entries()}
    assert {"extend", "interpolate", "resample", "crop"} <= strategies


def test_paper_scale_transfer_configs_name_their_source_and_shift():
    folder = ROOT / "leaderboards/transfer-paper"
    up = yaml.safe_load((folder / "imagenet512_mmdit_xl_2_from256.yaml").read_text())["model"]["init_args"]
    assert up["objective"]["init_args"]["shift"] == 2.0 and "imagenet-256" in up["transfer"]["checkpoint"]
    text = yaml.safe_load((folder / "cc12m256_mmdit_xl_2_from_imagenet.yaml").read_text())["model"]["init_args"]
    assert (
        text["conditioner"]["init_args"]["semantic"] == "caption" and "imagenet-256" in text["transfer"]["checkpoint"]
    )


def _row(entry: str, metric: float) -> dict:
    return {
        "entry": entry,
        "seed": 0,
        "key": entry,
        "source": "trained",
        "preset": "default",
        "status": "ok",
        "metric": metric,
        "train_flops": 1e12,
        "curve": [[5e11, metric * 2], [1e12, metric]],
        "grid": None,
    }


def test_stages_are_unranked_and_off_the_target_plot(tmp_path):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "suite.yaml").write_text("name: toy\nentries: [pre, a]\nstages: [pre]\nbudget: {train_flops: 1.0e12}\n")
    for name in ("pre", "a"):
        (root / f"{name}.yaml").write_text("model: {class_path: baselines.dit.DiTModule}\n")
    # Two seeds of each, since a one-seed row is shown unranked.
    rows = [_row("pre", 1.0), _row("a", 5.0), {**_row("pre", 1.1), "seed": 1}, {**_row("a", 5.2), "seed": 1}]
    res.write_rows(root / "results.jsonl", rows)
    text = render_suite(root, check_keys=False)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| 1 | a |") for line in table)  # the stage's better metric does not outrank it
    assert any(line.startswith("| stage | pre |") for line in table)
    assert "pre-training stage" in text
    only_stage = [_row("pre", 1.0)]
    assert plot_curves(load_suite(root), only_stage, tmp_path / "plot.png") is None
