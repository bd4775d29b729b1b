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
    ratio, quartiles = ours[5].split("x ")
    assert float(ours[4]) > 0 and float(ratio) > 0  # images/s and the ratio
    low, high = (float(q) for q in quartiles.strip("[]").split(","))
    assert 0 < low <= high  # the quartiles of the per-round ratios
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


def test_ratio_quartiles_pair_the_rounds():
    from benchmark.perf import ratio_quartiles

    # round 2 ran under load on both sides: paired, it is a round like the others
    ours, reference = [1.0, 3.0, 1.0, 1.0, 1.0], [1.1, 3.3, 1.1, 0.9, 1.2]
    low, high = ratio_quartiles(ours, reference)
    assert math.isclose(low, 1.1) and math.isclose(high, 1.1)
    assert ratio_quartiles([2.0], [1.0]) == (0.5, 0.5)


def test_missing_model_is_reported_as_skipped(monkeypatch):
    import benchmark.perf as perf
    import benchmark.perf.command as perf_command  # where `measure` looks `build_impls` up

    def missing(*args, **kwargs):
        raise ImportError("No module named 'baselines.not_merged_yet'")

    monkeypatch.setattr(perf_command, "build_impls", missing)
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


def test_time_split_accounts_for_the_profiled_step():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmark.perf import Trainer

    impls, _ = build_impls("dit", "tiny", 2, 16, torch.device("cpu"))
    trainer = Trainer(impls[0], "fp32", torch.device("cpu"))
    trainer.step()  # allocator warm-up, as in `measure`
    split = trainer.time_split()
    shares = [split[k] for k in ("gemm", "conv", "attention", "optimizer", "other_ops", "outside_ops")]
    assert all(0 <= s <= 1 for s in shares) and 0.97 < sum(shares) < 1.03  # the buckets partition the wall time
    assert split["gemm"] > 0 and split["conv"] > 0 and split["optimizer"] > 0  # patch conv; AdamW's own ops
    assert split["attention_kernels"] == "flash_attention_for_cpu"  # the CPU's fused SDPA kernel ran
    with sdpa_kernel([SDPBackend.MATH]):
        assert trainer.time_split()["attention_kernels"] == "math"


def test_breakdown_rows_carry_the_split_and_our_ratio_bound():
    from benchmark.perf import render

    rows = measure(["dit"], size="tiny", batch=2, repeats=1, precisions=["fp32"], steps=10, breakdown=True)
    ours, ref = rows
    assert ours["split"] and ref["split"] and ref["ratio_bound"] is None
    # the bound removes part of our step's time, so it is above the profiled ratio
    profiled_ratio = ref["split"]["profiled_s"] / ours["split"]["profiled_s"]
    assert ours["ratio_bound"] > profiled_ratio
    table = render(rows, "header")
    assert "| attention kernel | bound |" in table and "flash_attention_for_cpu" in table
    assert ours["mfu"] is None  # no data-sheet peak on a CPU


def test_a_size_a_model_does_not_have_is_a_skipped_row():
    rows = measure(["sdxl"], size="B", batch=2, repeats=1, precisions=["fp32"])
    assert rows[0]["impl"] == "skipped" and "no sdxl UNet at size B" in rows[0]["note"]


def test_every_size_names_a_configuration_of_every_model():
    from baselines.dit import dit_size
    from baselines.ldm_unet import ldm_unet_size
    from baselines.mdt import mdt_size
    from baselines.mmdit import mmdit_size
    from baselines.pixart_alpha import pixart_size
    from benchmark.perf import SIZE_DEFAULTS, UNET_SIZES

    for suffix, tokens, batch in SIZE_DEFAULTS.values():
        assert tokens > 0 and batch > 0
        for size_of, prefix in ((dit_size, "DiT"), (mdt_size, "MDTv2"), (pixart_size, "PixArt"), (mmdit_size, "mmDiT")):
            assert size_of(f"{prefix}-{suffix}")["patch_size"] == 2
    assert UNET_SIZES["ldm"]["XL"] == "LDM-4" and UNET_SIZES["sdxl"]["XL"] == "SDXL"
    for sizes in UNET_SIZES.values():
        for name in sizes.values():
            ldm_unet_size(name)


def test_missing_diffusers_names_the_install(monkeypatch):
    import benchmark.perf as perf
    import benchmark.perf.command as perf_command

    def no_diffusers(*args, **kwargs):
        raise ImportError("No module named 'diffusers'", name="diffusers")

    monkeypatch.setattr(perf_command, "build_impls", no_diffusers)
    rows = perf.measure(["pixart"], size="tiny", batch=2, repeats=1, precisions=["fp32"])
    assert rows[0]["impl"] == "skipped" and "pip install diffusers" in rows[0]["note"]


def test_gpu_script_runs_on_the_cpu_at_tiny_size(tmp_path):
    """`scripts/gpu_perf.sh` is prepared for one call on a GPU machine; its CPU dry run shows the commands work."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run scripts/gpu_perf.sh")
    extra = "--batch 2 --repeats 1 --steps 10 --precision fp32"
    env = {**os.environ, "DEVICE": "cpu", "SIZES": "tiny", "MODELS": "dit", "OUT": str(tmp_path), "PERF_ARGS": extra}
    done = subprocess.run(["bash", "scripts/gpu_perf.sh"], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("xl_bf16.md", "s_fp32_bf16.md", "log.txt"):
        assert (tmp_path / name).is_file(), name
    table = (tmp_path / "xl_bf16.md").read_text()
    assert "| dit | ours | fp32 |" in table and "| dit | diffusers | fp32 |" in table and "attention kernel" in table
    assert "torch.compile row skipped" in (tmp_path / "log.txt").read_text()  # COMPILE defaults to 0 on a CPU


def test_memory_options_apply_to_both_implementations_and_keep_them_equal():
    rows = measure(
        ["ldm"],
        size="tiny",
        batch=2,
        repeats=1,
        precisions=["fp32"],
        steps=10,
        channels_last=True,
        gradient_checkpointing=True,
    )
    ours, ref = rows
    assert ours["max_diff"] < 1e-4 and ours["train_img_s"] > 0 and ref["train_img_s"] > 0


def test_an_unknown_model_is_a_usage_error_naming_the_valid_ones(capsys):
    from benchmark.perf import main as perf_main

    with pytest.raises(SystemExit) as info:
        perf_main(["--models", "dit,foo"])
    assert info.value.code == 2 and "unknown model(s) foo; valid: dit, mdt" in capsys.readouterr().err


def test_old_import_paths_of_the_measuring_tools_keep_working():
    """perf was one module and its profile a sibling; both moved into the `benchmark.perf` package."""
    import benchmark.perf as perf
    import benchmark.perf_profile as old_profile
    from benchmark.perf import command, impls, profile, timing

    assert perf.measure is command.measure and perf.build_impls is impls.build_impls and perf.Trainer is timing.Trainer
    assert old_profile.profile_entry is profile.profile_entry and old_profile.render_profile is profile.render_profile
    for name in perf.__all__:
        assert getattr(perf, name) is not None


def test_no_measuring_tool_is_in_a_row_key():
    """perf measures speed and trains nothing a row reports: editing it must not make committed rows stale."""
    from benchmark.leaderboard import results as res

    every_code_file = {p.relative_to(res.REPO_ROOT).as_posix() for p in res._code_files(None)}
    assert "benchmark/module.py" in every_code_file
    assert not [f for f in every_code_file if f.startswith(("benchmark/perf/", "benchmark/perf_profile"))]
