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


class _Trainer:
    """The few trainer attributes SampleGrid reads; counts the `log_dir` look-ups (a broadcast under DDP)."""

    def __init__(self, tmp_path, rank=0):
        self.global_step, self.is_global_zero, self.default_root_dir = 0, rank == 0, str(tmp_path)
        self.datamodule, self.loggers, self.log_dir_calls, self._dir = None, [], 0, str(tmp_path)

    @property
    def log_dir(self):
        self.log_dir_calls += 1
        return self._dir


def _counting_grid(monkeypatch, **kwargs):
    grid, calls = SampleGrid(label_rows=False, **kwargs), []
    monkeypatch.setattr(grid, "render", lambda module, datamodule=None: calls.append(1) or torch.zeros(3, 4, 4))
    return grid, calls


def test_the_final_step_is_sampled_once(tmp_path, monkeypatch):
    grid, calls = _counting_grid(monkeypatch, every_n_steps=5)
    trainer = _Trainer(tmp_path)
    for step in (4, 5, 5, 5, 6, 9, 10):  # repeated 5: micro-batches of one accumulated step
        trainer.global_step = step
        grid.on_train_batch_end(trainer, None)
    grid.on_train_end(trainer, None)  # step 10 was just drawn
    assert len(calls) == 2 and sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_0000005.png",
        "step_0000010.png",
    ]
    trainer.global_step = 12
    grid.on_train_end(trainer, None)
    assert len(calls) == 3


def test_every_rank_resolves_the_log_dir_and_only_rank_zero_samples(tmp_path, monkeypatch):
    """`trainer.log_dir` is a collective under DDP: rank 1 must make it too, or rank 0 waits for ever."""
    grid, calls = _counting_grid(monkeypatch, every_n_steps=2)
    rank1 = _Trainer(tmp_path, rank=1)
    rank1.global_step = 2
    grid.on_train_batch_end(rank1, None)
    rank1.global_step = 3
    grid.on_train_end(rank1, None)
    assert rank1.log_dir_calls == 2 and calls == []


def test_progress_bar_counts_steps_out_of_max_steps_without_v_num():
    """On resume Lightning's bar read `Epoch 0/-2`, `400/149` and `v_num: 4.000`."""
    from benchmark.callbacks import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_steps=1500, max_epochs=-1, num_training_batches=149)
    assert bar.total_train_batches == 1500
    description = bar._get_train_description(current_epoch=0)
    assert description.strip() == "Step" and "-2" not in description
    seen = {}
    bar._update = lambda task, current, **kw: seen.setdefault("current", current)
    bar._update_metrics = bar.refresh = lambda *a, **k: None
    bar.train_progress_bar_id = 0
    bar.on_train_batch_end(SimpleNamespace(global_step=400), None, None, None, batch_idx=3)
    assert seen["current"] == 400
    bar._trainer = SimpleNamespace(max_steps=-1, max_epochs=3, num_training_batches=149)
    assert bar.total_train_batches == 149 and "Epoch 0/2" in bar._get_train_description(0)


def test_progress_bar_hides_v_num(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from benchmark.callbacks import ProgressBar

    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: {"v_num": 4, "loss": 0.5})
    assert ProgressBar().get_metrics(None, None) == {"loss": 0.5}
