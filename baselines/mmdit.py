"""mmDiT: SD3's multimodal diffusion transformer, joint attention over image and context tokens.

Paper: Patrick Esser, Sumith Kulal, Andreas Blattmann, et al., "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis", ICML 2024, https://arxiv.org/abs/2403.03206 (§4, Fig. 2).
Reference implementation: https://github.com/Stability-AI/sd3-ref/blob/65e453f/mmdit.py (pinned at 65e453f); its
diffusers port ``SD3Transformer2DModel`` (diffusers 0.42) converts both ways with :func:`to_diffusers_state_dict` /
:func:`from_diffusers_state_dict` and gives identical outputs.

What makes it MMDiT: image tokens and context tokens (text, or here also class tokens) keep *separate weights*
(qkv, output projection, MLP, adaLN) but attend *jointly* over the concatenated sequence; every block of both
streams is modulated by one adaLN vector ``c = time embedding + pooled-vector embedding``; the last block's context
stream is "pre-only" (it contributes keys and values but has no output projection, MLP or residual). SD3 sizes
tie width and heads to depth (D = 64·depth, heads = depth); SD3-medium (depth 24) has 2,028,328,000 parameters
with 4096-d context tokens, a 2048-d pooled vector and a 16-channel latent.

Differences from the reference:

- Time at the interface is ``t`` in [0, 1] (t = 1 noise, the rectified-flow sigma); the embedder multiplies by
  1000 inside, as SD3 samples with ``timestep = 1000·sigma``.
- Class-conditional data: the class enters as ``class_tokens`` context token(s) (a table with a null row) *and*,
  in the role of SD3's pooled text vector, as a class embedding added to ``c``. ``semantic_in_adaln=False``
  removes the semantic part of ``c`` (pooled text or class) so that it reaches the network only through attention.
- Optional ``control_names``: an SDXL-style Fourier control embedder added to ``c`` (off by default).
- Optional ``mask_context``: padding context tokens are masked out of the attention keys (SD3 attends to them).
- Sizes: besides SD3's depth rule, "mmDiT-S/B/L/XL/2" use DiT's depth, width and heads, so the two families
  compare at equal width; ``pos_embed_max_size=None`` uses a table of exactly the training grid (DiT), a number
  stores SD3's larger table and centre-crops it to the input (SD3: 192).
- Initialisation (the reference ships inference code only) is DiT's: Xavier-uniform Linears, N(0, 0.02) for the
  embedder MLPs and tables, zero adaLN-Zero modulation and a zero output layer, so the initial prediction is 0.
- The QK-norm option is SD3.5's per-head RMSNorm with a learned scale; SD3.5's extra self-attention (MMDiT-X) is
  not implemented. Guidance, the objective and the sampler live in ``benchmark/`` and are shared by all models.
- State-dict names are the reference's except ``adaLN_modulation.1`` → ``adaLN_modulation.linear``.

Legend: N batch, C latent channels, H x W latent size, p patch, T image tokens, L context tokens, D width, h heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from torch import Tensor, nn

from baselines.dit import FinalLayer
from baselines.layers import (
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
from benchmark.objectives import Objective, RectifiedFlow
from benchmark.samplers import EulerSampler, Sampler
from conditioning.conditioner import Conditioner
from conditioning.embedders import ClassEmbedder, ControlEmbedder, TimestepEmbedder
from conditioning.joint import ClassTokens, PooledEmbedder
from conditioning.modulation import AdaLNZero, FinalAdaLN, modulate
from conditioning.types import Cond

__all__ = [
    "SIZES",
    "JointBlock",
    "MMDiT",
    "MMDiTModule",
    "StreamBlock",
    "diffusers_config",
    "from_diffusers_state_dict",
    "mmdit_size",
    "to_diffusers_state_dict",
]


# --------------------------------------------------------------------------------------------------------------- Blocks


class StreamAttention(nn.Module):
    """One stream's share of the joint attention: qkv (+ per-head RMS QK-norm) before it, ``proj`` after it.

    Args:
        dim, num_heads, qk_norm: width D, heads h and per-head RMS QK-norm, as :class:`JointBlock`.
        pre_only: no output projection (the last context block only feeds keys and values).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, pre_only: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows laid out (q | k | v), each head-major, as the reference
        self.ln_q = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.ln_k = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = None if pre_only else nn.Linear(dim, dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, L, D) tokens → q, k, v, each (N, h, L, D/h)."""
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, self.head_dim).unbind(2)  # (N, L, h, D/h) each
        q, k = self.ln_q(q), self.ln_k(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class StreamBlock(nn.Module):
    """One stream (image or context) of a joint block: adaLN-Zero pre-norm attention and MLP (sd3-ref's
    ``DismantledBlock``). A pre-only block has a (shift, scale) modulation and stops after the projections.

    Args:
        hidden_size, num_heads, mlp_ratio, qk_norm: as :class:`JointBlock`.
        pre_only: keep only the modulated norm and the qkv projection.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, pre_only: bool = False
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = StreamAttention(hidden_size, num_heads, qk_norm=qk_norm, pre_only=pre_only)
        if pre_only:  # nothing is added back to this stream, so there is no gate
            self.adaLN_modulation = FinalAdaLN(hidden_size, hidden_size)
        else:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
            self.adaLN_modulation = AdaLNZero(hidden_size, hidden_size, branches=("attn", "mlp"))

    def pre_attention(self, x: Tensor, c: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], object]:
        """Modulate, normalise and project ``x`` (N, L, D) under ``c`` (N, D); returns (q, k, v) and the mods."""
        mods = self.adaLN_modulation(c)
        first = mods if self.pre_only else mods["attn"]
        return self.attn.project(modulate(self.norm1(x), first.shift, first.scale)), mods

    def post_attention(self, x: Tensor, attended: Tensor, mods: object) -> Tensor:
        """Residual updates of ``x`` (N, L, D) from its slice of the attention output ``attended`` (N, L, D)."""
        attn, mlp = mods["attn"], mods["mlp"]
        x = x + attn.gate * self.attn.proj(attended)
        return x + mlp.gate * self.mlp(modulate(self.norm2(x), mlp.shift, mlp.scale))


class JointBlock(nn.Module):
    """An MMDiT block: both streams project, attend once over [context; image], and update their own tokens."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        context_pre_only: bool = False,
    ) -> None:
        """Build the block.

        Args:
            hidden_size: width D.
            num_heads: attention heads.
            mlp_ratio: MLP inner width as a multiple of D.
            qk_norm: per-head RMS QK-norm with a learned scale (SD3.5) in both streams.
            context_pre_only: the context stream only supplies keys and values (the last block).
        """
        super().__init__()
        self.context_pre_only = context_pre_only
        self.context_block = StreamBlock(hidden_size, num_heads, mlp_ratio, qk_norm, pre_only=context_pre_only)
        self.x_block = StreamBlock(hidden_size, num_heads, mlp_ratio, qk_norm)

    def forward(
        self, context: Tensor, x: Tensor, c: Tensor, attn_mask: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor]:
        """Update context (N, L, D) and image tokens (N, T, D) under the shared adaLN vector ``c`` (N, D).

        ``attn_mask`` is an optional (N, 1, 1, L + T) bool, True where a key may be attended. Returns
        (context, x); context is None after a pre-only block.
        """
        context_qkv, context_mods = self.context_block.pre_attention(context, c)
        x_qkv, x_mods = self.x_block.pre_attention(x, c)
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(context_qkv, x_qkv, strict=True))  # (N, h, L + T, D/h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).flatten(2)  # (N, L + T, D)
        length = context.shape[1]
        x = self.x_block.post_attention(x, out[:, length:], x_mods)
        if self.context_pre_only:
            return None, x
        return self.context_block.post_attention(context, out[:, :length], context_mods), x


# ---------------------------------------------------------------------------------------------------------------- Model


class MMDiT(nn.Module):
    """Multimodal diffusion transformer backbone: ``forward(x_t, t, cond) -> prediction`` with ``t`` in [0, 1].

    Subclasses change how conditions enter by overriding :meth:`embed_vector` (the adaLN vector ``c``; its parts
    :meth:`embed_semantic_vector` and :meth:`embed_control`) and :meth:`embed_context` (the context tokens).
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
        learn_sigma: bool = False,
        num_classes: int | None = None,
        context_dim: int | None = 4096,
        pooled_dim: int | None = 2048,
        class_tokens: int = 1,
        semantic_in_adaln: bool = True,
        control_names: list[str] | None = None,
        qk_norm: bool = False,
        pos_embed_max_size: int | None = None,
        mask_context: bool = False,
    ) -> None:
        """Build the backbone (defaults: "mmDiT-XL/2" with SD3's text inputs at 256², a 32x32x4 latent).

        Args:
            input_size: latent side H = W (the only size accepted when ``pos_embed_max_size`` is None).
            patch_size: patch side p.
            in_channels: latent channels C.
            hidden_size: width D; divisible by ``num_heads`` and by 4.
            depth: number of joint blocks; the last one's context stream is pre-only.
            num_heads: attention heads.
            mlp_ratio: MLP inner width as a multiple of D.
            learn_sigma: also predict the variance (2C output channels), for DDPM objectives.
            num_classes: class-conditional when given: the class is ``class_tokens`` context token(s) and, unless
                ``semantic_in_adaln`` is False, a class embedding added to ``c``. Caption inputs are then unused.
            context_dim: width E of the text tokens ``cond.tokens`` (SD3: 4096), projected to D; text models only.
            pooled_dim: width E' of ``cond.pooled`` (SD3: 2048); None for text encoders without a pooled vector.
            class_tokens: context tokens per class (class-conditional only).
            semantic_in_adaln: add the semantic vector (pooled text or class embedding) to ``c``, as SD3 does.
            control_names: control scalars to embed (SDXL-style Fourier embedder) and add to ``c``; None: none.
            qk_norm: per-head RMS QK-norm (SD3.5); False is SD3.
            pos_embed_max_size: side of SD3's stored position table, centre-cropped to the input's token grid
                (SD3: 192); None stores exactly the ``input_size / p`` grid.
            mask_context: mask padding context tokens (``cond.token_mask`` False) out of the attention keys.
        """
        super().__init__()
        check_transformer_shape(input_size, patch_size, hidden_size, num_heads)
        if num_classes is None and context_dim is None:
            raise ValueError("MMDiT needs a semantic condition: set num_classes (class) or context_dim (text)")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.num_classes = num_classes
        self.context_dim = None if num_classes is not None else context_dim
        self.pooled_dim = None if num_classes is not None else pooled_dim
        self.semantic_in_adaln, self.mask_context, self.qk_norm = semantic_in_adaln, mask_context, qk_norm
        self.grid_size = input_size // patch_size
        self.pos_embed_max_size = pos_embed_max_size
        if pos_embed_max_size is not None and pos_embed_max_size < self.grid_size:
            raise ValueError(f"pos_embed_max_size={pos_embed_max_size} is smaller than the {self.grid_size}-token grid")

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)  # SD3: cat[cos, sin], shift 0, 1000·sigma
        self.y_embedder: nn.Module | None = None  # the semantic vector added to c
        if num_classes is not None:
            self.class_embedder = ClassTokens(num_classes, hidden_size, class_tokens)
            if semantic_in_adaln:
                self.y_embedder = ClassEmbedder(num_classes, hidden_size)
        else:
            if semantic_in_adaln and pooled_dim is not None:
                self.y_embedder = PooledEmbedder(pooled_dim, hidden_size)
            self.context_embedder = nn.Linear(context_dim, hidden_size)
        self.control_embedder = ControlEmbedder(control_names, hidden_size) if control_names else None
        # A buffer, as in the reference: saved with the weights, not counted as parameters (nor trained).
        table = pos_embed_max_size or self.grid_size
        self.register_buffer("pos_embed", torch.zeros(1, table * table, hidden_size))
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, num_heads, mlp_ratio, qk_norm, context_pre_only=i == depth - 1)
            for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (see the module docstring): the reference ships no training code."""
        xavier_init_linears(self)
        fill_sincos_pos_embed(self.pos_embed, self.pos_embed_max_size or self.grid_size)
        init_patch_embed_like_linear(self.x_embedder, zero_bias=False)
        # A class-table y_embedder has no MLP and is skipped here (it is drawn with the tables below).
        init_embedder_mlps(self.t_embedder, self.y_embedder, self.control_embedder)
        for table in (getattr(getattr(self, "class_embedder", None), "embedder", None), self.y_embedder):
            if isinstance(table, ClassEmbedder):
                nn.init.normal_(table.embedding_table.weight, std=0.02)
        for block in self.joint_blocks:
            block.context_block.adaLN_modulation.reset_parameters()
            block.x_block.adaLN_modulation.reset_parameters()
        self.final_layer.adaLN_modulation.reset_parameters()
        zero_linear(self.final_layer.linear)

    # ------------------------------------------------------------------------------------------- conditioning

    def embed_semantic_vector(self, cond: Cond) -> Tensor | None:
        """The semantic part of ``c``: SD3's pooled-text embedding, or the class embedding; None if disabled."""
        return None if self.y_embedder is None else self.y_embedder(cond)

    def embed_control(self, t: Tensor, cond: Cond) -> Tensor | None:
        """The control part of ``c`` (N, D), or None without control; ``t`` lets subclasses schedule it."""
        return None if self.control_embedder is None else self.control_embedder(cond)

    def embed_vector(self, t: Tensor, cond: Cond) -> Tensor:
        """The adaLN vector ``c`` (N, D) = time embedding + semantic vector + control embedding."""
        c = self.t_embedder(t)
        for part in (self.embed_semantic_vector(cond), self.embed_control(t, cond)):
            if part is not None:
                c = c + part
        return c

    def embed_context(self, cond: Cond) -> tuple[Tensor, Tensor | None]:
        """The context tokens (N, L, D) and their mask (N, L) bool (True = real) or None (all real)."""
        if self.num_classes is not None:
            return self.class_embedder(cond), None
        if cond.tokens is None or cond.tokens.dim() != 3 or cond.tokens.shape[-1] != self.context_dim:
            got = None if cond.tokens is None else tuple(cond.tokens.shape)
            raise ValueError(f"MMDiT was built for text tokens (N, L, {self.context_dim}); cond.tokens is {got}")
        tokens = self.context_embedder(cond.tokens.to(self.context_embedder.weight.dtype))
        return tokens, cond.token_mask

    def cropped_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """The (1, grid_h * grid_w, D) centre crop of the stored position table (SD3's ``cropped_pos_embed``)."""
        side = self.pos_embed_max_size or self.grid_size
        if grid_h > side or grid_w > side:
            raise ValueError(f"a {grid_h} x {grid_w} token grid exceeds the {side} x {side} position table")
        top, left = (side - grid_h) // 2, (side - grid_w) // 2
        table = self.pos_embed.view(1, side, side, -1)[:, top : top + grid_h, left : left + grid_w]
        return table.reshape(1, grid_h * grid_w, -1)

    # ------------------------------------------------------------------------------------------------- forward

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Predict (N, out_channels, H, W) from a noisy latent.

        Args:
            x: (N, C, H, W) noisy latent; H = W = ``input_size`` unless ``pos_embed_max_size`` allows others.
            t: (N,) float time in [0, 1] (t = 1 is noise).
            cond: ``label`` (class models) or ``tokens`` (+ ``pooled``, ``token_mask``) (text models); ``control``
                when built with ``control_names``.
        """
        fixed = None if self.pos_embed_max_size is not None else self.input_size  # a cropped table takes any size
        check_latent_input("MMDiT", x, t, self.in_channels, fixed, self.patch_size)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.x_embedder(x) + self.cropped_pos_embed(*grid).to(x.dtype)  # (N, T, D)
        c = self.embed_vector(t, cond)  # (N, D)
        context, mask = self.embed_context(cond)  # (N, L, D), (N, L)
        attn_mask = None
        if self.mask_context and mask is not None:
            real = torch.ones(mask.shape[0], tokens.shape[1], dtype=torch.bool, device=mask.device)
            attn_mask = torch.cat([mask.bool(), real], dim=1)[:, None, None]  # (N, 1, 1, L + T)
        for block in self.joint_blocks:
            context, tokens = block(context, tokens, c, attn_mask)
        out = self.final_layer(tokens, c)  # (N, T, p * p * out_channels)
        return unpatchify(out, self.patch_size, self.out_channels, grid)


# ---------------------------------------------------------------------------------------------------------------- Sizes

_DIT_WIDTHS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

SIZES: dict[str, dict[str, int]] = {
    f"mmDiT-{name}/2": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": 2}
    for name, (depth, hidden, heads) in _DIT_WIDTHS.items()
}
# SD3's rule (Esser et al. §5.2): head width 64, D = 64·depth, heads = depth. Medium is the released SD3 model.
SIZES["SD3-medium"] = {"depth": 24, "hidden_size": 1536, "num_heads": 24, "patch_size": 2}
SIZES["SD3-d18"] = {"depth": 18, "hidden_size": 1152, "num_heads": 18, "patch_size": 2}
# Not in the paper: DiT-tiny/2's sizing, trains on a CPU on 8x8 latents (tests and the embedded Shapes suite).
SIZES["mmDiT-tiny/2"] = {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 2}


def mmdit_size(name: str) -> dict[str, int]:
    """The ``MMDiT(...)`` keyword arguments of a named size, e.g. ``MMDiT(**mmdit_size("mmDiT-XL/2"))``.

    Args:
        name: a key of :data:`SIZES`.

    Returns:
        A fresh dict with ``depth``, ``hidden_size``, ``num_heads`` and ``patch_size``.
    """
    if name not in SIZES:
        raise ValueError(f"unknown MMDiT size {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(SIZES[name])


# ------------------------------------------------------------------------------------- diffusers' SD3Transformer2DModel

_TOP = {  # ours -> diffusers, for Linear / Conv layers (weight and bias)
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
_STREAMS = {  # per stream: qkv's three diffusers layers, then the other layers
    "x_block": (("attn.to_q", "attn.to_k", "attn.to_v"), {"attn.proj": "attn.to_out.0",
                "adaLN_modulation.linear": "norm1.linear", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}),
    "context_block": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), {"attn.proj": "attn.to_add_out",
                      "adaLN_modulation.linear": "norm1_context.linear", "mlp.fc1": "ff_context.net.0.proj",
                      "mlp.fc2": "ff_context.net.2"}),
}  # fmt: skip
_QK_NORM = {"x_block": ("attn.norm_q", "attn.norm_k"), "context_block": ("attn.norm_added_q", "attn.norm_added_k")}


def _key_map(depth: int, qk_norm: bool) -> list[tuple[str, tuple[str, ...], bool]]:
    """(our key, its diffusers key(s), swap halves) for every tensor; a fused qkv maps to three diffusers tensors.

    sd3-ref's pre-only and final modulations regress (shift, scale); diffusers' ``AdaLayerNormContinuous`` regresses
    (scale, shift), so those two halves swap.
    """
    layers = [(ours, (theirs,), False) for ours, theirs in _TOP.items()]
    layers.append(("final_layer.adaLN_modulation.linear", ("norm_out.linear",), True))
    norms = []
    for i in range(depth):
        for stream, (qkv, table) in _STREAMS.items():
            src, dst = f"joint_blocks.{i}.{stream}.", f"transformer_blocks.{i}."
            pre_only = stream == "context_block" and i == depth - 1
            layers.append((f"{src}attn.qkv", tuple(dst + n for n in qkv), False))
            for ours, theirs in table.items():
                if not pre_only or ours == "adaLN_modulation.linear":
                    layers.append((src + ours, (dst + theirs,), pre_only))
            if qk_norm:
                norms += [
                    (f"{src}attn.{o}.weight", (dst + t + ".weight",), False)
                    for o, t in zip(("ln_q", "ln_k"), _QK_NORM[stream], strict=True)
                ]
    rows = [
        (f"{o}.{kind}", tuple(f"{t}.{kind}" for t in theirs), swap)
        for o, theirs, swap in layers
        for kind in ("weight", "bias")
    ]
    return rows + norms


def _swap_halves(w: Tensor) -> Tensor:
    return torch.cat(w.chunk(2, dim=0)[::-1], dim=0)


def _depth_of(keys: list[str], prefix: str) -> int:
    # Gaps or a missing prefix show up as missing / unknown keys in `_check_keys`.
    return 1 + max((int(k.split(".")[1]) for k in keys if k.startswith(prefix + ".")), default=-1)


def _check_keys(got: Mapping[str, Tensor], expected: set[str], what: str) -> None:
    missing, unknown = sorted(expected - set(got)), sorted(set(got) - expected)
    if missing or unknown:
        raise ValueError(f"{what}: missing keys {missing[:8]}, unknown keys {unknown[:8]}")


def diffusers_config(model: MMDiT) -> dict:
    """``SD3Transformer2DModel(**config)`` arguments describing the same network as ``model``."""
    return dict(sample_size=model.input_size, patch_size=model.patch_size, in_channels=model.in_channels,
                out_channels=model.out_channels, num_layers=model.depth, num_attention_heads=model.num_heads,
                attention_head_dim=model.hidden_size // model.num_heads, joint_attention_dim=model.context_dim,
                caption_projection_dim=model.hidden_size, pooled_projection_dim=model.pooled_dim,
                pos_embed_max_size=model.pos_embed_max_size, qk_norm="rms_norm" if model.qk_norm else None)  # fmt: skip


def to_diffusers_state_dict(sd: Mapping[str, Tensor], pos_embed_max_size: int | None = None) -> dict[str, Tensor]:
    """Convert an :class:`MMDiT` state dict (text, pooled vector in ``c``: SD3) for ``diffusers_config(model)``.

    Args:
        sd: our state dict.
        pos_embed_max_size: the model's ``pos_embed_max_size``; diffusers stores the position table only then.
    """
    if any(k.startswith(("class_embedder.", "control_embedder.")) for k in sd) or "y_embedder.mlp.0.weight" not in sd:
        raise ValueError("only text-conditioned MMDiTs with the pooled vector in c (SD3) exist in diffusers")
    rows = _key_map(_depth_of(list(sd), "joint_blocks"), "joint_blocks.0.x_block.attn.ln_q.weight" in sd)
    _check_keys(sd, {ours for ours, _, _ in rows} | {"pos_embed"}, "MMDiT state dict")
    out: dict[str, Tensor] = {}
    for ours, theirs, swap in rows:
        # Cloned so that the tensors split from qkv do not share storage (safetensors refuses shared tensors).
        parts = sd[ours].chunk(3, dim=0) if len(theirs) == 3 else [_swap_halves(sd[ours]) if swap else sd[ours]]
        out.update({name: part.clone() for name, part in zip(theirs, parts, strict=True)})
    if pos_embed_max_size is not None:
        out["pos_embed.pos_embed"] = sd["pos_embed"]
    return out


def from_diffusers_state_dict(sd: Mapping[str, Tensor], input_size: int | None = None) -> dict[str, Tensor]:
    """Convert an ``SD3Transformer2DModel`` state dict to :class:`MMDiT` names (a text-conditioned MMDiT).

    Args:
        sd: the diffusers state dict.
        input_size: latent side of the target model; needed only when ``sd`` has no stored position table
            (diffusers stores it only with ``pos_embed_max_size``), to compute the fixed table.
    """
    rows = _key_map(_depth_of(list(sd), "transformer_blocks"), "transformer_blocks.0.attn.norm_q.weight" in sd)
    expected = {name for _, theirs, _ in rows for name in theirs}
    _check_keys(sd, expected | ({"pos_embed.pos_embed"} & set(sd)), "SD3Transformer2DModel state dict")
    out: dict[str, Tensor] = {}
    for ours, theirs, swap in rows:
        value = torch.cat([sd[name] for name in theirs], dim=0)
        out[ours] = _swap_halves(value) if swap else value
    if "pos_embed.pos_embed" in sd:
        out["pos_embed"] = sd["pos_embed.pos_embed"]
    elif input_size is not None:
        hidden, _, patch, _ = out["x_embedder.proj.weight"].shape
        out["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, input_size // patch)).float()[None]
    return out


# ------------------------------------------------------------------------------------------------------ Training recipe


class MMDiTModule(DiffusionModule):
    """mmDiT with SD3's recipe as defaults (Esser et al. 2024, §2–3, §5).

    Recipe: rectified flow (velocity target, logit-normal(0, 1) training times, the objective's resolution shift),
    Euler sampling with classifier-free guidance, AdamW lr 1e-4 (the paper's) without weight decay, EMA 0.9999,
    semantic condition dropped with p = 0.1. Captions use the conditioner's named text encoders (SD3: CLIP-L and
    bigG penultimate states side by side, T5-XXL appended along the sequence, the CLIP pooled vectors concatenated);
    a class label (``semantic: class``) is a context token and, as SD3's pooled vector, part of the adaLN vector.

    Args:
        size: A row of ``SIZES`` (``mmDiT-XL/2``, ``SD3-medium``, ``mmDiT-tiny/2``, ...).
        learn_sigma: Predict the variance too (2C output channels); None follows ``objective.learn_sigma``.
        qk_norm: Per-head RMS QK-norm (SD3.5; the paper's §5.3.1 fix for unstable high-resolution training).
        pos_embed_max_size: Side of SD3's stored position table, centre-cropped to the latent (SD3: 192); None
            stores exactly the training grid.
        class_tokens: Context tokens per class label (class-conditional data).
        semantic_in_adaln: Add the semantic vector (pooled text or class embedding) to the adaLN vector, as SD3.
        mask_context: Mask padding text tokens out of the attention (SD3 attends to them).
        objective: Training objective (SD3: rectified flow, logit-normal t).
        sampler: Sampler for sample grids and ``predict`` (Euler).
        guidance: Classifier-free guidance while sampling.
        conditioner: Batch → condition; ``semantic: caption`` with named ``text_encoders`` for text, ``class``
            for labels; its ``control_names`` switch on the SDXL-style control embedder.
        **kwargs: The remaining `DiffusionModule` arguments (autoencoder, optimizer, resolution, num_classes, ...).
    """

    def __init__(
        self,
        size: str = "mmDiT-XL/2",
        learn_sigma: bool | None = None,
        qk_norm: bool = False,
        pos_embed_max_size: int | None = None,
        class_tokens: int = 1,
        semantic_in_adaln: bool = True,
        mask_context: bool = False,
        objective: Objective = lazy_instance(RectifiedFlow),
        sampler: Sampler = lazy_instance(EulerSampler, steps=50),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance, semantic_scale=1.5),
        conditioner: Conditioner = lazy_instance(Conditioner, semantic="class", semantic_dropout=0.1),
        **kwargs: Any,
    ) -> None:
        mmdit_size(size)  # fail early on an unknown size
        self.size, self.learn_sigma, self.qk_norm = size, learn_sigma, qk_norm
        self.pos_embed_max_size, self.class_tokens = pos_embed_max_size, class_tokens
        self.semantic_in_adaln, self.mask_context = semantic_in_adaln, mask_context
        super().__init__(objective=objective, sampler=sampler, guidance=guidance, conditioner=conditioner, **kwargs)

    def backbone_kwargs(self) -> dict[str, Any]:
        """The ``MMDiT`` arguments this module builds; a subclass extends or replaces them."""
        channels, height, _ = self.latent_shape
        semantic = self.conditioner.semantic
        if semantic not in ("class", "caption"):
            raise ValueError(f"MMDiT needs semantic 'class' or 'caption' (context tokens), got {semantic!r}")
        text = semantic == "caption"
        return dict(
            input_size=height,
            in_channels=channels,
            learn_sigma=self.objective.learn_sigma if self.learn_sigma is None else self.learn_sigma,
            num_classes=None if text else self.num_classes,
            context_dim=self.conditioner.context_dim if text else None,
            pooled_dim=self.conditioner.pooled_dim if text else None,
            class_tokens=self.class_tokens,
            semantic_in_adaln=self.semantic_in_adaln,
            control_names=list(self.conditioner.control_names) or None,
            qk_norm=self.qk_norm,
            pos_embed_max_size=self.pos_embed_max_size,
            mask_context=self.mask_context,
            **mmdit_size(self.size),
        )

    def build_backbone(self) -> nn.Module:
        """The MMDiT of ``size`` for this module's latents and conditioning."""
        return MMDiT(**self.backbone_kwargs())
