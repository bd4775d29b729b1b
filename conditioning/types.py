"""The conditioning vocabulary shared by every backbone: `Cond` (what a model is conditioned on) and `Mod`.

Legend used across the package: N batch, T image tokens, L text tokens, E text width, K control scalars,
D model width.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Cond:
    """Everything a backbone may be conditioned on. Unused fields stay ``None``.

    Dropping a condition (for CFG training or guidance) never edits the values: it sets a mask, and the
    embedder that consumes the field substitutes its own null (the class table's null row, a learned null
    control vector, ...). That keeps the null values owned by the modules that learn them.
    """

    label: Tensor | None = None
    """(N,) int64 class index in ``[0, num_classes)``."""
    tokens: Tensor | None = None
    """(N, L, E) text-encoder states, already padded."""
    token_mask: Tensor | None = None
    """(N, L) bool, True where a token is real."""
    pooled: Tensor | None = None
    """(N, E') pooled text vector (SD3 / SDXL "vector" input)."""
    control: Tensor | None = None
    """(N, K) float control metadata (crop, size, flip, ...), in the order of ``control_names``."""
    control_names: tuple[str, ...] = ()
    """Names of the K control columns, e.g. ``("orig_h", "orig_w", "crop_top", ...)``."""
    semantic_null: Tensor | None = None
    """(N,) bool, True where the semantic group (class / text) is dropped."""
    control_null: Tensor | None = None
    """(N,) bool, True where the control group is dropped."""

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                return value.shape[0]
        raise ValueError("Cond has no tensor field, so its batch size is unknown")

    @property
    def device(self) -> torch.device:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                return value.device
        return torch.device("cpu")

    def _masks(self) -> tuple[Tensor, Tensor]:
        n, device = self.batch_size, self.device
        false = torch.zeros(n, dtype=torch.bool, device=device)
        sem = self.semantic_null if self.semantic_null is not None else false
        ctl = self.control_null if self.control_null is not None else false
        return sem, ctl

    def drop(self, semantic: Tensor | bool = False, control: Tensor | bool = False) -> Cond:
        """Return a copy with the semantic and/or control group additionally dropped (bool or (N,) mask)."""
        sem, ctl = self._masks()
        return replace(self, semantic_null=sem | _as_mask(semantic, sem), control_null=ctl | _as_mask(control, ctl))

    def map_tensors(self, fn) -> Cond:
        """Apply ``fn`` to every tensor field (e.g. ``lambda t: t.repeat(3, *[1] * (t.dim() - 1))``)."""
        changes = {f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **changes)

    def fill_masks(self) -> Cond:
        """Return a copy whose null masks are explicit tensors (so that batches of conditions concatenate)."""
        sem, ctl = self._masks()
        return replace(self, semantic_null=sem, control_null=ctl)

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Concatenate conditions along the batch (used by guidance to evaluate several branches at once)."""
        conds = [c.fill_masks() for c in conds]
        first = conds[0]
        changes = {}
        for f in fields(first):
            value = getattr(first, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = torch.cat([getattr(c, f.name) for c in conds])
        return replace(first, **changes)


def _as_mask(value: Tensor | bool, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=torch.bool).expand_as(like)
    return torch.full_like(like, bool(value))


@dataclass
class Mod:
    """One adaLN modulation triple for one residual branch: ``x + gate * f(norm(x) * (1 + scale) + shift)``."""

    shift: Tensor
    """(N, 1, D)"""
    scale: Tensor
    """(N, 1, D)"""
    gate: Tensor
    """(N, 1, D)"""
