"""What the padding slots of a text sequence hold: the encoder's states, zeros, or copies of the real tokens.

A text encoder returns ``L`` states per caption, of which only the first ``n`` belong to the caption; the rest are
padding. The modes here rewrite the padding slots of ``(tokens (N, L, E), mask (N, L) bool)``:

====================  ==============================================================================  ===========
mode                  padding slot ``i >= n``                                                         mask after
====================  ==============================================================================  ===========
``encoder``           unchanged: what the encoder computed for its pad tokens (SD3, PixArt-α)          unchanged
``zero``              0                                                                               unchanged
``replicate``         the real token ``i mod n`` (the real tokens repeated cyclically)                all True
``noisy_replicate``   the real token ``i mod n`` plus Gaussian noise of standard deviation σ           all True
====================  ==============================================================================  ===========

Noisy replicate padding is the disentangled-conditioning proposal's text padding: the attention then sees only
caption content, never a block of identical pad states, and the noise keeps the copies from being exact duplicates.
σ is relative to each copied token's RMS by default (σ = 0.1 × RMS), a reconstruction: the proposal names the idea,
not the constant. Real tokens are never changed. A sequence without real tokens (e.g. a zero null text whose mask
is all True) has no padding slots and passes through.

Legend: N batch, L tokens, E token width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["PADDING_MODES", "PaddingMode", "pad_text"]

PaddingMode = Literal["encoder", "zero", "replicate", "noisy_replicate"]
PADDING_MODES: tuple[str, ...] = ("encoder", "zero", "replicate", "noisy_replicate")


def replicate_index(mask: Tensor) -> Tensor:
    """(N, L) long: the position each slot reads from; real slots read themselves, padding slot number ``j`` (in
    order) reads real token number ``j mod n``. Rows without real tokens read themselves."""
    n, length = mask.shape
    positions = torch.arange(length, device=mask.device).expand(n, length)
    real_count = mask.sum(1, keepdim=True)  # (N, 1)
    # Real positions first, in order (a stable sort of the "is padding" flag), so order[:, k] is real token k.
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    pad_rank = (~mask).long().cumsum(1) - 1  # (N, L): j for the j-th padding slot
    source = order.gather(1, (pad_rank.clamp(min=0) % real_count.clamp(min=1)))
    keep = mask | (real_count == 0)
    return torch.where(keep, positions, source)


def pad_text(
    tokens: Tensor,
    mask: Tensor,
    mode: PaddingMode = "encoder",
    sigma: float = 0.1,
    relative: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rewrite the padding slots of a text sequence (see the module table).

    Args:
        tokens: (N, L, E) text states.
        mask: (N, L) bool, True on real tokens.
        mode: ``encoder``, ``zero``, ``replicate`` or ``noisy_replicate``.
        sigma: Noise standard deviation of ``noisy_replicate``, relative to each copied token's RMS if ``relative``.
        relative: Scale ``sigma`` by the RMS over E of the token a slot copies.
        generator: Random source of the noise: one generator for the batch, or one per row (row ``j`` draws from
            ``generator[j]``, so a sample's padding does not depend on the batch it is drawn in).

    Returns:
        ``(tokens, mask)``; for the replicate modes the mask is all True (every slot holds caption content).
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"unknown text padding {mode!r}; valid modes: {', '.join(PADDING_MODES)}")
    if sigma < 0:
        raise ValueError(f"padding sigma must be >= 0, got {sigma}")
    if tokens.dim() != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"pad_text needs tokens (N, L, E) and mask (N, L), got {tuple(tokens.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if mode == "encoder":
        return tokens, mask
    if mode == "zero":
        return tokens * mask[..., None].to(tokens.dtype), mask
    index = replicate_index(mask)
    out = tokens.gather(1, index[..., None].expand_as(tokens))
    if mode == "noisy_replicate" and sigma > 0:
        noise = _noise(out.shape, generator, out.device).to(out.dtype)
        scale = out.float().pow(2).mean(-1, keepdim=True).sqrt().to(out.dtype) if relative else 1.0
        copied = (index != torch.arange(mask.shape[1], device=mask.device))[..., None]  # padding slots only
        out = torch.where(copied, out + sigma * scale * noise, out)
    return out, torch.ones_like(mask)


def _noise(
    shape: torch.Size, generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device
) -> Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if len(generator) != shape[0]:
        raise ValueError(f"pad_text got {len(generator)} generators for {shape[0]} rows")
    rows = []
    for g in generator:
        # A child stream seeded from the sample's generator: never a copy of the first numbers of the sample's
        # starting noise when a caller drew that noise from another generator of the same seed.
        child = torch.Generator(g.device).manual_seed(int(torch.randint(0, 2**62, (), generator=g, device=g.device)))
        rows.append(torch.randn(shape[1:], generator=child, device=g.device, dtype=torch.float32))
    return torch.stack(rows).to(device)
