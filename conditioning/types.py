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
    text_null: Tensor | None = None
    """(N, M) bool, True where text encoder m (in the order of ``text_names``) was dropped; its states are nulls."""
    text_names: tuple[str, ...] = ()
    """Names of the M text encoders whose states ``tokens`` / ``pooled`` combine."""
    null_tokens: Tensor | None = None
    """(N, L, E) what ``tokens`` becomes where the semantic group is dropped; ``None`` means zeros."""
    null_token_mask: Tensor | None = None
    """(N, L) the ``token_mask`` of ``null_tokens``; ``None`` means all True (every zero state is attended)."""
    null_pooled: Tensor | None = None
    """(N, E') what ``pooled`` becomes where the semantic group is dropped; ``None`` means zeros."""

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
        """Return a copy with the semantic and/or control group additionally dropped (bool or (N,) mask).

        Class labels keep their values (the class embedder reads ``semantic_null``); text states are replaced by
        their nulls (``null_tokens`` / ``null_pooled``, zeros when those are ``None``), so that ``tokens`` always
        holds what the backbone should attend to.
        """
        sem, ctl = self._masks()
        sem = sem | _as_mask(semantic, sem)
        changes: dict[str, Tensor] = {"semantic_null": sem, "control_null": ctl | _as_mask(control, ctl)}
        if self.tokens is not None:
            null = self.null_tokens if self.null_tokens is not None else torch.zeros_like(self.tokens)
            changes["tokens"] = torch.where(sem[:, None, None], null.to(self.tokens.dtype), self.tokens)
            if self.token_mask is not None:
                null_mask = self.null_token_mask if self.null_token_mask is not None else True
                changes["token_mask"] = torch.where(sem[:, None], null_mask, self.token_mask)
        if self.pooled is not None:
            null = self.null_pooled if self.null_pooled is not None else torch.zeros_like(self.pooled)
            changes["pooled"] = torch.where(sem[:, None], null.to(self.pooled.dtype), self.pooled)
        if self.text_null is not None:
            changes["text_null"] = self.text_null | sem[:, None]
        return replace(self, **changes)

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
