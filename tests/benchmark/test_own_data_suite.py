"""The own-data suite template (leaderboards/own-data-template, docs/own-data.md) end to end, as a user runs it: copy
the folder beside leaderboards/shapes, point ``_data.yaml`` at a labelled image folder, run the smoke preset. Here
the folder is generated (3 classes of a few 16 px PNGs) and one entry runs, in this process."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmark.leaderboard.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "leaderboards" / "own-data-template"
CLASSES = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def _images(root: Path, per_class: int, seed: int) -> None:
    """A colour per class, a bright square at a random place: a classifier can tell the classes apart."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = np.full((20, 18, 3), colour, dtype=np.uint8) + rng.integers(0, 30, (20, 18, 3), dtype=np.uint8)
            top, left = rng.integers(0, 10, 2)
            image[top : top + 8, left : left + 8] = 255
            Image.fromarray(image).save(folder / f"{i:03d}.png")


@pytest.fixture
def own_suite(tmp_path, monkeypatch):
    """The template copied as a user copies it (a sibling of leaderboards/shapes), its data block pointed at a
    generated folder at 16 px."""
    data = tmp_path / "my-images"
    _images(data / "train", per_class=6, seed=0)
    _images(data / "val", per_class=2, seed=1)
    leaderboards = tmp_path / "leaderboards"
    leaderboards.mkdir()
    (leaderboards / "shapes").symlink_to(ROOT / "leaderboards" / "shapes")
    suite = leaderboards / "mine"
    shutil.copytree(TEMPLATE, suite, ignore=shutil.ignore_patterns("README.md", "rows", "results.*", "sizes.json"))
    block = yaml.safe_load((suite / "_data.yaml").read_text())
    block["data"]["init_args"].update(root=str(data), resolution=16, batch_size=16, num_workers=0)
    (suite / "_data.yaml").write_text(yaml.safe_dump(block))
    monkeypatch.setenv("LDMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return suite


def test_the_template_gives_the_data_block_once_for_every_entry():
    suite = load_suite(TEMPLATE)
    shapes = load_suite(ROOT / "leaderboards" / "shapes")
    assert suite.entry_names == shapes.entry_names  # every entry of the embedded suite
    data = yaml.safe_load((TEMPLATE / "_data.yaml").read_text())["data"]
    for entry in suite.entries():
        assert [p.name for p in entry.paths][-1] == "_data.yaml", entry.name
        assert entry.config["data"] == data, entry.name
        own = yaml.safe_load(entry.paths[0].read_text())
        assert entry.config["model"] == own["model"], entry.name  # the recipe is the Shapes entry's, untouched
    protocol = suite.protocol_for(suite.preset("smoke"))
    assert protocol["feature_extractor"] == "data-classifier" and protocol["reference"] == "data:train"


def test_smoke_preset_trains_samples_and_judges_with_an_evaluator_trained_on_the_data(own_suite):
    from benchmark.leaderboard.runner import run_suite

    rows = run_suite(own_suite, preset="smoke", entries=["dit"], output=own_suite / "out", progress=False, jobs=1)
    (row,) = rows
    assert row["status"] == "ok" and row["entry"] == "dit" and row["steps"] >= 1 and row["resolution"] == 16
    assert row["protocol"]["feature_extractor"] == "data-classifier" and row["protocol"]["reference"] == "data:train"
    assert np.isfinite(row["metric"]) and row["metric"] > 0  # the suite's metric: fd_data
    assert 0 <= row["class_accuracy"] <= 1
    # The evaluator was trained on this folder's train split (18 images) and judged on its val split.
    (meta,) = (Path(os.environ["LDMBENCH_CACHE"]) / "classifiers").glob("classifier-*/meta.json")
    meta = json.loads(meta.read_text())
    assert meta["train_images"] == 18 and meta["val_accuracy"] >= 0.5  # colours this distinct: the judge can judge
    assert (own_suite / "out" / "README.md").is_file()
