"""`MetricControls`: the tester mixin every metric's test class uses (a positive and a negative control).

A test class for a metric subclasses `MetricControls` and says, on at most 64 samples,

- ``make(data)``: the metric (a `benchmark.evaluation.metrics.FeatureMetric`);
- ``positive(data)`` / ``negatives(data)``: ``(features, labels)`` of the positive control (real images, an exact
  stand-in) and of each negative control (noise, a constant image, a stand-in that ignores the condition);
- ``check_positive(value, data)`` / ``check_negative(value, data)``: the thresholds (docs/evaluation.md: real images
  score FD within 2x its floor at the same n and class accuracy within 3 points of the classifier's own; noise or a
  constant image FD >= 10x the floor and class accuracy <= chance + 5 points).

``data`` is the class's ``control_data`` fixture. The mixin also checks that ``compute()`` reports an SD
(``<key>_sd``) and that the metric's state holds feature rows only (what DDP gathers), in the order given.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_SAMPLES = 64


class MetricControls:
    key: str = ""  # the compute() key the thresholds read (default: the metric's name)

    def make(self, data: Any):
        raise NotImplementedError

    def positive(self, data: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def negatives(self, data: Any) -> dict[str, tuple[Any, Any]]:
        raise NotImplementedError

    def check_positive(self, value: float, data: Any) -> None:
        raise NotImplementedError

    def check_negative(self, value: float, data: Any) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ the tests
    def _compute(self, data: Any, features: Any, labels: Any) -> dict[str, float]:
        assert features.shape[0] <= MAX_SAMPLES, "controls run on at most 64 samples"
        metric = self.make(data)
        half = features.shape[0] // 2  # two updates: what two batches (or two ranks' slices) give
        metric.update(features[:half], None if labels is None else labels[:half])
        metric.update(features[half:], None if labels is None else labels[half:])
        return metric.compute()

    def _key(self, data: Any) -> str:
        return self.key or self.make(data).name

    def test_positive_control(self, control_data):
        out = self._compute(control_data, *self.positive(control_data))
        self.check_positive(out[self._key(control_data)], control_data)

    def test_negative_controls(self, control_data):
        for name, (features, labels) in self.negatives(control_data).items():
            out = self._compute(control_data, features, labels)
            try:
                self.check_negative(out[self._key(control_data)], control_data)
            except AssertionError as e:
                raise AssertionError(f"negative control {name!r}: {e}") from e

    def test_reports_an_sd_and_keeps_only_feature_rows(self, control_data):
        features, labels = self.positive(control_data)
        metric = self.make(control_data)
        metric.update(features, labels)
        assert all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in metric.features)  # rows, never images
        out = metric.compute()
        key = self._key(control_data)
        assert f"{key}_sd" in out and out[f"{key}_sd"] >= 0
