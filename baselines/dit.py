"""DiT: a transformer backbone with adaLN-Zero conditioning on time and class.

Paper: William Peebles, Saining Xie, "Scalable Diffusion Models with Transformers", ICCV 2023,
https://arxiv.org/abs/2212.09748.
Reference implementation: https://github.com/facebookresearch/DiT/blob/ed81ce2/models.py (pinned at ed81ce2).

The architecture, parameter names (up to one rename, below), initialisation and numbers are the reference's:
DiT-XL/2 at 256² (32x32 latent) has 675,129,632 parameters counting the fixed ``pos_embed`` (674,834,720
trainable) and costs 118.6 GMACs per forward. Official checkpoints (CC-BY-NC 4.0 weights) and diffusers'
``DiTTransformer2DModel`` convert through ``baselines/dit_convert.py``.

Differences from the reference:

- Time at the interface is continuous ``t`` in [0, 1] (t = 1 noise); the timestep embedder multiplies by 1000
  inside, so the DDPM step ``k`` is ``t = k / 1000`` (equal to the reference's integer step up to float32 rounding).
- Classifier-free-guidance label dropout moved to the shared conditioner: the model reads ``cond.semantic_null``
  and uses the table's null row (index ``num_classes``) there. ``class_dropout_prob`` is therefore not an argument;
  the null row always exists (the reference adds it only when ``class_dropout_prob > 0``, true of every release).
- Optional ``control_names``: an SDXL-style Fourier control embedder whose output is *added to the adaLN vector*
  ``c`` (the entangled baseline the proposed model is compared against). Off by default, and then the model is the
  reference exactly.
- Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (same math as timm's ``Attention``).
- Patch embedding, MLP and attention are timm's, as in the reference, through ``baselines/layers.py`` (which keeps
  the tanh GELU and SDPA on); conditioning comes from ``conditioning/`` instead of in-file classes. State-dict names
  are the reference's except ``adaLN_modulation.1`` → ``adaLN_modulation.linear``.
- ``forward_with_cfg`` is not here: guidance (including DiT's guidance on 3 of 4 channels) is
  ``benchmark/guidance.py``'s, shared by every model. Splitting the learned-Σ channels is the objective's job.
- ``pos_embed`` is a frozen ``nn.Parameter`` as in the reference (so it is counted and saved the same way), and is
  computed with numpy so that construction under ``torch.device("meta")`` works.

Legend: N batch, C latent channels, H x W latent size, p patch, T = HW/p² tokens, D width, K control scalars.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from jsonargparse import lazy_instance
from torch import Tensor, nn

from baselines.dit_convert import load_official_checkpoint
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
from conditioning.modulation import AdaLNZero, FinalAdaLN, modulate
from conditioning.types import Cond

__all__ = ["SIZES", "DiT", "DiTBlock", "DiTModule", "FinalLayer", "dit_size"]


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose two residual branches are modulated and gated by adaLN-Zero (paper §3.2)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        """Build the block.

        Args:
            hidden_size: width D.
            num_heads: attention heads; must divide ``hidden_size``.
            mlp_ratio: MLP inner width as a multiple of D.
        """
        super().__init__()
        # Registration order is the reference's, so that the same seed gives the same initial weights.
        # The norms have no affine parameters: adaLN supplies the per-sample scale and shift instead.
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = AdaLNZero(hidden_size, hidden_size, branches=("attn", "mlp"))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Apply the block to tokens ``x`` (N, T, D) under the conditioning vector ``c`` (N, D)."""
        mods = self.adaLN_modulation(c)
        attn, mlp = mods["attn"], mods["mlp"]
        x = x + attn.gate * self.attn(modulate(self.norm1(x), attn.shift, attn.scale))
        x = x + mlp.gate * self.mlp(modulate(self.norm2(x), mlp.shift, mlp.scale))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """Modulated LayerNorm then a Linear to ``p * p * out_channels`` values per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        """Build the layer.

        Args:
            hidden_size: width D.
            patch_size: patch side p.
            out_channels: channels predicted per latent pixel.
        """
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = FinalAdaLN(hidden_size, hidden_size)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Map tokens (N, T, D) under ``c`` (N, D) to (N, T, p * p * out_channels)."""
        mod = self.adaLN_modulation(c)
        return self.linear(modulate(self.norm_final(x), mod.shift, mod.scale))


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion transformer backbone: ``forward(x_t, t, cond) -> prediction`` with ``t`` in [0, 1]."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        control_names: list[str] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        """Build the backbone (defaults: DiT-XL/2 at 256², i.e. a 32x32 SD-VAE latent).

        Args:
            input_size: latent side length H = W the model is built for (image side / 8 for SD-VAE).
            patch_size: patch side p; ``input_size`` must be divisible by it. Tokens T = (input_size / p)².
            in_channels: latent channels C.
            hidden_size: transformer width D; divisible by ``num_heads`` and by 4 (2-D sin-cos table).
            depth: number of DiT blocks.
            num_heads: attention heads.
            mlp_ratio: MLP inner width as a multiple of D.
            num_classes: number of real classes; the class table has one more row, the null class.
            learn_sigma: predict the variance too (Improved DDPM), doubling the output channels to 2C.
            control_names: names of the control scalars (``Cond.control_names``) to embed with a Fourier
                :class:`~conditioning.embedders.ControlEmbedder` and add to the adaLN vector; None disables it
                (the reference model).
            gradient_checkpointing: in training, recompute each block's activations in the backward pass instead of
                keeping them (less memory, about one more forward of compute); the outputs and gradients are the
                same.
        """
        super().__init__()
        check_transformer_shape(input_size, patch_size, hidden_size, num_heads)
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid_size = input_size // patch_size
        self.gradient_checkpointing = gradient_checkpointing

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)  # DiT convention: cat[cos, sin], shift 0, t x 1000
        self.y_embedder = ClassEmbedder(num_classes, hidden_size)
        self.control_embedder = ControlEmbedder(control_names, hidden_size) if control_names else None
        # A Parameter (not a buffer) as in the reference: it is saved under "pos_embed" and counted in the totals.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference's ``initialize_weights``, in the same order (so a seed gives the reference's weights)."""
        xavier_init_linears(self)
        fill_sincos_pos_embed(self.pos_embed, self.grid_size)
        # Zero patch bias included: the reference's "Fix patchify bias init".
        init_patch_embed_like_linear(self.x_embedder, zero_bias=True)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        # The control embedder is not in the reference: it is treated like the timestep MLP.
        init_embedder_mlps(self.t_embedder, self.control_embedder)
        # adaLN-Zero: zero modulation makes every block the identity at init, and a zero output layer makes the
        # initial prediction exactly zero.
        for block in self.blocks:
            block.adaLN_modulation.reset_parameters()
        self.final_layer.adaLN_modulation.reset_parameters()
        zero_linear(self.final_layer.linear)

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Predict from a noisy latent.

        Args:
            x: (N, C, H, W) noisy latent with H = W = ``input_size``.
            t: (N,) float diffusion time in [0, 1] (t = 1 is noise; DDPM step k is k / 1000).
            cond: conditions; ``label`` is required (``semantic_null`` selects the null class), ``control`` is
                required when the model was built with ``control_names`` and ignored otherwise.

        Returns:
            (N, out_channels, H, W): with ``learn_sigma`` the first C channels are the mean prediction (ε) and the
            last C the variance interpolation values.
        """
        check_latent_input("DiT", x, t, self.in_channels, self.input_size)
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(cond)  # (N, D)
        if self.control_embedder is not None:
            c = c + self.control_embedder(cond)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p * p * out_channels)
        return unpatchify(x, self.patch_size, self.out_channels, (self.grid_size, self.grid_size))


# --------------------------------------------------------------------------------------------------------------------
# Sizes (Peebles & Xie 2023, Table 1; parameter counts pinned in tests/baselines/test_dit.py)
# --------------------------------------------------------------------------------------------------------------------

_WIDTHS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

SIZES: dict[str, dict[str, int]] = {
    f"DiT-{name}/{p}": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": p}
    for name, (depth, hidden, heads) in _WIDTHS.items()
    for p in (2, 4, 8)
}
# Not in the paper: a size that trains on a CPU in minutes on 8x8 latents, for tests and the embedded suite.
SIZES["DiT-tiny/2"] = {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 2}
SIZES["DiT-mini/2"] = {"depth": 6, "hidden_size": 192, "num_heads": 6, "patch_size": 2}


def dit_size(name: str) -> dict[str, int]:
    """The ``DiT(...)`` keyword arguments of a named size, e.g. ``DiT(**dit_size("DiT-XL/2"))``.

    Args:
        name: a key of :data:`SIZES`, e.g. ``"DiT-XL/2"``.

    Returns:
        A fresh dict with ``depth``, ``hidden_size``, ``num_heads`` and ``patch_size``.
    """
    if name not in SIZES:
        raise ValueError(f"unknown DiT size {name!r}; valid sizes: {', '.join(SIZES)}")
    return dict(SIZES[name])


# ----------------------------------------------------------------------------------------- training recipe


class DiTModule(DiffusionModule):
    """DiT with its ImageNet training recipe as defaults (Peebles & Xie 2023, §3–4; DiT ``train.py``).

    Recipe: DDPM with 1000 linear-β steps, ε-prediction with learned Σ (IDDPM hybrid loss), class label dropped
    with p=0.1 for CFG, AdamW lr 1e-4 without weight decay or warm-up, EMA 0.9999, SD-VAE ft-EMA latents
    (×0.18215, read from the VAE config), 250-step DDPM sampling with CFG 1.5. Any of these can be swapped from
    YAML (e.g. ``objective: benchmark.objectives.RectifiedFlow`` with ``sampler: benchmark.samplers.EulerSampler``);
    every other argument (``resolution``, ``num_classes``, ``ema_decay``, ``compile``, ...) is `DiffusionModule`'s.

    Args:
        size: A row of ``SIZES`` (``DiT-XL/2``, ``DiT-B/4``, ``DiT-tiny/2``, ...).
        learn_sigma: Predict the variance too (2C output channels). None (default) follows
            ``objective.learn_sigma``; an explicit value must agree with it.
        gradient_checkpointing: Recompute block activations in the backward pass (less memory, ~1/3 more compute).
        init_from: Path of an official facebookresearch/DiT checkpoint (e.g. ``DiT-XL-2-256x256.pt``) loaded into
            the backbone and its EMA, to fine-tune it or to evaluate it like any other entry.
        objective: Training objective (DiT: DDPM with learned Σ).
        sampler: Sampler used for sample grids and ``predict`` (DiT: 250 DDPM steps).
        guidance: Classifier-free guidance used when sampling (DiT: scale 1.5); ``guided_channels: 3`` reproduces
            DiT's quirk.
        conditioner: Batch → condition (DiT: class labels dropped with p=0.1); its ``control_names`` (if any) also
            switch on the backbone's control embedder (SDXL-style, added to the adaLN vector).
        **kwargs: The remaining `DiffusionModule` arguments.
    """

    def __init__(
        self,
        size: str = "DiT-XL/2",
        learn_sigma: bool | None = None,
        init_from: str | None = None,
        gradient_checkpointing: bool = False,
        objective: Objective = lazy_instance(DDPM, learn_sigma=True),
        sampler: Sampler = lazy_instance(DDPMSampler, steps=250),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance, semantic_scale=1.5),
        conditioner: Conditioner = lazy_instance(Conditioner, semantic="class", semantic_dropout=0.1),
        **kwargs: Any,
    ) -> None:
        self.size, self.learn_sigma, self.gradient_checkpointing = size, learn_sigma, gradient_checkpointing
        super().__init__(objective=objective, sampler=sampler, guidance=guidance, conditioner=conditioner, **kwargs)
        if init_from is not None:
            state = load_official_checkpoint(init_from)
            self.backbone.load_state_dict(state)
            self.ema.shadow.load_state_dict(state)

    def build_backbone(self) -> nn.Module:
        """The DiT of ``size`` for this module's latents, classes, learn_sigma and control metadata."""
        channels, height, _ = self.latent_shape
        return DiT(
            input_size=height,
            in_channels=channels,
            num_classes=self.num_classes,
            learn_sigma=self.objective.learn_sigma if self.learn_sigma is None else self.learn_sigma,
            control_names=list(self.conditioner.control_names) or None,
            gradient_checkpointing=self.gradient_checkpointing,
            **dit_size(self.size),
        )
