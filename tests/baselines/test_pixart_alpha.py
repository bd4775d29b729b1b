"""PixArt-α: reference counts and cost, diffusers parity, the official checkpoint layout, shapes and gradients."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from baselines.layers import CrossAttention, get_2d_sincos_pos_embed
from baselines.pixart_alpha import (
    SIZES,
    PixArt,
    diffusers_config,
    from_diffusers_state_dict,
    load_official_checkpoint,
    pixart_size,
    to_diffusers_state_dict,
)
from conditioning import Cond
from conditioning.adaln_single import AdaLNSingle, FinalModulationTable, ModulationTable

# PixArt-α-XL/2 at 256² (32x32 latent) with T5-XXL's 4096-wide states: nets/PixArt.py at cac2fd3 ≡ diffusers.
XL_PARAMS = 610_856_096
XL_GMACS = 149.05  # with 120 text tokens
TINY = dict(input_size=8, in_channels=4, context_dim=32, **pixart_size("PixArt-tiny/2"))
SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, context_dim=32)
STEPS = torch.tensor([0, 10, 500, 999])
MASK = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6, [0, 1, 1, 0, 1, 0, 1]]).bool()


def _meta(name: str, **kwargs) -> PixArt:
    with torch.device("meta"):
        return PixArt(**pixart_size(name), **kwargs)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Move away from the zero-initialised output layers, which would make comparisons trivially 0 == 0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * std)
    return model


def _text_cond(n: int = 4, width: int = 32, device: str = "cpu") -> Cond:
    torch.manual_seed(1)
    return Cond(tokens=torch.randn(n, 7, width, device=device), token_mask=MASK[:n].to(device))


# ------------------------------------------------------------------------------------------------- counts and cost


def test_xl2_reference_count_on_meta():
    model = _meta("PixArt-XL/2", pos_embed_scale=0.5)
    assert _count(model) == XL_PARAMS
    assert all(p.requires_grad for p in model.parameters())
    assert "pos_embed" in dict(model.named_buffers())  # a buffer as in the reference: saved, not counted


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_matches_the_closed_form(name):
    s = SIZES[name]
    d, p, c, e = s["hidden_size"], s["patch_size"], 4, 4096
    expected = (
        s["depth"] * (16 * d * d + 19 * d)  # self-attn 4D²+4D, cross-attn 4D²+4D, MLP 8D²+5D, table 6D
        + (p * p * c * d + d)  # patch embedding
        + (d * d + 258 * d)  # time MLP
        + (6 * d * d + 6 * d)  # shared t_block
        + (e * d + d + d * d + d)  # caption projection
        + (2 * p * p * c * d + 2 * p * p * c + 2 * d)  # final linear + its table
    )
    assert _count(_meta(name)) == expected


def test_pixart_size_errors_list_valid_names():
    with pytest.raises(ValueError, match="PixArt-XL/2"):
        pixart_size("PixArt-XXL/2")
    size = pixart_size("PixArt-XL/2")
    size["depth"] = 1
    assert SIZES["PixArt-XL/2"]["depth"] == 28


def test_xl2_gmacs_with_120_t5_tokens():
    model = _meta("PixArt-XL/2")
    x, t = torch.zeros(1, 4, 32, 32, device="meta"), torch.full((1,), 0.5, device="meta")
    cond = Cond(tokens=torch.zeros(1, 120, 4096, device="meta"), token_mask=torch.ones(1, 120, device="meta").bool())
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond)
    assert counter.get_total_flops() / 2e9 == pytest.approx(XL_GMACS, abs=0.01)


# ------------------------------------------------------------------------------------------------- diffusers parity

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("pos_embed_scale", [0.5, 1.0])
def test_matches_diffusers_pixart_transformer(pos_embed_scale):
    ours = _randomise(PixArt(**SMALL, pos_embed_scale=pos_embed_scale).eval())
    ref = diffusers.PixArtTransformer2DModel(**diffusers_config(ours)).eval()
    ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    x, cond = torch.randn(4, 4, 8, 8), _text_cond()
    with torch.no_grad():
        want = ref(
            x,
            encoder_hidden_states=cond.tokens,
            timestep=STEPS,
            encoder_attention_mask=cond.token_mask,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
        got = ours(x, STEPS / 1000, cond)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_diffusers_round_trip_is_identity():
    ours = _randomise(PixArt(**SMALL, pos_embed_scale=0.5))
    sd = ours.state_dict()
    back = from_diffusers_state_dict(to_diffusers_state_dict(sd), input_size=8, pos_embed_scale=0.5)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert "pos_embed" not in from_diffusers_state_dict(to_diffusers_state_dict(sd))


def test_diffusers_conversion_errors():
    with pytest.raises(ValueError, match="class_embedder"):
        to_diffusers_state_dict(PixArt(**SMALL, num_classes=10).state_dict())
    with pytest.raises(ValueError, match="class or control"):
        diffusers_config(PixArt(**SMALL, control_names=["flip"]))
    sd = to_diffusers_state_dict(PixArt(**SMALL).state_dict())
    with pytest.raises(ValueError, match="to_v"):
        from_diffusers_state_dict({k: v for k, v in sd.items() if k != "transformer_blocks.1.attn2.to_v.weight"})
    with pytest.raises(ValueError, match="resolution_embedder"):
        from_diffusers_state_dict({**sd, "adaln_single.emb.resolution_embedder.linear_1.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------- official weights


def _official_layout(sd: dict, context_length: int = 120) -> dict:
    """Our state dict under the names of PixArt-alpha's nets/PixArt.py, plus its null-caption buffer."""
    out = {}
    for key, value in sd.items():
        key = key.replace("t_block.linear.", "t_block.1.").replace("caption_projection.", "y_embedder.y_proj.")
        out[key.replace("modulation.scale_shift_table", "scale_shift_table")] = value
    out["y_embedder.y_embedding"] = torch.randn(context_length, sd["caption_projection.fc1.weight"].shape[1])
    return out


def test_official_key_layout_imports_to_identical_outputs(tmp_path):
    reference, other = _randomise(PixArt(**SMALL, pos_embed_scale=0.5), 0), _randomise(PixArt(**SMALL), 1)
    official = _official_layout(reference.state_dict())
    block = [
        "scale_shift_table", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "cross_attn.q_linear.weight", "cross_attn.q_linear.bias", "cross_attn.kv_linear.weight",
        "cross_attn.kv_linear.bias", "cross_attn.proj.weight", "cross_attn.proj.bias", "mlp.fc1.weight",
        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    top = [
        "pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias", "t_block.1.weight",
        "t_block.1.bias", "y_embedder.y_proj.fc1.weight", "y_embedder.y_proj.fc1.bias", "y_embedder.y_proj.fc2.weight",
        "y_embedder.y_proj.fc2.bias", "y_embedder.y_embedding", "final_layer.scale_shift_table",
        "final_layer.linear.weight", "final_layer.linear.bias",
    ]  # fmt: skip
    assert set(official) == set(top) | {f"blocks.{i}.{k}" for i in range(2) for k in block}

    x, cond = torch.randn(4, 4, 8, 8), _text_cond()
    with torch.no_grad():
        want = reference.eval()(x, STEPS / 1000, cond)
    # A released file: {"state_dict": ...}; the file's pos_embed (scale 0.5) must replace the model's (scale 1).
    path = tmp_path / "PixArt-tiny.pth"
    torch.save({"state_dict": official}, path)
    model = PixArt(**SMALL).eval()
    model.load_state_dict(load_official_checkpoint(path))
    with torch.no_grad():
        assert torch.equal(model(x, STEPS / 1000, cond), want)
    # A training checkpoint: the EMA weights win over "state_dict" unless use_ema=False.
    ckpt = {"state_dict": _official_layout(other.state_dict()), "state_dict_ema": official, "epoch": 3}
    assert torch.equal(load_official_checkpoint(ckpt)["t_block.linear.weight"], reference.t_block.linear.weight)
    assert torch.equal(
        load_official_checkpoint(ckpt, use_ema=False)["t_block.linear.weight"], other.t_block.linear.weight
    )


def test_official_importer_refuses_multiscale_checkpoints():
    official = _official_layout(PixArt(**SMALL).state_dict())
    with pytest.raises(ValueError, match="PixArtMS"):
        load_official_checkpoint({**official, "csize_embedder.mlp.0.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------- behaviour


def test_output_shape_and_zero_at_init():
    model = PixArt(**TINY).eval()
    out = model(torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond())
    assert out.shape == (4, 8, 8, 8) and model.out_channels == 8 and model.patch_size == 2
    assert out.abs().sum() == 0  # zero final layer
    assert PixArt(**TINY, learn_sigma=False)(torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond()).shape == (4, 4, 8, 8)
    assert not hasattr(model, "num_classes") and PixArt(**TINY, num_classes=10).num_classes == 10


def test_masked_tokens_do_not_influence_the_output():
    model = _randomise(PixArt(**SMALL)).eval()
    x, t, cond = torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond()
    edited = cond.tokens.clone()
    edited[~cond.token_mask] = 100.0
    with torch.no_grad():
        a = model(x, t, cond)
        b = model(x, t, Cond(tokens=edited, token_mask=cond.token_mask))
        c = model(x, t, Cond(tokens=edited))  # without a mask the padding is attended to
        empty = model(x, t, Cond(tokens=cond.tokens, token_mask=torch.zeros(4, 7, dtype=torch.bool)))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    assert torch.isfinite(empty).all()


def test_class_enters_as_one_context_token_with_a_null_row():
    model = _randomise(PixArt(**SMALL, num_classes=10)).eval()
    assert model.class_embedder.embedding_table.weight.shape == (11, 32)  # context width, null row last
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    label = torch.tensor([1, 2, 3])
    with torch.no_grad():
        out = model(x, t, Cond(label=label))
        null = model(x, t, Cond(label=label, semantic_null=torch.tensor([True, False, False])))
        other = model(x, t, Cond(label=torch.tensor([4, 2, 3])))
        x_null = model(x[:1], t[:1], Cond(label=torch.tensor([7]), semantic_null=torch.tensor([True])))
    assert (out[0] - null[0]).abs().max() > 1e-4 and torch.equal(out[1:], null[1:])
    assert (out[0] - other[0]).abs().max() > 1e-4
    torch.testing.assert_close(x_null[0], null[0])  # the null row ignores the label
    with pytest.raises(ValueError, match="cond.label"):
        model(x, t, _text_cond(3))


@pytest.mark.parametrize("kind", ["text", "class", "control"])
def test_every_parameter_gets_a_gradient(kind):
    kwargs = {"class": dict(num_classes=10), "control": dict(control_names=["orig_h", "flip"])}.get(kind, {})
    model = _randomise(PixArt(**TINY, **kwargs))
    cond = _text_cond(3)
    if kind == "class":
        cond = Cond(label=torch.tensor([0, 5, 9]), semantic_null=torch.tensor([True, False, False]))
    if kind == "control":
        cond = Cond(tokens=cond.tokens, token_mask=cond.token_mask, control=torch.randn(3, 2),
                    control_null=torch.tensor([False, True, False]))  # fmt: skip
    model(torch.randn(3, 4, 8, 8), torch.rand(3), cond).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_eval_determinism_at_the_tiny_size():
    model = _randomise(PixArt(**TINY)).eval()
    x, t, cond = torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond()
    with torch.no_grad():
        a, b = model(x, t, cond), model(x, t, cond)
    assert torch.equal(a, b) and a.abs().sum() > 0
    torch.manual_seed(3)
    first = PixArt(**TINY).state_dict()
    torch.manual_seed(3)
    second = PixArt(**TINY).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_input_errors():
    model = PixArt(**TINY)
    x, t, cond = torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond()
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(4, 4, 16, 16), t, cond)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        model(x, t[:2], cond)
    with pytest.raises(ValueError, match="float time"):
        model(x, STEPS, cond)
    with pytest.raises(ValueError, match="cond.tokens is None"):
        model(x, t, Cond(label=torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="E=32"):
        model(x, t, _text_cond(width=16))
    with pytest.raises(ValueError, match="divisible"):
        PixArt(**{**TINY, "input_size": 9})


def test_meta_construction_and_materialisation():
    with torch.device("meta"):
        model = PixArt(**TINY, pos_embed_scale=0.5)
    model.to_empty(device="cpu")
    model.initialize_weights()
    table = torch.from_numpy(get_2d_sincos_pos_embed(128, 4, scale=0.5)).float()
    assert torch.equal(model.pos_embed[0], table)
    assert model(torch.randn(4, 4, 8, 8), torch.rand(4), _text_cond()).abs().sum() == 0


def test_pos_embed_scale_divides_the_positions():
    plain, half = get_2d_sincos_pos_embed(8, 4), get_2d_sincos_pos_embed(8, 4, scale=0.5)
    # Token (row 1, column 1) at scale 0.5 sits where token (row 2, column 2) sits at scale 1.
    assert half[1 * 4 + 1] == pytest.approx(plain[2 * 4 + 2])
    with pytest.raises(ValueError, match="positive"):
        get_2d_sincos_pos_embed(8, 4, scale=0.0)


def test_adaln_single_names_the_reference_rows():
    shared_layer, table, final = AdaLNSingle(8), ModulationTable(8), FinalModulationTable(8)
    c = torch.randn(2, 8)
    shared = shared_layer(c)
    assert shared.shape == (2, 6, 8)
    rows = (table.scale_shift_table[None] + shared).chunk(6, dim=1)  # the reference's 6-way unpacking
    mods = table(shared)
    for got, want in zip(
        (mods["attn"].shift, mods["attn"].scale, mods["attn"].gate, mods["mlp"].shift, mods["mlp"].scale,
         mods["mlp"].gate), rows, strict=True
    ):  # fmt: skip
        assert torch.equal(got, want)
    out = final(c)
    assert torch.equal(out.shift[:, 0], final.scale_shift_table[0] + c)
    assert torch.equal(out.scale[:, 0], final.scale_shift_table[1] + c)
    with pytest.raises(ValueError, match="shared modulation"):
        table(torch.randn(2, 4, 8))


def test_cross_attention_matches_the_masked_softmax_formula():
    layer, x, context = CrossAttention(16, 4), torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    q = layer.q_linear(x).view(2, 5, 4, 4).transpose(1, 2)
    k, v = layer.kv_linear(context).view(2, 3, 2, 4, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~mask[:, None, None], float("-inf"))
    expected = layer.proj((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(layer(x, context, mask), expected)


# ------------------------------------------------------------------------------------------------- the recipe module


def _module(conditioner, **kwargs):
    from baselines.pixart_alpha import PixArtModule
    from benchmark.objectives import RectifiedFlow
    from benchmark.samplers import EulerSampler
    from data.autoencoder import Autoencoder

    kwargs = {"objective": RectifiedFlow(), "sampler": EulerSampler(steps=2), **kwargs}
    return PixArtModule(
        size="PixArt-tiny/2",
        conditioner=conditioner,
        autoencoder=Autoencoder(),
        resolution=32,
        num_classes=10,
        **kwargs,
    )


def test_module_class_conditional_recipe_defaults():
    from conditioning.conditioner import Conditioner

    module = _module(Conditioner(semantic="class"))
    backbone = module.backbone
    assert backbone.num_classes == 10 and backbone.class_embedder.embedding_table.weight.shape == (11, 128)
    assert backbone.pos_embed_scale == 32 / 512  # the released models' rule: resolution / 512
    assert backbone.out_channels == 4 and not backbone.learn_sigma  # follows the rectified-flow objective
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["eps"]) == (0.03, 1e-10)
    assert group["lr"] == pytest.approx(2e-8)  # step 0 of the 1000-step warm-up
    for _ in range(999):
        optimizer.step()
        scheduler.step()
    assert group["lr"] == pytest.approx(2e-5)
    optimizer.step()
    scheduler.step()
    assert group["lr"] == pytest.approx(2e-5)


def test_module_caption_conditional_reads_the_context_width(tmp_path):
    from transformers import T5Config

    from conditioning.conditioner import Conditioner
    from conditioning.text import TextEncoder

    T5Config(vocab_size=100, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3).save_pretrained(tmp_path)
    encoder = TextEncoder(str(tmp_path), kind="t5", max_length=6)
    module = _module(Conditioner(semantic="caption", text_encoders={"t5": encoder}), pos_embed_scale=1.0)
    assert module.backbone.context_dim == 24 and not hasattr(module.backbone, "num_classes")
    assert module.backbone.pos_embed_scale == 1.0
    batch = {
        "image": torch.rand(2, 3, 32, 32) * 2 - 1,
        "caption": ["a", "b"],
        "text": {"t5": {"tokens": torch.randn(2, 6, 24), "mask": torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]]).bool()}},
    }
    losses = module.training_loss(batch)
    assert torch.isfinite(losses["loss"])
    with pytest.raises(ValueError, match="cross-attention"):
        _module(Conditioner(semantic="none"))


def test_module_initialises_from_an_official_checkpoint(tmp_path):
    from conditioning.conditioner import Conditioner

    reference = _module(Conditioner(semantic="class"))
    _randomise(reference.backbone)
    path = tmp_path / "PixArt-tiny.pth"
    torch.save({"state_dict": _official_layout(reference.backbone.state_dict())}, path)
    loaded = _module(Conditioner(semantic="class"), init_from=str(path))
    for name, value in reference.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], value)
        assert torch.equal(loaded.ema.shadow.state_dict()[name], value)


# ------------------------------------------------------------------------------------------------- the YAML entries


def _described_module(config):
    import warnings

    from benchmark.cli import CLI_KWARGS, _DescribeCLI

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=["--config", str(config)], run=False).model


def test_shapes_entry_costs_within_25_percent_of_the_dit_entry():
    from benchmark.flops import train_flops_per_sample

    pixart = train_flops_per_sample(_described_module("leaderboards/shapes/pixart_alpha.yaml"))
    dit = train_flops_per_sample(_described_module("leaderboards/shapes/dit.yaml"))
    assert 0.75 <= pixart / dit <= 1.25


def test_reference_config_describes_as_the_released_model(tmp_path):
    from transformers import T5Config

    # The T5-XXL config (its width is all that is read), written locally so that the test runs offline.
    T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64).save_pretrained(tmp_path / "t5")
    text = open("leaderboards/reference/pixart_alpha_xl_2.yaml").read()
    assert "pretrained: google/t5-v1_1-xxl" in text
    config = tmp_path / "reference.yaml"
    config.write_text(text.replace("google/t5-v1_1-xxl", str(tmp_path / "t5")))
    described = _described_module(config).describe()
    assert described["params"] == XL_PARAMS
    assert described["gmacs_per_forward"] == pytest.approx(XL_GMACS, abs=0.01)
