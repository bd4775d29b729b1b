"""Leaderboard pieces without training: suite configs, the compute budget, row keys and staleness, rendering."""

import csv
import json
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.callbacks.budget import ComputeBudget
from benchmark.leaderboard import results as res
from benchmark.leaderboard.render import compute_to_target, rank_with_ties, render_suite, spread_stats
from benchmark.leaderboard.suite import load_suite, reference_step_flops

ROOT = Path(__file__).resolve().parents[2]

SUITE_YAML = """
name: toy
title: Toy suite
entries: [b, a]
budget: {train_flops: 1.0e12}
presets:
  default: {budget_scale: 1.0, seeds: [0, 1]}
  smoke: {budget_scale: 0.01, seeds: [0], protocol: {num_samples: 10}}
protocol: {num_samples: 100, guidance_scale: 2.0}
metric: fd_shapes
target: {metric: fd_shapes, value: 10.0}
literature:
  - {entry: DiT-XL/2, fid_guided: 2.27, citation: "Peebles & Xie 2023"}
"""


def _suite(tmp_path: Path, text: str = SUITE_YAML) -> Path:
    root = tmp_path / "toy"
    root.mkdir(parents=True)
    (root / "suite.yaml").write_text(text)
    for name in ("a", "b", "c"):
        (root / f"{name}.yaml").write_text("model: {class_path: baselines.dit.DiTModule}\n")
    (root / "protocol.yaml").write_text("num_samples: 5\n")
    return root


# ----------------------------------------------------------------------------------------------- suites
def test_suite_config_parsing(tmp_path):
    suite = load_suite(_suite(tmp_path))
    # Listed entries first, in their order, then the folder's other entry YAMLs; suite/protocol files are not entries.
    assert suite.entry_names == ["b", "a", "c"]
    assert [e.name for e in suite.entries(["a", "c"])] == ["a", "c"]
    with pytest.raises(ValueError, match="unknown entries"):
        suite.entries(["zzz"])
    smoke = suite.preset("smoke")
    assert suite.budget_for(smoke).train_flops == pytest.approx(1e10)
    assert suite.protocol_for(smoke) == {"num_samples": 10, "guidance_scale": 2.0}
    assert suite.preset().seeds == (0, 1)
    with pytest.raises(ValueError, match="unknown preset"):
        suite.preset("huge")


def test_suite_config_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        load_suite(_suite(tmp_path, "name: x\nbudget: {}\n"))
    with pytest.raises(ValueError, match="unknown keys"):
        load_suite(_suite(tmp_path / "2", "budget: {images: 10}\npresets: {default: {budget_sclae: 2}}\n"))
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path)


def test_shipped_suites_parse():
    shapes = load_suite(ROOT / "leaderboards/shapes")
    assert {"dit", "dit_ddpm"} <= set(shapes.entry_names)
    smoke, default = shapes.preset("smoke"), shapes.preset("default")
    assert shapes.budget_for(smoke).train_flops < shapes.budget_for(default).train_flops
    assert shapes.protocol_for(smoke)["num_samples"] < shapes.protocol_for(default)["num_samples"]
    for name in ("imagenet-256", "imagenet-512", "cc12m-256", "cc12m-512"):
        suite = load_suite(ROOT / "leaderboards" / name)
        assert suite.budget.train_flops > 1e18 and suite.literature, name
        # The budget is stated as a whole number of the reference model's steps.
        steps = suite.reference_steps(suite.budget.train_flops)
        assert steps == pytest.approx(round(steps), rel=1e-6)


def test_reference_step_flops_dit_xl2():
    # One DiT-XL/2 step at batch 256: 3 passes x 118.6 GMACs x 2 FLOPs/MAC x 256 images.
    assert reference_step_flops(118.6, 256) == pytest.approx(1.8217e14, rel=1e-4)


# ----------------------------------------------------------------------------------------------- the budget
class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["image"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Data(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        data = torch.randn(10_000, 2)
        return DataLoader([{"image": x} for x in data], batch_size=self.batch_size, drop_last=True)


def _fit(budget: ComputeBudget, accumulate: int = 1, max_steps: int = -1, others: list | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        callbacks=[budget, *(others or [])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Tiny(), datamodule=_Data())
    return trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_compute_budget_stops_at_the_right_step(accumulate):
    # 10 FLOPs per image, global batch 8 x accumulate: the budget buys 5.5 steps' worth, so training stops after 6.
    per_step = 10 * 8 * accumulate
    budget = ComputeBudget(train_flops=5.5 * per_step, flops_per_image=10)
    trainer = _fit(budget, accumulate)
    assert trainer.global_step == 6
    assert budget.images_seen == 6 * 8 * accumulate
    assert budget.flops_used == pytest.approx(6 * per_step)
    assert budget.stopped_by == "train_flops" and budget.fraction() >= 1.0
    assert trainer.callback_metrics["budget/images_seen"] == 6 * 8 * accumulate


def test_compute_budget_images_and_exact_multiple():
    budget = ComputeBudget(images=32, flops_per_image=1)  # exactly 4 steps of 8
    trainer = _fit(budget)
    assert trainer.global_step == 4 and budget.stopped_by == "images"


def test_compute_budget_seconds_and_state():
    budget = ComputeBudget(seconds=1e-9, flops_per_image=1)
    trainer = _fit(budget, max_steps=50)
    assert trainer.global_step == 1 and budget.stopped_by == "seconds"
    # The counters survive a checkpoint, so a resumed run keeps spending the same budget.
    fresh = ComputeBudget(train_flops=100.0)
    fresh.load_state_dict(budget.state_dict())
    assert fresh.images_seen == 8 and fresh.flops_per_image == 1
    with pytest.raises(ValueError):
        ComputeBudget()


class _SlowEvaluation(pl.Callback):
    """Stands in for an in-training evaluation: 50 ms after every optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(0.05)


def test_compute_budget_clock_leaves_out_other_callbacks():
    """In-training evaluation and checkpoints must not count as training time (nor lower train images/s)."""
    budget = ComputeBudget(images=80, flops_per_image=1)  # 10 steps; the slow callback adds >= 0.5 s
    _fit(budget, others=[_SlowEvaluation()])
    assert budget.train_seconds < 0.25, budget.train_seconds


def test_compute_budget_measures_flops_per_image():
    from baselines.dit import DiTModule
    from benchmark.callbacks.budget import train_flops_per_image
    from benchmark.flops import backbone_macs
    from data.autoencoder import Autoencoder

    module = DiTModule(size="DiT-tiny/2", resolution=32, num_classes=10, autoencoder=Autoencoder("embedded:shapes-vae"))
    # Forward + backward = 3 forwards, 2 FLOPs per MAC (a little more for the loss and elementwise ops).
    assert train_flops_per_image(module) == pytest.approx(6 * backbone_macs(module), rel=0.05)


# ----------------------------------------------------------------------------------------------- rows
def test_row_key_changes_with_what_decides_the_numbers():
    fp = {"model": {"class_path": "x", "init_args": {"lr": 1}}, "data": {}, "trainer": {}}
    base = res.row_key(fp, 0, {"train_flops": 1.0}, {"num_samples": 10})
    assert base == res.row_key(json.loads(json.dumps(fp)), 0, {"train_flops": 1.0}, {"num_samples": 10})
    other_model = {**fp, "model": {"class_path": "x", "init_args": {"lr": 2}}}
    for changed in (
        res.row_key(other_model, 0, {"train_flops": 1.0}, {"num_samples": 10}),
        res.row_key(fp, 1, {"train_flops": 1.0}, {"num_samples": 10}),
        res.row_key(fp, 0, {"train_flops": 2.0}, {"num_samples": 10}),
        res.row_key(fp, 0, {"train_flops": 1.0}, {"num_samples": 11}),
    ):
        assert changed != base


def test_row_key_depends_on_code_and_versions(monkeypatch):
    fp = {"model": None, "data": None, "trainer": {}}
    base = res.row_key(fp, 0, None, {})
    monkeypatch.setattr(res, "library_versions", lambda: {"torch": "0.0"})
    assert res.row_key(fp, 0, None, {}) != base
    monkeypatch.setattr(res, "code_hash", lambda class_paths=None: "other")
    assert res.row_key(fp, 0, None, {}) != base


def test_code_hash_covers_the_import_closure_of_the_entrys_classes_only(tmp_path, monkeypatch):
    """Adding or editing another baseline, or adding a module no entry imports, must not make an entry's rows
    stale; its own modules, what they import, the engine and the shipped weights must."""
    dit = ("baselines.dit.DiTModule", "data.shapes.ShapesDataModule")
    dit_files = {p.relative_to(res.REPO_ROOT).as_posix() for p in res._code_files(dit)}
    assert {"baselines/dit.py", "baselines/layers.py", "baselines/dit_convert.py"} <= dit_files
    assert "baselines/mdt.py" not in dit_files and not any(f.startswith("benchmark/perf") for f in dit_files)
    assert {"benchmark/module.py", "data/shapes.py", "data/latent_cache.py", "benchmark/evaluation/evaluate.py"} <= (
        dit_files
    )
    assert any(f.startswith("data/weights/") for f in dit_files)  # read by path, not imported
    mdt_files = {p.name for p in res._code_files(("baselines.mdt.MDTModule",)) if p.parent.name == "baselines"}
    assert {"mdt.py", "dit.py"} <= mdt_files  # MDT builds on DiT's layers: a DiT change re-keys MDT too
    assert res.code_hash(dit) != res.code_hash(("baselines.mdt.MDTModule", "data.shapes.ShapesDataModule"))

    # A module that nothing imports does not count; once an engine module imports it, it does.
    fake_root = tmp_path / "repo"
    for package in res._PACKAGES:
        (fake_root / package).mkdir(parents=True)
        (fake_root / package / "__init__.py").write_text("")
    (fake_root / "benchmark" / "module.py").write_text("import math\n")
    (fake_root / "data" / "extra.py").write_text("X = 1\n")
    import data.sources

    monkeypatch.setattr(res, "REPO_ROOT", fake_root)
    monkeypatch.setattr(data.sources, "REPO_ROOT", fake_root)
    names = {p.name for p in res._code_files(("benchmark.module.M",))}
    assert "extra.py" not in names and "module.py" in names
    (fake_root / "benchmark" / "module.py").write_text("def f():\n    from data.extra import X\n")
    assert "extra.py" in {p.name for p in res._code_files(("benchmark.module.M",))}


def test_results_file_is_atomic_deduplicated_and_stale_rows_are_flagged(tmp_path):
    path = tmp_path / "results.jsonl"
    res.append_row(path, {"entry": "a", "seed": 0, "key": "old", "metric": 5.0})
    res.append_row(path, {"entry": "a", "seed": 0, "key": "new", "metric": 4.0})
    res.append_row(path, {"entry": "a", "seed": 0, "key": "new", "metric": 3.0})  # a redo replaces, never duplicates
    res.append_row(path, {"entry": "b", "seed": 0, "key": "bkey", "metric": 1.0})
    with open(path, "a") as f:
        f.write('{"entry": "torn')  # a write killed half-way
    rows = res.read_rows(path)
    assert [(r["entry"], r["key"], r["metric"]) for r in rows] == [
        ("a", "old", 5.0),
        ("a", "new", 3.0),
        ("b", "bkey", 1.0),
    ]
    assert not list(tmp_path.glob(".results.jsonl.*")), "temporary files left behind"
    shown = {r["entry"]: r for r in res.latest_rows(rows, current_keys={"new"})}
    assert shown["a"]["key"] == "new" and not shown["a"]["stale"]
    assert shown["b"]["stale"], "a row whose key is not current must be flagged stale"
    # The current row wins even when a stale one was written after it.
    rows.append({"entry": "a", "seed": 0, "key": "older", "metric": 9.0})
    shown = {r["entry"]: r for r in res.latest_rows(rows, current_keys={"new"})}
    assert shown["a"]["metric"] == 3.0


def test_row_files_are_one_per_row_atomic_and_merge_with_an_old_results_jsonl(tmp_path):
    def row(entry, key, metric, created):
        return {"entry": entry, "seed": 0, "key": key, "metric": metric, "created": created, "status": "ok"}

    # A results.jsonl of the older layout (a user's own runs) is still read, and merged with the row files.
    res.write_rows(tmp_path / "results.jsonl", [row("a", "old", 5.0, "1"), row("b", "bkey", 1.0, "2")])
    res.write_row(tmp_path, row("a", "new", 4.0, "3"))
    res.write_row(tmp_path, row("a", "new", 3.0, "4"))  # a resubmitted job, or a second launcher: one row
    res.write_row(tmp_path, row("b", "bkey", 2.0, "5"))  # a row file replaces the old file's line of the same row
    (tmp_path / "rows" / "c-s0-torn.json").write_text('{"entry": "c"')  # not a row (never written by write_row)
    files = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert files == ["a-s0-new.json", "b-s0-bkey.json", "c-s0-torn.json"], "one file per row, no temporary files"
    rows = res.read_results(tmp_path)
    assert [(r["entry"], r["key"], r["metric"]) for r in rows] == [
        ("a", "old", 5.0),
        ("a", "new", 3.0),
        ("b", "bkey", 2.0),
    ]
    shown = {r["entry"]: r for r in res.latest_rows(rows, current_keys={"new", "bkey"})}
    assert shown["a"]["metric"] == 3.0 and shown["b"]["metric"] == 2.0
    # Migrated rows keep the order of the file they came from (the order render lists them in).
    res.write_row(tmp_path, {**row("z", "zkey", 0.0, "9"), "legacy_line": 0})
    assert [r["key"] for r in res.read_results(tmp_path)] == ["old", "zkey", "new", "bkey"]


def test_committed_suites_hold_row_files_only_one_per_entry_and_seed():
    root = Path(__file__).resolve().parents[2] / "leaderboards"
    assert not list(root.glob("**/results.jsonl")), "rows are files of their own (rows/*.json)"
    for rows_dir in root.glob("**/rows"):
        rows = res.read_results(rows_dir.parent)
        assert len({(r["entry"], r["seed"]) for r in rows}) == len(rows) > 0, rows_dir


def test_code_hash_and_environment_are_recorded():
    assert len(res.code_hash()) == 16
    versions = res.library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(torch.__version__[:3])
    assert "cores" in res.hardware() or "x " in res.hardware()


# ----------------------------------------------------------------------------------------------- render
def test_spread_ties_and_target():
    assert spread_stats([4.0, 6.0]) == (5.0, 1.0)
    assert spread_stats([None]) is None
    ranks = rank_with_ties([("a", 5.0, 1.0), ("b", 6.5, 1.0), ("c", 20.0, 0.5)])
    assert ranks == {"a": "=1", "b": "=1", "c": "3"}
    assert rank_with_ties([("a", 5.0, 0.1), ("b", 6.5, 0.1)]) == {"a": "1", "b": "2"}
    assert compute_to_target([[1e9, 50.0], [2e9, 9.0], [3e9, 5.0]], 10.0) == 2e9
    assert compute_to_target([[1e9, 50.0]], 10.0) is None


def _row(entry, seed, metric, **extra):
    row = {
        "entry": entry,
        "seed": seed,
        "key": f"{entry}-{seed}",
        "source": "trained",
        "preset": "default",
        "status": "ok",
        "objective": "RectifiedFlow",
        "eval_sampler": "Euler-25",
        "params": 1_277_456,
        "gmacs_per_forward": 0.0134,
        "train_gflops_per_image": 0.0802,
        "budget_train_flops": 1e12,
        "train_flops": 1.0001e12,
        "images_seen": 12_480,
        "metric": metric,
        "metric_noguidance": None if metric is None else metric * 2,
        "class_accuracy": 0.9,
        "train_images_per_s": 480.0,
        "sampling_images_per_s": 150.0,
        "peak_memory_gb": 1.5,
        "peak_memory_kind": "rss",
        "hardware": "CPU (2 cores)",
        "commit": "abc1234",
        "curve": [] if metric is None else [[2.5e11, metric * 4], [5e11, metric * 1.5], [1.0001e12, metric]],
        "grid": None,
    }
    row.update(extra)
    return row


def test_render_from_synthetic_results(tmp_path):
    root = _suite(tmp_path)
    rows = [
        _row("a", 0, 8.0, cut_object_rate_uncropped=0.2),
        _row("a", 1, 10.0, cut_object_rate_uncropped=0.3),  # a: 9 ± 1; 25 % of its samples cut their object
        _row("b", 0, 9.5),
        _row("b", 1, 10.5),  # b: 10 ± 0.5 -> overlaps a: tie
        _row("c", 0, None, status="diverged", error="FloatingPointError: non-finite training loss"),
        _row("b", 0, 1.0, key="from-old-code"),  # stale: must not be mixed into b
    ]
    res.write_rows(root / "results.jsonl", rows)
    current = {r["key"] for r in rows if r["key"] != "from-old-code"}
    import benchmark.leaderboard.render as render

    original = render.current_keys
    render.current_keys = lambda suite, rows: current
    try:
        text = render_suite(root, describe=False)
    finally:
        render.current_keys = original
    table = [line for line in text.splitlines() if line.startswith("| ")]
    a_line = next(line for line in table if line.startswith("| =1 | a |"))
    b_line = next(line for line in table if line.startswith("| =1 | b |"))
    # 95 % intervals: seed variance pooled over a and b ((2 + 0.5) / 2), no evaluation SD recorded in these rows.
    assert "| 9 ± 1.5 |" in a_line and "| 18 ± 3.1 |" in a_line and "| 90 |" in a_line
    assert "| 10 ± 1.5 |" in b_line, "the stale row leaked into b's mean"
    header = next(line for line in table if line.startswith("| rank |")).split(" | ")
    cut = header.index("cut objects (%)")
    assert a_line.split(" | ")[cut].startswith("25 ±") and b_line.split(" | ")[cut] == ""
    assert "1.3M" in a_line and "1 TFLOPs" in a_line and "12,480" in a_line and "abc1234" in a_line
    assert "| c |" in text and "diverged" in text and "FloatingPointError" in text
    assert "stale" in text
    assert "## Compute to reach target" in text
    # a reaches fd_shapes <= 10 at the last point in seed 0 (8.0) and seed 1 (10.0); b only in seed 0 at the end.
    target_rows = [line for line in table if line.startswith("| a |") or line.startswith("| b |")]
    assert any("2/2" in line for line in target_rows) and any("1/2" in line for line in target_rows)
    assert "Peebles & Xie 2023" in text and "2.27" in text
    assert (root / "plots" / "fd_shapes_vs_compute.png").stat().st_size > 1000
    with open(root / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 5  # a0 a1 b0 b1 c0 (the stale b0 is replaced by the current b0)
    assert {r["entry"] for r in csv_rows} == {"a", "b", "c"}
    assert math.isclose(float(next(r for r in csv_rows if r["entry"] == "a" and r["seed"] == "1")["metric"]), 10.0)
    assert next(r for r in csv_rows if r["entry"] == "a" and r["seed"] == "0")["cut_object_rate_uncropped"] == "0.2"


def test_render_paper_scale_suite_without_rows(tmp_path):
    text = render_suite(ROOT / "leaderboards/imagenet-256", results_dir=tmp_path, describe=False)
    assert "not run" in text and "| dit_xl_2 |" in text
    assert "2.27" in text and "DiT-XL/2 steps at batch 256" in text


@pytest.mark.parametrize(
    "args, named", [(["--preset", "nosuch"], "unknown preset"), (["--entries", "nosuch"], "unknown entries")]
)
def test_leaderboard_command_names_a_wrong_preset_or_entry_in_one_line(capsys, args, named):
    from benchmark.leaderboard.command import main

    with pytest.raises(SystemExit) as info:
        main(["run", str(ROOT / "leaderboards/shapes"), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and named in err and "Traceback" not in err
