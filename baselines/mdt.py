"""MDTv2: a masked diffusion transformer with an encoder, a side-interpolater and a decoder.

Papers: Shanghua Gao, Pan Zhou, Ming-Ming Cheng, Shuicheng Yan, "Masked Diffusion Transformer is a Strong Image
Synthesizer", ICCV 2023, https://arxiv.org/abs/2303.14389 (v1), and its MDTv2 revision (arXiv 2303.14389v2, which
adds the long skips, the learnable position tables and the mask/full loss pair used here).
Reference implementation: https://github.com/sail-sg/MDT/blob/7d26c21/masked_diffusion/models.py (pinned at
7d26c21), with its training loop ``masked_diffusion/train_util.py`` and launch scripts ``run.sh`` /
``run_ddp_master.sh`` at the same commit.

The model (class ``MDTv2`` in the reference) is a DiT whose blocks are arranged as a U-Net-like encoder followed by
a decoder. During training a random 30–50 % of the latent tokens are dropped before the encoder; the
*side-interpolater* (one extra block) then predicts the dropped tokens from the kept ones, and the decoder sees the
full sequence again. At inference nothing is masked: the side-interpolater is skipped. Structure::

    tokens = patchify(x) + pos_embed                                        (N, T, D), kept as the decoder skip
    [mask]  keep a random (1 - r) of the tokens                             (N, K, D), K = int(T (1 - r))
    en_inblocks[0..h)         each output pushed on a stack                 h = (depth - decode_layer) // 2
    en_outblocks[0..h)        skip_linear(cat[x, stack.pop()]) first        U-Net long skips
    [mask]  side-interpolater: mask tokens in the gaps + decoder_pos_embed, one block, used on the gaps only
    [full]  + decoder_pos_embed
    de_blocks[0..decode_layer) skip_linear(cat[x, tokens]) first           every decoder block sees the input tokens
    final_layer, unpatchify

Every block is a DiT block (adaLN-Zero on ``c = t_emb + y_emb``) whose attention adds a learned, per-block relative
position bias (BEiT's table of (2g - 1)² + 3 entries per head for a g x g grid); masked passes gather the bias of
the kept tokens. MDTv2-XL/2 at 256² has 742,263,904 parameters and costs 129.49 GMACs per unmasked forward.

Training (:class:`MDTModule`) sums a full-sequence loss and a masked one (r ~ U[0.3, 0.5]) at the same t.
``decode_layer`` is 4 for B, L and XL and 6 for S (``run.sh``); the side-interpolater is always one block.

Differences from the reference:

- Time at the interface is continuous ``t`` in [0, 1]; the timestep embedder multiplies by 1000 (DDPM step k is
  ``t = k / 1000``), as in ``baselines/dit.py``.
- Label dropout lives in the shared conditioner (the model reads ``cond.semantic_null``); the null class row
  always exists. Optional ``control_names`` add an SDXL-style control embedding to ``c`` (off by default).
- The mask ratio is an argument of ``forward`` (``mask_ratio=0`` is the unmasked model) drawn by the training
  loop, instead of ``enable_mask`` plus a ratio drawn inside the model from ``U[mask_ratio, mask_ratio + 0.2]``.
  As in the reference one ratio serves the whole batch, and each sample gets its own random token subset.
- The two losses share t *and* the noise (the reference shares t but draws fresh noise in each
  ``training_losses`` call); ``MDTModule(share_noise=False)`` restores the reference's draw.
- The reference's ε-MSE carries a Min-SNR-5 weight ``min(SNR, 5) / SNR`` (its ``gaussian_diffusion.py``); here it is
  the objective's option ``DDPM(min_snr_gamma=5)``, this entry's default (the weight belongs to the objective, not
  the model, so any DDPM entry can use it).
- Adan from ``pytorch-optimizer`` (or sail-sg's ``adan`` package); AdamW at the same lr and weight decay (warned)
  when neither is installed.
- Attention is ``scaled_dot_product_attention`` with the relative bias as an additive float mask (the reference's
  math); a masked pass gathers the bias through the kept tokens' relative indices. ``relative_position_index`` is
  a non-persistent buffer, which the importer checks and drops; the other state-dict names are the reference's
  except ``adaLN_modulation.1`` → ``adaLN_modulation.linear``.
- ``forward_with_cfg`` is not here: guidance (the power-cosine schedule, and guidance on 3 of 4 channels, which MDT
  inherits from DiT) is ``benchmark/guidance.py``'s.

Legend: N batch, C latent channels, H x W latent, p patch, T = HW/p² tokens, K kept tokens, D width, h heads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from baselines.dit import FinalLayer
from baselines.layers import (
    Attention,
    Mlp,
    PatchEmbed,
    check_latent_input,
    check_transformer_shape,
    fill_sincos_pos_embed,
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
from conditioning.conditioner import Conditioner
from conditioning.embedders import ClassEmbedder, ControlEmbedder, TimestepEmbedder
from conditioning.modulation import AdaLNZero, modulate
from conditioning.types import Cond

__all__ = [
    "SIZES",
    "MDTBlock",
    "MDTModule",
    "MDTv2",
    "RelativePositionBias",
    "RelPosAttention",
    "load_official_checkpoint",
    "mdt_optimizer",
    "mdt_size",
    "relative_position_index",
]


# --------------------------------------------------------------------------------------------------------------------
# Relative position bias and the blocks
# --------------------------------------------------------------------------------------------------------------------


def relative_position_index(grid_size: int) -> np.ndarray:
    """BEiT's (T, T) index of row-major tokens on a g x g grid: offset (dy, dx) ↦ (dy + g - 1)(2g - 1) + dx + g - 1.

    The table has (2g - 1)² + 3 rows: BEiT's 3 extra rows (class-token pairs) exist but are never indexed.
    """
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    coords = np.stack([rows.reshape(-1), cols.reshape(-1)])  # (2, T)
    offsets = coords[:, :, None] - coords[:, None, :] + (grid_size - 1)  # (2, T, T), each in [0, 2g - 2]
    return offsets[0] * (2 * grid_size - 1) + offsets[1]


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset, added to the attention logits (BEiT, as used by MDT).

    Args:
        grid_size: tokens per side g of the square grid.
        num_heads: attention heads h (one bias per head).
    """

    def __init__(self, grid_size: int, num_heads: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid_size - 1) ** 2 + 3, num_heads))
        index = torch.empty(grid_size**2, grid_size**2, dtype=torch.long)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal (std 0.02) table, as the reference; the index is recomputed (e.g. after ``to_empty``)."""
        if self.relative_position_index.is_meta:  # nothing to fill on meta: meta builds only count and trace
            return
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        index = torch.from_numpy(relative_position_index(self.grid_size))
        self.relative_position_index.copy_(index)

    def forward(self, ids_keep: Tensor | None = None) -> Tensor:
        """The additive attention bias: (h, T, T) for the full grid, or (N, h, K, K) among kept tokens ``ids_keep``."""
        index = self.relative_position_index  # (T, T)
        if ids_keep is None:
            return self.relative_position_bias_table[index].permute(2, 0, 1)  # (h, T, T)
        index = index[ids_keep[:, :, None], ids_keep[:, None, :]]  # (N, K, K)
        return self.relative_position_bias_table[index].permute(0, 3, 1, 2)  # (N, h, K, K)


class RelPosAttention(Attention):
    """Self-attention (``baselines.layers.Attention``) plus a per-layer relative position bias on the logits.

    Args:
        dim: token width D.
        num_heads: heads h; must divide D.
        grid_size: tokens per side of the full grid (the bias table's extent).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__(dim, num_heads, qkv_bias=True)
        self.rel_pos_bias = RelativePositionBias(grid_size, num_heads)

    def forward(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Attend over (N, K, D) tokens; ``ids_keep`` (N, K) gives their grid positions (None: the full grid)."""
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, N, h, K, D/h)
        bias = self.rel_pos_bias(ids_keep).to(qkv.dtype)  # SDPA wants the float mask in the query's dtype
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)  # (N, h, K, D/h)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class MDTBlock(nn.Module):
    """A DiT block (adaLN-Zero) with relative-position attention and an optional long-skip fusion in front.

    Args:
        hidden_size: width D.
        num_heads: attention heads.
        grid_size: tokens per side of the full grid.
        mlp_ratio: MLP inner width as a multiple of D.
        skip: fuse a skip input first, ``x = skip_linear(cat[x, skip])`` (a Linear 2D → D).
    """

    def __init__(self, hidden_size: int, num_heads: int, grid_size: int, mlp_ratio: float = 4.0, skip: bool = False):
        super().__init__()
        # Registration order is the reference's (norm1, attn, norm2, mlp, adaLN_modulation, skip_linear).
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = RelPosAttention(hidden_size, num_heads, grid_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = AdaLNZero(hidden_size, hidden_size, branches=("attn", "mlp"))
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if skip else None

    def forward(self, x: Tensor, c: Tensor, skip: Tensor | None = None, ids_keep: Tensor | None = None) -> Tensor:
        """Apply the block to tokens ``x`` (N, K, D) under ``c`` (N, D); ``skip`` (N, K, D) when built with one."""
        if (skip is None) != (self.skip_linear is None):
            raise ValueError("an MDT block built with skip=True needs a skip input, and one without must get none")
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        mods = self.adaLN_modulation(c)
        attn, mlp = mods["attn"], mods["mlp"]
        x = x + attn.gate * self.attn(modulate(self.norm1(x), attn.shift, attn.scale), ids_keep=ids_keep)
        x = x + mlp.gate * self.mlp(modulate(self.norm2(x), mlp.shift, mlp.scale))
        return x


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class MDTv2(nn.Module):
    """MDTv2 backbone: ``forward(x_t, t, cond, mask_ratio=0.0) -> prediction`` with ``t`` in [0, 1]."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        decode_layer: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        control_names: list[str] | None = None,
    ) -> None:
        """Build the backbone (defaults: MDTv2-XL/2 at 256², i.e. a 32x32 SD-VAE latent).

        Args:
            input_size: latent side H = W; the position tables and relative-bias grids are sized for it.
            patch_size: patch side p; divides ``input_size``.
            in_channels: latent channels C.
            hidden_size: width D; divisible by ``num_heads`` and by 4 (2-D sin-cos initialisation).
            depth: the reference's ``depth``: ``decode_layer`` decoder blocks plus (depth - decode_layer) // 2
                encoder-in and as many encoder-out blocks (the side-interpolater block comes on top).
            num_heads: attention heads.
            decode_layer: decoder blocks (4 for MDTv2-B/L/XL, 6 for S in the reference's scripts).
            mlp_ratio: MLP inner width as a multiple of D.
            num_classes: real classes; the class table has one more row, the null class.
            learn_sigma: predict the variance too (2C output channels).
            control_names: control scalars to embed with a ``ControlEmbedder`` and add to ``c``; None disables.
        """
        super().__init__()
        check_transformer_shape(input_size, patch_size, hidden_size, num_heads)
        half_depth = (depth - decode_layer) // 2
        if decode_layer < 0 or half_depth < 1:
            raise ValueError(f"need 0 <= decode_layer < depth - 1, got depth={depth}, decode_layer={decode_layer}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma, self.num_classes = learn_sigma, num_classes
        self.hidden_size, self.depth, self.decode_layer, self.num_heads = hidden_size, depth, decode_layer, num_heads
        self.grid_size = g = input_size // patch_size
        self.num_tokens = g * g

        def block(skip: bool = False) -> MDTBlock:
            return MDTBlock(hidden_size, num_heads, g, mlp_ratio, skip=skip)

        # Registration order is the reference's, so that a seed draws the weights in the same order.
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = ClassEmbedder(num_classes, hidden_size)
        self.control_embedder = ControlEmbedder(control_names, hidden_size) if control_names else None
        # Learnable (sin-cos initialised) position tables: one for the encoder input, one for the decoder input.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, hidden_size))
        self.en_inblocks = nn.ModuleList([block() for _ in range(half_depth)])
        self.en_outblocks = nn.ModuleList([block(skip=True) for _ in range(half_depth)])
        self.de_blocks = nn.ModuleList([block(skip=True) for _ in range(decode_layer)])
        self.sideblocks = nn.ModuleList([block()])  # the side-interpolater
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference's ``initialize_weights`` (with ``mask_ratio`` set, i.e. the trained configuration)."""
        xavier_init_linears(self)
        for module in self.modules():
            if isinstance(module, RelativePositionBias):
                module.reset_parameters()
        # Both learnable position tables start from the same sin-cos table.
        fill_sincos_pos_embed(self.pos_embed, self.grid_size)
        fill_sincos_pos_embed(self.decoder_pos_embed, self.grid_size)
        init_patch_embed_like_linear(self.x_embedder, zero_bias=True)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        # The control embedder is not in the reference: it is treated like the timestep MLP.
        init_embedder_mlps(self.t_embedder, self.control_embedder)
        for blk in self.blocks():  # adaLN-Zero: every block starts as the identity
            blk.adaLN_modulation.reset_parameters()
        self.final_layer.adaLN_modulation.reset_parameters()
        zero_linear(self.final_layer.linear)
        nn.init.normal_(self.mask_token, std=0.02)

    def blocks(self) -> list[MDTBlock]:
        """Every block in execution order of a masked pass: encoder in, encoder out, side-interpolater, decoder."""
        return [*self.en_inblocks, *self.en_outblocks, *self.sideblocks, *self.de_blocks]

    # ------------------------------------------------------------------------------------------------ masking
    def random_masking(self, x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keep a random ``int(T * (1 - mask_ratio))`` of each sample's (N, T, D) tokens (MAE's shuffle by argsort).

        Returns:
            ``(x_kept (N, K, D), mask (N, T) with 1 where dropped, ids_restore (N, T), ids_keep (N, K))``.
        """
        n, t, d = x.shape
        keep = int(t * (1 - mask_ratio))
        if not 1 <= keep <= t:
            raise ValueError(f"mask_ratio={mask_ratio} keeps {keep} of {t} tokens; it must keep at least one")
        ids_shuffle = torch.argsort(torch.rand(n, t, device=x.device), dim=1)  # ascending: the first K are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep[:, :, None].expand(n, keep, d))
        mask = torch.ones(n, t, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # back in grid order
        return x_kept, mask, ids_restore, ids_keep

    def side_interpolater(self, x: Tensor, c: Tensor, mask: Tensor, ids_restore: Tensor) -> Tensor:
        """Restore the full sequence: mask tokens fill the gaps, one block predicts them, kept tokens pass through.

        Args:
            x: (N, K, D) encoder output of the kept tokens (shuffled order); c: (N, D) conditioning vector.
            mask: (N, T), 1 where a token was dropped; ids_restore: (N, T) permutation back to grid order.

        Returns:
            (N, T, D), with ``decoder_pos_embed`` added.
        """
        (n, k, d), t = x.shape, ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(n, t - k, d)], dim=1)
        x = torch.gather(x, 1, ids_restore[:, :, None].expand(n, t, d)) + self.decoder_pos_embed  # (N, T, D)
        interpolated = x
        for blk in self.sideblocks:
            interpolated = blk(interpolated, c)
        # Masked shortcut: the block's prediction only replaces the dropped tokens.
        mask = mask[:, :, None]
        return interpolated * mask + x * (1 - mask)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor, t: Tensor, cond: Cond, mask_ratio: float = 0.0) -> Tensor:
        """Predict from a noisy latent ``x`` (N, C, H, W) at time ``t`` (N,) in [0, 1] (1 = noise, DDPM k = k/1000).

        Args:
            cond: ``label`` (``semantic_null`` selects the null class); ``control`` if built with ``control_names``.
            mask_ratio: fraction of tokens hidden from the encoder (training's mask latent modelling); 0, the
                default and the inference setting, runs the unmasked model and skips the side-interpolater.

        Returns:
            (N, out_channels, H, W); with ``learn_sigma`` the first C channels are ε, the last C the variance values.
        """
        check_latent_input("MDTv2", x, t, self.in_channels, self.input_size)
        mask_ratio = float(mask_ratio)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(cond)  # (N, D)
        if self.control_embedder is not None:
            c = c + self.control_embedder(cond)
        tokens = x  # the decoder's skip input: every token, unmasked
        ids_keep = None
        if mask_ratio > 0:
            x, mask, ids_restore, ids_keep = self.random_masking(x, mask_ratio)  # (N, K, D)
        skips = []
        for blk in self.en_inblocks:
            x = blk(x, c, ids_keep=ids_keep)
            skips.append(x)
        for blk in self.en_outblocks:  # U-Net order: the last encoder-in output meets the first encoder-out block
            x = blk(x, c, skip=skips.pop(), ids_keep=ids_keep)
        # Masked: the side-interpolater restores all T tokens. Unmasked: only the decoder's position table is added.
        x = self.side_interpolater(x, c, mask, ids_restore) if ids_keep is not None else x + self.decoder_pos_embed
        for blk in self.de_blocks:
            x = blk(x, c, skip=tokens)
        x = self.final_layer(x, c)  # (N, T, p * p * out_channels)
        return unpatchify(x, self.patch_size, self.out_channels, (self.grid_size, self.grid_size))


# --------------------------------------------------------------------------------------------------------------------
# Sizes (the reference's MDTv2_{S,B,L,XL}_2 and the decode_layer of its scripts)
# --------------------------------------------------------------------------------------------------------------------

SIZES: dict[str, dict[str, int]] = {
    "MDTv2-S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2, "decode_layer": 6},
    "MDTv2-B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2, "decode_layer": 4},
    "MDTv2-L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2, "decode_layer": 4},
    "MDTv2-XL/2": {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2, "decode_layer": 4},
    # Not in the paper: trains on a CPU on 8x8 latents; 1 + 1 encoder, 1 side, 2 decoder blocks.
    "MDTv2-tiny/2": {"depth": 4, "hidden_size": 88, "num_heads": 4, "patch_size": 2, "decode_layer": 2},
}


def mdt_size(name: str) -> dict[str, int]:
    """A fresh dict of the ``MDTv2(...)`` keyword arguments of the size ``name``, a key of :data:`SIZES`."""
    if name not in SIZES:
        raise ValueError(f"unknown MDTv2 size {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(SIZES[name])


def mdt_optimizer(params: Iterable, lr: float = 3e-4, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The MDTv2 optimizer: Adan at lr 3e-4, no weight decay, gradient norm clipped to 1 inside it.

    Adan comes from ``pytorch-optimizer`` (a dependency: ``pytorch_optimizer.Adan``, whose default betas
    (0.98, 0.92, 0.99) and eps 1e-8 are sail-sg/Adan's, the reference's), else from sail-sg's ``adan`` package; with
    neither it warns and returns AdamW at the same lr and weight decay, and the trainer's ``gradient_clip_val: 1.0``
    then keeps Adan's clipping.

    Args:
        params: the parameters to optimise.
        lr: learning rate (3e-4 for XL in the reference; its ``run.sh`` uses 5e-4 for S).
        weight_decay: weight decay (0 in the reference, so where it is applied does not matter).
    """
    try:
        from pytorch_optimizer import Adan
    except ImportError:
        try:
            from adan import Adan
        except ImportError:
            warnings.warn(
                "neither pytorch-optimizer nor sail-sg's adan package is installed: MDTv2 trains with AdamW instead "
                "of Adan (pip install pytorch-optimizer)",
                stacklevel=2,
            )
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return Adan(params, lr=lr, weight_decay=weight_decay, max_grad_norm=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Official checkpoints (sail-sg/MDT releases: plain state dicts such as ``mdt_xl2_v2_ckpt.pt``)
# --------------------------------------------------------------------------------------------------------------------

# Names of the reference's modules; "adaLN_modulation.1" is the Linear of its Sequential(SiLU, Linear).
_TOP_KEYS = tuple(
    "pos_embed decoder_pos_embed mask_token y_embedder.embedding_table.weight x_embedder.proj.weight "
    "x_embedder.proj.bias t_embedder.mlp.0.weight t_embedder.mlp.0.bias t_embedder.mlp.2.weight t_embedder.mlp.2.bias "
    "final_layer.linear.weight final_layer.linear.bias final_layer.adaLN_modulation.1.weight "
    "final_layer.adaLN_modulation.1.bias".split()
)
_BLOCK_KEYS = ["attn.rel_pos_bias.relative_position_bias_table", "attn.rel_pos_bias.relative_position_index"]
_BLOCK_KEYS += [
    f"{m}.{kind}"
    for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
    for kind in ("weight", "bias")
]
_GROUPS = {"en_inblocks": False, "en_outblocks": True, "de_blocks": True, "sideblocks": False}  # name: has skip


def _official_keys(counts: Mapping[str, int]) -> set[str]:
    keys = set(_TOP_KEYS)
    for group, skip in _GROUPS.items():
        for i in range(counts[group]):
            names = _BLOCK_KEYS + (["skip_linear.weight", "skip_linear.bias"] if skip else [])
            keys |= {f"{group}.{i}.{k}" for k in names}
    return keys


def load_official_checkpoint(path_or_state_dict: str | os.PathLike | Mapping[str, object]) -> dict[str, Tensor]:
    """Read a sail-sg/MDT checkpoint and return a state dict for :class:`MDTv2`.

    The released ``mdt_xl2_v2_ckpt.pt`` (EMA weights) and the training loop's ``model*.pt`` / ``ema_*.pt`` are plain
    state dicts; a ``module.`` / ``_orig_mod.`` prefix is stripped and an ``{"ema"|"model": ...}`` wrapper unwrapped.

    Args:
        path_or_state_dict: a checkpoint path (loaded with ``weights_only=True``), or a loaded state dict.

    Returns:
        The state dict under our names (``adaLN_modulation.1`` → ``adaLN_modulation.linear``; the derived
        ``relative_position_index`` buffers are checked against the grid and dropped), for an ``MDTv2`` of that size.
    """
    ckpt = path_or_state_dict
    if isinstance(ckpt, str | os.PathLike):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected an MDT checkpoint dict, got {type(ckpt).__name__}")
    for wrapper in ("ema", "model"):
        if isinstance(ckpt.get(wrapper), Mapping):
            ckpt = ckpt[wrapper]
            break
    sd = dict(ckpt)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    counts = {g: len({k.split(".")[1] for k in sd if k.startswith(f"{g}.")}) for g in _GROUPS}
    expected = _official_keys(counts)
    unknown, missing = sorted(set(sd) - expected), sorted(expected - set(sd))
    if unknown or missing or counts["sideblocks"] != 1 or counts["en_inblocks"] != counts["en_outblocks"]:
        raise ValueError(
            f"checkpoint does not match the official MDTv2 layout (blocks {counts}): {len(unknown)} unknown key(s) "
            f"{unknown[:20]}, {len(missing)} missing key(s) {missing[:20]}"
        )
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    index = torch.from_numpy(relative_position_index(grid))
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("relative_position_index"):
            if not torch.equal(value.long().cpu(), index):
                raise ValueError(f"{key} is not the relative index of a {grid}x{grid} grid")
            continue
        out[key.replace("adaLN_modulation.1.", "adaLN_modulation.linear.")] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# Training recipe
# --------------------------------------------------------------------------------------------------------------------


class MDTModule(DiffusionModule):
    """MDTv2 with its ImageNet recipe as defaults (``train_util.py``, ``run_ddp_master.sh``, ``image_sample.py``).

    Every step adds the loss of a masked pass (one ratio r ~ U[0.3, 0.5] per step) to the loss of the full pass.

    Args:
        size: A row of ``SIZES`` (``MDTv2-XL/2``, ``MDTv2-S/2``, ``MDTv2-tiny/2``, ...).
        learn_sigma: Predict the variance too. None (default) follows ``objective.learn_sigma``.
        mask_ratio: (lo, hi) of the uniform mask-ratio draw of the masked pass (the reference: 0.3 + 0.2·U).
        share_noise: The masked pass reuses the full pass's noise (True) or draws its own (False, the reference).
        init_from: Path of an official sail-sg/MDT checkpoint (e.g. ``mdt_xl2_v2_ckpt.pt``) loaded into the
            backbone and its EMA.
        objective: Training objective (MDTv2: DDPM with learned Σ).
        sampler: Sampler for sample grids and ``predict`` (MDTv2: 250 DDPM steps).
        guidance: Classifier-free guidance when sampling (MDTv2: 3.8 with the power-cosine schedule).
        conditioner: Batch → condition (class labels dropped with p=0.1); its ``control_names`` switch on the
            backbone's control embedder.
        optimizer: Optimizer factory (MDTv2: Adan lr 3e-4, see :func:`mdt_optimizer`).
        **kwargs: The remaining `DiffusionModule` arguments (``resolution``, ``num_classes``, ``ema_decay``, ...).
    """

    def __init__(
        self,
        size: str = "MDTv2-XL/2",
        learn_sigma: bool | None = None,
        mask_ratio: tuple[float, float] = (0.3, 0.5),
        share_noise: bool = True,
        init_from: str | None = None,
        objective: Objective = lazy_instance(DDPM, learn_sigma=True, min_snr_gamma=5.0),
        sampler: Sampler = lazy_instance(DDPMSampler, steps=250),
        guidance: ClassifierFreeGuidance = lazy_instance(
            ClassifierFreeGuidance, semantic_scale=3.8, schedule="power_cosine", schedule_power=4.0
        ),
        conditioner: Conditioner = lazy_instance(Conditioner, semantic="class", semantic_dropout=0.1),
        optimizer: OptimizerCallable = mdt_optimizer,
        **kwargs: Any,
    ) -> None:
        lo, hi = mask_ratio
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"mask_ratio must be (lo, hi) with 0 < lo <= hi < 1, got {mask_ratio}")
        self.size, self.learn_sigma = size, learn_sigma
        self.mask_ratio, self.share_noise = (float(lo), float(hi)), share_noise
        super().__init__(
            objective=objective,
            sampler=sampler,
            guidance=guidance,
            conditioner=conditioner,
            optimizer=optimizer,
            **kwargs,
        )
        if init_from is not None:
            state = load_official_checkpoint(init_from)
            self.backbone.load_state_dict(state)
            self.ema.shadow.load_state_dict(state)

    def build_backbone(self) -> nn.Module:
        """The MDTv2 of ``size`` for this module's latents, classes, learn_sigma and control metadata."""
        channels, height, _ = self.latent_shape
        return MDTv2(
            input_size=height,
            in_channels=channels,
            num_classes=self.num_classes,
            learn_sigma=self.objective.learn_sigma if self.learn_sigma is None else self.learn_sigma,
            control_names=list(self.conditioner.control_names) or None,
            **mdt_size(self.size),
        )

    def training_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Full-sequence loss plus masked loss at the same t (and noise), summed as ``train_util.py`` does: ``loss``,
        the full pass's terms, the masked pass's as ``mask_<term>``, and the drawn ``mask_ratio``."""
        x0 = self.encode(batch)
        cond = self.conditioner(batch, train=True)
        t = self.objective.sample_time(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        full = self.objective.loss(self._train_forward, x0, cond, noise=noise, t=t)
        lo, hi = self.mask_ratio
        ratio = lo + (hi - lo) * torch.rand(()).item()  # drawn in the step's seeded RNG, like t and the noise
        if self.counting_flops:  # the FLOP count (and a budget's steps) at the expected ratio, not one draw
            ratio = (lo + hi) / 2
        masked_noise = noise if self.share_noise else torch.randn_like(x0)
        masked = self.objective.loss(self._train_forward, x0, cond, noise=masked_noise, t=t, mask_ratio=ratio)
        losses = {**full, **{f"mask_{k}": v for k, v in masked.items()}}
        losses["loss"] = full["loss"] + masked["loss"]
        losses["mask_ratio"] = torch.tensor(ratio)
        return losses
