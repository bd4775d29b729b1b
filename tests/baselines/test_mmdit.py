"""baselines.mmdit: reference counts and cost, parity with diffusers' SD3Transformer2DModel, structure, gradients."""

import contextlib
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from baselines.layers import get_2d_sincos_pos_embed
from baselines.mmdit import (
    SIZES,
    JointBlock,
    MMDiT,
    MMDiTModule,
    diffusers_config,
    from_diffusers_state_dict,
    mmdit_size,
    to_diffusers_state_dict,
)
from conditioning import ClassEmbedder, Cond
from conditioning.conditioner import Conditioner

TEXT = dict(input_size=8, in_channels=4, context_dim=32, pooled_dim=24, **mmdit_size("mmDiT-tiny/2"))
CLASS = dict(input_size=8, in_channels=4, num_classes=10, **mmdit_size("mmDiT-tiny/2"))
SD3 = dict(context_dim=4096, pooled_dim=2048)  # T5-XXL tokens; CLIP-L (768) + CLIP-G (1280) pooled


def _meta(name: str, **kwargs) -> MMDiT:
    with torch.device("meta"):
        return MMDiT(**mmdit_size(name), **kwargs)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _text_cond(n: int = 3, length: int = 5, device: str = "cpu", **fields) -> Cond:
    return Cond(tokens=torch.randn(n, length, 32, device=device), pooled=torch.randn(n, 24, device=device), **fields)


def _class_cond(n: int = 3, **fields) -> Cond:
    return Cond(label=torch.arange(n) % 10, **fields)


def _randomised(model: MMDiT, seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    with torch.no_grad():  # away from the zero init, which would make every comparison 0 == 0
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


# ------------------------------------------------------------------------------------------- counts and cost


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("SD3-medium", dict(in_channels=16, pos_embed_max_size=192), 2_028_328_000),  # released SD3-medium
        ("mmDiT-XL/2", dict(in_channels=4), 1_334_151_952),  # DiT-XL sizing, 4-channel latent
        ("SD3-d18", dict(in_channels=4), 856_048_912),  # SD3's depth rule at width 1152
    ],
)
def test_reference_parameter_counts(name, kwargs, expected):
    assert _count(_meta(name, input_size=32, **SD3, **kwargs)) == expected


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_counts_like_diffusers(name):
    diffusers = pytest.importorskip("diffusers")
    ours = _meta(name, input_size=32, in_channels=16, **SD3)
    with torch.device("meta"):
        ref = diffusers.SD3Transformer2DModel(**diffusers_config(ours))
    assert _count(ours) == _count(ref)


@pytest.mark.parametrize(
    ("name", "channels", "text_tokens", "gmacs"),
    [("mmDiT-XL/2", 4, 120, 176.4), ("SD3-medium", 16, 333, 421.5), ("SD3-d18", 4, 120, 113.1)],
)
def test_gmacs_at_256(name, channels, text_tokens, gmacs):
    model = _meta(name, input_size=32, in_channels=channels, **SD3)
    x, t = torch.zeros(1, channels, 32, 32, device="meta"), torch.full((1,), 0.5, device="meta")
    cond = Cond(tokens=torch.zeros(1, text_tokens, 4096, device="meta"), pooled=torch.zeros(1, 2048, device="meta"))
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond)
    assert counter.get_total_flops() / 2e9 == pytest.approx(gmacs, abs=0.1)


def test_size_errors_list_valid_names():
    with pytest.raises(ValueError, match="mmDiT-XL/2"):
        mmdit_size("mmDiT-XXL/2")


# ------------------------------------------------------------------------------------------------ diffusers


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("pos_embed_max_size", [None, 8])
def test_matches_diffusers_sd3_transformer(qk_norm, pos_embed_max_size):
    diffusers = pytest.importorskip("diffusers")
    ours = _randomised(MMDiT(**TEXT, qk_norm=qk_norm, pos_embed_max_size=pos_embed_max_size))
    ref = diffusers.SD3Transformer2DModel(**diffusers_config(ours)).eval()
    ref.load_state_dict(to_diffusers_state_dict(ours.state_dict(), pos_embed_max_size), strict=True)
    x, t, cond = torch.randn(3, 4, 8, 8), torch.tensor([0.02, 0.5, 0.97]), _text_cond()
    with torch.no_grad():
        want = ref(x, encoder_hidden_states=cond.tokens, pooled_projections=cond.pooled, timestep=t * 1000).sample
        got = ours(x, t, cond)
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and back: diffusers' weights into a fresh model give the same outputs
    fresh = MMDiT(**TEXT, qk_norm=qk_norm, pos_embed_max_size=pos_embed_max_size).eval()
    fresh.load_state_dict(from_diffusers_state_dict(ref.state_dict(), input_size=8), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, cond), want, atol=1e-5, rtol=1e-5)


def test_diffusers_round_trip_is_identity():
    sd = _randomised(MMDiT(**TEXT, qk_norm=True)).state_dict()
    back = from_diffusers_state_dict(to_diffusers_state_dict(sd), input_size=8)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert "pos_embed" not in from_diffusers_state_dict(to_diffusers_state_dict(sd))


def test_diffusers_conversion_errors():
    with pytest.raises(ValueError, match="text-conditioned"):
        to_diffusers_state_dict(MMDiT(**CLASS).state_dict())
    with pytest.raises(ValueError, match="text-conditioned"):
        to_diffusers_state_dict(MMDiT(**TEXT, control_names=["flip"]).state_dict())
    sd = to_diffusers_state_dict(MMDiT(**TEXT).state_dict())
    with pytest.raises(ValueError, match="missing.*ff_context"):
        from_diffusers_state_dict({k: v for k, v in sd.items() if "transformer_blocks.0.ff_context.net.2" not in k})
    with pytest.raises(ValueError, match="unknown.*to_add_out"):  # the last context block is pre-only
        from_diffusers_state_dict({**sd, "transformer_blocks.3.attn.to_add_out.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------ structure


def test_output_shapes_and_zero_at_init():
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    out = MMDiT(**TEXT)(x, t, _text_cond())
    assert out.shape == (3, 4, 8, 8) and out.abs().sum() == 0  # zero output layer
    assert MMDiT(**CLASS, learn_sigma=True)(x, t, _class_cond()).shape == (3, 8, 8, 8)
    assert MMDiT(**CLASS, class_tokens=3).class_embedder(_class_cond()).shape == (3, 3, 128)


def test_last_context_block_is_pre_only():
    model = MMDiT(**TEXT)
    last, first = model.joint_blocks[-1], model.joint_blocks[0]
    assert last.context_pre_only and not any(b.context_pre_only for b in model.joint_blocks[:-1])
    assert last.context_block.attn.proj is None and not hasattr(last.context_block, "mlp")
    assert last.context_block.adaLN_modulation.linear.out_features == 2 * 128  # shift and scale only
    assert first.context_block.adaLN_modulation.linear.out_features == 6 * 128
    block = _randomised(JointBlock(32, 4, context_pre_only=True))
    context, x = block(torch.randn(2, 3, 32), torch.randn(2, 5, 32), torch.randn(2, 32))
    assert context is None and x.shape == (2, 5, 32)


def test_attention_is_joint_and_streams_have_their_own_weights():
    block = _randomised(JointBlock(32, 4))
    assert block.context_block.attn.qkv.weight.data_ptr() != block.x_block.attn.qkv.weight.data_ptr()
    context, x, c = torch.randn(2, 3, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    new_context, new_x = block(context, x, c)
    assert not torch.allclose(new_x, block(context + torch.randn_like(context), x, c)[1])  # image attends to context
    assert not torch.allclose(new_context, block(context, x + torch.randn_like(x), c)[0])  # and context to image


def test_class_enters_context_and_adaln_unless_disabled():
    model = _randomised(MMDiT(**CLASS))
    t, a, b = torch.rand(2), Cond(label=torch.tensor([1, 1])), Cond(label=torch.tensor([1, 2]))
    assert not torch.allclose(model.embed_vector(t, a)[1], model.embed_vector(t, b)[1])
    attention_only = _randomised(MMDiT(**CLASS, semantic_in_adaln=False))
    assert attention_only.y_embedder is None
    torch.testing.assert_close(attention_only.embed_vector(t, a), attention_only.embed_vector(t, b))
    x = torch.randn(2, 4, 8, 8)
    assert not torch.allclose(attention_only(x, t, a)[1], attention_only(x, t, b)[1])
    dropped = Cond(label=torch.tensor([3, 7]), semantic_null=torch.tensor([True, True]))
    torch.testing.assert_close(model.embed_context(dropped)[0][0], model.embed_context(dropped)[0][1])


@pytest.mark.parametrize("mask_context", [False, True])
def test_padding_tokens_are_attended_unless_masked(mask_context):
    model = _randomised(MMDiT(**TEXT, mask_context=mask_context))
    x, t, cond = torch.randn(2, 4, 8, 8), torch.rand(2), _text_cond(2, token_mask=torch.tensor([[1, 1, 0, 0, 0]] * 2))
    padded = Cond(**{**cond.__dict__, "tokens": torch.cat([cond.tokens[:, :2], torch.randn(2, 3, 32)], 1)})
    with torch.no_grad():
        same = torch.allclose(model(x, t, cond), model(x, t, padded), atol=1e-6)
    assert same == mask_context  # SD3 attends to padding; the option masks it


def test_position_table_is_centre_cropped():
    model = MMDiT(**TEXT, pos_embed_max_size=6)
    table = torch.from_numpy(get_2d_sincos_pos_embed(128, 6)).float().view(6, 6, 128)
    assert torch.equal(model.cropped_pos_embed(4, 4)[0], table[1:5, 1:5].reshape(16, 128))
    assert torch.equal(model.cropped_pos_embed(2, 6)[0], table[2:4, :].reshape(12, 128))
    assert _randomised(model)(torch.randn(2, 4, 4, 12), torch.rand(2), _text_cond(2)).shape == (2, 4, 4, 12)
    with pytest.raises(ValueError, match="exceeds"):
        model.cropped_pos_embed(7, 2)
    fixed = MMDiT(**TEXT)
    assert torch.equal(fixed.pos_embed[0], torch.from_numpy(get_2d_sincos_pos_embed(128, 4)).float())
    assert not any(p is fixed.pos_embed for p in fixed.parameters())  # a buffer: not counted, not trained


@pytest.mark.parametrize("kind", ["text", "class", "class+control+qknorm"])
def test_every_parameter_gets_a_gradient(kind):
    if kind == "text":
        model, cond = MMDiT(**TEXT), _text_cond()
    else:
        extra = dict(control_names=["orig_h", "flip"], qk_norm=True) if "control" in kind else {}
        model = MMDiT(**CLASS, **extra)
        control = dict(control=torch.randn(3, 2), control_null=torch.tensor([True, False, False])) if extra else {}
        cond = _class_cond(**control)
    model(torch.randn(3, 4, 8, 8), torch.rand(3), cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_eval_determinism_with_random_weights():
    model = _randomised(MMDiT(**CLASS, class_tokens=2))
    x, t, cond = torch.randn(3, 4, 8, 8), torch.rand(3), _class_cond()
    a, b = model(x, t, cond), model(x, t, cond)
    assert torch.equal(a, b) and a.abs().sum() > 0
    again = _randomised(MMDiT(**CLASS, class_tokens=2))
    assert torch.equal(again(x, t, cond), a)


def test_meta_construction_and_materialisation():
    with torch.device("meta"):
        model = MMDiT(**TEXT)
    out = model(torch.zeros(2, 4, 8, 8, device="meta"), torch.rand(2, device="meta"), _text_cond(2, device="meta"))
    assert out.shape == (2, 4, 8, 8)
    model.to_empty(device="cpu")
    model.initialize_weights()
    torch.testing.assert_close(model.pos_embed, MMDiT(**TEXT).pos_embed)


def test_input_errors():
    model, x, t = MMDiT(**TEXT), torch.randn(3, 4, 8, 8), torch.rand(3)
    with pytest.raises(ValueError, match="built for inputs"):
        model(torch.randn(3, 4, 16, 16), t, _text_cond())
    with pytest.raises(ValueError, match="float time"):
        model(x, torch.tensor([1, 500, 999]), _text_cond())
    with pytest.raises(ValueError, match="cond.tokens"):
        model(x, t, Cond(pooled=torch.randn(3, 24)))
    with pytest.raises(ValueError, match="cond.pooled"):
        model(x, t, Cond(tokens=torch.randn(3, 5, 32)))
    with pytest.raises(ValueError, match="cond.label"):
        MMDiT(**CLASS)(x, t, _text_cond())
    with pytest.raises(ValueError, match="semantic condition"):
        MMDiT(**{**TEXT, "context_dim": None})


# ------------------------------------------------------------------------------------------ module and configs

ROOT = Path(__file__).resolve().parents[2]


def _configured(path: str, meta: bool = True):
    """The model of a YAML config, built like ``describe`` does (on the meta device unless ``meta`` is False)."""
    from benchmark.cli import CLI_KWARGS, _DescribeCLI

    with torch.device("meta") if meta else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=["--config", path], run=False).model


def test_sd3_medium_config_describes_as_the_released_model(monkeypatch):
    from benchmark.cli import describe

    monkeypatch.chdir(ROOT)  # the config names its config-only text encoder folders relative to the repository
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = describe(["--config", "leaderboards/reference/sd3-medium.yaml"])
    assert info["params"] == 2_028_328_000 and info["latent_shape"] == [16, 32, 32]
    assert info["gmacs_per_forward"] == pytest.approx(421.5, abs=0.1)  # 256 image + 77 CLIP + 256 T5 tokens


def test_imagenet_config_is_class_conditional_xl2():
    model = _configured(str(ROOT / "leaderboards/imagenet-256/mmdit_xl_2.yaml"))
    backbone = model.backbone
    assert (backbone.depth, backbone.hidden_size, backbone.num_heads, backbone.num_classes) == (28, 1152, 16, 1000)
    assert backbone.class_embedder.num_tokens == 1 and isinstance(backbone.y_embedder, ClassEmbedder)
    assert _count(backbone) == 1_328_049_808  # the text-conditioned XL/2 above has 1,334,151,952


def test_shapes_entry_costs_within_a_quarter_of_dit():
    from benchmark.flops import train_flops_per_sample

    flops = {
        name: train_flops_per_sample(_configured(str(ROOT / f"leaderboards/shapes/{name}.yaml"), meta=False))
        for name in ("dit", "mmdit")
    }
    assert 0.75 <= flops["mmdit"] / flops["dit"] <= 1.25


def _shapes_batch(n: int = 4) -> dict:
    from data.shapes import Shapes

    items = [Shapes("train", 32, 16)[i] for i in range(n)]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "class_label": torch.stack([torch.as_tensor(it["class_label"]) for it in items]),
        "caption": [it["caption"] for it in items],
    }


def test_class_module_builds_from_the_conditioner_and_trains():
    from data.autoencoder import Autoencoder

    conditioner = Conditioner(semantic="class", control_names=["flip"])
    module = MMDiTModule(size="mmDiT-tiny/2", resolution=32, num_classes=10, autoencoder=Autoencoder(),
                         conditioner=conditioner)  # fmt: skip
    backbone = module.backbone
    assert (backbone.num_classes, backbone.out_channels, backbone.context_dim) == (10, 4, None)
    assert backbone.control_embedder.names == ("flip",) and module.ema.shadow.num_classes == 10
    batch = {**_shapes_batch(), "control": {"flip": torch.tensor([0.0, 1.0, 0.0, 1.0])}}
    loss = module.training_loss(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in backbone.parameters())
    with pytest.raises(ValueError, match="semantic"):
        MMDiTModule(size="mmDiT-tiny/2", resolution=32, autoencoder=Autoencoder(), conditioner=Conditioner("none"))
    with pytest.raises(ValueError, match="valid sizes"):
        MMDiTModule(size="mmDiT-H/2")


def test_caption_module_reads_the_text_encoders(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from conditioning.text import TextEncoder
    from data.autoencoder import Autoencoder
    from tests.conditioning.test_text import CLIP_KW, PAD, _tokenizer

    torch.manual_seed(0)
    encoders = {}
    for name, model, template, kind in [
        ("clip", CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_KW)), "<s> $A </s>", "clip"),
        ("t5", T5EncoderModel(T5Config(vocab_size=1000, d_model=40, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                       pad_token_id=PAD)), "$A </s>", "t5"),
    ]:  # fmt: skip
        model.save_pretrained(tmp_path / name)
        _tokenizer(template).save_pretrained(tmp_path / name)
        encoders[name] = TextEncoder(str(tmp_path / name), kind=kind, max_length=6, hidden_state="penultimate")
    conditioner = Conditioner(semantic="caption", text_encoders=encoders, text_dropout={"clip": 0.5})
    module = MMDiTModule(size="mmDiT-tiny/2", resolution=32, autoencoder=Autoencoder(), conditioner=conditioner)
    # SD3's layout: CLIP states zero-padded to T5's width, the sequences concatenated; CLIP's pooled vector in c.
    assert (module.backbone.context_dim, module.backbone.pooled_dim) == (40, 16)
    assert module.backbone.num_classes is None
    assert torch.isfinite(module.training_loss(_shapes_batch())["loss"])
