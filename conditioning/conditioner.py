"""Batch → `Cond`: the one place where classifier-free-guidance dropout happens.

Every architecture in the benchmark is conditioned through this module, so condition dropout is identical for
all of them (style.md §4.4): the semantic group (class label or caption) and the control group (crop / size / flip
metadata) are dropped **independently**, each with its own probability, by setting the null masks of `Cond`.
The embedders that consume a field own its null value (the class table's null row, a learned null control vector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from conditioning.types import Cond

if TYPE_CHECKING:
    from conditioning.text import TextEncoder

CONTROL_NAMES: tuple[str, ...] = ("orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w", "flip")
"""The control scalars every DataModule records, in column order (see `data.transforms`)."""

_CONTROL_FIELDS = {  # batch["control"] key -> the columns it fills
    "orig_size": ("orig_h", "orig_w"),
    "crop_coords": ("crop_top", "crop_left"),
    "crop_size": ("crop_h", "crop_w"),
    "flip": ("flip",),
}
_SOURCE_OF = {column: key for key, columns in _CONTROL_FIELDS.items() for column in columns}


def control_matrix(control: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """Stack the batch's named control tensors into an (N, K) float matrix with columns ``names``."""
    columns: dict[str, Tensor] = {}
    for key, value in control.items():
        value = value.float()
        if value.dim() == 1:
            value = value[:, None]
        for i, column in enumerate(_CONTROL_FIELDS.get(key, (key,))):
            columns[column] = value[:, i]
    missing = [n for n in names if n not in columns]
    if missing:
        sources = sorted({_SOURCE_OF.get(n, n) for n in missing})
        raise KeyError(f"batch['control'] lacks {missing} (from {sources}); it has columns {sorted(columns)}")
    return torch.stack([columns[n] for n in names], dim=1)


class Conditioner(nn.Module):
    """Turn a data batch into a `Cond`, applying CFG dropout to the semantic and control groups independently.

    Args:
        semantic: Which semantic signal the model sees: ``"class"`` (``batch["class_label"]``), ``"caption"``
            (``batch["caption"]``, encoded by the module's text encoder) or ``"none"`` (unconditional).
        control_names: Control scalars passed to the model, in order (subset of ``CONTROL_NAMES`` or any key the
            dataset records). Empty: the model sees no control metadata.
        semantic_dropout: Probability of dropping the semantic group of a training sample (DiT: 0.1).
        control_dropout: Probability of dropping the control group, drawn independently of the semantic one.
    """

    def __init__(
        self,
        semantic: Literal["class", "caption", "none"] = "class",
        control_names: list[str] | None = None,
        semantic_dropout: float = 0.1,
        control_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, p in (("semantic_dropout", semantic_dropout), ("control_dropout", control_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.semantic = semantic
        self.control_names = tuple(control_names or ())
        self.semantic_dropout = semantic_dropout
        self.control_dropout = control_dropout

    def forward(
        self,
        batch: Mapping[str, Any],
        train: bool,
        generator: torch.Generator | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> Cond:
        """Build the condition of ``batch``; with ``train`` the groups are dropped at their probabilities."""
        cond = self.make(
            labels=batch.get("class_label"),
            captions=batch.get("caption"),
            control=batch.get("control"),
            batch_size=_batch_size(batch),
            device=_batch_device(batch),
            text_encoder=text_encoder,
        )
        if not train:
            return cond
        n, device = cond.batch_size, cond.device
        drop_semantic = torch.rand(n, device=device, generator=generator) < self.semantic_dropout
        drop_control = torch.rand(n, device=device, generator=generator) < self.control_dropout
        return cond.drop(semantic=drop_semantic, control=drop_control)

    def make(
        self,
        labels: Tensor | None = None,
        control: Mapping[str, Tensor] | Tensor | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        captions: list[str] | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> Cond:
        """Build an undropped `Cond` from explicit values (used for sampling at chosen classes/controls/captions)."""
        label = control_tensor = None
        text: dict[str, Tensor | None] = {}
        if self.semantic == "class":
            if labels is None:
                raise KeyError("the conditioner is class-conditional but the batch has no 'class_label'")
            label = labels.long()
        elif self.semantic == "caption":
            if captions is None:
                raise KeyError("the conditioner is caption-conditional but the batch has no 'caption'")
            if text_encoder is None:
                raise ValueError("semantic='caption' needs the module's text_encoder; none is configured")
            tokens, mask, pooled = text_encoder.encode(list(captions), device=device)
            text = {"tokens": tokens, "token_mask": mask, "pooled": pooled}
        if self.control_names:
            if control is None:
                raise KeyError(f"the model is conditioned on {list(self.control_names)} but the batch has no 'control'")
            control_tensor = control if isinstance(control, Tensor) else control_matrix(control, self.control_names)
        cond = Cond(label=label, control=control_tensor, control_names=self.control_names, **text)
        if label is None and control_tensor is None and not text:
            if batch_size is None:
                raise ValueError("an unconditional Cond needs batch_size")
            # Unconditional: carry the batch size through the (all-False) masks.
            mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
            cond = Cond(semantic_null=mask, control_null=mask.clone())
        return cond.fill_masks()


def _batch_size(batch: Mapping[str, Any]) -> int | None:
    for key in ("image", "latent", "class_label"):
        if key in batch and isinstance(batch[key], Tensor):
            return batch[key].shape[0]
    return None


def _batch_device(batch: Mapping[str, Any]) -> torch.device | None:
    for key in ("image", "latent", "class_label"):
        if key in batch and isinstance(batch[key], Tensor):
            return batch[key].device
    return None
