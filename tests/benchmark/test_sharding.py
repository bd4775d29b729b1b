"""FSDP (`benchmark.sharding`): 2 gloo CPU processes train as 1 process does; a sharded checkpoint resumes exactly."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.batch_draws import global_batch_draws
from benchmark.runs import checkpoint_step
from benchmark.sharding import consolidate_checkpoint, shard_units

WORKER = Path(__file__).with_name("fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _worker(out: Path, vae: str, steps: int, precision: str = "fp32", checkpointing: bool = False, ckpt: str = ""):
    out.mkdir(parents=True, exist_ok=True)
    args = [str(out), vae, "2", str(steps), precision, "1" if checkpointing else "0", *([ckpt] if ckpt else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"losses_rank{r}.json").read_text()) for r in range(2)]
    return torch.load(out / "final.pt"), [sum(pair) / 2 for pair in zip(*ranks)]


def _one_process(vae: str, steps: int):
    """The same training in this process, unsharded: step k's gradient is the mean of the two ranks' losses, each on
    its rank's items (Lightning gives a training loader a shuffled DistributedSampler seeded by the global seed) and
    its rows of the step's global-batch draws (`benchmark.batch_draws`)."""
    sys.path.insert(0, str(WORKER.parent))
    import fsdp_worker

    module = fsdp_worker.build(vae)
    data = fsdp_worker.items(module.latent_shape)
    module.on_fit_start()  # the seed base: 7 after seed_everything(7), as on every rank of the worker
    optimizer = module.configure_optimizers()
    samplers = [
        torch.utils.data.DistributedSampler(data, 2, rank, shuffle=True, seed=fsdp_worker.SEED) for rank in (0, 1)
    ]
    per_epoch = len(samplers[0]) // fsdp_worker.BATCH
    losses = []
    for step in range(steps):
        per_rank = []
        for rank in range(2):
            samplers[rank].set_epoch(step // per_epoch)
            start = (step % per_epoch) * fsdp_worker.BATCH
            batch = torch.utils.data.default_collate(
                [data[i] for i in list(samplers[rank])[start : start + fsdp_worker.BATCH]]
            )
            module._trainer = types.SimpleNamespace(global_step=step, global_rank=rank)
            seed = module.step_seed(0)
            module._trainer = None
            # Each rank draws for the global batch and keeps its rows, as `DiffusionModule.training_step` does.
            with module.seeded(seed), global_batch_draws(fsdp_worker.BATCH, rank, 2):
                per_rank.append(module.training_loss(batch)["loss"])
        loss = sum(per_rank) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.ema.update(module.backbone)
        losses.append(float(loss))
    return {"backbone": module.backbone.state_dict(), "ema": module.ema.shadow.state_dict()}, losses


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_shard_units_are_the_outermost_module_lists_children_or_the_hook():
    class Level(nn.Module):
        def __init__(self):
            super().__init__()
            self.res = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # inside a unit: not a unit of its own

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(2, 2)
            self.down = nn.ModuleList([Level(), Level()])
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    assert [name for name, _ in shard_units(Net())] == ["down.0", "down.1", "blocks.0"]
    hooked = Net()
    hooked.shard_units = lambda: ["stem", hooked.blocks[0]]
    assert [name for name, _ in shard_units(hooked)] == ["stem", "blocks.0"]


@pytest.mark.slow
def test_two_fsdp_processes_train_as_one_process_and_a_sharded_checkpoint_resumes(tiny_vae, tmp_path):
    """fp32, activation checkpointing on: loss and gathered weights (backbone and EMA) equal one unsharded process
    to float tolerance after 4 steps (2 epochs); the run resumed from its sharded step-2 checkpoint (the end of the
    first epoch, since a plain DataLoader does not resume mid-epoch) ends with the same weights."""
    state, losses = _worker(tmp_path / "a", tiny_vae, 4, checkpointing=True)
    assert sorted(p.name for p in (tmp_path / "a/ckpts/step=2.ckpt").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    assert checkpoint_step(tmp_path / "a/ckpts/step=2.ckpt") == 2  # what `ldmbench fit --ckpt_path` reads first
    reference, reference_losses = _one_process(tiny_vae, 4)
    assert losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    assert _max_difference(state["backbone"], reference["backbone"]) < 1e-5
    assert _max_difference(state["ema"], reference["ema"]) < 1e-5
    assert _max_difference(state["backbone"], state["ema"]) > 1e-4  # the EMA is not the weights themselves
    full = torch.load(consolidate_checkpoint(tmp_path / "a/ckpts/step=4.ckpt"), weights_only=True)
    assert full["global_step"] == 4
    for prefix, part in (("backbone.", "backbone"), ("ema.shadow.", "ema")):
        weights = {k.removeprefix(prefix): v for k, v in full["state_dict"].items() if k.startswith(prefix)}
        assert _max_difference(weights, state[part]) == 0.0

    resumed, resumed_losses = _worker(tmp_path / "b", tiny_vae, 4, ckpt=str(tmp_path / "a/ckpts/step=2.ckpt"))
    assert resumed_losses == pytest.approx(losses[2:], rel=1e-6)
    assert _max_difference(resumed["backbone"], state["backbone"]) == 0.0
    assert _max_difference(resumed["ema"], state["ema"]) == 0.0


@pytest.mark.slow
def test_bf16_fsdp_stays_near_fp32_and_keeps_fp32_master_weights(tiny_vae, tmp_path):
    state, losses = _worker(tmp_path / "bf16", tiny_vae, 4, precision="bf16")
    reference, reference_losses = _one_process(tiny_vae, 4)
    assert state["dtypes"] == ["torch.float32"]
    assert losses == pytest.approx(reference_losses, rel=5e-2)
    assert _max_difference(state["backbone"], reference["backbone"]) < 5e-3


FSDP_YAML = """
trainer:
  strategy:
    class_path: benchmark.sharding.FSDPStrategy
    init_args: {mixed_precision: bf16, activation_checkpointing: true}
  precision: 32-true
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: 0}
    - class_path: benchmark.callbacks.SampleGrid
      init_args: {every_n_steps: 2, num_classes: 2, samples_per_class: 1}
"""


@pytest.mark.slow
def test_the_cli_trains_a_shapes_entry_under_fsdp_with_grids_and_resumes_from_the_sharded_last(tmp_path):
    """`ldmbench fit` on 2 CPU processes with the docs' FSDP options: the sample grid (drawn from the sharded EMA by
    every rank, written by rank 0) does not hang, and `--ckpt_path last` finds and resumes the sharded folder."""
    (tmp_path / "fsdp.yaml").write_text(FSDP_YAML)
    common = [
        *("--config", str(ROOT / "leaderboards/shapes/dit.yaml"), "--config", "fsdp.yaml"),
        *("--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.limit_val_batches=1"),
        *("--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--trainer.enable_progress_bar=false"),
        "--model.init_args.sampler.init_args.steps=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for extra in (["--trainer.max_steps=3"], ["--trainer.max_steps=5", "--ckpt_path=last"]):
        done = subprocess.run(
            [sys.executable, "-m", "benchmark.cli", "fit", *common, *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs/dit-DiTModule/version_0"
    assert "resuming dit-DiTModule" in done.stderr
    assert [p.name for p in sorted((run / "samples").iterdir())][-1] == "step_0000005.png"
    assert checkpoint_step(run / "checkpoints/last.ckpt") == 4 and (run / "checkpoints/last.ckpt/meta.pt").is_file()
