"""Every metric against a positive and a negative control (`MetricControls`), on at most 64 Shapes images."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmark.evaluation import metrics as M
from benchmark.evaluation.frechet import stats_from_features
from benchmark.evaluation.generate import to_uint8
from benchmark.evaluation.shapes_clip import ASYMMETRIC_KINDS, ShapesCLIP
from tests.benchmark.evaluation.metric_controls import MetricControls

N = 64


@pytest.fixture(scope="module")
def control_data():
    """CLIP outputs of 4 disjoint sets of 64 real Shapes val images, noise and constant images; a train reference."""
    from data.shapes import Shapes

    clip = ShapesCLIP.load()
    val = Shapes("val", resolution=32, length=4 * N)
    items = [val[i] for i in range(4 * N)]
    real = to_uint8(torch.stack([it["image"] for it in items]))
    train = Shapes("train", resolution=32, length=1024)
    ref_images = to_uint8(torch.stack([train[i]["image"] for i in range(1024)]))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (N, 3, 32, 32), generator=gen, dtype=torch.uint8)
    constant = torch.full((N, 3, 32, 32), 128, dtype=torch.uint8)
    out = {k: clip.image_outputs(v) for k, v in (("real", real), ("noise", noise), ("constant", constant))}
    ref_pool = clip.image_outputs(ref_images)["pool"]
    labels = torch.tensor([int(it["class_label"]) for it in items])
    reference = stats_from_features(ref_pool)
    fd = M.FrechetDistance(reference, bootstrap_reps=0)
    sets = [out["real"]["pool"][i * N : (i + 1) * N].double().numpy() for i in (1, 2, 3)]
    floor = float(np.mean([fd.value(x, None) for x in sets]))  # real val against the reference at n = 64
    return SimpleNamespace(
        clip=clip,
        out=out,
        labels=labels,
        flips=torch.tensor([float(it["control"]["flip"]) for it in items]),
        captions=[it["caption"] for it in items],
        reference=reference,
        ref_pool=ref_pool,
        floor=floor,
        balanced=torch.arange(N) % 10,
    )


def first(x):
    return x[:N]


class TestFrechetDistance(MetricControls):
    def make(self, data):
        return M.FrechetDistance(data.reference, name="fd_shapes", bootstrap_reps=20)

    def positive(self, data):  # a real set the floor was not measured on
        return first(data.out["real"]["pool"]), first(data.labels)

    def negatives(self, data):
        return {k: (data.out[k]["pool"], data.balanced) for k in ("noise", "constant")}

    def check_positive(self, value, data):
        assert value <= 2 * data.floor, (value, data.floor)

    def check_negative(self, value, data):
        assert value >= 10 * data.floor, (value, data.floor)


def test_frechet_distance_matches_the_reference_implementation(control_data):
    from benchmark.evaluation.frechet import frechet_distance

    x = control_data.out["real"]["pool"][:N]
    metric = M.FrechetDistance(control_data.reference, bootstrap_reps=0)
    metric.update(x)
    expected = frechet_distance(*stats_from_features(x), *control_data.reference)
    assert metric.compute()["fd"] == pytest.approx(expected, rel=1e-6)
    wide = M.FrechetDistance((np.zeros(80), np.eye(80)), bootstrap_reps=0)  # fewer rows than dims: the SVD path
    rows = torch.randn(30, 80, generator=torch.Generator().manual_seed(1)).double()
    expected = frechet_distance(*stats_from_features(rows), np.zeros(80), np.eye(80))
    assert wide.value(rows.numpy(), None) == pytest.approx(expected, rel=1e-6)


class TestClassAccuracy(MetricControls):
    def make(self, data):
        return M.ClassAccuracy(bootstrap_reps=20)

    def positive(self, data):
        return first(data.out["real"]["class"]), first(data.labels)

    def negatives(self, data):
        return {k: (data.out[k]["class"], data.balanced) for k in ("noise", "constant")}

    def check_positive(self, value, data):
        own = float((first(data.out["real"]["class"]).argmax(1) == first(data.labels)).float().mean())
        assert abs(value - own) <= 0.03, (value, own)
        assert value >= 0.5  # far above chance (0.1): the classifier can judge

    def check_negative(self, value, data):
        assert value <= 0.1 + 0.05, value


class TestFlipObeyed(MetricControls):
    """Real images of the asymmetric kinds, asked for the flip they show (positive) or the other one (negative)."""

    def _rows(self, data, invert: bool):
        names = data.clip.names["class"]
        shown = torch.tensor([float(names[int(k)] in ASYMMETRIC_KINDS) for k in data.labels])
        keep = torch.nonzero(shown).flatten()[:N]
        flips = data.flips[keep]
        asked = 1 - flips if invert else flips
        return data.out["real"]["direction"][keep], torch.stack([asked, shown[keep]], 1)

    def make(self, data):
        return M.FlipObeyed(bootstrap_reps=20)

    def positive(self, data):
        return self._rows(data, invert=False)

    def negatives(self, data):
        return {"asked the other way": self._rows(data, invert=True)}

    def check_positive(self, value, data):
        assert value >= 0.8, value

    def check_negative(self, value, data):
        assert value <= 0.2, value


class TestCLIPScore(MetricControls):
    def make(self, data):
        return M.CLIPScore(bootstrap_reps=20)

    def _text(self, data):
        return data.clip.text_embeds(data.captions[:N])

    def positive(self, data):
        return first(data.out["real"]["embeds"]), self._text(data)

    def negatives(self, data):
        return {k: (data.out[k]["embeds"], self._text(data)) for k in ("noise", "constant")}

    def _matched(self, data):
        m = M.CLIPScore(bootstrap_reps=0)
        m.update(*self.positive(data))
        return m.compute()["clip_score"]

    def check_positive(self, value, data):
        shuffled = M.CLIPScore(bootstrap_reps=0)
        shuffled.update(first(data.out["real"]["embeds"]), self._text(data).roll(7, 0))
        assert value > shuffled.compute()["clip_score"] + 5  # matched captions score clearly above mismatched

    def check_negative(self, value, data):
        assert value < self._matched(data) - 5


class TestPrecisionRecall(MetricControls):
    """Recall is the key: in the Shapes CLIP's features, noise and a grey image land inside the real k-NN balls
    (precision 0.7-1.0, measured), so precision alone does not reject them; recall does (0.0). docs/evaluation.md."""

    key = "recall"

    def make(self, data):
        return M.PrecisionRecall(data.ref_pool, bootstrap_reps=10)

    def positive(self, data):
        return first(data.out["real"]["pool"]), None

    def negatives(self, data):
        return {k: (data.out[k]["pool"], None) for k in ("noise", "constant")}

    def check_positive(self, value, data):
        assert value >= 0.7, value
        metric = self.make(data)
        metric.update(*self.positive(data))
        assert metric.compute()["precision"] >= 0.7

    def check_negative(self, value, data):
        assert value <= 0.1, value


def test_recall_of_a_collapsed_set_is_low(control_data):
    real = control_data.out["real"]["pool"]
    metric = M.PrecisionRecall(real[N:], bootstrap_reps=0)
    # One real image, N times: precise, no diversity. Item 1, not 0: val item 0 is a 9-px original upsampled 4x, an
    # outlier no real image's k-NN ball covers (58 of the first 64 val items alone are precise; issue 24's Shapes).
    metric.update(real[1:2].repeat(N, 1))
    out = metric.compute()
    assert out["precision"] == 1.0 and out["recall"] <= 0.1
    metric = M.PrecisionRecall(real[N:], bootstrap_reps=0)
    metric.update(real[:N])
    assert metric.compute()["recall"] >= 0.7


class TestControlDisentanglement(MetricControls):
    """Rows (kept, flip obeyed, crop obeyed) of an exact stand-in and of one that ignores the controls.

    The sweep that produces such rows from a model is tested end to end in `test_disentanglement_stand_ins`.
    """

    def make(self, data):
        return M.ControlDisentanglement(bootstrap_reps=20)

    def positive(self, data):
        flip = torch.where(torch.arange(N) % 3 == 0, 1.0, float("nan"))  # a third of the kinds show a flip
        return torch.stack([torch.ones(N), flip, torch.ones(N)], 1), None

    def negatives(self, data):
        flip = torch.where(torch.arange(N) % 3 == 0, 0.0, float("nan"))
        return {"ignores the controls": (torch.stack([torch.ones(N), flip, torch.zeros(N)], 1), None)}

    def check_positive(self, value, data):
        assert value >= 0.95

    def check_negative(self, value, data):
        assert value <= 0.05


def test_bootstrap_sd_tracks_the_spread_of_fresh_sets():
    """The bootstrap SD of a mean over n Bernoulli(0.5) rows is close to the true 0.5 / sqrt(n)."""
    rows = (torch.rand(400, 1, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    metric = M.ClassAccuracy(bootstrap_reps=400)
    metric.update(rows, torch.ones(400, 1))
    assert metric.compute()["class_accuracy_sd"] == pytest.approx(0.5 / 20, rel=0.15)
