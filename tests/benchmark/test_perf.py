"""`ldmbench perf`: the interleaved ours-vs-reference measurement, its table and the matmul ceiling probe."""

import math

import pytest
import torch

from benchmark.cli import main as cli_main
from benchmark.perf import build_impls, matmul_ceiling, measure

pytest.importorskip("diffusers")


def test_perf_command_writes_the_dit_vs_diffusers_table(tmp_path):
    out = tmp_path / "perf" / "README.md"
    cli_main(
        [
            "perf",
            "--models",
            "dit",
            "--size",
            "tiny",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--precision",
            "fp32",
            "--output",
            str(out),
        ]
    )
    table = out.read_text()
    assert "torch thread" in table and "load average" in table and "Command: `ldmbench perf --models dit" in table
    rows = [line for line in table.splitlines() if line.startswith("| dit |")]
    assert [row.split("|")[2].strip() for row in rows] == ["ours", "diffusers"]
    ours = [cell.strip() for cell in rows[0].split("|")]
    assert float(ours[4]) > 0 and ours[5].endswith("x") and float(ours[5][:-1]) > 0  # images/s and the ratio
    assert float(ours[-2]) < 1e-4  # converted weights: both compute the same function


def test_measure_rows_are_consistent():
    rows = measure(["dit"], size="tiny", batch=2, repeats=1, precisions=["fp32"], steps=10)
    ours, ref = rows
    assert ours["impl"] == "ours" and ref["impl"] == "diffusers"
    # the FLOP counter sees the same matmuls in both implementations
    assert math.isclose(ours["train_gflop_img"], ref["train_gflop_img"], rel_tol=0.05)
    assert 0 < ours["fraction_of_ceiling"] and ours["ceiling_gflop_s"] > 0
    assert math.isclose(ours["ratio_train"], ours["train_img_s"] / ref["train_img_s"])
    assert math.isclose(ours["sample_img_s"] * 10 * ours["ratio_sample"] ** -1, ref["sample_img_s"] * 10)


def test_missing_model_is_reported_as_skipped(monkeypatch):
    import benchmark.perf as perf

    def missing(*args, **kwargs):
        raise ImportError("No module named 'baselines.not_merged_yet'")

    monkeypatch.setattr(perf, "build_impls", missing)
    rows = perf.measure(["dit"], size="tiny", batch=2, repeats=1, precisions=["fp32"])
    assert rows[0]["impl"] == "skipped" and "not available" in rows[0]["note"]


@pytest.mark.parametrize("name", ["ldm", "sdxl"])
def test_unet_rows_time_ours_against_diffusers_on_the_same_function(name):
    impls, note = build_impls(name, "tiny", 2, 16, torch.device("cpu"))
    assert [impl.label for impl in impls] == ["ours", "diffusers"] and "UNet2DConditionModel" in note
    with torch.no_grad():
        ours, theirs = (impl.forward()[0] for impl in impls)
    assert ours.shape == (2, 4, 8, 8) and ours.abs().mean() > 1e-3  # random weights: not a trivial zero output
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_unet_row_is_measured():
    rows = measure(["sdxl"], size="tiny", batch=2, repeats=1, precisions=["fp32"], steps=10)
    assert [row["impl"] for row in rows] == ["ours", "diffusers"]
    assert math.isclose(rows[0]["train_gflop_img"], rows[1]["train_gflop_img"], rel_tol=0.05)
    assert rows[0]["ratio_train"] > 0 and rows[0]["max_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit", "ldm"])
def test_tiny_backbones_trace_whole_under_torch_compile(name):
    """Dynamo captures the whole forward (no graph break) and AOT autograd the backward, matching eager; the
    inductor code generation on top takes minutes per model on a 2-core CPU, so it is timed by ``perf --compile``."""
    import torch._dynamo

    impls, _ = build_impls(name, "tiny", 2, 16, torch.device("cpu"))
    model = impls[0].module
    eager = impls[0].forward()[0]
    eager.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    model.compile(backend="aot_eager", fullgraph=True)
    try:
        compiled = impls[0].forward()[0]
        compiled.square().mean().backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)
    for got, want in zip((p.grad for p in model.parameters() if p.requires_grad), eager_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_matmul_ceiling_is_positive():
    assert matmul_ceiling(64, 32, 128, repeats=2) > 0


def test_mdt_step_runs_both_passes_against_dit():
    impls, _ = build_impls("mdt", "tiny", 2, 16, torch.device("cpu"))
    assert len(impls[0].forward()) == 2 and len(impls[1].forward()) == 1


def test_dit_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    from baselines.dit import DiT
    from conditioning.types import Cond

    torch.manual_seed(0)
    plain = DiT(input_size=8, num_classes=10, depth=2, hidden_size=64, num_heads=4)
    with torch.no_grad():
        for p in plain.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.05)
    ckpt = DiT(input_size=8, num_classes=10, depth=2, hidden_size=64, num_heads=4, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond = torch.randn(3, 4, 8, 8), torch.rand(3), Cond(label=torch.tensor([0, 3, 9]))
    outs = []
    for model in (plain, ckpt):
        out = model(x, t, cond)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert outs[0][0].abs().max() > 0.1
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_peak_memory_counts_live_tensors_on_cpu():
    from benchmark.perf import peak_memory

    def two_live_matrices():
        a = torch.randn(500, 500)
        b = a @ a  # a and b alive together: 2 x 1 MB
        del a
        return b.sum()

    peak = peak_memory(two_live_matrices, torch.device("cpu"))
    assert 2 * 500 * 500 * 4 <= peak < 3 * 500 * 500 * 4
