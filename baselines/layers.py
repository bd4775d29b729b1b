"""Generic, conditioning-free transformer layers shared by the baselines.

``Attention``, ``Mlp`` and ``PatchEmbed`` are timm's layers, which the DiT, MDT and PixArt-α references take from timm,
under our constructor signatures: their parameter names (``qkv``/``proj``, ``fc1``/``fc2``, ``proj`` of the patch
embedding) are the reference checkpoints', so those load without renaming. ``scripts/timm_layers_perf.py`` compares
them with the plain-torch layers they replaced (forward parity, training-step speed).

Legend: N batch, C channels, H x W spatial size, p patch size, T = (H/p)(W/p) tokens, D width, h heads.
"""

from __future__ import annotations

import functools

import numpy as np
import timm.layers
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "CrossAttention",
    "Mlp",
    "PatchEmbed",
    "check_latent_input",
    "check_transformer_shape",
    "fill_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "init_embedder_mlps",
    "init_patch_embed_like_linear",
    "unpatchify",
    "xavier_init_linears",
    "zero_linear",
]

_gelu_tanh = functools.partial(nn.GELU, approximate="tanh")


class Attention(timm.layers.Attention):
    """timm's multi-head self-attention (fused ``qkv`` Linear, ``scaled_dot_product_attention``, output ``proj``), as
    the DiT, MDT and PixArt-α references use it.

    The ``qkv`` output is laid out (q | k | v), each head-major, so that its three row blocks are the separate
    ``to_q``/``to_k``/``to_v`` weights of diffusers. ``forward(x, attn_mask=None)`` maps (N, T, D) to (N, T, D).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        """Build the layer.

        Args:
            dim: token width D; must be divisible by ``num_heads``.
            num_heads: number of heads h; head width is ``dim // num_heads``.
            qkv_bias: whether the qkv projection has a bias (True in DiT).
        """
        if dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}")
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)
        # Always SDPA (timm's TIMM_FUSED_ATTN=0 would pick its unfused softmax path): the GPU flash kernels and the
        # parity tests assume it.
        self.fused_attn = True


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from the tokens (``q_linear``), keys and values from a context through one
    fused ``kv_linear`` laid out (k | v), each head-major, then ``proj``; PixArt-α's names and layout, so that the two
    row blocks of ``kv_linear`` are diffusers' ``to_k`` / ``to_v``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        """Build the layer.

        Args:
            dim: width D of both the tokens and the context; divisible by ``num_heads``.
            num_heads: attention heads h.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend.

        Args:
            x: (N, T, D) tokens (the queries).
            context: (N, L, D) context tokens (keys and values).
            mask: (N, L) bool, True on the keys to attend to; None attends to all. A row must have a True entry.

        Returns:
            (N, T, D).
        """
        n, t, d = x.shape
        q = self.q_linear(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)  # (N, h, T, D/h)
        kv = self.kv_linear(context).view(n, context.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x (N, h, L, D/h)
        attn_mask = None if mask is None else mask[:, None, None, :]  # broadcast over heads and queries
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(timm.layers.Mlp):
    """timm's two-layer feed-forward network ``fc2(GELU_tanh(fc1(x)))`` (DiT's tanh approximation of GELU)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        """Build the layer.

        Args:
            in_features: input width.
            hidden_features: inner width (``mlp_ratio * D`` in DiT).
            out_features: output width; defaults to ``in_features``.
        """
        super().__init__(in_features, hidden_features, out_features, act_layer=_gelu_tanh)


class PatchEmbed(timm.layers.PatchEmbed):
    """timm's patch embedding: non-overlapping patches → tokens by a Conv2d with kernel = stride = patch, flattened
    row-major; any input side divisible by the patch (no fixed image size)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, bias: bool = True) -> None:
        """Build the layer.

        Args:
            patch_size: side p of a square patch.
            in_channels: input channels C.
            embed_dim: token width D.
            bias: whether the projection has a bias (True in DiT).
        """
        super().__init__(img_size=None, patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Patchify (N, C, H, W) → (N, T, D), tokens ordered row by row (T = (H/p)(W/p))."""
        # One copy here into token-major memory: timm returns a transposed view, which every residual add after it
        # would inherit, and each LayerNorm and Linear of every block (and their backward) would copy it again.
        # Same values; the training step at the Shapes size is 5-7 % faster (DiT-tiny/2, batch 64, one thread;
        # leaderboards/perf).
        return super().forward(x).contiguous()


def _sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions → (M, embed_dim) as ``cat[sin(pos * omega), cos(pos * omega)]``, omega = 10000^(-i/half)."""
    half = embed_dim // 2
    omega = np.arange(half, dtype=np.float64)
    omega /= half
    omega = 1.0 / 10000**omega
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)  # (M, half)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Fixed 2-D sin-cos position table in the MAE / DiT convention.

    Tokens are row-major over a (gh, gw) grid. The *first* half of the channels encodes the column (x / width)
    index and the second half the row (y / height) index, each as ``cat[sin, cos]`` with frequencies
    ``10000^(-i / (embed_dim / 4))``. (MAE names the first half ``emb_h``, but it is fed the meshgrid's width
    coordinate; this is the table stored in the official DiT checkpoints.) Computed in float64 with numpy, as the
    reference does, and independent of torch's default device, so it also works while building on ``meta``.

    Args:
        embed_dim: width D; must be divisible by 4.
        grid_size: tokens per side, or (rows, columns).
        scale: the token positions are ``index / scale``. 1 (MAE, DiT) encodes integer positions; PixArt-α's
            ``lewei_scale`` (diffusers' ``interpolation_scale``, 0.5 at 256², 1 at 512², 2 at 1024²) maps every
            resolution onto the position range of its 512² model.

    Returns:
        (gh * gw, D) float64 array.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if scale <= 0:
        raise ValueError(f"the position scale must be positive, got {scale}")
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
    rows, cols = rows / np.float32(scale), cols / np.float32(scale)
    return np.concatenate([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], axis=1)


def unpatchify(x: Tensor, patch_size: int, channels: int, grid_size: tuple[int, int] | None = None) -> Tensor:
    """Inverse of patchifying: (N, T, p*p*C) → (N, C, gh*p, gw*p); each token's features are laid out (p, p, C).

    Args:
        x: (N, T, p * p * C) per-token predictions.
        patch_size: p.
        channels: C.
        grid_size: (gh, gw) with gh * gw = T; a square grid is assumed when omitted.

    Returns:
        (N, C, gh * p, gw * p).
    """
    n, t, f = x.shape
    p = patch_size
    if f != p * p * channels:
        raise ValueError(
            f"unpatchify got {f} features per token, expected patch_size^2 * channels = {p * p * channels}"
        )
    if grid_size is None:
        side = int(round(t**0.5))
        grid_size = (side, side)
    gh, gw = grid_size
    if gh * gw != t:
        raise ValueError(f"unpatchify got {t} tokens, which is not a {gh} x {gw} grid")
    x = x.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


# --------------------------------------------------------------------------------------------------------------------
# Argument checks and DiT-style initialisation shared by the patch transformers (DiT, MDTv2, PixArt-α, mmDiT)
# --------------------------------------------------------------------------------------------------------------------


def check_transformer_shape(input_size: int, patch_size: int, hidden_size: int, num_heads: int) -> None:
    """Raise ``ValueError`` unless a patch transformer of these sizes can be built.

    Args:
        input_size: latent side H = W; must be divisible by ``patch_size``.
        patch_size: patch side p.
        hidden_size: width D; must be divisible by ``num_heads`` and by 4 (the 2-D sin-cos table).
        num_heads: attention heads.
    """
    if input_size % patch_size:
        raise ValueError(f"input_size={input_size} is not divisible by patch_size={patch_size}")
    if hidden_size % num_heads or hidden_size % 4:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by 4")


def check_latent_input(
    model: str, x: Tensor, t: Tensor, in_channels: int, input_size: int | None, patch_size: int = 1
) -> None:
    """Raise ``ValueError`` unless ``x`` is a latent batch the backbone was built for and ``t`` its float times.

    Args:
        model: the backbone's name, for the message.
        x: (N, C, H, W) noisy latent.
        t: (N,) float diffusion time in [0, 1].
        in_channels: the C the backbone was built for.
        input_size: the side H = W it was built for; None accepts any side divisible by ``patch_size``.
        patch_size: patch side p that H and W must be divisible by.
    """
    fixed = input_size is not None
    if x.dim() != 4 or x.shape[1] != in_channels or (fixed and tuple(x.shape[2:]) != (input_size, input_size)):
        want = f"(N, {in_channels}, {input_size}, {input_size})" if fixed else f"(N, {in_channels}, H, W)"
        raise ValueError(f"{model} was built for inputs {want}, got {tuple(x.shape)}; set in_channels / input_size")
    if x.shape[-2] % patch_size or x.shape[-1] % patch_size:
        raise ValueError(f"latent {tuple(x.shape[2:])} is not divisible by patch_size={patch_size}")
    if t.shape != (x.shape[0],) or not t.is_floating_point():
        raise ValueError(
            f"t must be float time in [0, 1] (step k is k / 1000) of shape (N,) = ({x.shape[0]},), "
            f"got {t.dtype} {tuple(t.shape)}"
        )


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` in ``module`` (DiT's basic initialisation).

    The Linears are visited in registration order, so a seed draws the same weights as the reference's
    ``self.apply(_basic_init)``.

    Args:
        module: the model (or part) to initialise.
    """

    def init(layer: nn.Module) -> None:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    module.apply(init)


def init_patch_embed_like_linear(embed: PatchEmbed, zero_bias: bool = True) -> None:
    """Initialise the patch projection as the Linear over flattened p x p x C patches that it is (xavier-uniform).

    Args:
        embed: the patch embedding.
        zero_bias: also zero its bias (DiT, MDT); PixArt-α and SD3 keep the convolution's default bias.
    """
    w = embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if zero_bias and embed.proj.bias is not None:
        nn.init.zeros_(embed.proj.bias)


def init_embedder_mlps(*embedders: nn.Module | None) -> None:
    """Draw the two Linear weights of each embedder's ``mlp`` (Linear, activation, Linear) from N(0, 0.02²).

    This is DiT's initialisation of its timestep MLP, applied alike to the control and pooled-vector embedders.

    Args:
        *embedders: embedders with an ``mlp`` attribute, in the order to draw them; None and modules without an
            ``mlp`` (e.g. a class table) are skipped.
    """
    for embedder in embedders:
        mlp = getattr(embedder, "mlp", None)
        if mlp is not None:
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)


def zero_linear(layer: nn.Linear) -> None:
    """Zero a Linear's weight and bias (adaLN-Zero's output layers: the branch starts closed)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def fill_sincos_pos_embed(table: Tensor, grid_size: int, scale: float = 1.0) -> None:
    """Fill a (1, grid_size², D) position table (parameter or buffer) in place with :func:`get_2d_sincos_pos_embed`.

    A table on the meta device has no storage and is left as it is (meta builds only count and trace).

    Args:
        table: the (1, T, D) tensor to overwrite.
        grid_size: tokens per side.
        scale: the position scale of :func:`get_2d_sincos_pos_embed`.
    """
    if table.is_meta:
        return
    values = torch.from_numpy(get_2d_sincos_pos_embed(table.shape[-1], grid_size, scale=scale)).float()
    with torch.no_grad():
        table.copy_(values.unsqueeze(0))
