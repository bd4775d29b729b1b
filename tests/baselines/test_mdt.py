import inspect
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from baselines.dit import DiTModule
from baselines.mdt import SIZES, MDTModule, MDTv2, RelPosAttention, load_official_checkpoint, mdt_optimizer, mdt_size
from benchmark.flops import train_gflops_per_image
from benchmark.objectives import DDPM, RectifiedFlow
from benchmark.samplers import DDIMSampler, EulerSampler
from conditioning import Cond
from data.autoencoder import Autoencoder

# Exact counts of the reference models.py (sail-sg/MDT 7d26c21, MDTv2_*_2 with mask_ratio set) at 256² (32x32
# latent), 1000 classes, learned Σ, decode_layer 6 for S (run.sh) and 4 otherwise. L/2 is not in the reference's
# scripts; its count was read off the reference's own MDTv2_L_2(decode_layer=4).
ANCHOR_PARAMS = {
    "MDTv2-S/2": 38_454_872,
    "MDTv2-B/2": 150_931_856,
    "MDTv2-L/2": 507_015_776,
    "MDTv2-XL/2": 742_263_904,
}
ANCHOR_GMACS = {"MDTv2-S/2": 6.74, "MDTv2-B/2": 25.42, "MDTv2-XL/2": 129.49}
TINY = dict(input_size=8, in_channels=4, num_classes=10, **mdt_size("MDTv2-tiny/2"))


def _meta_mdt(name: str, **kwargs) -> MDTv2:
    with torch.device("meta"):
        return MDTv2(**mdt_size(name), **kwargs)


def _inputs(n: int = 3, device: str = "cpu"):
    x = torch.randn(n, 4, 8, 8, device=device)
    t = torch.rand(n, device=device)
    return x, t, Cond(label=torch.arange(n, device=device) % 10)


def _random_weights(model: MDTv2) -> MDTv2:
    with torch.no_grad():  # move off the zero-initialised adaLN / output layers so that every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _record(modules, store):
    """Forward hooks that append (args, kwargs, output) of each call, keyed by module name."""
    handles = []
    for name, module in modules.items():

        def hook(mod, args, kwargs, out, name=name):
            store.setdefault(name, []).append((args, kwargs, out))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    return handles


@pytest.mark.parametrize("name", list(ANCHOR_PARAMS))
def test_parameter_count_matches_the_reference(name):
    model = _meta_mdt(name)
    assert sum(p.numel() for p in model.parameters()) == ANCHOR_PARAMS[name]
    assert all(p.requires_grad for p in model.parameters())  # learnable position tables and mask token


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_matches_the_closed_form(name):
    s = SIZES[name]
    d, p, c, depth, heads, dec = s["hidden_size"], s["patch_size"], 4, s["depth"], s["num_heads"], s["decode_layer"]
    g = 32 // p
    half = (depth - dec) // 2
    blocks = 2 * half + dec + 1  # encoder in + out, decoder, side-interpolater
    dit_block = 18 * d * d + 15 * d
    rel_bias = ((2 * g - 1) ** 2 + 3) * heads
    expected = (
        blocks * (dit_block + rel_bias)
        + (half + dec) * (2 * d * d + d)  # skip linears
        + (p * p * c * d + d)
        + (d * d + 258 * d)
        + 1001 * d
        + 2 * g * g * d  # pos_embed and decoder_pos_embed
        + d  # mask token
        + (2 * d * d + 2 * d + 2 * p * p * c * d + 2 * p * p * c)
    )
    assert sum(q.numel() for q in _meta_mdt(name).parameters()) == expected


@pytest.mark.parametrize("name", list(ANCHOR_GMACS))
def test_unmasked_gmacs_on_meta(name):
    model = _meta_mdt(name)
    x, t = torch.zeros(1, 4, 32, 32, device="meta"), torch.full((1,), 0.5, device="meta")
    cond = Cond(label=torch.zeros(1, dtype=torch.long, device="meta"))
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond)
    assert counter.get_total_flops() / 2e9 == pytest.approx(ANCHOR_GMACS[name], abs=0.01)
    if name != "MDTv2-S/2":
        return
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond, mask_ratio=0.5)  # the encoder runs on 128 of 256 tokens, the side block on all 256
    assert counter.get_total_flops() / 2e9 < ANCHOR_GMACS[name]


def test_mdt_size_errors_list_valid_names():
    with pytest.raises(ValueError, match="MDTv2-XL/2"):
        mdt_size("MDTv2-XXL/2")
    mdt_size("MDTv2-XL/2")["depth"] = 1
    assert SIZES["MDTv2-XL/2"]["depth"] == 28


def test_block_layout_of_xl():
    model = _meta_mdt("MDTv2-XL/2")
    assert (len(model.en_inblocks), len(model.en_outblocks), len(model.de_blocks), len(model.sideblocks)) == (
        12,
        12,
        4,
        1,
    )
    with_skip = [b.skip_linear is not None for b in model.blocks()]
    assert with_skip == [False] * 12 + [True] * 12 + [False] + [True] * 4
    small = _meta_mdt("MDTv2-S/2")
    assert (len(small.en_inblocks), len(small.de_blocks)) == (3, 6)


def test_output_shape_and_zero_at_init():
    model = MDTv2(**TINY)
    x, t, cond = _inputs()
    assert model(x, t, cond).shape == (3, 8, 8, 8) and model.out_channels == 8
    assert model(x, t, cond, mask_ratio=0.4).abs().sum() == 0  # zero final layer
    assert MDTv2(**TINY, learn_sigma=False)(x, t, cond).shape == (3, 4, 8, 8)


def test_encoder_sees_fewer_tokens_and_decoder_the_full_sequence_when_masked():
    model = _random_weights(MDTv2(**TINY))
    calls = {}
    groups = {"in": model.en_inblocks[0], "out": model.en_outblocks[0], "side": model.sideblocks[0]}
    handles = _record({**groups, "dec": model.de_blocks[0]}, calls)
    x, t, cond = _inputs()
    model(x, t, cond, mask_ratio=0.4)
    keep = int(16 * 0.6)  # 9 of the 16 tokens of an 8x8 latent with patch 2
    assert calls["in"][0][0][0].shape == (3, keep, 88) and calls["out"][0][0][0].shape == (3, keep, 88)
    assert calls["side"][0][0][0].shape == (3, 16, 88)  # the side-interpolater restores the full sequence
    assert calls["dec"][0][0][0].shape == (3, 16, 88)
    calls.clear()
    model(x, t, cond)  # inference: nothing masked, no side-interpolater
    assert calls["in"][0][0][0].shape == (3, 16, 88) and "side" not in calls
    for h in handles:
        h.remove()


def test_inference_is_unmasked_and_draws_no_randomness():
    model = _random_weights(MDTv2(**TINY)).eval()
    x, t, cond = _inputs()
    state = torch.get_rng_state()
    a = model(x, t, cond)
    assert torch.equal(torch.get_rng_state(), state)  # no mask was drawn
    assert torch.equal(a, model(x, t, cond))
    torch.manual_seed(1)
    m1 = model(x, t, cond, mask_ratio=0.4)
    torch.manual_seed(2)
    m2 = model(x, t, cond, mask_ratio=0.4)
    assert not torch.allclose(m1, a) and not torch.allclose(m1, m2)  # masking changes the output, per draw


def test_skips_are_wired_as_in_the_reference():
    model = _random_weights(MDTv2(**{**TINY, "depth": 6}))  # 2 encoder-in, 2 encoder-out, 2 decoder blocks
    calls = {}
    named = {f"in{i}": b for i, b in enumerate(model.en_inblocks)}
    named |= {f"out{i}": b for i, b in enumerate(model.en_outblocks)}
    named |= {f"dec{i}": b for i, b in enumerate(model.de_blocks)}
    named["embed"] = model.x_embedder
    handles = _record(named, calls)
    x, t, cond = _inputs()
    model(x, t, cond, mask_ratio=0.3)
    # Encoder: U-Net order, the last encoder-in output feeds the first encoder-out block.
    assert torch.equal(calls["out0"][0][1]["skip"], calls["in1"][0][2])
    assert torch.equal(calls["out1"][0][1]["skip"], calls["in0"][0][2])
    # Decoder: every block fuses the *unmasked* input tokens (patch embedding + pos_embed), even in a masked pass.
    tokens = calls["embed"][0][2] + model.pos_embed
    for i in range(2):
        assert torch.equal(calls[f"dec{i}"][0][1]["skip"], tokens)
    for h in handles:
        h.remove()


def test_side_interpolater_only_replaces_the_masked_tokens():
    model = _random_weights(MDTv2(**TINY))
    n, t, d = 2, 16, 88
    kept = torch.randn(n, 10, d)
    ids_shuffle = torch.stack([torch.randperm(t) for _ in range(n)])
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, t)
    mask[:, :10] = 0
    mask = torch.gather(mask, 1, ids_restore)
    c = torch.randn(n, d)
    out = model.side_interpolater(kept, c, mask, ids_restore)
    assert out.shape == (n, t, d)
    for b in range(n):
        keep_pos = ids_shuffle[b, :10]
        torch.testing.assert_close(out[b, keep_pos], kept[b] + model.decoder_pos_embed[0, keep_pos])
        full = torch.cat([kept[b], model.mask_token[0].expand(6, d)])[ids_restore[b]] + model.decoder_pos_embed[0]
        masked = ids_shuffle[b, 10:]
        side = model.sideblocks[0](full[None], c[b : b + 1])[0]
        torch.testing.assert_close(out[b, masked], side[masked])


def test_relative_position_attention_matches_the_softmax_formula():
    attn, x = RelPosAttention(16, 4, grid_size=3), torch.randn(2, 9, 16)
    ids_keep = torch.tensor([[0, 4, 8, 2], [7, 1, 3, 5]])
    table = attn.rel_pos_bias.relative_position_bias_table
    for ids in (None, ids_keep):
        tokens = x if ids is None else torch.gather(x, 1, ids[:, :, None].expand(2, 4, 16))
        pos = torch.arange(9).expand(2, 9) if ids is None else ids
        rows, cols = pos // 3, pos % 3
        # BEiT index: (dy + g - 1) * (2g - 1) + (dx + g - 1), written out per pair.
        index = (rows[:, :, None] - rows[:, None, :] + 2) * 5 + (cols[:, :, None] - cols[:, None, :] + 2)
        bias = table[index].permute(0, 3, 1, 2)
        n, k = tokens.shape[:2]
        q, kk, v = attn.qkv(tokens).view(n, k, 3, 4, 4).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ kk.transpose(-1, -2) / 2.0 + bias, dim=-1)
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(n, k, 16))
        torch.testing.assert_close(attn(tokens, ids_keep=ids), expected)


def test_every_parameter_gets_a_gradient_from_the_masked_and_full_losses():
    model = MDTv2(**TINY, control_names=["flip"])
    x, t, _ = _inputs()
    cond = Cond(label=torch.tensor([1, 2, 3]), control=torch.randn(3, 1), control_null=torch.tensor([1, 0, 0]).bool())
    (model(x, t, cond).square().mean() + model(x, t, cond, mask_ratio=0.4).square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_determinism_at_the_tiny_size():
    torch.manual_seed(0)
    a = _random_weights(MDTv2(**TINY))
    torch.manual_seed(0)
    b = _random_weights(MDTv2(**TINY))
    x, t, cond = _inputs()
    torch.manual_seed(3)
    out_a = a(x, t, cond, mask_ratio=0.35)
    torch.manual_seed(3)
    out_b = b(x, t, cond, mask_ratio=0.35)
    assert torch.equal(out_a, out_b) and out_a.abs().sum() > 0


def test_input_errors():
    model = MDTv2(**TINY)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(3, 4, 16, 16), t, cond)
    with pytest.raises(ValueError, match="float time"):
        model(x, torch.tensor([1, 500, 999]), cond)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(x, t, cond, mask_ratio=1.0)
    with pytest.raises(ValueError, match="decode_layer"):
        MDTv2(**{**TINY, "decode_layer": 4})


def test_meta_construction_and_materialisation():
    with torch.device("meta"):
        model = MDTv2(**TINY)
    x, t, cond = _inputs(device="meta")
    assert model(x, t, cond, mask_ratio=0.4).shape == (3, 8, 8, 8)
    model.to_empty(device="cpu")
    model.initialize_weights()
    reference = MDTv2(**TINY)
    torch.testing.assert_close(model.pos_embed, reference.pos_embed)
    idx = "en_inblocks.0.attn.rel_pos_bias.relative_position_index"
    assert torch.equal(model.get_buffer(idx), reference.get_buffer(idx))


# ----------------------------------------------------------------------------------------- official checkpoints


def _official_state_dict(depth=4, decode=2, d=88, heads=4, g=4, p=2, c=4, classes=10, seed=0):
    """A random state dict in the layout of sail-sg/MDT's ``MDTv2`` (names of its modules, written out here)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    t = g * g
    rel_index = torch.empty(t, t, dtype=torch.long)
    for i in range(t):
        for j in range(t):
            rel_index[i, j] = (i // g - j // g + g - 1) * (2 * g - 1) + (i % g - j % g + g - 1)
    sd = {
        "pos_embed": rnd(1, t, d),
        "decoder_pos_embed": rnd(1, t, d),
        "mask_token": rnd(1, 1, d),
        "x_embedder.proj.weight": rnd(d, c, p, p),
        "x_embedder.proj.bias": rnd(d),
        "t_embedder.mlp.0.weight": rnd(d, 256),
        "t_embedder.mlp.0.bias": rnd(d),
        "t_embedder.mlp.2.weight": rnd(d, d),
        "t_embedder.mlp.2.bias": rnd(d),
        "y_embedder.embedding_table.weight": rnd(classes + 1, d),
        "final_layer.linear.weight": rnd(p * p * 2 * c, d),
        "final_layer.linear.bias": rnd(p * p * 2 * c),
        "final_layer.adaLN_modulation.1.weight": rnd(2 * d, d),
        "final_layer.adaLN_modulation.1.bias": rnd(2 * d),
    }
    half = (depth - decode) // 2
    for group, count, skip in (("en_inblocks", half, 0), ("en_outblocks", half, 1), ("de_blocks", decode, 1)) + (
        ("sideblocks", 1, 0),
    ):
        for i in range(count):
            b = f"{group}.{i}."
            sd |= {b + "attn.qkv.weight": rnd(3 * d, d), b + "attn.qkv.bias": rnd(3 * d)}
            sd |= {b + "attn.proj.weight": rnd(d, d), b + "attn.proj.bias": rnd(d)}
            sd[b + "attn.rel_pos_bias.relative_position_bias_table"] = rnd((2 * g - 1) ** 2 + 3, heads)
            sd[b + "attn.rel_pos_bias.relative_position_index"] = rel_index.clone()
            sd |= {b + "mlp.fc1.weight": rnd(4 * d, d), b + "mlp.fc1.bias": rnd(4 * d)}
            sd |= {b + "mlp.fc2.weight": rnd(d, 4 * d), b + "mlp.fc2.bias": rnd(d)}
            sd |= {b + "adaLN_modulation.1.weight": rnd(6 * d, d), b + "adaLN_modulation.1.bias": rnd(6 * d)}
            if skip:
                sd |= {b + "skip_linear.weight": rnd(d, 2 * d), b + "skip_linear.bias": rnd(d)}
    return sd


def test_official_key_count_of_xl():
    # The reference's MDTv2_XL_2 state dict has 394 entries (its 29 relative_position_index buffers included).
    ours = _meta_mdt("MDTv2-XL/2").state_dict()
    assert len(ours) + 29 == 394


def test_importer_maps_the_official_layout(tmp_path):
    official = _official_state_dict()
    path = tmp_path / "mdt_tiny_ckpt.pt"
    torch.save({f"module.{k}": v for k, v in official.items()}, path)  # as saved from a DDP-wrapped model
    sd = load_official_checkpoint(path)
    model = MDTv2(**TINY)
    model.load_state_dict(sd)  # strict
    assert torch.equal(
        model.de_blocks[1].adaLN_modulation.linear.weight, official["de_blocks.1.adaLN_modulation.1.weight"]
    )
    assert torch.equal(model.en_outblocks[0].skip_linear.bias, official["en_outblocks.0.skip_linear.bias"])
    table = model.sideblocks[0].attn.rel_pos_bias.relative_position_bias_table
    assert torch.equal(table, official["sideblocks.0.attn.rel_pos_bias.relative_position_bias_table"])
    assert torch.equal(model.mask_token, official["mask_token"])
    x, t, cond = _inputs()
    assert torch.isfinite(model.eval()(x, t, cond)).all()


def test_importer_rejects_other_layouts():
    official = _official_state_dict()
    del official["de_blocks.0.skip_linear.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_official_checkpoint(official)
    official = _official_state_dict()
    official["en_inblocks.0.attn.rel_pos_bias.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="relative index"):
        load_official_checkpoint(official)
    assert math.isclose(len(_official_state_dict()), 14 + 5 * 12 + 3 * 2)


# ----------------------------------------------------------------------------------------- training recipe


def _module(cls=MDTModule, size="MDTv2-tiny/2", **kwargs):
    kwargs.setdefault("objective", RectifiedFlow())
    ddpm = isinstance(kwargs["objective"], DDPM)
    kwargs.setdefault("sampler", DDIMSampler(steps=2) if ddpm else EulerSampler(steps=2))
    vae = Autoencoder(pretrained="embedded:shapes-vae")
    return cls(size=size, num_classes=10, resolution=32, autoencoder=vae, **kwargs)


def _latent_batch(n=4):
    return {"latent": torch.randn(n, 4, 8, 8), "class_label": torch.arange(n) % 10}


class _Recorder:
    """Stands in for the module's training forward and records each call's inputs."""

    def __init__(self, backbone):
        self.backbone, self.calls = backbone, []

    def __call__(self, x, t, cond, **kwargs):
        self.calls.append((x, t, kwargs))
        return self.backbone(x, t, cond, **kwargs)


@pytest.mark.parametrize("share_noise", [True, False])
def test_training_loss_sums_a_full_and_a_masked_pass_at_the_same_time(share_noise):
    module = _module(share_noise=share_noise, objective=DDPM(learn_sigma=True))
    recorder = _Recorder(module.backbone)
    module.__dict__["_train_forward"] = recorder
    with module.seeded(7):
        losses = module.training_loss(_latent_batch())
    (x_full, t_full, kw_full), (x_mask, t_mask, kw_mask) = recorder.calls
    assert kw_full == {} and 0.3 <= kw_mask["mask_ratio"] <= 0.5
    assert torch.equal(t_full, t_mask)
    assert torch.equal(x_full, x_mask) == share_noise  # same t and noise give the same x_t
    assert float(losses["mask_ratio"]) == pytest.approx(kw_mask["mask_ratio"])
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"] + losses["mask_mse"] + losses["mask_vb"])
    with module.seeded(7):  # the step's randomness (t, noise, ratio, token subset) is a function of the seed
        again = module.training_loss(_latent_batch())
    assert torch.equal(again["loss"], losses["loss"])


def test_training_flops_of_both_passes_match_the_dit_entry():
    """The Shapes entries' sizes: MDTv2-tiny/2 (both passes) against DiT-tiny/2, both with rectified flow."""
    mdt, dit = _module(), _module(DiTModule, "DiT-tiny/2")
    ratio = train_gflops_per_image(mdt) / train_gflops_per_image(dit)
    assert 0.75 <= ratio <= 1.25
    x, t, cond = torch.zeros(1, 4, 8, 8), torch.full((1,), 0.5), Cond(label=torch.zeros(1, dtype=torch.long))
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        mdt.backbone(x, t, cond).square().mean().backward()
    assert train_gflops_per_image(mdt) * 1e9 > 1.8 * counter.get_total_flops()  # the masked pass is counted too


def test_training_flops_are_counted_at_the_expected_mask_ratio_whatever_the_seed():
    """The budget's FLOPs per image must not depend on the run's seed (it once measured one random mask ratio)."""
    mdt = _module()
    counts = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        counts.append(train_gflops_per_image(mdt))
        assert torch.equal(torch.get_rng_state(), state)  # counting leaves the caller's random stream alone
    assert counts[0] == counts[1] == counts[2]
    assert not mdt.counting_flops  # the flag is only up while counting
    x, t, cond = torch.zeros(2, 4, 8, 8), torch.full((2,), 0.5), Cond(label=torch.zeros(2, dtype=torch.long))
    passes = []
    for ratio in (0.0, 0.4):  # the full pass and the masked pass at the middle of U[0.3, 0.5]
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            mdt.backbone(x, t, cond, mask_ratio=ratio).square().mean().backward()
        passes.append(counter.get_total_flops() / 2 / 1e9)
    assert counts[0] == pytest.approx(sum(passes), rel=0.02)  # the loss's own FLOPs are a rounding error


def test_recipe_defaults():
    defaults = inspect.signature(MDTModule).parameters
    guidance = defaults["guidance"].default._lazy_kwargs
    assert guidance == {"semantic_scale": 3.8, "schedule": "power_cosine", "schedule_power": 4.0}
    assert defaults["mask_ratio"].default == (0.3, 0.5) and defaults["size"].default == "MDTv2-XL/2"
    assert defaults["objective"].default._lazy_kwargs == {"learn_sigma": True, "min_snr_gamma": 5.0}
    assert defaults["optimizer"].default is mdt_optimizer


def test_every_parameter_of_the_module_gets_a_gradient():
    module = _module()
    with module.seeded(0):
        module.training_loss(_latent_batch())["loss"].backward()
    assert not [n for n, p in module.backbone.named_parameters() if p.grad is None]


def test_optimizer_falls_back_to_adamw_without_adan(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "adan", None)  # makes `from adan import Adan` fail
    monkeypatch.setitem(__import__("sys").modules, "pytorch_optimizer", None)  # and pytorch-optimizer's
    with pytest.warns(UserWarning, match="AdamW"):
        opt = mdt_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0


def test_optimizer_is_pytorch_optimizers_adan_with_the_reference_settings():
    from pytorch_optimizer import Adan

    opt = mdt_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, Adan) and opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0
    assert opt.defaults["max_grad_norm"] == 1.0 and tuple(opt.defaults["betas"]) == (0.98, 0.92, 0.99)


def test_module_loads_an_official_checkpoint(tmp_path):
    path = tmp_path / "mdt_ckpt.pt"
    official = _official_state_dict()
    torch.save(official, path)
    module = _module(objective=DDPM(learn_sigma=True), init_from=str(path))
    for model in (module.backbone, module.ema.shadow):
        assert torch.equal(model.pos_embed, official["pos_embed"])
        assert torch.equal(model.de_blocks[0].skip_linear.weight, official["de_blocks.0.skip_linear.weight"])
    with pytest.raises(ValueError, match="mask_ratio"):
        _module(mask_ratio=(0.5, 0.3))
