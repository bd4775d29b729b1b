"""The Evaluation and Throughput callbacks in a tiny fit, and the ``ldmbench evaluate`` command end to end."""

import json

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from baselines.dit import DiTModule
from benchmark.callbacks import Evaluation, Throughput
from benchmark.evaluation import EvalProtocol
from benchmark.evaluation.command import evaluate_command
from benchmark.objectives import RectifiedFlow
from benchmark.samplers import EulerSampler
from data.autoencoder import Autoencoder
from data.shapes import ShapesDataModule
from tests.benchmark.evaluation.conftest import tiny_dit

SMALL = EvalProtocol(num_samples=10, batch_size=10, flow_steps=2, guidance_scale=2.0, reference_samples=40)


def test_evaluation_and_throughput_callbacks_log_during_a_tiny_fit(tiny_vae, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the CPU matmul probe caches its peak under ~/.cache
    torch.manual_seed(0)
    module = tiny_dit(tiny_vae)
    evaluation = Evaluation(protocol=SMALL, every_n_steps=2, num_samples=10)
    throughput = Throughput(warmup_steps=1, log_every_n_steps=2, protocol=SMALL, sampling_images=4)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[evaluation, throughput],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
    )
    data = ShapesDataModule(resolution=32, batch_size=4, train_length=64, val_length=8)
    trainer.fit(module, datamodule=data)

    assert [h["step"] for h in evaluation.history] == [2, 4]  # every 2 steps; the end (step 4) is not repeated
    assert evaluation.history[-1]["train_images_seen"] == 16
    jsonl = tmp_path / "run" / "version_0" / "evaluation.jsonl"
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    for key in ("fd_shapes", "class_accuracy", "fd_shapes_noguidance", "protocol_id"):
        assert key in lines[0], key
    assert lines[0]["num_samples"] == 10 and lines[0]["fd_shapes"] > 0
    logged = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "eval/fd_shapes" in logged and "perf/train_images_per_s" in logged

    perf = throughput.last
    assert perf["perf/train_images_per_s"] > 0 and perf["perf/step_time_s"] > 0
    assert perf["perf/sampling_images_per_s"] > 0 and perf["perf/peak_memory_gib"] > 0
    if throughput.gflops_per_image is not None:  # the FLOP counter traced the model: FLOP/s and CPU MFU
        assert perf["perf/achieved_tflop_per_s"] > 0 and 0 < perf["perf/mfu"] < 5
    assert (tmp_path / ".cache" / "ldmbench" / "cpu_peak.json").exists() == ("perf/mfu" in perf)


def test_evaluate_command_on_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = DiTModule(
        size="DiT-tiny/2",
        num_classes=10,
        resolution=32,
        autoencoder=Autoencoder("embedded:shapes-vae"),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=50),
    )
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 7}, ckpt)
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("\n".join(f"{k}: {v}" for k, v in SMALL.to_dict().items() if v is not None) + "\n")
    output = tmp_path / "metrics.json"
    argv = ["--config", "leaderboards/shapes/dit.yaml", "--data.init_args.latent_cache", "null"]
    argv += ["--ckpt_path", str(ckpt), "--protocol", str(protocol), "--output", str(output), "--device", "cpu"]
    argv += ["--stats_root", str(tmp_path / "stats")]
    metrics = evaluate_command(argv)
    written = json.loads(output.read_text())
    assert written["checkpoint_step"] == 7 and written["checkpoint_sha256"] == metrics["checkpoint_sha256"]
    assert written["protocol_id"] == SMALL.id() and written["num_samples"] == 10
    assert written["fd_shapes"] > 0 and 0 <= written["class_accuracy"] <= 1
    assert "fd_shapes_noguidance" in written and written["commit"]
    assert list((tmp_path / "stats").glob("*.npz"))  # the reference statistics were cached where asked


def test_evaluate_ckpt_path_last_is_the_newest_checkpoint_of_the_run_and_loads_weights_only(tmp_path):
    import pytest as _pytest
    import torch as _torch

    from benchmark.evaluation.command import load_weights, newest_checkpoint_of
    from benchmark.runs import CheckpointError

    config = {"trainer": {"default_root_dir": str(tmp_path)}, "config": ["dit.yaml"], "model": {"class_path": "a.M"}}
    with _pytest.raises(CheckpointError, match="no checkpoint of dit-M"):
        newest_checkpoint_of(config)
    folder = tmp_path / "dit-M" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    _torch.save({"state_dict": {}, "global_step": 3}, folder / "last.ckpt")
    assert newest_checkpoint_of(config) == str(folder / "last.ckpt")
    # A checkpoint holding a pickled object is refused by name, never loaded with weights_only=False.
    import argparse

    _torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(x=1)}, folder / "bad.ckpt")
    with _pytest.raises(CheckpointError, match="bad.ckpt"):
        load_weights(_torch.nn.Linear(1, 1), str(folder / "bad.ckpt"))
