"""LDM UNet (LDM-4 and SDXL): reference counts and GMACs, diffusers parity both ways, the LDM checkpoint importer,
the text-time vector path, shapes, gradients, determinism, channels-last and bf16, and the Lightning module."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from baselines.ldm_unet import SIZES, LDMModule, LDMUNet, ldm_unet_size
from baselines.ldm_unet_convert import diffusers_config, from_diffusers, load_ldm_checkpoint, to_diffusers
from conditioning.text_time import TextTimeEmbedder
from conditioning.types import Cond

REFERENCE = Path(__file__).parent / "data" / "ldm_unet_reference.json"
SDXL_CONTROLS = ["orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w"]


def build(name: str, in_channels: int = 4, num_classes: int | None = 10, **overrides) -> LDMUNet:
    spec = ldm_unet_size(name)
    kwargs = dict(
        in_channels=in_channels, model_channels=spec.model_channels, channel_mult=spec.channel_mult,
        num_res_blocks=spec.num_res_blocks, transformer_depth=spec.transformer_depth,
        mid_transformer_depth=spec.mid_transformer_depth, num_heads=spec.num_heads, head_dim=spec.head_dim,
        context_dim=spec.context_dim, num_classes=num_classes, norm_groups=spec.norm_groups,
    )  # fmt: skip
    kwargs.update(overrides)
    return LDMUNet(**kwargs)


def sdxl(**overrides) -> LDMUNet:
    return build("SDXL", num_classes=None, pooled_dim=1280, control_names=SDXL_CONTROLS, **overrides)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised convs and projections would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def macs(model: LDMUNet, x: torch.Tensor, cond: Cond) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.full((x.shape[0],), 0.5, device=x.device), cond)
    return counter.get_total_flops() / 2e9


def test_ldm4_counts_and_gmacs() -> None:
    with torch.device("meta"):
        model = build("LDM-4", in_channels=3, num_classes=1000)
        table = model.class_embedder.embedding_table.weight
        total = sum(p.numel() for p in model.parameters())
        assert (total, total - table.numel(), tuple(table.shape)) == (401_433_091, 400_920_579, (1001, 512))
        x = torch.zeros(1, 3, 64, 64)
        assert macs(model, x, Cond(label=torch.zeros(1, dtype=torch.long))) == pytest.approx(104.22, abs=0.01)


def test_sdxl_counts_and_gmacs() -> None:
    with torch.device("meta"):
        model = sdxl()
        assert sum(p.numel() for p in model.parameters()) == 2_567_463_684
        assert model.vector_embedder.mlp[0].in_features == 2816
        cond = Cond(tokens=torch.zeros(1, 77, 2048), pooled=torch.zeros(1, 1280), control=torch.zeros(1, 6))
        assert macs(model, torch.zeros(1, 4, 32, 32), cond) == pytest.approx(213.9, abs=0.05)


def test_unknown_size() -> None:
    with pytest.raises(ValueError, match="valid sizes: LDM-4"):
        ldm_unet_size("LDM-XXL")


# --------------------------------------------------------------------------------------------- diffusers parity
TINY_LDM = dict(
    in_channels=3,
    model_channels=32,
    channel_mult=(1, 2, 3),
    num_res_blocks=2,
    transformer_depth=(0, 1, 1),
    mid_transformer_depth=1,
    num_heads=1,
    context_dim=24,
    num_classes=5,
    norm_groups=8,
)  # fmt: skip  LDM-4's shape: one head, attention below the top level, 1x1-conv projections in diffusers
TINY_SDXL = dict(
    in_channels=4,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=2,
    transformer_depth=(0, 2),
    mid_transformer_depth=2,
    head_dim=16,
    context_dim=24,
    num_classes=None,
    pooled_dim=12,
    control_names=SDXL_CONTROLS,
    control_frequency_size=8,
    norm_groups=8,
)  # fmt: skip  SDXL's shape: 16-channel heads, depth 2, linear projections, text-time vector


def _pair(kind: str):
    torch.manual_seed(0)
    model = randomize(LDMUNet(**(TINY_LDM if kind == "ldm" else TINY_SDXL)))
    linear = kind == "sdxl"
    reference = UNet2DConditionModel(**diffusers_config(model, sample_size=16, linear_projection=linear)).eval()
    x = torch.randn(2, model.in_channels, 16, 16)
    steps = torch.tensor([10.0, 500.0])
    if kind == "ldm":
        cond = Cond(label=torch.tensor([1, 3]), semantic_null=torch.tensor([False, True]))
        context, added = model.class_embedder(cond)[:, None], None
    else:
        cond = Cond(tokens=torch.randn(2, 7, 24), pooled=torch.randn(2, 12), control=torch.rand(2, 6) * 256)
        context, added = cond.tokens, {"text_embeds": cond.pooled, "time_ids": cond.control}
    return model, reference, linear, (x, steps, cond, context, added)


@pytest.mark.parametrize("kind", ["ldm", "sdxl"])
def test_to_diffusers_same_output(kind: str) -> None:
    model, reference, linear, (x, steps, cond, context, added) = _pair(kind)
    state, table = to_diffusers(model, linear_projection=linear)
    reference.load_state_dict(state)  # strict: every diffusers parameter is produced, nothing extra
    assert (table is None) == (kind == "sdxl")
    with torch.no_grad():
        ours = model(x, steps / 1000, cond)
        theirs = reference(x, steps, context, added_cond_kwargs=added).sample
    assert ours.abs().mean() > 0.01
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ldm", "sdxl"])
def test_from_diffusers_same_output(kind: str) -> None:
    model, reference, _, (x, steps, cond, context, added) = _pair(kind)
    randomize(reference, seed=1)
    table = model.class_embedder.embedding_table.weight.detach().clone() if kind == "ldm" else None
    model.load_state_dict(from_diffusers(model, reference.state_dict(), table))
    with torch.no_grad():
        ours = model(x, steps / 1000, cond)
        theirs = reference(x, steps, context, added_cond_kwargs=added).sample
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_from_diffusers_rejects_other_config() -> None:
    model, reference, _, _ = _pair("sdxl")
    state = dict(reference.state_dict())
    state.pop("add_embedding.linear_1.weight")
    with pytest.raises(KeyError, match="missing"):
        from_diffusers(model, state)


# ---------------------------------------------------------------------------------------------- LDM importer
def _ldm_state(shapes: dict[str, list[int]]) -> tuple[dict[str, torch.Tensor], torch.Generator]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}, g


def test_ldm_importer_matches_reference_code() -> None:
    """Output recorded from latent-diffusion's own ``UNetModel`` (a506df5) with these seeded weights and inputs."""
    tiny = json.loads(REFERENCE.read_text())["tiny"]
    state, g = _ldm_state(tiny["shapes"])
    x = torch.randn(2, 3, 8, 8, generator=g)  # the recorded input was drawn right after the weights
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)  # ignored parts of a full checkpoint
    state["model_ema.decay"] = torch.tensor(0.9999)
    model = LDMUNet(
        in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
        mid_transformer_depth=1, num_heads=1, context_dim=16, num_classes=4,
    )  # fmt: skip
    model.load_state_dict(load_ldm_checkpoint(model, state))
    labels = torch.tensor(tiny["labels"])  # label 4 is the null row, which the conditioner selects by mask
    cond = Cond(label=labels.clamp(max=3), semantic_null=labels == 4)
    with torch.no_grad():
        out = model(x, torch.tensor(tiny["steps"]) / 1000, cond)
    torch.testing.assert_close(out.flatten(), torch.tensor(tiny["output"]), atol=2e-5, rtol=1e-4)


def test_ldm_importer_reads_cin256_v2_layout() -> None:
    shapes = json.loads(REFERENCE.read_text())["ldm4_cin256_v2_shapes"]
    with torch.device("meta"):
        model = build("LDM-4", in_channels=3, num_classes=1000)
        state = load_ldm_checkpoint(model, {k: torch.empty(s) for k, s in shapes.items()})
        model.load_state_dict(state, assign=True)  # strict: names and shapes of every parameter
        del shapes["model.diffusion_model.out.2.bias"]
        with pytest.raises(KeyError, match="out.2.bias"):
            load_ldm_checkpoint(model, {k: torch.empty(s) for k, s in shapes.items()})


# ------------------------------------------------------------------------------------------- text-time vector
def test_text_time_reads_its_pooled_columns_and_zeroes_dropped_controls() -> None:
    torch.manual_seed(0)
    emb = TextTimeEmbedder(16, pooled_dim=4, names=["a", "b"], frequency_size=8, pooled_offset=3)
    pooled, control = torch.randn(2, 7), torch.rand(2, 2) * 100
    base = emb(Cond(pooled=pooled, control=control))
    other = pooled.clone()
    other[:, :3] += 1  # columns before the offset (another encoder's pooled vector) are not read
    torch.testing.assert_close(emb(Cond(pooled=other, control=control)), base)
    dropped = emb(Cond(pooled=pooled, control=control, control_null=torch.tensor([True, False])))
    torch.testing.assert_close(dropped[1], base[1])
    expected = emb.mlp(torch.cat([pooled[0, 3:7], torch.zeros(16)]))  # dropped: zero Fourier features
    torch.testing.assert_close(dropped[0], expected)
    assert not torch.allclose(dropped[0], base[0])
    with pytest.raises(ValueError, match="columns"):
        emb(Cond(pooled=torch.randn(2, 5), control=control))


# ------------------------------------------------------------------------------------------ behaviour at tiny
def _tiny_inputs(model: LDMUNet, n: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, model.in_channels, 8, 8, generator=g)
    t = torch.rand(n, generator=g)
    cond = Cond(label=torch.arange(n) % 10, semantic_null=torch.arange(n) == 0)
    if model.vector_embedder is not None:
        cond = replace(cond, control=torch.rand(n, 7, generator=g) * 32, control_null=torch.arange(n) == 1)
    return x, t, cond


@pytest.mark.parametrize("name", ["LDM-tiny", "SDXL-tiny"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_shapes(name: str, learn_sigma: bool) -> None:
    controls = SDXL_CONTROLS + ["flip"] if name.startswith("SDXL") else None
    model = build(name, control_names=controls, learn_sigma=learn_sigma)
    assert (model.patch_size, model.num_classes) == (1, 10)
    x, t, cond = _tiny_inputs(model)
    assert model(x, t, cond).shape == (3, 8 if learn_sigma else 4, 8, 8)


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_builds_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = build(name, num_classes=10)
        out = model(torch.zeros(1, 4, 32, 32), torch.zeros(1), Cond(label=torch.zeros(1, dtype=torch.long)))
    assert out.shape == (1, 4, 32, 32)


@pytest.mark.parametrize("name", ["LDM-tiny", "SDXL-tiny"])
def test_gradients_reach_every_parameter(name: str) -> None:
    controls = SDXL_CONTROLS + ["flip"] if name.startswith("SDXL") else None
    model = randomize(build(name, control_names=controls))
    x, t, cond = _tiny_inputs(model)
    model(x, t, cond).square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_zero_init_output_and_determinism() -> None:
    torch.manual_seed(3)
    a = build("LDM-tiny")
    torch.manual_seed(3)
    b = build("LDM-tiny")
    x, t, cond = _tiny_inputs(a)
    assert a(x, t, cond).abs().max() == 0  # the reference zero-initialises the output conv
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    randomize(a), randomize(b)
    assert torch.equal(a(x, t, cond), b(x, t, cond))


@pytest.mark.parametrize("name", ["LDM-tiny", "SDXL-tiny"])
def test_channels_last_and_bf16(name: str) -> None:
    controls = SDXL_CONTROLS + ["flip"] if name.startswith("SDXL") else None
    model = randomize(build(name, control_names=controls))
    x, t, cond = _tiny_inputs(model)
    with torch.no_grad():
        reference = model(x, t, cond)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last), t, cond)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, cond)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().mean() < 0.05 * reference.abs().mean()


# ------------------------------------------------------------------------------------------------- the module
@pytest.mark.parametrize(
    ("size", "controls"), [("LDM-tiny", None), ("SDXL-tiny", SDXL_CONTROLS + ["flip"])], ids=["ldm", "sdxl"]
)
def test_module_builds_and_trains(size: str, controls: list[str] | None) -> None:
    from conditioning.conditioner import Conditioner
    from data.autoencoder import Autoencoder

    torch.manual_seed(0)
    module = LDMModule(
        size=size,
        autoencoder=Autoencoder("embedded:shapes-vae"),
        conditioner=Conditioner(semantic="class", control_names=controls),
        resolution=32,
        num_classes=10,
    )
    backbone = module.backbone
    assert isinstance(backbone, LDMUNet) and backbone.out_channels == 4  # LDM: epsilon only, fixed variance
    assert module.objective.learn_sigma is False and module.sampler.eta == 1.0 and module.sampler.steps == 250
    assert (backbone.vector_embedder is not None) == (controls is not None)
    cond = module.conditioner.example(4, torch.device("cpu"), num_classes=10, resolution=32)
    loss = module.objective.loss(backbone, torch.randn(4, 4, 8, 8), cond)["loss"]
    assert torch.isfinite(loss)
    loss.backward()


def test_channels_last_option_keeps_the_function_and_survives_a_checkpoint() -> None:
    from conditioning.conditioner import Conditioner
    from data.autoencoder import Autoencoder

    def module(channels_last: bool) -> LDMModule:
        torch.manual_seed(0)
        return LDMModule(
            size="LDM-tiny",
            autoencoder=Autoencoder("embedded:shapes-vae"),
            conditioner=Conditioner(semantic="class"),
            resolution=32,
            num_classes=10,
            channels_last=channels_last,
        )

    plain, nhwc = module(False), module(True)
    for net in (nhwc.backbone, nhwc.ema.shadow):
        convs = [p for p in net.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not all(p.is_contiguous() for p in convs)  # really NHWC, not a 1x1 kernel that is both
    cond = plain.conditioner.example(4, torch.device("cpu"), num_classes=10, resolution=32)
    x, t = torch.randn(4, 4, 8, 8), torch.rand(4)
    losses = []
    for m in (plain, nhwc):
        torch.manual_seed(1)
        losses.append(m.objective.loss(m.backbone, x, cond)["loss"])
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    grads = [dict(m.backbone.named_parameters()) for m in (plain, nhwc)]
    for name, p in grads[0].items():
        torch.testing.assert_close(grads[1][name].grad, p.grad, atol=1e-5, rtol=1e-4)
    # A checkpoint of the plain module loads into an NHWC one (and back): values copied, layout kept.
    restored = module(True)
    restored.load_state_dict(plain.state_dict())
    conv = next(p for p in restored.backbone.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(restored.backbone(x, t, cond), plain.backbone(x, t, cond), atol=1e-5, rtol=1e-4)
