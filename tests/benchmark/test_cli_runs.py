"""The CLI as a new user meets it: errors in one line, runs in their own folders, two processes, sampling."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "leaderboards/shapes/dit.yaml")
IMAGENET = str(ROOT / "leaderboards/imagenet-256/dit_xl_2.yaml")
FAST = [
    "--trainer.limit_val_batches=1",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--model.init_args.sampler.init_args.steps=2",
    "--trainer.enable_progress_bar=false",
]


def _error(capsys, args):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code not in (0, None)
    return capsys.readouterr().err


def test_missing_imagenet_root_is_named_before_anything_else(capsys, monkeypatch):
    # The paper-scale suites read the dataset path from $IMAGENET_ROOT (or this key): a path that does not exist is
    # reported first, before the config's GPU settings on this CPU-only machine.
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    err = _error(capsys, ["fit", "--config", IMAGENET, "--data.init_args.root=/path/to/imagenet"])
    assert "/path/to/imagenet" in err and "data.init_args.root" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_gpu_config_on_a_cpu_machine_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = _error(capsys, ["validate", "--config", IMAGENET, f"--data.init_args.root={tmp_path}"])
    assert "wants GPUs" in err and "--trainer.accelerator cpu" in err and len(err.strip().splitlines()) == 1


def test_an_unknown_size_ends_with_our_message(capsys):
    err = _error(capsys, ["fit", "--config", SHAPES, "--model.init_args.size=DiT-huge/2"])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unknown DiT size 'DiT-huge/2'; valid sizes:" in lines[-1]


def test_a_corrupt_checkpoint_is_refused_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(os.urandom(2048))
    err = _error(capsys, ["validate", "--config", SHAPES, *FAST, f"--ckpt_path={bad}"])
    assert str(bad) in err and "not a valid checkpoint" in err and "weights_only" not in err


def test_help_lists_the_extra_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("describe", "sample", "cache-latents", "evaluate", "leaderboard"):
        assert command in out
    err = _error(capsys, ["describe"])
    assert "ldmbench describe --config leaderboards/shapes/dit.yaml" in err


@pytest.mark.parametrize(
    "command, own_options",
    [
        ("evaluate", ["--ckpt_path", "--protocol", "--output", "--device", "--stats_root"]),
        (
            "cache-latents",
            ["--output", "--batch-size", "--device", "--shard-size", "--rank", "--world-size", "--merge"],
        ),
        ("sample", ["--ckpt_path", "--classes", "--n", "--output", "--protocol", "--no_guidance"]),
    ],
)
def test_a_commands_help_explains_its_own_options(capsys, command, own_options):
    # The commands that wrap the config CLI once printed only the config's help: their own options were invisible.
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    ours = out.split("the config's options")[0]
    for option in own_options:
        assert re.search(rf"^  {re.escape(option)}\b.*\n?.*\S", ours, re.M), option  # listed with a help text
    if command != "sample":  # sample names the config's options in its description; the others list them after
        assert "--trainer.max_steps" in out.split("the config's options")[1]


@pytest.mark.parametrize(
    ("content", "named"),
    [(None, "No such file"), ("num_samples: [1\n", "line 1"), ("nonsense_field: 3\n", "nonsense_field")],
)
def test_evaluate_names_a_bad_protocol_file_in_one_line_before_building_anything(capsys, tmp_path, content, named):
    protocol = tmp_path / "protocol.yaml"
    if content is not None:
        protocol.write_text(content)
    err = _error(capsys, ["evaluate", "--config", SHAPES, *FAST, "--protocol", str(protocol)])
    assert f"--protocol {protocol}" in err and "Traceback" not in err
    assert named in err


def _class_folders(root: Path, classes=("cat", "dog", "fox"), per_class=4, size=40) -> None:
    rng = np.random.default_rng(0)
    for name in classes:
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_without_num_classes_trains_and_samples_chosen_classes(tmp_path, monkeypatch, capsys):
    """The Shapes DiT YAML with its data swapped for a class folder that does not declare num_classes."""
    monkeypatch.chdir(tmp_path)
    _class_folders(tmp_path / "folder")
    data = tmp_path / "data.yaml"
    data.write_text(
        "data:\n  class_path: data.imagefolder.ImageFolderDataModule\n  init_args:\n"
        f"    root: {tmp_path / 'folder'}\n    resolution: 32\n    val_fraction: 0.25\n"
    )
    args = ["--config", SHAPES, "--config", str(data), *FAST, "--trainer.val_check_interval=2"]
    main(["fit", *args, "--trainer.max_steps=2"])
    run = tmp_path / "runs/dit-DiTModule/version_0"
    assert (run / "checkpoints/last.ckpt").is_file() and (run / "metrics.csv").is_file()
    out = tmp_path / "picked"
    main(["sample", *args[:4], "--ckpt_path=last", "--classes=2,0", "--n=3", f"--output={out}"])
    assert sorted(p.name for p in out.glob("class*.png")) == [
        f"class{c:04d}_{i:03d}.png" for c in (0, 2) for i in range(3)
    ]
    assert Image.open(out / "grid.png").size[1] > 2 * 32
    err = _error(capsys, ["sample", *args[:4], "--ckpt_path=last", "--classes=3", "--n=1"])
    assert "outside [0, 3)" in err


def _run_cli(tmp_path, *args, timeout=400):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TWO_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true"]
EVERY_2 = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: 0}
    - class_path: benchmark.callbacks.SampleGrid
      init_args: {every_n_steps: 2, num_classes: 2, samples_per_class: 1}
"""


def test_two_processes_pass_a_sample_grid_and_a_checkpoint_then_predict_one_merged_npz(tmp_path):
    """Two CPU processes (gloo): grids and checkpoints are written and the run ends (it used to deadlock); predict
    on two ranks writes one samples.npz in index order, without the distributed sampler's padded repeats."""
    (tmp_path / "every2.yaml").write_text(EVERY_2)
    common = ["--config", SHAPES, "--config", "every2.yaml", *FAST, *TWO_CPU]
    fit = _run_cli(tmp_path, "fit", *common, "--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "runs/dit-DiTModule/version_0"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000003.png"]
    assert (run / "checkpoints/last.ckpt").is_file()
    # 7 items on 2 ranks: DistributedSampler pads rank 1 with a repeat of item 0.
    predict = _run_cli(tmp_path, "predict", *common, "--ckpt_path=last", "--data.init_args.val_length=7")
    assert predict.returncode == 0, predict.stderr[-3000:]
    out = run / "predict/last"
    samples = np.load(out / "samples.npz")
    assert samples["arr_0"].shape == (7, 32, 32, 3) and samples["index"].tolist() == list(range(7))
    assert len(list(out.glob("*.png"))) == 7
