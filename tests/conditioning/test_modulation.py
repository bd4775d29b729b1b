import pytest
import torch
from torch import nn

from conditioning import AdaLNZero, FinalAdaLN, Mod, ShiftScale, modulate


def test_modulate_broadcasts_over_tokens():
    x, shift, scale = torch.randn(2, 5, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)
    assert torch.equal(modulate(x, torch.zeros_like(shift), torch.zeros_like(scale)), x)


def test_adaln_zero_is_zero_at_init():
    mod = AdaLNZero(hidden_size=4, cond_size=6)
    assert mod.linear.weight.abs().sum() == 0 and mod.linear.bias.abs().sum() == 0
    out = mod(torch.randn(3, 6))
    assert set(out) == {"attn", "mlp"}
    for m in out.values():
        assert isinstance(m, Mod)
        for value in (m.shift, m.scale, m.gate):
            assert value.shape == (3, 1, 4) and value.abs().sum() == 0


def test_adaln_zero_named_outputs_follow_dit_chunk_order():
    mod = AdaLNZero(hidden_size=4, cond_size=6)
    nn.init.normal_(mod.linear.weight)
    nn.init.normal_(mod.linear.bias)
    c = torch.randn(3, 6)
    chunks = mod.linear(nn.functional.silu(c)).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (chunk.unsqueeze(1) for chunk in chunks)
    out = mod(c)
    for got, want in [
        (out["attn"].shift, shift_msa),
        (out["attn"].scale, scale_msa),
        (out["attn"].gate, gate_msa),
        (out["mlp"].shift, shift_mlp),
        (out["mlp"].scale, scale_mlp),
        (out["mlp"].gate, gate_mlp),
    ]:
        torch.testing.assert_close(got, want)


def test_zero_gates_make_a_block_the_identity():
    mod, f = AdaLNZero(hidden_size=8, cond_size=8), nn.Linear(8, 8)
    norm = nn.LayerNorm(8, elementwise_affine=False)
    x, c = torch.randn(2, 5, 8), torch.randn(2, 8)
    for m in mod(c).values():
        x_out = x + m.gate * f(modulate(norm(x), m.shift, m.scale))
        assert torch.equal(x_out, x)


def test_adaln_zero_custom_branches_and_errors():
    mod = AdaLNZero(hidden_size=4, cond_size=4, branches=("attn", "cross", "mlp"))
    assert mod.linear.out_features == 36 and list(mod(torch.randn(1, 4))) == ["attn", "cross", "mlp"]
    with pytest.raises(ValueError, match="unique"):
        AdaLNZero(4, 4, branches=("attn", "attn"))


def test_final_adaln_order_is_shift_then_scale():
    mod = FinalAdaLN(hidden_size=4, cond_size=6)
    assert mod(torch.randn(2, 6)).shift.abs().sum() == 0
    nn.init.normal_(mod.linear.weight)
    c = torch.randn(2, 6)
    shift, scale = mod.linear(nn.functional.silu(c)).chunk(2, dim=1)
    out = mod(c)
    assert isinstance(out, ShiftScale)
    torch.testing.assert_close(out.shift, shift.unsqueeze(1))
    torch.testing.assert_close(out.scale, scale.unsqueeze(1))
