"""The Shapes reference of fd and of the cut-object conditions is built with every setting of the entry's own data."""

import inspect
from types import SimpleNamespace

import torch

from benchmark.evaluation.shapes_reference import shapes_reference_dataset
from data.shapes import Shapes

# Every Shapes option that changes which images the data shows, each away from its default.
SETTINGS = {
    "seed": 3,
    "min_scale": 0.5,
    "max_canvas_factor": 1.5,
    "min_canvas_factor": 0.5,
    "reference_fraction": 0.4,
    "augment": True,
}


def test_every_shapes_option_is_covered_by_the_check():
    options = set(inspect.signature(Shapes.__init__).parameters) - {"self", "split", "resolution", "length"}
    assert options == set(SETTINGS), "a new Shapes option: add it to SETTINGS with a non-default value"


def test_the_reference_is_the_datas_own_distribution():
    source = Shapes("train", resolution=32, length=1000, **SETTINGS)
    reference = shapes_reference_dataset("shapes:val", 32, SimpleNamespace(train_set=source), 50)
    assert reference.split == "val" and len(reference) == 50
    assert {k: getattr(reference, k) for k in SETTINGS} == SETTINGS
    # Same settings, so the train split of the reference draws the data's items bit for bit.
    train = shapes_reference_dataset("shapes:train", 32, SimpleNamespace(train_set=source), 50)
    for i in (0, 7, 31):
        assert torch.equal(train[i]["image"], source[i]["image"])
        assert all(torch.equal(train[i]["control"][k], source[i]["control"][k]) for k in source[i]["control"])
    # A default Shapes would show another distribution (larger originals than 1.5x are impossible there).
    assert Shapes("train", 32, 50).canvas_range != train.canvas_range
