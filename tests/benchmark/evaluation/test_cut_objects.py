"""Cut-object rate: the definition checked on real Shapes crops against the renderer's own visible fraction."""

import numpy as np
import pytest
import torch

from benchmark.evaluation import EvalProtocol
from benchmark.evaluation.cut_objects import (
    CutObjectRate,
    condition_sets,
    cut_features,
    cut_object_rates,
    training_items,
)
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


def test_conditions_are_reference_views_and_real_crops_of_the_datas_own_settings():
    data = ShapesDataModule(train_length=1000, val_length=8, min_scale=0.6)
    sets = condition_sets(data.train_set, 30, seed=1)
    ref, crops = sets["uncropped"]["control"], sets["train_crops"]["control"]
    assert (ref["orig_size"] == 32).all() and (ref["crop_size"] == 32).all() and (ref["crop_coords"] == 0).all()
    assert (ref["flip"] == 0).all() and (crops["flip"] == 0).all()
    assert (crops["crop_size"] < crops["orig_size"]).any() and (crops["orig_size"] < 32).any()
    area = crops["crop_size"].prod(1) / crops["orig_size"].prod(1)
    assert area.min() >= 0.59  # the data's min_scale 0.6, not the Shapes default 0.25
    for s in sets.values():  # each item's own label and unflipped caption
        for i, label, caption in zip(s["indices"], s["labels"], s["captions"], strict=True):
            item = data.train_set.sample(i, flip=False)
            assert int(item["class_label"]) == int(label) and item["caption"] == caption and " left" not in caption


class StandIn:
    """A control-conditioned Shapes entry: draws the training item whose crop it is asked for (``obeys``), or item
    ``i``'s crop whatever the control (it ignores the control: the crops cut objects in both conditions)."""

    def __init__(self, obeys: bool, semantic: str, data: ShapesDataModule, n: int) -> None:
        from benchmark.objectives import RectifiedFlow

        self.obeys, self.data = obeys, data
        self.objective, self.sampler, self.guidance = RectifiedFlow(), None, None
        self.conditioner = type("C", (), {"control_names": ("flip",), "semantic": semantic})()
        self.num_classes, self.resolution, self.latent_shape = 10, 32, (4, 8, 8)
        self.device, self.training = torch.device("cpu"), False
        self.items = training_items(32, data)  # the measure's items: the data's settings, >= 100,000 long
        sets = condition_sets(self.items, n, seed=0)  # what the measure asks for (the protocol's seed 0)
        self.crops, self.whole = sets["train_crops"]["indices"], sets["uncropped"]["indices"]
        self.by_control = {self._key(sets["train_crops"]["control"], j): i for j, i in enumerate(self.crops)}
        self.calls: list[dict] = []

    @staticmethod
    def _key(control, j):
        return tuple(float(control[k][j].reshape(-1)[0]) for k in ("orig_size", "crop_coords", "crop_size"))

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def sample_images(self, labels=None, captions=None, control=None, num_samples=None, **kwargs):
        self.calls.append({"labels": labels, "captions": captions})
        out = []
        for j in range(num_samples):
            uncropped = self._key(control, j) == (32.0, 0.0, 32.0)
            index = (
                (self.whole[j] if uncropped else self.by_control[self._key(control, j)])
                if self.obeys
                else self.crops[j]
            )
            out.append(self.items.sample(index, flip=False)["image"])
        return torch.stack(out)


@pytest.mark.parametrize("semantic", ["class", "caption"])
def test_rates_through_the_protocol_tell_an_entry_that_obeys_the_crop_from_one_that_ignores_it(semantic):
    data, protocol = ShapesDataModule(train_length=2000, val_length=8), EvalProtocol(num_samples=40, bootstrap_reps=20)
    obeys = StandIn(True, semantic, data, 40)
    rates = cut_object_rates(obeys, protocol, data)
    assert rates["cut_object_samples"] == 40 and "cut_object_rate_train_crops_sd" in rates
    assert rates["cut_object_rate_uncropped"] == 0.0 and rates["cut_object_rate_train_crops"] >= 0.25
    ignores = cut_object_rates(StandIn(False, semantic, data, 40), protocol, data)
    assert ignores["cut_object_rate_uncropped"] == ignores["cut_object_rate_train_crops"] >= 0.25
    call = obeys.calls[0]  # the entry's own semantic condition, never a class label for a text entry
    assert (call["labels"] is None) == (semantic == "caption") and (call["captions"] is None) == (semantic == "class")


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
