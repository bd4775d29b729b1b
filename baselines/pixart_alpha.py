"""PixArt-α: a DiT with cross-attention to text tokens and adaLN-single time conditioning.

Paper: Junsong Chen, Jincheng Yu, Chongjian Ge, Lewei Yao, Enze Xie, Yue Wu, Zhongdao Wang, James Kwok, Ping Luo,
Huchuan Lu, Zhenguo Li, "PixArt-α: Fast Training of Diffusion Transformer for Photorealistic Text-to-Image
Synthesis", ICLR 2024, https://arxiv.org/abs/2310.00426.
Reference implementation: https://github.com/PixArt-alpha/PixArt-alpha/blob/cac2fd3/diffusion/model/nets/PixArt.py
and ``PixArt_blocks.py`` (pinned at cac2fd3); training recipe from
``configs/pixart_config/PixArt_xl2_img256_internal.py``.

What makes it PixArt-α rather than DiT (paper §2.3, Fig. 4):

- **Cross-attention to the text.** T5-XXL states (120 tokens x 4096) pass a caption projection
  ``Linear(4096, D) → GELU(tanh) → Linear(D, D)`` and every block attends to them between its self-attention and
  its MLP: ``x = x + CrossAttn(x, context)``, with neither norm nor gate on that branch (as in the reference).
- **adaLN-single.** One shared ``t_block = SiLU → Linear(D, 6D)`` of the time embedding; each block adds its own
  learned (6, D) ``scale_shift_table`` (``conditioning.adaln_single``). The final layer adds a (2, D) table to the
  time embedding itself.
- **Position scale.** The fixed 2-D sin-cos table encodes positions ``index / pos_embed_scale`` (the reference's
  ``lewei_scale``, diffusers' ``interpolation_scale``): the released checkpoints use 0.5 at 256², 1 at 512² and 2
  at 1024², so every resolution spans the position range of the 512² model.

PixArt-α-XL/2 at 256² (32x32 latent, 120 T5 tokens of width 4096) has 610,856,096 parameters (``pos_embed`` is a
buffer, as in the reference) and costs ≈149.05 GMACs per forward. Weights convert both ways with diffusers'
``PixArtTransformer2DModel``; official ``PixArt-XL-2-*.pth`` files load with :func:`load_official_checkpoint`.

Differences from the reference:

- Time at the interface is continuous ``t`` in [0, 1] (t = 1 noise); the embedder multiplies by 1000, so DDPM step
  ``k`` is ``t = k / 1000``.
- Caption dropout moved to the shared conditioner, which substitutes its null caption before the backbone. The
  reference's own null caption, a fixed random (120, 4096) buffer ``y_embedder.y_embedding``, is therefore not part
  of the model; :func:`load_official_checkpoint` drops it.
- **Class conditioning** (not in the paper, which is text-to-image only): with ``num_classes`` set, the class is
  looked up in ``conditioning.embedders.ClassEmbedder(num_classes, context_dim)`` (its null row serves dropped
  labels) and enters as *one context token* through the same caption projection and cross-attention; the time path
  and adaLN-single are unchanged. This is how the benchmark trains PixArt on class-labelled data.
- Optional ``control_names``: a Fourier ``ControlEmbedder`` added to the time embedding before ``t_block`` (where
  ``PixArtMS`` adds its size and aspect-ratio embeddings). Off by default.
- Masked text tokens are excluded with a boolean attention mask (``baselines.layers.CrossAttention``, the
  reference's layer and names on ``scaled_dot_product_attention``) where the reference packs the real tokens of the
  batch into one sequence for xformers; the result is the same. A sample without any real token attends uniformly
  to all its tokens, as diffusers' additive mask does.
- Sizes S, B and L (and tiny/mini for the CPU) are our extension with DiT's widths and depths; the paper defines
  only XL/2. The reference's window attention and relative positions (off in every released model) are not here.
- State-dict names are the reference's except ``t_block.1`` → ``t_block.linear``, ``y_embedder.y_proj`` →
  ``caption_projection`` and ``scale_shift_table`` → ``modulation.scale_shift_table`` (blocks, final layer).

Legend: N batch, C latent channels, H x W latent size, p patch, T = HW/p² tokens, D width, L context tokens,
E context width, K control scalars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from baselines.layers import (
    Attention,
    CrossAttention,
    Mlp,
    PatchEmbed,
    check_latent_input,
    check_transformer_shape,
    fill_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    init_embedder_mlps,
    init_patch_embed_like_linear,
    unpatchify,
    xavier_init_linears,
    zero_linear,
)
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.module import DiffusionModule
from benchmark.objectives import DDPM, Objective
from benchmark.samplers import DDPMSampler, Sampler
from conditioning.adaln_single import AdaLNSingle, FinalModulationTable, ModulationTable
from conditioning.conditioner import Conditioner
from conditioning.embedders import ClassEmbedder, ControlEmbedder, TimestepEmbedder
from conditioning.modulation import modulate
from conditioning.text import TextEncoder
from conditioning.types import Cond

__all__ = [
    "SIZES",
    "T5_XXL",
    "PixArt",
    "PixArtBlock",
    "PixArtFinalLayer",
    "PixArtModule",
    "diffusers_config",
    "from_diffusers_state_dict",
    "load_official_checkpoint",
    "pixart_optimizer",
    "pixart_size",
    "pixart_warmup",
    "to_diffusers_state_dict",
]


T5_XXL = "google/t5-v1_1-xxl"
"""PixArt-α's text encoder (the weights of ``DeepFloyd/t5-v1_1-xxl``): 4096-wide states, 120 tokens."""


# ------------------------------------------------------------------------------------------------------------- Blocks


class PixArtBlock(nn.Module):
    """Self-attention and MLP modulated by adaLN-single, with an unmodulated cross-attention between them."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        """Build the block of width D = ``hidden_size`` with ``num_heads`` heads and an MLP of ``mlp_ratio`` x D."""
        super().__init__()
        # Registration order is the reference's (norm1, attn, cross_attn, norm2, mlp, table).
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.modulation = ModulationTable(hidden_size, branches=("attn", "mlp"))

    def forward(self, x: Tensor, context: Tensor, shared: Tensor, mask: Tensor | None = None) -> Tensor:
        """Tokens ``x`` (N, T, D), projected ``context`` (N, L, D), the shared modulation (N, 6, D) of ``t_block``
        and the context ``mask`` (N, L) (True = real token; None: all real) → (N, T, D)."""
        mods = self.modulation(shared)
        attn, mlp = mods["attn"], mods["mlp"]
        x = x + attn.gate * self.attn(modulate(self.norm1(x), attn.shift, attn.scale))
        x = x + self.cross_attn(x, context, mask)  # the reference applies no norm and no gate here
        x = x + mlp.gate * self.mlp(modulate(self.norm2(x), mlp.shift, mlp.scale))
        return x


class PixArtFinalLayer(nn.Module):
    """LayerNorm modulated by (table + time embedding), then a Linear to ``p * p * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        """Build the layer for width D = ``hidden_size``, patch side p and ``out_channels`` per latent pixel."""
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.modulation = FinalModulationTable(hidden_size)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """Map tokens (N, T, D) under the time embedding ``temb`` (N, D) to (N, T, p * p * out_channels)."""
        mod = self.modulation(temb)
        return self.linear(modulate(self.norm_final(x), mod.shift, mod.scale))


# -------------------------------------------------------------------------------------------------------------- Model


class PixArt(nn.Module):
    """PixArt-α backbone: ``forward(x_t, t, cond) -> prediction`` with ``t`` in [0, 1].

    Text-conditional (``num_classes=None``) it reads ``cond.tokens`` (N, L, ``context_dim``) and ``cond.token_mask``;
    class-conditional it reads ``cond.label`` / ``cond.semantic_null`` and uses the class as one context token.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,
        context_dim: int = 4096,
        num_classes: int | None = None,
        pos_embed_scale: float = 1.0,
        control_names: list[str] | None = None,
    ) -> None:
        """Build the backbone (defaults: PixArt-α-XL/2 for 32x32 latents and 4096-wide T5 states).

        Args:
            input_size: latent side H = W the model is built for (image side / 8 for SD-VAE).
            patch_size: patch side p; ``input_size`` must be divisible by it.
            in_channels: latent channels C.
            hidden_size: width D; divisible by ``num_heads`` and by 4 (2-D sin-cos table).
            depth: number of blocks.
            num_heads: attention heads (self- and cross-attention).
            mlp_ratio: MLP inner width as a multiple of D.
            learn_sigma: predict the variance too (Improved DDPM), doubling the output channels to 2C.
            context_dim: width E of the context tokens entering the caption projection (T5-XXL: 4096). With
                ``num_classes`` it is the width of the class table.
            num_classes: None for text conditioning; otherwise the number of classes, embedded as one context token
                (the table has one more row, the null class).
            pos_embed_scale: positions of the sin-cos table are ``index / pos_embed_scale`` (the reference's
                ``lewei_scale``: 0.5 for the released 256² model, 1 at 512², 2 at 1024²).
            control_names: control scalars (``Cond.control_names``) embedded with a Fourier ``ControlEmbedder`` and
                added to the time embedding; None disables it (the reference model).
        """
        super().__init__()
        check_transformer_shape(input_size, patch_size, hidden_size, num_heads)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma, self.hidden_size, self.depth, self.num_heads = learn_sigma, hidden_size, depth, num_heads
        self.mlp_ratio, self.context_dim, self.pos_embed_scale = mlp_ratio, context_dim, pos_embed_scale
        self.grid_size = input_size // patch_size
        if num_classes is not None:
            self.num_classes = num_classes  # the contract's marker of a class-conditional backbone

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)  # PixArt's: cat[cos, sin], frequencies over half, t x 1000
        # A persistent buffer, as in the reference: saved with the weights, not counted as a parameter.
        self.register_buffer("pos_embed", torch.zeros(1, self.grid_size**2, hidden_size))
        self.t_block = AdaLNSingle(hidden_size, branches=2)
        self.caption_projection = Mlp(context_dim, hidden_size, hidden_size)  # fc1 → GELU(tanh) → fc2
        self.class_embedder = ClassEmbedder(num_classes, context_dim) if num_classes is not None else None
        self.control_embedder = ControlEmbedder(control_names, hidden_size) if control_names else None
        self.blocks = nn.ModuleList([PixArtBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = PixArtFinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference's ``initialize_weights`` (same order), plus our class / control embedders and the tables."""
        # The patch bias keeps nn.Conv2d's default init, as in the reference; redrawn so that a model materialised
        # from the meta device has one too.
        self.x_embedder.proj.reset_parameters()
        xavier_init_linears(self)
        fill_sincos_pos_embed(self.pos_embed, self.grid_size, scale=self.pos_embed_scale)
        init_patch_embed_like_linear(self.x_embedder, zero_bias=False)
        init_embedder_mlps(self.t_embedder)
        self.t_block.reset_parameters()  # N(0, 0.02²)
        nn.init.normal_(self.caption_projection.fc1.weight, std=0.02)
        nn.init.normal_(self.caption_projection.fc2.weight, std=0.02)
        if self.class_embedder is not None:  # not in the reference: DiT's label-table init
            nn.init.normal_(self.class_embedder.embedding_table.weight, std=0.02)
        init_embedder_mlps(self.control_embedder)  # not in the reference: treated like the timestep MLP
        # The reference draws the tables N(0, 1/D) at construction; redrawn here so that a model materialised from
        # the meta device is initialised too.
        for block in self.blocks:
            block.modulation.reset_parameters()
            # A zero cross-attention output: the text branch starts closed (it has no gate).
            zero_linear(block.cross_attn.proj)
        self.final_layer.modulation.reset_parameters()
        zero_linear(self.final_layer.linear)

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Predict from a noisy latent.

        Args:
            x: (N, C, H, W) noisy latent with H = W = ``input_size``.
            t: (N,) float diffusion time in [0, 1] (t = 1 is noise; DDPM step k is k / 1000).
            cond: text (``tokens`` (N, L, E), optional ``token_mask`` (N, L)) or, when class-conditional,
                ``label`` with ``semantic_null``; ``control`` when built with ``control_names``.

        Returns:
            (N, out_channels, H, W): with ``learn_sigma`` the first C channels are ε, the last C the variance
            interpolation values.
        """
        check_latent_input("PixArt", x, t, self.in_channels, self.input_size)
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (N, T, D)
        temb = self.t_embedder(t)  # (N, D)
        if self.control_embedder is not None:
            temb = temb + self.control_embedder(cond)
        shared = self.t_block(temb)  # (N, 6, D), one modulation for all blocks
        context, mask = self._context(cond, x.shape[0])
        context = self.caption_projection(context.to(x.dtype))  # (N, L, D)
        for block in self.blocks:
            x = block(x, context, shared, mask)  # (N, T, D)
        x = self.final_layer(x, temb)  # (N, T, p * p * out_channels)
        return unpatchify(x, self.patch_size, self.out_channels, (self.grid_size, self.grid_size))

    def _context(self, cond: Cond, n: int) -> tuple[Tensor, Tensor | None]:
        """Context tokens (N, L, E) before the projection, and their mask (N, L) or None when all are real."""
        if self.class_embedder is not None:
            if cond.label is None:
                raise ValueError("this PixArt is class-conditional (num_classes set) but cond.label is None")
            return self.class_embedder(cond)[:, None], None  # one token per sample
        if cond.tokens is None:
            raise ValueError("this PixArt is text-conditional but cond.tokens is None (class data: set num_classes)")
        tokens, mask = cond.tokens, cond.token_mask
        if tokens.dim() != 3 or tokens.shape[0] != n or tokens.shape[2] != self.context_dim:
            raise ValueError(f"cond.tokens must be (N={n}, L, E={self.context_dim}), got {tuple(tokens.shape)}")
        if mask is not None:
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"cond.token_mask must be {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
            # A sample with no real token would softmax over nothing (NaN); let it attend to all its tokens.
            mask = mask.bool() | ~mask.bool().any(dim=1, keepdim=True)
        return tokens, mask


# -------------------------------------------------------------------------------------------------------------- Sizes

# (depth, width, heads). XL/2 is the paper's only model; S, B and L reuse DiT's Table 1 (our extension).
_WIDTHS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
SIZES: dict[str, dict[str, int]] = {
    f"PixArt-{name}/2": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": 2}
    for name, (depth, hidden, heads) in _WIDTHS.items()
}
# Not in the paper: sizes that train on a CPU in minutes on 8x8 latents (DiT-tiny/2 and DiT-mini/2's widths).
SIZES["PixArt-tiny/2"] = {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 2}
SIZES["PixArt-mini/2"] = {"depth": 6, "hidden_size": 192, "num_heads": 6, "patch_size": 2}


def pixart_size(name: str) -> dict[str, int]:
    """A fresh dict of the ``PixArt(...)`` size arguments of ``name`` (a key of :data:`SIZES`), e.g.
    ``PixArt(**pixart_size("PixArt-XL/2"))``: ``depth``, ``hidden_size``, ``num_heads`` and ``patch_size``."""
    if name not in SIZES:
        raise ValueError(f"unknown PixArt size {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(SIZES[name])


# ------------------------------------ Reference weights: official checkpoints and diffusers' PixArtTransformer2DModel

# Official → ours, as (pattern, replacement) over whole keys.
_OFFICIAL_RENAMES = (
    (r"^t_block\.1\.", "t_block.linear."),
    (r"^y_embedder\.y_proj\.", "caption_projection."),
    (r"^(blocks\.\d+|final_layer)\.scale_shift_table$", r"\1.modulation.scale_shift_table"),
)
# Ours → diffusers, by key prefix: top level, then inside a block. A fused projection maps to several diffusers
# projections, its rows split in the order given.
_DIFFUSERS_TOP = {
    "x_embedder.proj.": ("pos_embed.proj.",),
    "t_embedder.mlp.0.": ("adaln_single.emb.timestep_embedder.linear_1.",),
    "t_embedder.mlp.2.": ("adaln_single.emb.timestep_embedder.linear_2.",),
    "t_block.linear.": ("adaln_single.linear.",),
    "caption_projection.fc1.": ("caption_projection.linear_1.",),
    "caption_projection.fc2.": ("caption_projection.linear_2.",),
    "final_layer.linear.": ("proj_out.",),
    "final_layer.modulation.scale_shift_table": ("scale_shift_table",),
}
_DIFFUSERS_BLOCK = {
    "modulation.scale_shift_table": ("scale_shift_table",),
    "attn.qkv.": ("attn1.to_q.", "attn1.to_k.", "attn1.to_v."),
    "attn.proj.": ("attn1.to_out.0.",),
    "cross_attn.q_linear.": ("attn2.to_q.",),
    "cross_attn.kv_linear.": ("attn2.to_k.", "attn2.to_v."),
    "cross_attn.proj.": ("attn2.to_out.0.",),
    "mlp.fc1.": ("ff.net.0.proj.",),
    "mlp.fc2.": ("ff.net.2.",),
}


def _split_key(key: str, block_pattern: str) -> tuple[str, str, str]:
    """(block prefix or "", rest of the key, block index or "") of a state-dict key."""
    m = re.match(block_pattern, key)
    return ("", key, "") if m is None else (m.group(0), key[m.end() :], m.group(1))


def _to_diffusers_names(key: str) -> tuple[str, ...]:
    prefix, rest, index = _split_key(key, r"blocks\.(\d+)\.")
    for src, dsts in (_DIFFUSERS_BLOCK if prefix else _DIFFUSERS_TOP).items():
        if rest.startswith(src):
            return tuple(f"{'transformer_blocks.' + index + '.' if prefix else ''}{d}{rest[len(src) :]}" for d in dsts)
    raise ValueError(
        f"{key!r} has no counterpart in diffusers' PixArtTransformer2DModel (class and control embedders do not "
        "convert)"
    )


def _from_diffusers_name(key: str) -> tuple[str, int, int]:
    """(our key, row block, number of row blocks) of a diffusers key."""
    prefix, rest, index = _split_key(key, r"transformer_blocks\.(\d+)\.")
    for src, dsts in (_DIFFUSERS_BLOCK if prefix else _DIFFUSERS_TOP).items():
        for i, dst in enumerate(dsts):
            if rest.startswith(dst):
                return f"{'blocks.' + index + '.' if prefix else ''}{src}{rest[len(dst) :]}", i, len(dsts)
    raise ValueError(f"{key!r} is not a key of a PixArtTransformer2DModel without additional conditions")


def load_official_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, object], use_ema: bool = True
) -> dict[str, Tensor]:
    """Read a PixArt-alpha/PixArt-alpha checkpoint (e.g. ``PixArt-XL-2-256x256.pth``) as a :class:`PixArt` state dict.

    Released files hold ``{"state_dict": ...}``; training checkpoints may add ``"state_dict_ema"``. The file's fixed
    ``pos_embed`` is kept (the table its weights were trained with); the null caption ``y_embedder.y_embedding`` is
    dropped (the conditioner owns the null caption). Multi-scale (``PixArtMS``) checkpoints are refused.

    Args:
        path_or_state_dict: a checkpoint path, or an already loaded checkpoint / state dict.
        use_ema: prefer ``state_dict_ema`` when the checkpoint has one.

    Returns:
        The state dict under our names; load it with ``model.load_state_dict(sd)`` (strict).
    """
    ckpt = path_or_state_dict
    if isinstance(ckpt, str | os.PathLike):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected a PixArt checkpoint dict, got {type(ckpt).__name__}")
    for wrapper in ("state_dict_ema", "state_dict") if use_ema else ("state_dict",):
        if isinstance(ckpt.get(wrapper), Mapping):
            ckpt = ckpt[wrapper]
            break
    if any(k.startswith(("csize_embedder.", "ar_embedder.")) for k in ckpt):
        raise ValueError(
            "this is a multi-scale PixArtMS checkpoint (size / aspect-ratio embedders); only the "
            "fixed-resolution PixArt-α models (256x256, 512x512) are supported"
        )
    out: dict[str, Tensor] = {}
    for key, value in ckpt.items():
        if key == "y_embedder.y_embedding":
            continue
        for pattern, replacement in _OFFICIAL_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def diffusers_config(model: PixArt) -> dict[str, object]:
    """Keyword arguments of the ``diffusers.PixArtTransformer2DModel`` with the same architecture as ``model``."""
    if model.class_embedder is not None or model.control_embedder is not None:
        raise ValueError(
            "diffusers' PixArtTransformer2DModel has no class or control embedder; build the PixArt "
            "text-conditional (num_classes=None) and without control_names"
        )
    if model.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' PixArt blocks have mlp_ratio 4, this model has {model.mlp_ratio}")
    # fmt: off
    return {
        "num_attention_heads": model.num_heads, "attention_head_dim": model.hidden_size // model.num_heads,
        "in_channels": model.in_channels, "out_channels": model.out_channels, "num_layers": model.depth,
        "sample_size": model.input_size, "patch_size": model.patch_size, "cross_attention_dim": model.hidden_size,
        "caption_channels": model.context_dim, "interpolation_scale": model.pos_embed_scale,
        "use_additional_conditions": False, "norm_type": "ada_norm_single", "norm_elementwise_affine": False,
        "norm_eps": 1e-6, "activation_fn": "gelu-approximate", "attention_bias": True, "num_embeds_ada_norm": 1000,
    }
    # fmt: on


def to_diffusers_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a :class:`PixArt` state dict to ``PixArtTransformer2DModel`` names (see :func:`diffusers_config`).

    The fixed ``pos_embed`` is dropped (diffusers recomputes it from ``interpolation_scale``); fused projections are
    split (and cloned, since safetensors refuses tensors that share storage).
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key != "pos_embed":
            names = _to_diffusers_names(key)
            chunks = value.chunk(len(names), dim=0) if len(names) > 1 else (value,)
            out.update({name: chunk.clone() if len(names) > 1 else chunk for name, chunk in zip(names, chunks)})
    return out


def from_diffusers_state_dict(
    sd: Mapping[str, Tensor], input_size: int | None = None, pos_embed_scale: float = 1.0
) -> dict[str, Tensor]:
    """Convert a ``PixArtTransformer2DModel`` state dict (``use_additional_conditions=False``) to :class:`PixArt` names.

    Args:
        sd: the diffusers state dict.
        input_size: latent side (diffusers' ``sample_size``). When given, the fixed ``pos_embed`` (not stored by
            diffusers) is computed and included, so that ``load_state_dict`` can be strict.
        pos_embed_scale: diffusers' ``interpolation_scale`` of that model, used with ``input_size``.

    Returns:
        Our state dict.
    """
    parts: dict[str, dict[int, Tensor]] = {}
    counts: dict[str, int] = {}
    for key, value in sd.items():
        if key != "pos_embed.pos_embed":  # diffusers' position table, in the state dict of some versions only
            ours, index, count = _from_diffusers_name(key)
            parts.setdefault(ours, {})[index] = value
            counts[ours] = count
    out: dict[str, Tensor] = {}
    for key, found in parts.items():
        if len(found) != counts[key]:
            missing = [n for i, n in enumerate(_to_diffusers_names(key)) if i not in found]
            raise ValueError(f"{key!r} needs diffusers' {list(_to_diffusers_names(key))}, missing {missing}")
        out[key] = found[0] if counts[key] == 1 else torch.cat([found[i] for i in range(counts[key])], dim=0)
    if input_size is not None:
        hidden, _, patch, _ = out["x_embedder.proj.weight"].shape
        if input_size % patch:
            raise ValueError(f"input_size={input_size} is not divisible by the checkpoint's patch size {patch}")
        table = get_2d_sincos_pos_embed(hidden, input_size // patch, scale=pos_embed_scale)
        out["pos_embed"] = torch.from_numpy(table).float().unsqueeze(0)
    return out


# ---------------------------------------------------------------------------------------------------- Training recipe


def pixart_optimizer(params: Any) -> torch.optim.Optimizer:
    """PixArt-α's optimizer: AdamW, lr 2e-5, weight decay 0.03, eps 1e-10 (``PixArt_xl2_img256_internal.py``)."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.03, eps=1e-10)


def pixart_warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """A 1000-step linear warm-up then constant: factor ``min(1, (k + 1) / 1000)`` at step k (the reference's is
    ``k / 1000``, a zero first step)."""
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=999)


class PixArtModule(DiffusionModule):
    """PixArt-α with its recipe as defaults (Chen et al. 2024, §2.4 and §3.1; ``PixArt_xl2_img256_internal.py``).

    Recipe: DDPM with 1000 linear-β steps, ε-prediction with learned Σ (IDDPM), T5-XXL captions (120 tokens) dropped
    with p=0.1, AdamW lr 2e-5, weight decay 0.03, eps 1e-10, 1000 warm-up steps then constant, gradient clipping
    at norm 0.01 (set ``trainer.gradient_clip_val: 0.01``), EMA 0.9999, IDDPM sampling with 100 steps and CFG 4.5
    (the reference's ``iddpm`` setting; its default DPM-Solver is not in the suite). Every piece can be swapped
    from YAML. For class-labelled data set ``conditioner.semantic: class``: the class becomes one context token.

    Args:
        size: A row of ``SIZES`` (``PixArt-XL/2``, ``PixArt-tiny/2``, ...).
        learn_sigma: Predict the variance too (2C output channels). None (default) follows ``objective.learn_sigma``.
        pos_embed_scale: Position scale of the sin-cos table (the reference's ``lewei_scale``). None (default):
            ``resolution / 512`` as in the released models (0.5 at 256², 1 at 512²).
        class_context_dim: Width of the class table when class-conditional (the class token then passes the
            caption projection like a text token). None: the model width D.
        init_from: Path of an official PixArt-α checkpoint (``PixArt-XL-2-256x256.pth``, ...) loaded into the
            backbone and its EMA.
        objective: Training objective.
        sampler: Sampler of sample grids and ``predict``.
        guidance: Classifier-free guidance when sampling.
        conditioner: Batch → condition: captions through the named T5 encoder, or class labels.
        optimizer: Optimizer factory (:func:`pixart_optimizer`).
        lr_scheduler: LR-scheduler factory (:func:`pixart_warmup`).
        **kwargs: The remaining ``DiffusionModule`` arguments (autoencoder, resolution, num_classes, ema_decay, ...).
    """

    def __init__(
        self,
        size: str = "PixArt-XL/2",
        learn_sigma: bool | None = None,
        pos_embed_scale: float | None = None,
        class_context_dim: int | None = None,
        init_from: str | None = None,
        objective: Objective = lazy_instance(DDPM, learn_sigma=True),
        sampler: Sampler = lazy_instance(DDPMSampler, steps=100),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance, semantic_scale=4.5),
        conditioner: Conditioner = lazy_instance(
            Conditioner,
            semantic="caption",
            semantic_dropout=0.1,
            text_encoders={"t5": lazy_instance(TextEncoder, pretrained=T5_XXL, kind="t5", max_length=120)},
        ),
        optimizer: OptimizerCallable = pixart_optimizer,
        lr_scheduler: LRSchedulerCallable | None = pixart_warmup,
        **kwargs: Any,
    ) -> None:
        self.size, self.learn_sigma = size, learn_sigma
        self.pos_embed_scale, self.class_context_dim = pos_embed_scale, class_context_dim
        super().__init__(
            objective=objective,
            sampler=sampler,
            guidance=guidance,
            conditioner=conditioner,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            **kwargs,
        )
        if init_from is not None:
            state = load_official_checkpoint(init_from)
            self.backbone.load_state_dict(state)
            self.ema.shadow.load_state_dict(state)

    def build_backbone(self) -> nn.Module:
        """PixArt at this latent shape, for the conditioner's captions (its context width) or class labels."""
        c, h, _ = self.latent_shape
        size = pixart_size(self.size)
        semantic = self.conditioner.semantic
        if semantic == "caption":
            context = {"context_dim": self.conditioner.context_dim}
        elif semantic == "class":
            context = {"num_classes": self.num_classes, "context_dim": self.class_context_dim or size["hidden_size"]}
        else:
            raise ValueError(
                "PixArt is conditioned through cross-attention: set conditioner.semantic to 'caption' or 'class'"
            )
        return PixArt(
            input_size=h,
            in_channels=c,
            learn_sigma=self.objective.learn_sigma if self.learn_sigma is None else self.learn_sigma,
            pos_embed_scale=self.pos_embed_scale or self.resolution / 512,
            control_names=list(self.conditioner.control_names) or None,
            **context,
            **size,
        )
