"""SDXL's "text_time" vector: pooled text plus Fourier features of control scalars, through one MLP.

SDXL (Podell et al. 2023, §2.2) conditions its UNet on the original image size, the crop's top-left corner and the
target size. Each scalar gets 256 sinusoidal features of its raw value (pixels, time scale 1), the blocks are
concatenated *after* the pooled text vector, and ``Linear → SiLU → Linear`` maps the result to the width of the
time embedding, to which it is added (diffusers' ``addition_embed_type="text_time"``: ``add_time_proj`` and
``add_embedding``). Unlike :class:`conditioning.embedders.ControlEmbedder` the pooled text enters the *same* first
Linear as the controls, so the reference's weights load unchanged.

A dropped control group (``cond.control_null``) zeroes that sample's Fourier features, as the reference training
code (Stability's ``sgm`` conditioner with ``ucg_rate``) zeroes a dropped embedder's output; a dropped text is
already replaced by its null in ``cond.pooled`` by the conditioner.

Legend: N batch, E' pooled text width, K control scalars, F Fourier features per scalar, D output width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from conditioning.embedders import timestep_frequencies
from conditioning.types import Cond

__all__ = ["TextTimeEmbedder"]


class TextTimeEmbedder(nn.Module):
    """``cat[pooled (N, E'), Fourier(control) (N, K·F)] → Linear → SiLU → Linear → (N, D)``."""

    def __init__(
        self,
        hidden_size: int,
        pooled_dim: int | None = None,
        names: list[str] | None = None,
        frequency_size: int = 256,
        pooled_offset: int = 0,
    ) -> None:
        """Build the embedder.

        Args:
            hidden_size: Output width D (the time-embedding width of the UNet).
            pooled_dim: Width E' of ``cond.pooled``; None when the model has no pooled text (class-conditional).
            names: The K control columns, in ``cond.control`` order; None or empty for no controls.
            frequency_size: Sinusoidal features per control scalar (SDXL's ``addition_time_embed_dim``, 256).
            pooled_offset: First column of ``cond.pooled`` read: SDXL reads only the bigG CLIP's pooled vector,
                while the conditioner concatenates every CLIP's (CLIP-L's first).
        """
        super().__init__()
        self.pooled_dim = pooled_dim or 0
        self.names = tuple(names or ())
        self.frequency_size = frequency_size
        self.pooled_offset = pooled_offset
        in_features = self.pooled_dim + len(self.names) * frequency_size
        if in_features == 0:
            raise ValueError("TextTimeEmbedder needs a pooled text width or at least one control name")
        # Sequential indices 0 and 2, like every MLP embedder of the package.
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, cond: Cond) -> Tensor:
        """Embed ``cond.pooled`` and ``cond.control``.

        Args:
            cond: Conditions; ``pooled`` (N, E') is read when ``pooled_dim`` is set, ``control`` (N, K) when names
                are; ``control_null`` (N,) zeroes the control features where True.

        Returns:
            (N, D) vector to add to the time embedding.
        """
        parts: list[Tensor] = []
        dtype = self.mlp[0].weight.dtype
        if self.pooled_dim:
            stop = self.pooled_offset + self.pooled_dim
            if cond.pooled is None or cond.pooled.shape[-1] < stop:
                got = None if cond.pooled is None else tuple(cond.pooled.shape)
                raise ValueError(
                    f"TextTimeEmbedder reads columns [{self.pooled_offset}, {stop}) of cond.pooled, got {got}"
                )
            parts.append(cond.pooled[:, self.pooled_offset : stop].to(dtype))
        if self.names:
            control = cond.control
            if control is None or control.dim() != 2 or control.shape[1] != len(self.names):
                got = None if control is None else tuple(control.shape)
                raise ValueError(
                    f"TextTimeEmbedder expects cond.control (N, {len(self.names)}) {self.names}, got {got}"
                )
            if cond.control_names and tuple(cond.control_names) != self.names:
                raise ValueError(f"cond.control_names {cond.control_names} do not match the embedder's {self.names}")
            n, k = control.shape
            features = timestep_frequencies(control.reshape(n * k), self.frequency_size).reshape(n, -1)
            if cond.control_null is not None:
                features = torch.where(cond.control_null.bool()[:, None], torch.zeros_like(features), features)
            parts.append(features.to(dtype))
        return self.mlp(torch.cat(parts, dim=-1))
