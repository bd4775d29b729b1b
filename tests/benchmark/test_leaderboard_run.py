"""The leaderboard runner end to end on the Shapes suite: the smoke preset, and a run killed and resumed."""

import dataclasses
import math
import re
import shutil
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from benchmark.leaderboard import rows as row_builder
from benchmark.leaderboard import runner
from benchmark.leaderboard.results import read_results
from benchmark.leaderboard.runner import run_suite

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "leaderboards" / "shapes"


class _KillAfterStep(pl.Callback):
    """Interrupt training like Ctrl+C right after step ``step`` (its checkpoint is already written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture
def restore_sigint():
    # Lightning ignores SIGINT while it shuts down after a KeyboardInterrupt; give the test process its handler back.
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_killed_run_resumes_training_and_evaluation(tmp_path, monkeypatch, restore_sigint):
    calls = []

    def fake_evaluate(module, protocol, datamodule, device):
        calls.append(protocol.num_samples)
        return {"fd_shapes": 42.0, "sampling_images_per_s": 10.0}

    monkeypatch.setattr(row_builder, "evaluate_module", fake_evaluate)
    kwargs = {"preset": "smoke", "entries": ["dit"], "output": tmp_path, "progress": False}

    # 1. Killed during training, after the checkpoint of step 1.
    with pytest.raises(SystemExit):
        run_suite(SHAPES, callbacks=[_KillAfterStep(1)], **kwargs)
    (run_dir,) = (tmp_path / "dit").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "train.json").exists()
    assert not read_results(tmp_path)

    # 2. Resumed: training continues from step 1; then killed during evaluation.
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(row_builder, "evaluate_module", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(SHAPES, **kwargs)
    assert (run_dir / "train.json").is_file() and (run_dir / "final.ckpt").is_file()
    versions = sorted(p.name for p in (run_dir / "lightning_logs").iterdir())
    assert len(versions) == 2  # two training attempts

    # 3. Resumed again: no training, the final weights are evaluated and the row is written.
    monkeypatch.setattr(row_builder, "evaluate_module", fake_evaluate)
    (row,) = run_suite(SHAPES, **kwargs)
    assert sorted(p.name for p in (run_dir / "lightning_logs").iterdir()) == versions, "trained again"
    assert row["status"] == "ok" and row["metric"] == 42.0 and calls == [20]
    assert row["resumed_from_step"] == 1 and row["steps"] == 2
    # The budget's counters came back from the checkpoint: both attempts' images are counted once.
    assert row["images_seen"] == 2 * 64 and row["train_flops"] >= row["budget_train_flops"]
    assert read_results(tmp_path)[0]["key"] == row["key"]

    # 4. Nothing left to do: finished rows are skipped.
    assert run_suite(SHAPES, **kwargs) == []
    assert len(read_results(tmp_path)) == 1


def test_force_evaluates_again_and_retrain_trains_again(tmp_path, monkeypatch, capsys):
    from benchmark.leaderboard.command import main as leaderboard

    scores = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(row_builder, "evaluate_module", lambda *a: {"fd_shapes": next(scores)})
    args = [str(SHAPES), "--preset", "smoke", "--entries", "dit", "--seeds", "0", "--output", str(tmp_path)]
    args += ["--no-progress", "--no-render"]
    leaderboard(["run", *args])
    (run_dir,) = (tmp_path / "dit").iterdir()
    trained = (run_dir / "final.ckpt").stat().st_mtime_ns

    leaderboard(["run", *args, "--force"])  # the finished training is evaluated again
    assert (run_dir / "final.ckpt").stat().st_mtime_ns == trained
    assert len(list((run_dir / "lightning_logs").iterdir())) == 1

    leaderboard(["run", *args, "--retrain"])  # trained again from step 0 in a new folder of the same name
    assert "retrain: deleted" in capsys.readouterr().out
    assert (run_dir / "final.ckpt").stat().st_mtime_ns != trained
    assert len(list((run_dir / "lightning_logs").iterdir())) == 1
    (row,) = [r for r in read_results(tmp_path) if r["entry"] == "dit"]
    assert row["metric"] == 3.0 and row["resumed_from_step"] is None and row["steps"] == 2

    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun every rank would delete at once: refused
    with pytest.raises(SystemExit) as refused:
        leaderboard(["run", *args, "--retrain"])
    assert refused.value.code == 2 and run_dir.is_dir()


def test_bad_seeds_are_a_usage_error_before_anything_is_deleted(tmp_path, capsys):
    from benchmark.leaderboard.command import main as leaderboard

    (tmp_path / "dit").mkdir()
    with pytest.raises(SystemExit) as refused:
        leaderboard(["run", str(SHAPES), "--seeds", "0,x", "--retrain", "--output", str(tmp_path)])
    assert refused.value.code == 2 and "--seeds takes comma-separated integers" in capsys.readouterr().err
    assert (tmp_path / "dit").is_dir()


def test_divergence_is_a_row_and_the_suite_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(row_builder, "evaluate_module", lambda *a: {"fd_shapes": 1.0})

    class _Diverge(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if pl_module.objective.__class__.__name__ == "RectifiedFlow":
                raise FloatingPointError("non-finite training loss nan at global step 0")

    # The smoke preset runs 2 workers, but callbacks live in this process: the rows run here, one at a time.
    rows = run_suite(SHAPES, preset="smoke", output=tmp_path, progress=False, callbacks=[_Diverge()])
    printed = capsys.readouterr().out
    assert "rows run one at a time in this process" in printed  # and without progress bars the lines still show
    assert "rows planned" in printed and re.search(r"\[(\d+)/\1\]", printed)  # the last row's line
    status = {r["entry"]: r["status"] for r in rows}
    assert status["dit"] == "diverged" and status["dit_ddpm"] == "ok"
    assert "diverged" in (tmp_path / "README.md").read_text()


def test_eval_adds_a_marked_row_for_an_existing_checkpoint(tmp_path, monkeypatch):
    import torch

    from benchmark.leaderboard.runner import eval_checkpoint, instantiate, training_config
    from benchmark.leaderboard.suite import load_suite

    monkeypatch.setattr(row_builder, "evaluate_module", lambda *a: {"fd_shapes": 7.0, "fd_shapes_noguidance": 9.0})
    suite = load_suite(SHAPES)
    (entry,) = suite.entries(["dit"])
    module = instantiate(training_config(entry, 0, tmp_path / "x", suite.preset("smoke"), progress=False)).model
    ckpt = tmp_path / "some.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 123}, ckpt)
    row = eval_checkpoint(SHAPES, "dit", ckpt, preset="smoke", output=tmp_path)
    assert row["status"] == "ok" and row["source"] == "checkpoint" and row["steps"] == 123
    assert row["metric"] == 7.0 and row["metric_noguidance"] == 9.0
    readme = (tmp_path / "README.md").read_text()
    assert "## Other rows" in readme and "checkpoint" in readme and "some.ckpt" in readme


def test_smoke_preset_end_to_end(tmp_path):
    """The CI preset on the Shapes suite's two DiT recipes, two local jobs at once (`--jobs 2`): train, evaluate
    for real, a row file from each, README and CSV."""
    entries = ["dit", "dit_ddpm"]
    rows = run_suite(SHAPES, preset="smoke", entries=entries, output=tmp_path, progress=False, jobs=2)
    assert sorted(r["entry"] for r in rows) == entries
    assert sorted(r["entry"] for r in read_results(tmp_path)) == entries  # neither append was lost
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"dit-seed0", "dit_ddpm-seed0"}  # submitit's folders
    for row in rows:
        assert row["status"] == "ok", row.get("traceback")
        assert row["steps"] == 2 and row["images_seen"] == 128 and row["stopped_by"] == "train_flops"
        assert row["train_flops"] >= row["budget_train_flops"] > row["train_flops"] / 2
        assert math.isfinite(row["metric"]) and math.isfinite(row["metric_noguidance"])
        assert 0.0 <= row["class_accuracy"] <= 1.0 and row["sampling_images_per_s"] > 0
        assert row["metrics"]["num_samples"] == 20 and row["eval_sampler"] in ("Euler-4", "DDIM-4", "DDPM-4")
        assert row["commit"] and row["versions"]["torch"] and row["hardware"]
        assert (tmp_path / row["grid"]).stat().st_size > 0
    readme = (tmp_path / "README.md").read_text()
    assert "| dit |" in readme and "| dit_ddpm |" in readme and "preset `smoke`" in readme
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3


def _one_entry_suite(tmp_path: Path, **smoke) -> Path:
    """A copy of the Shapes suite with its DiT entry only and the smoke preset changed by ``smoke``."""
    suite = tmp_path / "suite"
    suite.mkdir()
    raw = yaml.safe_load((SHAPES / "suite.yaml").read_text())
    raw.update(entries=["dit"], literature=[])
    raw["presets"]["smoke"].update(jobs=1, **smoke)
    (suite / "suite.yaml").write_text(yaml.safe_dump(raw))
    for name in ("dit.yaml", *([raw["protocol"]] if isinstance(raw.get("protocol"), str) else [])):
        shutil.copy(SHAPES / name, suite / name)
    return suite


def test_last_ckpt_of_a_row_is_its_final_state(tmp_path, monkeypatch):
    monkeypatch.setattr(row_builder, "evaluate_module", lambda *a: {"fd_shapes": 1.0})
    # Periodic checkpoints every 2 steps while the budget stops training at step 3.
    suite = _one_entry_suite(tmp_path, budget_scale=0.0075, checkpoint_every=2)
    (row,) = run_suite(suite, preset="smoke", output=tmp_path / "out", progress=False, render=False)
    (run_dir,) = (tmp_path / "out" / "dit").iterdir()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    final = torch.load(run_dir / "final.ckpt", weights_only=True)
    assert row["steps"] == last["global_step"] == final["global_step"] == 3
    assert last["state_dict"].keys() == final["state_dict"].keys()
    assert all(torch.equal(last["state_dict"][k], v) for k, v in final["state_dict"].items())


ABLATIONS = ROOT / "leaderboards" / "shapes-ablations"


def test_a_cell_that_differs_only_at_sampling_has_its_own_row_key_but_the_same_training_key():
    from benchmark.leaderboard.suite import load_suite

    suite = load_suite(ABLATIONS)
    preset = suite.preset("smoke")
    budget, protocol = suite.budget_for(preset), suite.protocol_for(preset)
    keys = {
        e.name: runner.entry_keys(e, 0, budget, protocol, 1, preset)
        for e in suite.entries(["scheduled", "control_cfg_on", "control_cfg_off"])
    }
    assert keys["scheduled"][1] == keys["control_cfg_on"][1]  # guidance only: one trained model
    assert keys["scheduled"][0] != keys["control_cfg_on"][0]  # two rows
    assert keys["control_cfg_off"][1] != keys["scheduled"][1]  # control dropout 0 trains another model
    # A preset that evaluates during training logs guided numbers in the training's folder: no sharing then.
    curves = dataclasses.replace(preset, eval_every=1)
    with_curves = {e.name: runner.entry_keys(e, 0, budget, protocol, 1, curves)[1] for e in suite.entries(
        ["scheduled", "control_cfg_on"])}  # fmt: skip
    assert with_curves["scheduled"] != with_curves["control_cfg_on"]


@pytest.mark.slow
def test_a_cell_that_differs_only_at_sampling_reuses_the_trained_model(tmp_path, monkeypatch):
    guidance = []

    def fake_evaluate(module, protocol, datamodule, device):
        guidance.append(module.guidance.control_scale)
        return {"fd_shapes": 1.0}

    monkeypatch.setattr(row_builder, "evaluate_module", fake_evaluate)
    kwargs = {"preset": "smoke", "output": tmp_path, "progress": False, "render": False, "jobs": 1}
    first, second = run_suite(ABLATIONS, entries=["scheduled", "control_cfg_on"], **kwargs)
    assert (first["entry"], second["entry"]) == ("scheduled", "control_cfg_on")
    assert first["status"] == second["status"] == "ok" and guidance == [1.0, 2.0]
    assert first["training_key"] == second["training_key"] and first["key"] != second["key"]
    assert second["trained_by"] == "scheduled" and "trained_by" not in first
    assert [p.parent.parent.name for p in tmp_path.glob("*/seed0-*/train.json")] == ["scheduled"]
    assert not (tmp_path / "control_cfg_on").exists()
    (run_dir,) = (tmp_path / "scheduled").iterdir()
    assert len(list((run_dir / "lightning_logs").iterdir())) == 1  # trained once
    assert second["steps"] == first["steps"] > 0
