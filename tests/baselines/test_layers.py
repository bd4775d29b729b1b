"""baselines.layers' PatchEmbed, Mlp and Attention are timm's, under our signatures, with the reference checkpoints'
keys and the outputs of the plain-torch layers they replaced (issue 25)."""

import importlib.util
import pathlib

import pytest
import timm.layers
import torch
import torch.nn.functional as F

from baselines.layers import Attention, Mlp, PatchEmbed

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "timm_layers_perf.py"


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():  # biases too: a default zero bias would hide a missing one
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def test_layers_are_timms_with_the_checkpoint_keys():
    # The official DiT / MDT / PixArt-α checkpoints name these parameters so (x_embedder.proj, attn.qkv, mlp.fc1, ...).
    cases = [
        (Attention(32, 4), timm.layers.Attention, ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]),
        (Mlp(32, 64), timm.layers.Mlp, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
        (PatchEmbed(2, 4, 32), timm.layers.PatchEmbed, ["proj.weight", "proj.bias"]),
    ]
    for layer, timm_class, keys in cases:
        assert isinstance(layer, timm_class)
        assert list(layer.state_dict()) == keys
    assert list(Attention(32, 4, qkv_bias=False).state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]
    assert list(PatchEmbed(2, 4, 32, bias=False).state_dict()) == ["proj.weight"]
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)


def test_forward_matches_the_layers_before_timm():
    # The script holds the plain-torch layers as they were; same weights loaded strictly, outputs within 1e-5.
    spec = importlib.util.spec_from_file_location("timm_layers_perf", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    diffs = script.layer_parity()
    assert set(diffs) == {"Attention", "Mlp", "PatchEmbed", "DiT-tiny/2 (all three)"}
    assert all(d <= 1e-5 for d in diffs.values()), diffs


def test_mlp_is_tanh_gelu():
    mlp, x = _randomise(Mlp(8, 16, 4)), torch.randn(3, 8)
    expected = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias), approximate="tanh"), *mlp.fc2.parameters())
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=0)
    assert (mlp(x) - F.linear(F.gelu(F.linear(x, *mlp.fc1.parameters())), *mlp.fc2.parameters())).abs().max() > 1e-5


def test_patch_embed_takes_any_side_row_major_and_contiguous():
    embed, p = _randomise(PatchEmbed(2, 3, 8)), 2
    x = torch.randn(2, 3, 6, 10)  # no fixed image size (mmDiT and PixArt take several), not square
    patches = x.reshape(2, 3, 3, p, 5, p).permute(0, 2, 4, 1, 3, 5).reshape(2, 15, 3 * p * p)  # row-major tokens
    expected = patches @ embed.proj.weight.reshape(8, -1).T + embed.proj.bias
    out = embed(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert out.is_contiguous()  # the copy that keeps every later block off transposed memory


def test_attention_stays_on_sdpa_when_timm_would_not_fuse(monkeypatch):
    import timm.layers.attention

    monkeypatch.setattr(timm.layers.attention, "use_fused_attn", lambda *a, **k: False)
    assert Attention(16, 2).fused_attn
    with torch.device("meta"):  # meta builds (describe, FLOP counts) still work
        assert Attention(16, 2).qkv.weight.is_meta
