"""Throughput provenance: the load a figure was measured under, its flag, and a flagged figure never shown in place of
a free machine's."""

from types import SimpleNamespace

import pytest
import torch

import benchmark.callbacks.throughput as tp
from benchmark.callbacks.throughput import LoadWindow, MachineLoad, throughput_flag
from benchmark.leaderboard import render
from benchmark.leaderboard import results as res


def test_a_throughput_is_flagged_when_the_load_exceeds_the_cores_or_the_process_lacks_cpu():
    assert throughput_flag(1.5, 2, 0.98, 1) is None
    assert throughput_flag(3.1, 2, 0.98, 1) == "load 3.10 > 2 cores"
    assert throughput_flag(1.0, 2, 1.2, 2) == "CPU/wall 1.20 < 0.9 x 2 threads"
    assert throughput_flag(1.0, 2, 0.1, 8, on_cpu=False) is None  # a GPU run: CPU/wall says nothing
    assert throughput_flag(None, 2, None, 1) is None


@pytest.fixture
def one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(tp, "_load1", lambda: 0.5)
    yield
    torch.set_num_threads(before)


class _Clock:
    """Wall and process CPU clocks that the test advances (the machine running the test may itself be loaded)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu

    def run(self, wall, cpu):
        self.wall += wall
        self.cpu += cpu


def test_cpu_time_over_wall_time_of_the_steps_after_warm_up(one_thread, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(tp, "time", clock)
    callback = MachineLoad(warmup_steps=1)
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(global_step=0)
    callback.on_train_start(trainer, module)
    for step, (wall, cpu) in enumerate([(0.2, 0.0), (0.1, 0.1), (0.1, 0.095)], start=1):
        callback.on_train_batch_start(trainer, module, None)
        clock.run(wall, cpu)
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module)
        clock.run(0.5, 0.0)  # data loading and checkpoint writing between steps do not count
    busy = callback.summary("train")  # the idle first step was warm-up
    assert busy["train_cpu_per_wall"] == pytest.approx(0.975)
    assert busy["train_throughput_flag"] is None and busy["train_load1"] == 0.5
    with LoadWindow() as window:
        clock.run(1.0, 0.4)  # the process got 40% of a core: others held it
    starved = window.summary("sampling")
    assert starved["sampling_cpu_per_wall"] == pytest.approx(0.4)
    assert starved["sampling_throughput_flag"] == "CPU/wall 0.40 < 0.9 x 1 threads"
    assert window.summary("sampling", on_cpu=False)["sampling_throughput_flag"] is None


def _row(created, images_per_s, flag):
    return {"entry": "dit", "seed": 0, "key": "k", "status": "ok", "created": created,
            "train_images_per_s": images_per_s, "train_load1": 3.0 if flag else 0.4,
            "train_throughput_flag": flag}  # fmt: skip


def test_a_flagged_figure_never_replaces_a_free_machines_one(tmp_path):
    path = tmp_path / "results.jsonl"
    res.append_row(path, _row("t1", 269.0, None))
    res.append_row(path, {**_row("t2", 14.0, "load 3.00 > 2 cores"), "metric": 17.6})
    (row,) = res.read_rows(path)
    assert row["metric"] == 17.6 and row["created"] == "t2"  # the redo is the row...
    assert row["train_images_per_s"] == 269.0 and row["train_images_per_s_from"] == "t1"  # ...its speed is not
    assert row["train_throughput_flag"] is None and row["train_load1"] == 0.4
    res.append_row(path, _row("t3", 250.0, None))  # a free machine's figure replaces either
    assert res.read_rows(path)[0]["train_images_per_s"] == 250.0

    seeds = [_row("t1", 200.0, None), _row("t2", 10.0, "load 3.00 > 2 cores")]
    assert render._throughput(seeds, "train_images_per_s") == render.fmt_num(200.0)
    loaded = render._throughput(seeds[1:], "train_images_per_s")
    assert loaded == f"{render.fmt_num(10.0)} {render._LOADED}"
    assert render._throughput([{"entry": "dit"}], "train_images_per_s") == render.fmt_num(None)
