"""Modulation: a conditioning vector c → named shift / scale / gate tensors for the adaLN family.

adaLN-Zero (Peebles & Xie 2023, §3.2 "adaLN-Zero block"): every residual branch ``f`` of a block becomes
``x + gate * f(norm(x) * (1 + scale) + shift)``, with (shift, scale, gate) regressed from ``c`` by one Linear that
is zero-initialised, so at initialisation every gate is zero and every block is the identity.

Outputs are named (``mods["attn"].gate``), never positional 6-way chunks; the chunk *order* inside the Linear is
nevertheless the reference's, so official weights port without permutation.

Legend: N batch, T tokens, D model width, E conditioning width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from conditioning.types import Mod

__all__ = ["AdaLNZero", "FinalAdaLN", "ShiftScale", "modulate"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Affine modulation ``x * (1 + scale) + shift``.

    Args:
        x: (N, T, D) normalised tokens.
        shift: (N, 1, D), broadcast over tokens.
        scale: (N, 1, D), broadcast over tokens; ``1 + scale`` so that zero means "unchanged".

    Returns:
        (N, T, D).
    """
    return x * (1 + scale) + shift


@dataclass
class ShiftScale:
    """The (shift, scale) pair of a final layer, which has no residual and so no gate."""

    shift: Tensor
    """(N, 1, D)"""
    scale: Tensor
    """(N, 1, D)"""


class AdaLNZero(nn.Module):
    """adaLN-Zero: ``c → SiLU → Linear → {branch: Mod(shift, scale, gate)}``, zero-initialised.

    The Linear's output is laid out branch by branch, and within a branch as (shift, scale, gate). With the default
    ``branches=("attn", "mlp")`` that is DiT's order ``shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
    gate_mlp``, so the official ``blocks.i.adaLN_modulation.1.{weight,bias}`` load into ``linear`` unchanged.
    """

    def __init__(self, hidden_size: int, cond_size: int, branches: tuple[str, ...] = ("attn", "mlp")) -> None:
        """Build the modulation.

        Args:
            hidden_size: width D of the modulated tokens.
            cond_size: width E of the conditioning vector ``c``.
            branches: names of the residual branches, in the reference's chunk order.
        """
        super().__init__()
        branches = tuple(branches)
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"AdaLNZero branches must be a non-empty tuple of unique names, got {branches}")
        self.hidden_size = hidden_size
        self.branches = branches
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_size, 3 * len(branches) * hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weight and bias: gates start at zero, so every modulated block starts as the identity."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> dict[str, Mod]:
        """Regress the modulation.

        Args:
            c: (N, E) conditioning vector.

        Returns:
            ``{branch: Mod}`` with (N, 1, D) shift, scale and gate for each branch.
        """
        out = self.linear(self.act(c))  # (N, 3 * B * D)
        out = out.view(c.shape[0], len(self.branches), 3, 1, self.hidden_size)  # (N, B, 3, 1, D)
        return {
            name: Mod(shift=out[:, i, 0], scale=out[:, i, 1], gate=out[:, i, 2]) for i, name in enumerate(self.branches)
        }


class FinalAdaLN(nn.Module):
    """The final layer's modulation: ``c → SiLU → Linear → ShiftScale``, zero-initialised, order (shift, scale).

    DiT's ``final_layer.adaLN_modulation.1`` loads into ``linear`` unchanged.
    """

    def __init__(self, hidden_size: int, cond_size: int) -> None:
        """Build the modulation.

        Args:
            hidden_size: width D of the modulated tokens.
            cond_size: width E of the conditioning vector ``c``.
        """
        super().__init__()
        self.hidden_size = hidden_size
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_size, 2 * hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weight and bias (DiT zero-initialises the whole output layer)."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> ShiftScale:
        """Regress the modulation.

        Args:
            c: (N, E) conditioning vector.

        Returns:
            ``ShiftScale`` with (N, 1, D) tensors.
        """
        shift, scale = torch.chunk(self.linear(self.act(c)).unsqueeze(1), 2, dim=-1)
        return ShiftScale(shift=shift, scale=scale)
