"""The models `ldmbench perf` compares: our backbone and its reference implementation at the same configuration,
our weights converted by our converters so that both compute the same function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.perf.timing import Impl
from conditioning.types import Cond

MODELS = ("dit", "mdt", "pixart", "mmdit", "ldm", "sdxl")
# Per size: (our size suffix, default tokens, default batch). "tiny" is the Shapes suite's size (8x8 latents); "B" and
# "XL" are for a GPU (DiT-XL/2 at 256 tokens is the 256x256 ImageNet model; batch 32 fills an H100's step).
SIZE_DEFAULTS = {"S": ("S/2", 256, 8), "tiny": ("tiny/2", 16, 64), "B": ("B/2", 256, 8), "XL": ("XL/2", 256, 32)}
# The UNets' rows of `baselines.ldm_unet.SIZES` at each size (no SDXL at B: its sizes are S, base and tiny).
UNET_SIZES = {
    "ldm": {"tiny": "LDM-tiny", "S": "LDM-S", "B": "LDM-B", "XL": "LDM-4"},
    "sdxl": {"tiny": "SDXL-tiny", "S": "SDXL-S", "XL": "SDXL"},
}


class NotMeasured(Exception):
    """A model that has no configuration at the requested size (listed as skipped, like a missing module)."""


# --------------------------------------------------------------------------------------------------------------------
# Models: ours and the reference at the same configuration
# --------------------------------------------------------------------------------------------------------------------


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Small random weights (away from the zero init, where every comparison would be trivially 0 == 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _side(tokens: int, patch: int) -> int:
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"--tokens must be a square number, got {tokens}")
    return side * patch


def build_impls(name: str, size: str, batch: int, tokens: int, device: torch.device) -> tuple[list[Impl], str]:
    """Our implementation and its reference for ``name`` at ``size`` with ``tokens`` image tokens.

    Returns:
        ([ours, reference], note); raises ImportError when the model's module is not in this checkout.
    """
    suffix = SIZE_DEFAULTS[size][0]
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(batch, generator=gen).to(device)
    labels = (torch.arange(batch) % 10).to(device)

    if name in ("dit", "mdt"):
        from baselines.dit import DiT, dit_size
        from baselines.dit_convert import diffusers_config, to_diffusers_state_dict

        if name == "dit":
            kw = dit_size(f"DiT-{suffix}")
            side = _side(tokens, kw["patch_size"])
            ours = _randomise(DiT(input_size=side, num_classes=10, **kw)).to(device)
            ours.t_embedder.downscale_freq_shift = 1.0  # diffusers' frequency spacing, for the parity check
            import diffusers

            ref = diffusers.DiTTransformer2DModel(**diffusers_config(ours)).to(device)
            ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
            x = torch.randn(batch, 4, side, side, generator=gen).to(device)
            cond = Cond(label=labels)
            steps = t * 1000
            return [
                Impl("ours", ours, lambda: [ours(x, t, cond)]),
                Impl("diffusers", ref, lambda: [ref(x, timestep=steps, class_labels=labels).sample]),
            ], "diffusers DiTTransformer2DModel"
        from baselines.mdt import MDTv2, mdt_size

        kw = mdt_size(f"MDTv2-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ours = _randomise(MDTv2(input_size=side, num_classes=10, **kw)).to(device)
        n_blocks = len(list(ours.blocks()))
        dit_kw = {k: kw[k] for k in ("hidden_size", "num_heads", "patch_size")}
        dit = _randomise(DiT(input_size=side, num_classes=10, depth=kw["depth"], **dit_kw)).to(device)
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        cond = Cond(label=labels)
        return [
            Impl(
                "ours",
                ours,
                lambda: [ours(x, t, cond), ours(x, t, cond, mask_ratio=0.4)],  # the recipe's full + masked pass
                lambda: [ours(x, t, cond)],
            ),
            Impl("DiT (same width/depth)", dit, lambda: [dit(x, t, cond)]),
        ], f"our DiT, depth {kw['depth']} ({n_blocks} MDT blocks)"

    if name == "pixart":
        import diffusers

        from baselines.pixart_alpha import PixArt, diffusers_config, pixart_size, to_diffusers_state_dict

        kw = pixart_size(f"PixArt-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ctx_len, ctx_dim = (8, 32) if size == "tiny" else (77, 768)
        ours = _randomise(PixArt(input_size=side, context_dim=ctx_dim, **kw)).to(device)
        ref = diffusers.PixArtTransformer2DModel(**diffusers_config(ours)).to(device)
        ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        tokens_ = torch.randn(batch, ctx_len, ctx_dim, generator=gen).to(device)
        mask = torch.ones(batch, ctx_len, dtype=torch.bool, device=device)
        cond = Cond(tokens=tokens_, token_mask=mask)
        steps = t * 1000
        extra = {"resolution": None, "aspect_ratio": None}
        return [
            Impl("ours", ours, lambda: [ours(x, t, cond)]),
            Impl(
                "diffusers",
                ref,
                lambda: [
                    ref(
                        x,
                        encoder_hidden_states=tokens_,
                        timestep=steps,
                        encoder_attention_mask=mask,
                        added_cond_kwargs=extra,
                    ).sample
                ],
            ),
        ], f"diffusers PixArtTransformer2DModel, {ctx_len} text tokens of width {ctx_dim}"

    if name == "mmdit":
        import diffusers

        from baselines.mmdit import MMDiT, diffusers_config, mmdit_size, to_diffusers_state_dict

        kw = mmdit_size(f"mmDiT-{suffix}")
        side = _side(tokens, kw["patch_size"])
        ctx_len, ctx_dim, pooled_dim = (8, 32, 24) if size == "tiny" else (77, 768, 768)
        ours = _randomise(MMDiT(input_size=side, context_dim=ctx_dim, pooled_dim=pooled_dim, **kw)).to(device)
        ref = diffusers.SD3Transformer2DModel(**diffusers_config(ours)).to(device)
        ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()))
        x = torch.randn(batch, 4, side, side, generator=gen).to(device)
        tokens_ = torch.randn(batch, ctx_len, ctx_dim, generator=gen).to(device)
        pooled = torch.randn(batch, pooled_dim, generator=gen).to(device)
        cond = Cond(tokens=tokens_, pooled=pooled)
        steps = t * 1000
        return [
            Impl("ours", ours, lambda: [ours(x, t, cond)]),
            Impl(
                "diffusers",
                ref,
                lambda: [ref(x, encoder_hidden_states=tokens_, pooled_projections=pooled, timestep=steps).sample],
            ),
        ], f"diffusers SD3Transformer2DModel, {ctx_len} text tokens of width {ctx_dim}"

    if name in ("ldm", "sdxl"):
        return _unet_impls(name, size, batch, tokens, device, t, labels, gen)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


# SDXL's micro-conditioning: original size, crop corner and target size, added to the time embedding.
SDXL_CONTROLS = ["orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w"]


def unet_kwargs(size_name: str) -> dict[str, object]:
    """``LDMUNet`` keyword arguments of a row of the UNet size table (conditioning widths as the row sets them)."""
    from baselines.ldm_unet import ldm_unet_size

    spec = ldm_unet_size(size_name)
    names = ("model_channels", "channel_mult", "num_res_blocks", "transformer_depth", "mid_transformer_depth")
    names += ("num_heads", "head_dim", "context_dim", "time_scale_shift", "norm_groups")
    return {key: getattr(spec, key) for key in names}


def _unet_impls(
    name: str,
    size: str,
    batch: int,
    tokens: int,
    device: torch.device,
    t: Tensor,
    labels: Tensor,
    gen: torch.Generator,
) -> tuple[list[Impl], str]:
    """Our LDM UNet (``ldm``: LDM-4's shape, class token; ``sdxl``: SDXL's, text + pooled + size/crop) and diffusers'
    ``UNet2DConditionModel`` with our weights converted by ``baselines/ldm_unet_convert.py``.

    The latent is the transformers' (side = 2·√tokens: 32x32 at S, 8x8 at tiny), so every row trains on the same
    input. diffusers' UNet has no class table: it receives our table's rows as its one context token, precomputed
    (a lookup, no FLOPs), so both compute the same function.
    """
    import diffusers

    from baselines.ldm_unet import LDMUNet
    from baselines.ldm_unet_convert import diffusers_config, to_diffusers

    side = _side(tokens, 2)
    if size not in UNET_SIZES[name]:
        raise NotMeasured(f"no {name} UNet at size {size} (sizes: {', '.join(UNET_SIZES[name])})")
    size_name = UNET_SIZES[name][size]
    kw = unet_kwargs(size_name)
    x = torch.randn(batch, 4, side, side, generator=gen).to(device)
    steps = t * 1000
    if name == "ldm":
        ours = _randomise(LDMUNet(in_channels=4, num_classes=10, **kw)).to(device)
        cond = Cond(label=labels)
        table = ours.class_embedder.embedding_table.weight.detach().clone()
        context, added, linear = table[labels][:, None], None, False  # LDM: 1x1-convolution projections
        note = f"diffusers UNet2DConditionModel ({size_name}, 1x1-conv projections, class as one context token)"
    else:
        ctx_len, pooled_dim = (8, 12) if size == "tiny" else (77, 1280)
        ours = LDMUNet(in_channels=4, num_classes=None, pooled_dim=pooled_dim, control_names=SDXL_CONTROLS, **kw)
        ours = _randomise(ours).to(device)
        context = torch.randn(batch, ctx_len, int(kw["context_dim"]), generator=gen).to(device)
        pooled = torch.randn(batch, pooled_dim, generator=gen).to(device)
        control = (torch.rand(batch, len(SDXL_CONTROLS), generator=gen) * 8 * side).to(device)
        cond = Cond(tokens=context, pooled=pooled, control=control)
        added, linear = {"text_embeds": pooled, "time_ids": control}, True
        note = f"diffusers UNet2DConditionModel ({size_name}, {ctx_len} text tokens, pooled + size/crop)"
    ref = diffusers.UNet2DConditionModel(**diffusers_config(ours, sample_size=side, linear_projection=linear))
    state, _ = to_diffusers(ours, linear_projection=linear)
    ref.load_state_dict(state)
    ref = ref.to(device)
    return [
        Impl("ours", ours, lambda: [ours(x, t, cond)]),
        Impl("diffusers", ref, lambda: [ref(x, steps, context, added_cond_kwargs=added).sample]),
    ], note


def _max_diff(impls: list[Impl]) -> float:
    """Largest output difference of ours and the converted reference, in eval mode (diffusers' DiT drops labels
    at random in train mode); NaN where the second implementation is not a conversion of ours (MDT)."""
    if impls[1].label != "diffusers":
        return float("nan")
    modes = [impl.module.training for impl in impls]
    try:
        with torch.no_grad():
            for impl in impls:
                impl.module.eval()
            a, b = (impl.forward()[0] for impl in impls)
    finally:
        for impl, mode in zip(impls, modes, strict=True):
            impl.module.train(mode)
    return float((a - b).abs().max())
