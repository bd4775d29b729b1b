"""Two CPU processes (gloo) generate the same samples and measure the same metrics as one process."""

import multiprocessing
import os

import pytest
import torch
import torch.distributed as dist

from benchmark.evaluation import EvalProtocol, evaluate
from tests.benchmark.evaluation.conftest import tiny_dit

PROTOCOL = EvalProtocol(num_samples=9, batch_size=2, flow_steps=2, guidance_scale=2.0, reference_samples=40)
KEYS = ("fd_shapes", "class_accuracy", "fd_shapes_noguidance", "class_accuracy_noguidance")


def _entry(vae: str):
    torch.manual_seed(0)
    module = tiny_dit(vae)
    torch.nn.init.normal_(module.ema.shadow.final_layer.linear.weight, std=0.2)  # samples that differ per index
    return module


def _rank(rank: int, world: int, vae: str, folder: str) -> None:
    os.environ["LDMBENCH_CACHE"] = os.path.join(folder, "cache")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        from benchmark.evaluation import generate

        module = _entry(vae)
        images = generate(module, PROTOCOL, 2.0).images
        metrics = evaluate(module, PROTOCOL, progress=False, stats_root=os.path.join(folder, "stats"))
        torch.save({"images": images, "metrics": {k: metrics[k] for k in KEYS}}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_same_samples_and_metrics_as_one(tiny_vae, tmp_path):
    from benchmark.evaluation import generate

    module = _entry(tiny_vae)
    single_images = generate(module, PROTOCOL, 2.0).images
    single = evaluate(module, PROTOCOL, progress=False, stats_root=str(tmp_path / "stats1"))

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_rank, args=(r, 2, tiny_vae, str(tmp_path))) for r in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["images"].shape[0] == 9  # 5 + 4 samples gathered once, no padded repeats
        assert torch.equal(got["images"], single_images)
        for key in KEYS:
            assert got["metrics"][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
