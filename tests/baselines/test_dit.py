import contextlib

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from baselines.dit import SIZES, DiT, DiTBlock, dit_size
from baselines.layers import Attention, get_2d_sincos_pos_embed, unpatchify
from conditioning import Cond

# Exact parameter counts of the official models.py (facebookresearch/DiT@ed81ce2) at 256² (32x32 latent), 1000
# classes, learned Σ, counted by instantiating it.
ANCHOR_PARAMS = {"DiT-S/2": 32_963_360, "DiT-B/2": 130_512_416, "DiT-L/2": 458_102_816, "DiT-XL/2": 675_129_632}
TINY = dict(input_size=8, in_channels=4, num_classes=10, **dit_size("DiT-tiny/2"))


def _meta_dit(name: str, **kwargs) -> DiT:
    with torch.device("meta"):
        return DiT(**dit_size(name), **kwargs)


def _count(model: DiT, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _inputs(n: int = 3, device: str = "cpu", **cond_fields):
    x = torch.randn(n, 4, 8, 8, device=device)
    t = torch.rand(n, device=device)
    cond = Cond(label=torch.arange(n, device=device) % 10, **cond_fields)
    return x, t, cond


@pytest.mark.parametrize("name", list(ANCHOR_PARAMS))
def test_parameter_count_matches_the_reference(name):
    assert _count(_meta_dit(name)) == ANCHOR_PARAMS[name]


def test_xl2_trainable_and_512_counts():
    assert _count(_meta_dit("DiT-XL/2"), trainable=True) == 674_834_720
    assert _count(_meta_dit("DiT-XL/2", input_size=64)) == 676_014_368


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_matches_the_closed_form(name):
    s = SIZES[name]
    d, p, c, depth = s["hidden_size"], s["patch_size"], 4, s["depth"]
    tokens = (32 // p) ** 2
    expected = (
        depth * (18 * d * d + 15 * d)
        + (p * p * c * d + d)
        + (d * d + 258 * d)
        + 1001 * d
        + tokens * d
        + (2 * d * d + 2 * d + 2 * p * p * c * d + 2 * p * p * c)
    )
    assert _count(_meta_dit(name)) == expected


def test_dit_size_errors_list_valid_names():
    with pytest.raises(ValueError, match="DiT-XL/2"):
        dit_size("DiT-XXL/2")
    size = dit_size("DiT-XL/2")
    size["depth"] = 1
    assert SIZES["DiT-XL/2"]["depth"] == 28


@pytest.mark.parametrize("math_backend", [False, True])
def test_xl2_gmacs_on_meta(math_backend):
    model = _meta_dit("DiT-XL/2")
    x, t = torch.zeros(1, 4, 32, 32, device="meta"), torch.full((1,), 0.5, device="meta")
    cond = Cond(label=torch.zeros(1, dtype=torch.long, device="meta"))
    # The default dispatch on meta decomposes attention into bmm's, which the counter sees; so does the math backend.
    backend = sdpa_kernel([SDPBackend.MATH]) if math_backend else contextlib.nullcontext()
    with backend, FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond)
    assert counter.get_total_flops() / 2e9 == pytest.approx(118.6, abs=0.1)


def test_output_shape_and_zero_at_init():
    model = DiT(**TINY).eval()
    x, t, cond = _inputs()
    out = model(x, t, cond)
    assert out.shape == (3, 8, 8, 8) and model.out_channels == 8
    assert out.abs().sum() == 0  # zero final layer
    assert DiT(**TINY, learn_sigma=False)(x, t, cond).shape == (3, 4, 8, 8)


def test_dit_block_is_the_identity_at_init():
    block, x = DiTBlock(32, 4), torch.randn(2, 5, 32)
    assert torch.equal(block(x, torch.randn(2, 32)), x)


@pytest.mark.parametrize("control", [False, True])
def test_every_trainable_parameter_gets_a_gradient(control):
    names = ["orig_h", "flip"] if control else None
    model = DiT(**TINY, control_names=names)
    x, t, cond = _inputs(control=torch.randn(3, 2), control_null=torch.tensor([True, False, False]))
    model(x, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not model.pos_embed.requires_grad and model.pos_embed.grad is None


def test_eval_determinism_with_random_weights():
    torch.manual_seed(0)
    model = DiT(**TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x, t, cond = _inputs()
    a, b = model(x, t, cond), model(x, t, cond)
    assert torch.equal(a, b) and a.abs().sum() > 0


def test_input_errors():
    model = DiT(**TINY)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(3, 4, 16, 16), t, cond)
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(3, 3, 8, 8), t, cond)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        model(x, t[:2], cond)
    with pytest.raises(ValueError, match="float time"):
        model(x, torch.tensor([1, 500, 999]), cond)
    with pytest.raises(ValueError, match="cond.label"):
        model(x, t, Cond(control=torch.zeros(3, 1)))
    with pytest.raises(ValueError, match="divisible"):
        DiT(**{**TINY, "input_size": 9})


def test_control_embedder_is_optional_and_checked():
    model = DiT(**TINY, control_names=["orig_h", "flip"])
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="cond.control"):
        model(x, t, cond)
    x, t, cond = _inputs(control=torch.randn(3, 2), control_names=("orig_h", "flip"))
    assert model(x, t, cond).shape == (3, 8, 8, 8)
    assert DiT(**TINY).control_embedder is None


def test_meta_construction_and_materialisation():
    with torch.device("meta"):
        model = DiT(**TINY)
    assert model.pos_embed.is_meta
    x, t, cond = _inputs(device="meta")
    assert model(x, t, cond).shape == (3, 8, 8, 8)
    model.to_empty(device="cpu")
    model.initialize_weights()
    torch.testing.assert_close(model.pos_embed, DiT(**TINY).pos_embed)


def test_pos_embed_is_the_fixed_mae_table():
    model = DiT(**TINY)
    table = get_2d_sincos_pos_embed(128, 4)
    assert torch.equal(model.pos_embed[0], torch.from_numpy(table).float())
    # First half of the channels encodes the column index, second half the row index; tokens are row-major.
    row, col = 1, 3
    token = table[row * 4 + col]
    assert token[0] == pytest.approx(np.sin(col)) and token[64] == pytest.approx(np.sin(row))


def test_unpatchify_inverts_row_major_patchify():
    img = torch.randn(2, 3, 8, 12)
    p = 2
    tokens = img.reshape(2, 3, 4, p, 6, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 24, p * p * 3)
    assert torch.equal(unpatchify(tokens, p, 3, (4, 6)), img)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(tokens, p, 3, (5, 5))


def test_attention_matches_softmax_formula():
    attn, x = Attention(16, 4), torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)
