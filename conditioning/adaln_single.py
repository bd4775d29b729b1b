"""adaLN-single: one shared time MLP for the whole network plus a learned per-block table (PixArt-α, §2.3).

DiT's adaLN-Zero gives every block its own ``c → SiLU → Linear(D, 6D)``; at DiT-XL/2 sizes those per-block Linears
are about 27% of the parameters. PixArt-α (Chen et al., ICLR 2024, "Efficient T2I Transformer") computes the 6D
modulation vector **once** from the time embedding, ``S = Linear(SiLU(t))`` (:class:`AdaLNSingle`), and lets
block ``i`` add its own learned table ``E_i`` of the same shape (:class:`ModulationTable`): the block's shift,
scale and gate are ``S + E_i``. The final layer adds a (2, D) table to the time embedding itself, without the
SiLU/Linear (:class:`FinalModulationTable`).

Outputs are named (``mods["attn"].gate``), not positional 6-way chunks. The row order inside the tables and the
shared Linear is the reference's (``shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp``; final
layer ``shift, scale``), so official weights port without permutation.

Legend: N batch, D model width, E conditioning width, B modulated branches (2: attention and MLP).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from conditioning.modulation import ShiftScale
from conditioning.types import Mod

__all__ = ["AdaLNSingle", "FinalModulationTable", "ModulationTable"]

_PARTS = 3  # shift, scale, gate


class AdaLNSingle(nn.Module):
    """The shared half of adaLN-single: ``c (N, E) → SiLU → Linear → (N, 3B, D)`` (PixArt's ``t_block``).

    Unlike adaLN-Zero it is *not* zero-initialised: PixArt draws its weight from N(0, 0.02²) and relies on the
    per-block tables (and a zero cross-attention output and final layer) for a well-behaved start.
    """

    def __init__(self, hidden_size: int, cond_size: int | None = None, branches: int = 2) -> None:
        """Build the shared modulation.

        Args:
            hidden_size: width D of the modulated tokens.
            cond_size: width E of the conditioning vector (PixArt: the time embedding, E = D). Defaults to D.
            branches: number B of modulated residual branches per block (PixArt: 2, attention and MLP).
        """
        super().__init__()
        if branches < 1:
            raise ValueError(f"AdaLNSingle needs at least one branch, got {branches}")
        self.hidden_size = hidden_size
        self.branches = branches
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_size or hidden_size, _PARTS * branches * hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PixArt's initialisation: weight ~ N(0, 0.02²), zero bias."""
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> Tensor:
        """Regress the shared modulation.

        Args:
            c: (N, E) conditioning vector.

        Returns:
            (N, 3B, D): rows ordered branch by branch, and within a branch (shift, scale, gate).
        """
        return self.linear(self.act(c)).view(c.shape[0], _PARTS * self.branches, self.hidden_size)


class ModulationTable(nn.Module):
    """The per-block half of adaLN-single: a learned (3B, D) table added to the shared modulation.

    The parameter is named ``scale_shift_table`` as in the reference, and is initialised like it, N(0, 1/D).
    """

    def __init__(self, hidden_size: int, branches: tuple[str, ...] = ("attn", "mlp")) -> None:
        """Build the table.

        Args:
            hidden_size: width D of the modulated tokens.
            branches: names of the residual branches, in the reference's row order.
        """
        super().__init__()
        branches = tuple(branches)
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"ModulationTable branches must be a non-empty tuple of unique names, got {branches}")
        self.hidden_size = hidden_size
        self.branches = branches
        self.scale_shift_table = nn.Parameter(torch.empty(_PARTS * len(branches), hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PixArt's initialisation: N(0, 1/D)."""
        with torch.no_grad():
            self.scale_shift_table.normal_(std=self.hidden_size**-0.5)

    def forward(self, shared: Tensor) -> dict[str, Mod]:
        """Add the table to the shared modulation and name the rows.

        Args:
            shared: (N, 3B, D) output of :class:`AdaLNSingle`.

        Returns:
            ``{branch: Mod}`` with (N, 1, D) shift, scale and gate for each branch.
        """
        rows = len(self.scale_shift_table)
        if shared.shape[1:] != (rows, self.hidden_size):
            raise ValueError(
                f"ModulationTable expects the shared modulation (N, {rows}, {self.hidden_size}), "
                f"got {tuple(shared.shape)}"
            )
        out = (self.scale_shift_table[None] + shared).unsqueeze(2)  # (N, 3B, 1, D)
        return {
            name: Mod(shift=out[:, _PARTS * i], scale=out[:, _PARTS * i + 1], gate=out[:, _PARTS * i + 2])
            for i, name in enumerate(self.branches)
        }


class FinalModulationTable(nn.Module):
    """The final layer's adaLN-single: ``ShiftScale = table (2, D) + c`` with no SiLU or Linear (PixArt's
    ``T2IFinalLayer``); the parameter is ``scale_shift_table``, rows (shift, scale), initialised N(0, 1/D)."""

    def __init__(self, hidden_size: int) -> None:
        """Build the table.

        Args:
            hidden_size: width D (the conditioning vector must have the same width).
        """
        super().__init__()
        self.hidden_size = hidden_size
        self.scale_shift_table = nn.Parameter(torch.empty(2, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PixArt's initialisation: N(0, 1/D)."""
        with torch.no_grad():
            self.scale_shift_table.normal_(std=self.hidden_size**-0.5)

    def forward(self, c: Tensor) -> ShiftScale:
        """Modulation of the final layer.

        Args:
            c: (N, D) conditioning vector (PixArt: the time embedding, before ``t_block``).

        Returns:
            ``ShiftScale`` with (N, 1, D) tensors.
        """
        out = self.scale_shift_table[None] + c[:, None]  # (N, 2, D)
        return ShiftScale(shift=out[:, :1], scale=out[:, 1:])
