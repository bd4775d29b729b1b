"""Run folders, the checkpoint `--ckpt_path last` picks, resumable logs, and safe checkpoint reading."""

import argparse
import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from baselines.dit_convert import load_official_checkpoint
from benchmark.cli import main
from benchmark.runs import (
    CheckpointError,
    PlacementError,
    RunLogger,
    checkpoint_step,
    entry_name,
    newest_checkpoint,
    read_checkpoint,
    refuse_fixed_paths,
    row_checkpoint_dir,
    row_dir,
    run_of_checkpoint,
)


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(os.urandom(4096))
    return path


def test_a_corrupt_checkpoint_is_named_and_never_loaded_unsafely(corrupt):
    for read in (read_checkpoint, checkpoint_step, load_official_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(corrupt)
        message = str(info.value)
        assert str(corrupt) in message and "not a valid checkpoint" in message
        assert "weights_only" not in message and info.value.__cause__ is None and info.value.__suppress_context__


def test_objects_beyond_plain_data_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "train.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        read_checkpoint(path)
    assert read_checkpoint(path, allow=[argparse.Namespace])["args"].lr == 1
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_entry_names_differ_by_model_class_and_config():
    assert entry_name("baselines.dit.DiTModule", ["leaderboards/shapes/dit.yaml", "x.yaml"]) == "dit-DiTModule"
    assert entry_name("my.models.OtherModule", ["leaderboards/shapes/dit.yaml"]) == "dit-OtherModule"
    assert entry_name("baselines.dit.DiTModule", [], run_name="ablation") == "ablation"
    with pytest.raises(ValueError, match="plain folder name"):
        entry_name("a.B", [], run_name="../elsewhere")


def test_newest_run_with_a_checkpoint_is_resumed(tmp_path):
    for version, files in {
        0: ["last.ckpt"],
        1: ["step=2.ckpt"],
        3: [],
        10: ["last.ckpt", "latest-by-time.ckpt"],
    }.items():
        folder = tmp_path / "e" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        for age, name in enumerate(files):
            (folder / name).write_bytes(b"")
            os.utime(folder / name, (1000 + age, 1000 + age))
    # The newest version, and in it the most recently written file (here the time-interval one).
    assert newest_checkpoint(tmp_path, "e") == tmp_path / "e/version_10/checkpoints/latest-by-time.ckpt"
    os.utime(tmp_path / "e/version_10/checkpoints/last.ckpt", (2000, 2000))
    assert newest_checkpoint(tmp_path, "e") == tmp_path / "e/version_10/checkpoints/last.ckpt"
    assert newest_checkpoint(tmp_path, "other") is None
    root, entry, version = run_of_checkpoint(tmp_path / "e/version_10/checkpoints/last.ckpt")
    assert (root, entry, version) == (tmp_path, "e", 10)
    assert run_of_checkpoint(tmp_path / "loose.ckpt") is None


def test_a_resumed_log_continues_and_drops_the_steps_it_redoes(tmp_path):
    first = RunLogger(save_dir=str(tmp_path), name="e")
    for step in range(6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    assert first.log_dir == str(tmp_path / "e/version_0")
    resumed = RunLogger(save_dir=str(tmp_path), name="e", version=0, resume_step=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # continuing a log is expected: no "will be deleted" warning
        resumed.log_metrics({"train/loss": 40.0, "val/loss": 1.0}, step=4)
    resumed.save()
    lines = (tmp_path / "e/version_0/metrics.csv").read_text().splitlines()
    assert lines[0] == "step,train/loss,val/loss"
    assert [line.split(",")[:2] for line in lines[1:]] == [
        ["0", "0.0"],
        ["1", "1.0"],
        ["2", "2.0"],
        ["3", "3.0"],
        ["4", "40.0"],
    ]


# ----------------------------------------------------------------------------------------------- who places a run
LEADERBOARDS = Path(__file__).resolve().parents[2] / "leaderboards"
_PLACING_KEYS = {"dirpath", "save_dir", "default_root_dir"}


def _placing_keys(node, where=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _PLACING_KEYS:
                yield f"{where}.{key}".lstrip(".")
            yield from _placing_keys(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _placing_keys(value, f"{where}[{index}]")


def test_no_shipped_config_decides_where_a_run_writes():
    shipped = sorted(LEADERBOARDS.rglob("*.yaml"))
    assert len(shipped) > 40
    found = {
        str(path.relative_to(LEADERBOARDS)): keys
        for path in shipped
        if (keys := list(_placing_keys(yaml.safe_load(path.read_text()))))
    }
    assert found == {}, "benchmark/runs.py places every run; these shipped YAMLs name folders"


def test_a_checkpoint_folder_in_a_config_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    progress, checkpoint = "benchmark.callbacks.ProgressBar", "lightning.pytorch.callbacks.ModelCheckpoint"
    config = {"trainer": {"callbacks": [{"class_path": progress}, {"class_path": checkpoint}]}}
    refuse_fixed_paths(config)
    config["trainer"]["callbacks"][1]["init_args"] = {"dirpath": "runs/x/checkpoints", "save_last": True}
    with pytest.raises(PlacementError, match=r"callbacks\[1\] \(ModelCheckpoint\) sets dirpath: runs/x/checkpoints"):
        refuse_fixed_paths(config)
    # Through the command line: refused while parsing, before anything is built or written.
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(LEADERBOARDS / "shapes/dit.yaml"), "--config", str(mine)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sets dirpath: runs/x/checkpoints" in err and "--trainer.default_root_dir" in err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]


def test_a_leaderboard_row_folder_is_placed_here():
    run = row_dir(Path("out"), "dit", 3, "0123456789abcdef")
    assert run == Path("out/dit/seed3-0123456789ab")
    assert row_checkpoint_dir(run) == run / "checkpoints"
