"""The latent-diffusion UNet: LDM-4 ("LDM-G4", class-conditional ImageNet) and SDXL's UNet with micro-conditioning.

Papers: Robin Rombach, Andreas Blattmann, Dominik Lorenz, Patrick Esser, Björn Ommer, "High-Resolution Image
Synthesis with Latent Diffusion Models", CVPR 2022, https://arxiv.org/abs/2112.10752; Dustin Podell et al.,
"SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis", ICLR 2024,
https://arxiv.org/abs/2307.01952.
Reference implementations: https://github.com/CompVis/latent-diffusion/blob/a506df5/ldm/modules/diffusionmodules/
openaimodel.py and ``ldm/modules/attention.py`` with ``configs/latent-diffusion/cin256-v2.yaml`` (pinned at a506df5)
for LDM-4, and diffusers' ``UNet2DConditionModel`` (0.42) with the ``stabilityai/stable-diffusion-xl-base-1.0``
UNet configuration for SDXL.

Structure (C_l = model_channels · channel_mult[l]; attention at level l when transformer_depth[l] > 0)::

    emb = time_mlp(sinusoid(1000 t)) [+ text_time_mlp(cat[pooled, sinusoid(control)])]        (N, 4·C_0)
    context = class_table(label)[:, None]  or  text tokens                                      (N, L, E)
    h = conv_in(x);  skips = [h]
    for each level l: num_res_blocks × (ResBlock(emb) [→ SpatialTransformer(context)]), push each; downsample
    mid: ResBlock → SpatialTransformer → ResBlock
    for each level l, deepest first: (num_res_blocks + 1) × (ResBlock(cat[h, skips.pop()]) [→ SpatialTransformer]);
        upsample (nearest ×2 then conv) except at the top level
    out = conv_out(SiLU(GroupNorm(h)))

A ResBlock is ``x + conv(SiLU(norm(h + time_proj(emb))))`` on ``h = conv(SiLU(norm(x)))`` (additive time, LDM-4 and
SDXL) or the scale-shift form ``norm(h)·(1 + scale) + shift`` (``time_scale_shift=True``, ADM's FiLM). A spatial
transformer is GroupNorm → projection → layers of (self-attention, cross-attention to ``context``, GEGLU MLP), each
pre-LayerNorm and residual → projection back, residual. LDM-4 (192 × [1, 2, 3, 5], one head per level, context 512)
has 400,920,579 UNet parameters plus a 1001 × 512 class table = 401,433,091; SDXL-base has 2,567,463,684.

Differences from the references:

- Time at the interface is continuous ``t`` in [0, 1] (DDPM step k is ``t = k / 1000``); the embedder multiplies by
  1000, so the reference's integer-step embedding is reproduced up to float32 rounding.
- The class table (LDM's ``cond_stage_model``, ``ClassEmbedder(1001, 512)``) lives in the backbone, and the null
  row (LDM's class 1000, its unconditional label) is selected by ``cond.semantic_null``; label dropout belongs to
  the shared conditioner.
- SDXL's third micro-condition, the *target* size, is whatever the conditioner's ``control_names`` say: the suite's
  data record ``crop_h, crop_w`` (the crop that becomes the training image) and ``flip``. A dropped control group
  zeroes its Fourier features (``conditioning/text_time.py``).
- The transformer projections are always ``Linear`` (LDM-4's 1×1 convolutions are the same map; the converters
  reshape the weights). GroupNorm runs in the input dtype (LDM upcasts to float32; autocast already does so).
- State-dict names are this file's own; ``baselines/ldm_unet_convert.py`` converts both ways with diffusers'
  ``UNet2DConditionModel`` and reads the official LDM layout
  (``model.diffusion_model.*`` and ``cond_stage_model.embedding.weight``). diffusers cannot hold the class table
  (its ``class_embed_type`` adds to the time embedding rather than giving a context token), so conversion to
  diffusers covers the UNet and returns the class table separately.
- Attention is ``scaled_dot_product_attention`` over every context token (as both references: SDXL attends to the
  padded CLIP states too); dropout is not implemented (0 in both references).

Legend: N batch, C latent channels, H x W latent, L context tokens, E context width, K control scalars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from baselines.ldm_unet_convert import load_ldm_checkpoint
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.module import DiffusionModule
from benchmark.objectives import DDPM, Objective
from benchmark.samplers import DDIMSampler, Sampler
from conditioning.conditioner import Conditioner
from conditioning.embedders import ClassEmbedder, TimestepEmbedder
from conditioning.text_time import TextTimeEmbedder
from conditioning.types import Cond

__all__ = ["SIZES", "LDMModule", "LDMUNet", "UNetSize", "ldm_unet_size", "ldm_optimizer"]


# --------------------------------------------------------------------------------------------------------- layers
class ResBlock(nn.Module):
    """Two 3×3 convolutions with the time embedding injected between them, plus a (1×1) skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, scale_shift: bool) -> None:
        """Build the block.

        Args:
            in_ch: Input channels. out_ch: Output channels. emb_dim: Time-embedding width.
            groups: GroupNorm groups. scale_shift: FiLM (``norm·(1+scale)+shift``) instead of adding the embedding.
        """
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # the reference zero-initialises the last conv: each block starts as identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """(N, in_ch, H, W), (N, emb_dim) → (N, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.time_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)  # the references' order: scale first
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        return self.skip(x) + self.conv2(F.silu(h))


class CrossAttention(nn.Module):
    """Multi-head attention with separate bias-free q/k/v projections; keys and values from ``context``."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        """Args: dim: query width (= output). context_dim: key/value source width. heads: number of heads."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """(N, T, dim) queries attending to (N, L, context_dim) → (N, T, dim)."""
        n, t, d = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (y.view(n, -1, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(n, t, d))


class GEGLU(nn.Module):
    """``out(a · GELU(gate))`` with ``[a, gate] = proj(x)``, inner width 4·dim (both references' feed-forward)."""

    def __init__(self, dim: int) -> None:
        """Args: dim: token width."""
        super().__init__()
        self.proj = nn.Linear(dim, 8 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, dim) → (N, T, dim)."""
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU, each residual (LDM's ``BasicTransformerBlock``)."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        """Args: dim: token width. context_dim: context width E. heads: attention heads."""
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, context_dim, heads)
        self.norm3, self.ff = nn.LayerNorm(dim), GEGLU(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """(N, T, dim), (N, L, E) → (N, T, dim)."""
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm → Linear in → ``depth`` transformer layers over the H·W positions → Linear out (zero-init) → + x."""

    def __init__(self, channels: int, context_dim: int, heads: int, depth: int, groups: int) -> None:
        """Args: channels: feature channels. context_dim: E. heads: attention heads. depth: layers. groups: norm."""
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.layers = nn.ModuleList([TransformerLayer(channels, context_dim, heads) for _ in range(depth)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """(N, C, H, W), (N, L, E) → (N, C, H, W)."""
        n, c, h, w = x.shape
        y = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (N, HW, C)
        for layer in self.layers:
            y = layer(y, context)
        return x + self.proj_out(y).transpose(1, 2).reshape(n, c, h, w)


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResBlocks, optional transformers after each, and a resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.resample: nn.Module | None = None


# ----------------------------------------------------------------------------------------------------- backbone
class LDMUNet(nn.Module):
    """The conditional latent-diffusion UNet; ``forward(x, t, cond)`` predicts ε (and the Σ interpolation)."""

    def __init__(
        self,
        in_channels: int = 3,
        model_channels: int = 192,
        channel_mult: tuple[int, ...] = (1, 2, 3, 5),
        num_res_blocks: int = 2,
        transformer_depth: tuple[int, ...] = (0, 1, 1, 1),
        mid_transformer_depth: int = 1,
        num_heads: int | None = 1,
        head_dim: int | None = None,
        context_dim: int = 512,
        num_classes: int | None = 1000,
        pooled_dim: int | None = None,
        pooled_offset: int = 0,
        control_names: list[str] | None = None,
        control_frequency_size: int = 256,
        time_scale_shift: bool = False,
        norm_groups: int = 32,
        learn_sigma: bool = False,
    ) -> None:
        """Build the UNet (defaults: LDM-4 for 3×64×64 VQ-f4 latents).

        Args:
            in_channels: Latent channels C.
            model_channels: Width of the first level; level l has ``model_channels · channel_mult[l]``.
            channel_mult: Width multiplier per level; every level but the last halves the resolution.
            num_res_blocks: ResBlocks per encoder level (the decoder has one more).
            transformer_depth: Transformer layers after each ResBlock, per level (0: no attention at that level).
            mid_transformer_depth: Transformer layers of the middle block.
            num_heads: Attention heads at every level (LDM-4: 1); ignored when ``head_dim`` is set.
            head_dim: Channels per head (SDXL: 64), giving ``channels // head_dim`` heads per level.
            context_dim: Width E of the cross-attention context: the class table width when class-conditional,
                the text width otherwise.
            num_classes: Class-conditional with this many classes (a table of ``num_classes + 1`` rows gives one
                context token); None reads text tokens from ``cond.tokens``.
            pooled_dim: Width of the pooled text added through the text-time vector (SDXL); None for none.
            pooled_offset: Its first column in ``cond.pooled`` (SDXL reads the bigG CLIP's part only).
            control_names: Control scalars added through the text-time vector (SDXL micro-conditioning).
            control_frequency_size: Fourier features per control scalar (SDXL: 256).
            time_scale_shift: Inject time by scale and shift after the second norm instead of adding it before.
            norm_groups: GroupNorm groups.
            learn_sigma: Output 2C channels (ε then the variance interpolation).
        """
        super().__init__()
        levels = len(channel_mult)
        if len(transformer_depth) != levels:
            raise ValueError(f"transformer_depth {transformer_depth} needs one entry per level of {channel_mult}")
        self.in_channels, self.patch_size = in_channels, 1
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.config = dict(
            model_channels=model_channels, channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
            transformer_depth=tuple(transformer_depth), mid_transformer_depth=mid_transformer_depth,
            context_dim=context_dim, time_scale_shift=time_scale_shift, norm_groups=norm_groups,
        )  # fmt: skip
        emb_dim = 4 * model_channels

        def heads(ch: int) -> int:
            return ch // head_dim if head_dim else num_heads

        def block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_dim, norm_groups, time_scale_shift)

        self.time_embedder = TimestepEmbedder(emb_dim, frequency_size=model_channels)
        self.vector_embedder = (
            TextTimeEmbedder(emb_dim, pooled_dim, control_names, control_frequency_size, pooled_offset)
            if pooled_dim or control_names
            else None
        )
        self.class_embedder = ClassEmbedder(num_classes, context_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        skips, ch = [model_channels], model_channels
        self.down = nn.ModuleList()
        for lvl, mult in enumerate(channel_mult):
            level, out = Level(), model_channels * mult
            for _ in range(num_res_blocks):
                level.res.append(block(ch, out))
                ch = out
                if transformer_depth[lvl]:
                    level.attn.append(
                        SpatialTransformer(ch, context_dim, heads(ch), transformer_depth[lvl], norm_groups)
                    )
                skips.append(ch)
            if lvl < levels - 1:
                level.resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                skips.append(ch)
            self.down.append(level)
        self.mid = Level()
        self.mid.res.extend([block(ch, ch), block(ch, ch)])
        self.mid.attn.append(SpatialTransformer(ch, context_dim, heads(ch), mid_transformer_depth, norm_groups))
        self.up = nn.ModuleList()  # deepest level first, the order it runs in
        for lvl in reversed(range(levels)):
            level, out = Level(), model_channels * channel_mult[lvl]
            for _ in range(num_res_blocks + 1):
                level.res.append(block(ch + skips.pop(), out))
                ch = out
                if transformer_depth[lvl]:
                    level.attn.append(
                        SpatialTransformer(ch, context_dim, heads(ch), transformer_depth[lvl], norm_groups)
                    )
            if lvl > 0:
                level.resample = nn.Conv2d(ch, ch, 3, padding=1)
            self.up.append(level)
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # zero output at init, as the reference
        nn.init.zeros_(self.conv_out.bias)

    def context(self, cond: Cond) -> Tensor:
        """The cross-attention context: the class token (N, 1, E) or the text states (N, L, E)."""
        if self.class_embedder is not None:
            return self.class_embedder(cond)[:, None]
        if cond.tokens is None:
            raise ValueError("a text-conditional LDMUNet needs cond.tokens (N, L, E)")
        return cond.tokens

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Denoise.

        Args:
            x: (N, C, H, W) noisy latents; H and W divisible by 2^(levels - 1).
            t: (N,) time in [0, 1] (DDPM step k is k / 1000).
            cond: Conditions: ``label``/``semantic_null`` or ``tokens``; ``pooled``/``control`` for the vector path.

        Returns:
            (N, out_channels, H, W).
        """
        emb = self.time_embedder(t)
        if self.vector_embedder is not None:
            emb = emb + self.vector_embedder(cond)
        context = self.context(cond).to(x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i, res in enumerate(level.res):
                h = res(h, emb)
                if len(level.attn):
                    h = level.attn[i](h, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid.res[1](self.mid.attn[0](self.mid.res[0](h, emb), context), emb)
        for level in self.up:
            for i, res in enumerate(level.res):
                h = res(torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attn):
                    h = level.attn[i](h, context)
            if level.resample is not None:
                h = level.resample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# -------------------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class UNetSize:
    """One row of :data:`SIZES`: the UNet's shape; conditioning widths come from the module's conditioner."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]
    mid_transformer_depth: int
    num_heads: int | None = None
    head_dim: int | None = None
    context_dim: int = 512  # class-table width; caption models use the text width instead
    time_scale_shift: bool = False
    norm_groups: int = 32
    text_time: bool = False  # pooled text joins the vector path (SDXL); controls join whenever the data names any


SIZES: dict[str, UNetSize] = {
    # LDM-4 (cin256-v2): 192 × [1, 2, 3, 5], attention at downsampling 2/4/8, one head per level, context 512.
    "LDM-4": UNetSize(192, (1, 2, 3, 5), 2, (0, 1, 1, 1), 1, num_heads=1, context_dim=512),
    "LDM-B": UNetSize(128, (1, 2, 3, 4), 2, (0, 1, 1, 1), 1, head_dim=64, context_dim=512),
    "LDM-S": UNetSize(64, (1, 2, 3, 4), 2, (0, 1, 1, 1), 1, head_dim=32, context_dim=256),
    "LDM-tiny": UNetSize(24, (1, 2), 1, (0, 1), 1, head_dim=24, context_dim=64, norm_groups=8),
    # SDXL-base: 320 × [1, 2, 4], transformer depth [0, 2, 10] (10 in the middle), 64-channel heads.
    "SDXL": UNetSize(320, (1, 2, 4), 2, (0, 2, 10), 10, head_dim=64, context_dim=2048, text_time=True),
    "SDXL-S": UNetSize(128, (1, 2, 4), 2, (0, 1, 2), 2, head_dim=64, context_dim=512, text_time=True),
    "SDXL-tiny": UNetSize(24, (1, 2), 1, (0, 1), 1, head_dim=24, context_dim=64, norm_groups=8, text_time=True),
}


def ldm_unet_size(name: str) -> UNetSize:
    """The :data:`SIZES` row ``name``; raises ``ValueError`` listing the valid sizes otherwise."""
    if name not in SIZES:
        raise ValueError(f"unknown LDM UNet size {name!r}; valid sizes: {', '.join(SIZES)}")
    return SIZES[name]


# ------------------------------------------------------------------------------------------------------- module
def ldm_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, torch's default weight decay 0.01 (LDM's ``configure_optimizers``), constant."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


class LDMModule(DiffusionModule):
    """The LDM UNet with LDM-4's recipe as defaults (``cin256-v2.yaml``; Rombach et al. 2022, Tab. 10 and §D).

    Recipe: DDPM ε-prediction with 1000 steps of LDM's scaled-linear β (sqrt-linear from 0.0015 to 0.0195), fixed
    variance; class → a 512-wide context token, dropped with p=0.1 for guidance; AdamW lr 1e-4 (weight decay 0.01);
    sampling with DDIM at 250 steps, η = 1, classifier-free guidance 1.5. With ``size: SDXL*`` and a caption
    conditioner the pooled text and the conditioner's ``control_names`` (size/crop micro-conditioning) are added to
    the time embedding; class-labelled data keep the class token and still take the control metadata.

    Args:
        size: A row of ``SIZES`` (``LDM-4``, ``LDM-B``, ``LDM-S``, ``LDM-tiny``, ``SDXL``, ``SDXL-S``, ``SDXL-tiny``).
        learn_sigma: Predict the variance too (2C outputs). None (default) follows ``objective.learn_sigma``.
        pooled_encoder: Caption models: the text encoder whose pooled vector the text-time path reads (SDXL:
            the bigG CLIP); None reads every CLIP's pooled vector as the conditioner concatenates them.
        init_from: Path of an official LDM checkpoint (``cin256-v2.ckpt``) loaded into the backbone and its EMA.
        channels_last: Store the UNet's and its EMA copy's convolution weights channels-last, so every convolution
            runs NHWC: the same function (only the kernels' rounding differs), 1.15-1.26x faster training on a CPU
            (oneDNN; ``leaderboards/perf/README.md``) and the layout GPU tensor cores need for bf16 convolutions. An
            option of the module rather than the ``ChannelsLast`` callback because leaderboard runs keep an entry's
            model config but not its callbacks.
        objective: Training objective.
        sampler: Sampler of sample grids and ``predict``.
        guidance: Classifier-free guidance when sampling.
        conditioner: Batch → condition (class labels by default).
        optimizer: Optimizer factory (:func:`ldm_optimizer`).
        **kwargs: The remaining ``DiffusionModule`` arguments (autoencoder, resolution, num_classes, ema_decay, ...).
    """

    def __init__(
        self,
        size: str = "LDM-4",
        learn_sigma: bool | None = None,
        pooled_encoder: str | None = None,
        init_from: str | None = None,
        channels_last: bool = False,
        objective: Objective = lazy_instance(
            DDPM, learn_sigma=False, beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195
        ),
        sampler: Sampler = lazy_instance(DDIMSampler, steps=250, eta=1.0),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance, semantic_scale=1.5),
        conditioner: Conditioner = lazy_instance(Conditioner, semantic="class", semantic_dropout=0.1),
        optimizer: OptimizerCallable = ldm_optimizer,
        **kwargs: Any,
    ) -> None:
        self.size, self.learn_sigma, self.pooled_encoder = size, learn_sigma, pooled_encoder
        super().__init__(objective=objective, sampler=sampler, guidance=guidance, conditioner=conditioner,
                         optimizer=optimizer, **kwargs)  # fmt: skip
        if init_from is not None:
            state = load_ldm_checkpoint(self.backbone, init_from)
            self.backbone.load_state_dict(state)
            self.ema.shadow.load_state_dict(state)
        self.channels_last = channels_last
        if channels_last:
            # Loading a checkpoint later copies into these tensors and keeps their layout; AdamW's state follows it.
            self.backbone.to(memory_format=torch.channels_last)
            self.ema.shadow.to(memory_format=torch.channels_last)

    def build_backbone(self) -> nn.Module:
        """The UNet of ``size`` for this module's latents, conditioning and learn_sigma."""
        spec = ldm_unet_size(self.size)
        channels = self.latent_shape[0]
        semantic = self.conditioner.semantic
        pooled_dim, pooled_offset = None, 0
        if semantic == "class":
            num_classes, context_dim = self.num_classes, spec.context_dim
        elif semantic == "caption":
            num_classes, context_dim = None, self.conditioner.context_dim
            if spec.text_time:
                pooled_dim, pooled_offset = self._pooled_columns()
        else:
            raise ValueError(f"the LDM UNet cross-attends to a class or caption; conditioner.semantic is {semantic!r}")
        learn_sigma = self.objective.learn_sigma if self.learn_sigma is None else self.learn_sigma
        return LDMUNet(
            in_channels=channels, model_channels=spec.model_channels, channel_mult=spec.channel_mult,
            num_res_blocks=spec.num_res_blocks, transformer_depth=spec.transformer_depth,
            mid_transformer_depth=spec.mid_transformer_depth, num_heads=spec.num_heads, head_dim=spec.head_dim,
            context_dim=context_dim, num_classes=num_classes, pooled_dim=pooled_dim, pooled_offset=pooled_offset,
            control_names=list(self.conditioner.control_names) or None, time_scale_shift=spec.time_scale_shift,
            norm_groups=spec.norm_groups, learn_sigma=learn_sigma,
        )  # fmt: skip

    def _pooled_columns(self) -> tuple[int | None, int]:
        """(width, first column) of ``pooled_encoder``'s vector in ``Cond.pooled`` (CLIPs concatenated in order)."""
        encoders = self.conditioner.text_encoders
        clips = [name for name, encoder in encoders.items() if encoder.pooled_width is not None]
        if self.pooled_encoder is None:
            return self.conditioner.pooled_dim, 0
        if self.pooled_encoder not in clips:
            raise ValueError(f"pooled_encoder {self.pooled_encoder!r} is not one of the pooled text encoders {clips}")
        offset = 0
        for name in clips[: clips.index(self.pooled_encoder)]:
            offset += encoders[name].pooled_width
        return encoders[self.pooled_encoder].pooled_width, offset
