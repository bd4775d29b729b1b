"""Cut-object rate: the definition checked on real Shapes crops against the renderer's own visible fraction."""

import numpy as np
import pytest
import torch

from benchmark.evaluation.cut_objects import CutObjectRate, cut_features, training_controls
from data.shapes import Shapes, ShapesDataModule
from tests.benchmark.evaluation.metric_controls import MetricControls

N = 64


@pytest.fixture(scope="module")
def control_data():
    """Real train renders (200), their ground truth, and the reference views / cut items among them."""
    shapes = Shapes("train", resolution=32, length=200)
    images = torch.stack([shapes[i]["image"] for i in range(200)])
    visible = np.array([shapes.visible_fraction(i) for i in range(200)])
    controls = [shapes[i]["control"] for i in range(200)]
    reference = np.array([c["orig_size"][0] == 32 and torch.equal(c["crop_size"], c["orig_size"]) for c in controls])
    return {"images": images, "visible": visible, "reference": reference}


def test_cut_agrees_with_the_renderers_visible_fraction(control_data):
    cut = cut_features(control_data["images"])[:, 0].numpy() > 0.5
    truth = control_data["visible"] < 0.999
    assert 0.25 < truth.mean() < 0.6  # the check sees both outcomes
    assert (cut == truth).mean() >= 0.93  # 0.965 on these 200 items, 0.954 on 1,500
    assert cut[control_data["visible"] < 0.9].all()  # clearly cut objects are always seen as cut


def test_whole_objects_on_lit_backgrounds_are_never_cut(control_data):
    # The background's ±20 % lighting stays nearest to its own palette colour, so the lit corner is not an object.
    reference = control_data["images"][torch.from_numpy(control_data["reference"])]
    assert len(reference) >= 20 and cut_features(reference).sum() == 0


def test_training_controls_are_real_crops_unflipped():
    controls = training_controls(ShapesDataModule(train_length=1000, val_length=8), 50, seed=1)
    assert controls["orig_size"].shape == (50, 2) and (controls["flip"] == 0).all()
    assert (controls["crop_size"] < controls["orig_size"]).any() and (controls["orig_size"] < 32).any()


class TestCutObjectRate(MetricControls):
    def make(self, data):
        return CutObjectRate(bootstrap_reps=50)

    def positive(self, data):  # whole objects: the uncropped reference views
        whole = data["images"][torch.from_numpy(data["visible"] >= 0.999)][:N]
        return cut_features(whole), None

    def negatives(self, data):
        cut = data["images"][torch.from_numpy(data["visible"] < 0.95)][:N]
        # The top half of each image, zoomed x2: the object is cut at the bottom edge, the background still shows.
        zoomed = torch.nn.functional.interpolate(data["images"][:N, :, 0:16, 8:24], size=32, mode="bilinear")
        return {"cut crops": (cut_features(cut), None), "top half x2": (cut_features(zoomed), None)}

    def check_positive(self, value, data):
        assert value <= 0.1

    def check_negative(self, value, data):
        assert value >= 0.9
