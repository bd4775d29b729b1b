"""Paths a user takes: a subclass beside the user's own config, a data root that is not there."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import config_files, main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "leaderboards/shapes/dit.yaml")

MYMODEL = '''
from baselines.dit import DiTModule


class WiderDiT(DiTModule):
    """DiT, kept beside the config that names it."""
'''


def test_config_files_reads_both_spellings():
    assert config_files(["fit", "--config", "a.yaml", "--config=b/c.yaml", "--trainer.max_steps=2"]) == [
        "a.yaml",
        "b/c.yaml",
    ]


def test_a_subclass_beside_a_second_config_is_found_from_another_folder(tmp_path, monkeypatch, capsys):
    """`--config leaderboards/shapes/dit.yaml --config /elsewhere/mine.yaml`, run from a third folder: mymodel.py
    beside mine.yaml resolves, though neither the working directory nor PYTHONPATH holds it."""
    elsewhere, work = tmp_path / "elsewhere", tmp_path / "work"
    elsewhere.mkdir()
    work.mkdir()
    (elsewhere / "mymodel_beside.py").write_text(MYMODEL)
    (elsewhere / "mine.yaml").write_text("model:\n  class_path: mymodel_beside.WiderDiT\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(elsewhere))])
    monkeypatch.delitem(sys.modules, "mymodel_beside", raising=False)
    monkeypatch.chdir(work)
    try:
        main(["describe", "--config", SHAPES, "--config", str(elsewhere / "mine.yaml")])
    finally:
        sys.modules.pop("mymodel_beside", None)  # the module is tmp_path's; do not leak it
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "WiderDiT" and info["params"] > 0
    assert str(elsewhere) in sys.path  # (monkeypatch restores sys.path after the test)


IMAGENET = str(ROOT / "leaderboards/imagenet-256/dit_xl_2.yaml")


def _one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_an_unset_imagenet_root_is_one_line_naming_the_variable_before_the_gpu_check(command, capsys, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the GPU check would fail too: ours comes first
    err = _one_line_error(capsys, [command, "--config", IMAGENET])
    assert "IMAGENET_ROOT" in err and "--data.init_args.root" in err and "GPU" not in err


def test_an_imagenet_root_variable_naming_a_missing_folder_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "not-here"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = _one_line_error(capsys, ["fit", "--config", IMAGENET])
    assert str(tmp_path / "not-here") in err and "$IMAGENET_ROOT" in err


def _own_data(root: Path) -> Path:
    """Three classes of three 8 px images; one unreadable file, one 1x1 image."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "fox"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype="uint8")).save(root / "train" / name / f"{i}.png")
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (1, 1)).save(root / "train" / "fox" / "dot.png")
    config = root / "data.yaml"
    config.write_text(
        "data:\n  class_path: data.imagefolder.ImageFolderDataModule\n  init_args:\n"
        f"    root: {root}\n    resolution: 32\n    val_fraction: 0.2\n"
    )
    return config


FAST_FIT = [
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.limit_val_batches=1",
    "--model.init_args.sampler.init_args.steps=2",
    "--trainer.max_steps=2",
]


def test_own_data_with_a_bad_file_trains_after_one_summary(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    config = _own_data(tmp_path / "mine")
    main(["fit", "--config", SHAPES, "--config", str(config), *FAST_FIT])
    out = capfd.readouterr().out
    assert out.count("11 images in 3 classes") == 1  # one summary, before training
    assert "broken.png" in out and "dot.png" in out and "upscaled more than 2x" in out
    run = tmp_path / "runs/dit-DiTModule/version_0"
    assert (run / "checkpoints/last.ckpt").is_file() and (run / "metrics.csv").is_file()


def test_an_empty_class_folder_ends_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _own_data(tmp_path / "mine")
    (tmp_path / "mine" / "train" / "empty").mkdir()
    err = _one_line_error(capsys, ["fit", "--config", SHAPES, "--config", str(config), *FAST_FIT])
    assert "hold no image (empty)" in err
