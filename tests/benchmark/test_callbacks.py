"""SampleGrid's row labels: the names land in a margin and the samples are untouched."""

from types import SimpleNamespace

import torch

from benchmark.callbacks.samples import SampleGrid, label_rows


def test_label_rows_adds_a_margin_and_keeps_the_grid():
    grid = torch.rand(3, 2 + 3 * 34, 2 + 4 * 34)
    out = label_rows(grid, ["circle", "square", "L shape"])
    margin = out.shape[2] - grid.shape[2]
    assert out.shape[:2] == grid.shape[:2] and margin > 10
    torch.testing.assert_close(out[:, :, margin:], grid, atol=1 / 255, rtol=0)  # 8-bit quantisation only
    left = out[:, :, :margin]
    assert (left < 0.5).any() and (left == 1).float().mean() > 0.5  # dark text on a mostly white margin


def test_row_names_follow_the_rows_and_can_be_switched_off():
    module = SimpleNamespace(conditioner=SimpleNamespace(semantic="class"), backbone=SimpleNamespace(num_classes=5))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(class_names=["a", "b", "c", "d", "e"]))
    assert SampleGrid(num_classes=3, samples_per_class=2).row_names(trainer, module) == ["a", "b", "c"]
    assert SampleGrid(label_rows=False).row_names(trainer, module) is None
    assert SampleGrid().row_names(SimpleNamespace(datamodule=None), module) is None
    captions = SimpleNamespace(conditioner=SimpleNamespace(semantic="caption"), backbone=module.backbone)
    assert SampleGrid().row_names(trainer, captions) is None
