"""Batch → `Cond`: the one place where classifier-free-guidance dropout happens.

Every architecture in the benchmark is conditioned through this module, so condition dropout is identical for
all of them: the semantic group (class label or caption) and the control group (crop / size / flip metadata) are
dropped **independently**, each with its own probability, by setting the null masks of `Cond`. The embedders
that consume a field own its null value (the class table's null row, a learned null control vector); text
states are replaced here by a stated null (zeros, as SD3 does, or the encoded empty prompt).

Caption models own one or several named frozen text encoders. Their outputs combine as SD3 combines CLIP-L,
OpenCLIP bigG and T5-XXL: the CLIP token states are concatenated along the width (they share the 77-token
layout), zero-padded to the widest encoder, and concatenated with each T5's states along the sequence; the CLIP
pooled vectors are concatenated. One encoder alone passes through unchanged (PixArt-α's T5, an SD-style CLIP).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from conditioning.padding import PADDING_MODES, PaddingMode, pad_text
from conditioning.text import TextEncoder
from conditioning.types import Cond
from data.compat import owned

EXAMPLE_CAPTIONS: tuple[str, ...] = (
    "a red circle on a white background",
    "a photo of a cat sitting on a mat",
    "a blue square next to a green triangle",
    "a mountain lake at sunrise, high detail",
    "a yellow star above a purple heart",
    "a bowl of fruit on a wooden table",
    "an orange arrow pointing to the left",
    "a city street at night in the rain",
)
"""The fixed captions of `Conditioner.example` (describe, FLOP counts, sample grids), cycled when n is larger."""

TextStates = tuple[Tensor, Tensor, Tensor | None]
"""``(tokens (N, L, E), token_mask (N, L) bool, pooled (N, E') or None)`` of one text encoder."""

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
            (``batch["caption"]``, encoded by ``text_encoders``, or precomputed in ``batch["text"]``) or
            ``"none"`` (unconditional).
        control_names: Control scalars passed to the model, in order (subset of ``CONTROL_NAMES`` or any key the
            dataset records). Empty: the model sees no control metadata.
        semantic_dropout: Probability of dropping the whole semantic group of a training sample (DiT: 0.1).
        control_dropout: Probability of dropping the control group, drawn independently of the semantic one.
        text_encoders: Named frozen text encoders for ``semantic: caption``, e.g. ``{"t5": TextEncoder(...)}``
            (PixArt-α) or ``{"clip_l": ..., "clip_g": ..., "t5": ...}`` (SD3). Their weights load on first use
            and are never part of checkpoints.
        text_dropout: Probability of dropping each encoder's text independently, by name (SD3: 0.464 for each
            of its three encoders); missing names are 0. Applied on top of ``semantic_dropout``; a sample whose
            every encoder is dropped counts as semantically dropped.
        text_null: The states of a dropped text: ``"zeros"`` (tokens and pooled vector zero, every token
            attended; SD3) or ``"empty"`` (the encoders' output for the empty caption).
        padding: What the padding slots of the combined text sequence hold (`conditioning.padding`):
            ``"encoder"`` (the encoder's pad states, SD3), ``"zero"``, ``"replicate"`` (the real tokens repeated)
            or ``"noisy_replicate"`` (repeated plus Gaussian noise); the replicate modes attend every slot.
        padding_sigma: Noise of ``noisy_replicate``, relative to each copied token's RMS.

    Batches may carry precomputed text states as ``batch["text"] = {name: {"tokens", "mask", "pooled"}}``
    (``pooled`` optional for T5); those encoders are then not run. ``num_classes`` and ``resolution`` are set
    by the `DiffusionModule` that owns the conditioner: labels are range-checked against ``num_classes`` once per
    batch, and `example` uses both.
    """

    num_classes: int | None = None
    """Number of classes of a class-conditional model (set by the owning module)."""
    resolution: int | None = None
    """Image side in pixels (set by the owning module); the default control of `example` is the whole image."""

    def __init__(
        self,
        semantic: Literal["class", "caption", "none"] = "class",
        control_names: list[str] | None = None,
        semantic_dropout: float = 0.1,
        control_dropout: float = 0.0,
        text_encoders: dict[str, TextEncoder] | None = None,
        text_dropout: dict[str, float] | None = None,
        text_null: Literal["zeros", "empty"] = "zeros",
        padding: PaddingMode = "encoder",
        padding_sigma: float = 0.1,
    ) -> None:
        super().__init__()
        text_dropout = dict(text_dropout or {})
        probabilities = [("semantic_dropout", semantic_dropout), ("control_dropout", control_dropout)]
        probabilities += [(f"text_dropout[{k!r}]", p) for k, p in text_dropout.items()]
        for name, p in probabilities:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if semantic not in ("class", "caption", "none"):
            raise ValueError(f"semantic must be 'class', 'caption' or 'none', got {semantic!r}")
        if text_null not in ("zeros", "empty"):
            raise ValueError(f"text_null must be 'zeros' or 'empty', got {text_null!r}")
        if padding not in PADDING_MODES or padding_sigma < 0:
            raise ValueError(f"padding must be one of {PADDING_MODES} with padding_sigma >= 0, got {padding!r}")
        encoders = dict(text_encoders or {})
        unknown = sorted(set(text_dropout) - set(encoders))
        if unknown:
            raise ValueError(f"text_dropout names {unknown} but the text encoders are {sorted(encoders)}")
        if encoders and semantic != "caption":
            raise ValueError(f"text_encoders are set but semantic={semantic!r}; use semantic: caption")
        self.semantic = semantic
        self.control_names = tuple(control_names or ())
        self.semantic_dropout = semantic_dropout
        self.control_dropout = control_dropout
        self.text_encoders = nn.ModuleDict({name: owned(e) for name, e in encoders.items()})
        self.text_dropout = {name: float(text_dropout.get(name, 0.0)) for name in encoders}
        self.text_null = text_null
        self.padding, self.padding_sigma = padding, float(padding_sigma)
        # Encoded empty prompts, per (encoder, device), for text_null="empty"; derived, never saved.
        self.__dict__["_empty_states"] = {}

    # ------------------------------------------------------------------------------------- text layout

    @property
    def text_names(self) -> tuple[str, ...]:
        """Names of the text encoders, in the order their states are combined."""
        return tuple(self.text_encoders.keys())

    def _groups(self) -> tuple[list[str], list[str]]:
        """(CLIP-like encoders, combined along the width; T5-like encoders, concatenated along the sequence)."""
        clips = [n for n, e in self.text_encoders.items() if e.kind == "clip"]
        return clips, [n for n in self.text_encoders if n not in clips]

    @property
    def context_dim(self) -> int | None:
        """E, the width of ``Cond.tokens`` (read from the encoders' configs; no weights are loaded)."""
        if not self.text_encoders:
            return None
        clips, others = self._groups()
        widths = [sum(self.text_encoders[n].width for n in clips)] if clips else []
        return max(widths + [self.text_encoders[n].width for n in others])

    @property
    def context_length(self) -> int | None:
        """L, the number of text tokens in ``Cond.tokens``."""
        if not self.text_encoders:
            return None
        clips, others = self._groups()
        lengths = {self.text_encoders[n].max_length for n in clips}
        if len(lengths) > 1:
            raise ValueError(f"CLIP-like encoders {clips} are combined along the width and need one max_length")
        return sum(lengths) + sum(self.text_encoders[n].max_length for n in others)

    @property
    def pooled_dim(self) -> int | None:
        """E', the width of ``Cond.pooled`` (the CLIP pooled vectors concatenated), None without a CLIP."""
        clips, _ = self._groups()
        if not clips:
            return None
        return sum(self.text_encoders[n].pooled_width for n in clips)

    def _null_states(self, name: str, n: int, device: torch.device) -> TextStates:
        encoder = self.text_encoders[name]
        if self.text_null == "zeros" or device.type == "meta":
            return _zero_states(encoder, n, device)
        key = (name, str(device))
        cache = self.__dict__["_empty_states"]
        if key not in cache:
            cache[key] = encoder.encode([""], device=device)
        tokens, mask, pooled = cache[key]
        expand = lambda x: None if x is None else x.expand(n, *x.shape[1:])  # noqa: E731
        return expand(tokens), expand(mask), expand(pooled)

    def encode_text(
        self,
        captions: Sequence[str] | None,
        device: torch.device | str | None = None,
        precomputed: Mapping[str, Mapping[str, Tensor]] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, TextStates]:
        """Each encoder's states for the captions: precomputed ones where given, zeros on the meta device."""
        if not self.text_encoders:
            raise ValueError(
                "semantic='caption' needs text encoders: set conditioner.text_encoders, e.g. "
                "{t5: {class_path: conditioning.text.TextEncoder, init_args: {pretrained: google/t5-v1_1-xxl, "
                "kind: t5, max_length: 120}}}"
            )
        precomputed = precomputed or {}
        device = torch.device(device) if device is not None else torch.device("cpu")
        n = len(captions) if captions is not None else batch_size
        states: dict[str, TextStates] = {}
        for name, encoder in self.text_encoders.items():
            if name in precomputed:
                entry = precomputed[name]
                states[name] = (entry["tokens"], entry["mask"].bool(), entry.get("pooled"))
            elif device.type == "meta":
                if n is None:
                    raise ValueError("encode_text on the meta device needs captions or batch_size")
                states[name] = _zero_states(encoder, n, device)
            else:
                if captions is None:
                    raise KeyError(
                        f"the conditioner is caption-conditional but the batch has neither 'caption' nor "
                        f"precomputed batch['text'][{name!r}]"
                    )
                states[name] = encoder.encode(list(captions), device=device)
        return states

    def combine_text(self, states: Mapping[str, TextStates]) -> TextStates:
        """One ``(tokens, mask, pooled)`` from the encoders' states, combined as SD3 does (see the module doc)."""
        clips, others = self._groups()
        width = self.context_dim
        dtype = _common_dtype([states[n][0] for n in self.text_names])
        parts: list[tuple[Tensor, Tensor]] = []
        if clips:
            tokens = torch.cat([states[n][0].to(dtype) for n in clips], dim=-1)
            mask = torch.stack([states[n][1] for n in clips]).any(0)
            parts.append((tokens, mask))
        parts += [(states[n][0].to(dtype), states[n][1]) for n in others]
        tokens = torch.cat([nn.functional.pad(t, (0, width - t.shape[-1])) for t, _ in parts], dim=1)
        mask = torch.cat([m for _, m in parts], dim=1)
        pooled = torch.cat([states[n][2].to(dtype) for n in clips], dim=-1) if clips else None
        return tokens, mask, pooled

    # ------------------------------------------------------------------------------------- building conds

    def forward(
        self,
        batch: Mapping[str, Any],
        train: bool,
        generator: torch.Generator | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> Cond:
        """Build the condition of ``batch``; with ``train`` the groups are dropped at their probabilities.

        ``generator`` draws the dropout; ``generators`` (one per sample) the noise of noisy text padding (`make`).
        """
        n, device = _batch_size(batch), _batch_device(batch)
        drop_semantic = drop_control = None
        if train:
            if n is None:
                raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(batch)}")
            drop_semantic = torch.rand(n, device=device, generator=generator) < self.semantic_dropout
            drop_control = torch.rand(n, device=device, generator=generator) < self.control_dropout
        text_drops = None
        if train and self.semantic == "caption":
            text_drops = {
                name: torch.rand(n, device=device, generator=generator) < p for name, p in self.text_dropout.items()
            }
        cond = self.make(
            labels=batch.get("class_label"),
            captions=batch.get("caption"),
            control=batch.get("control"),
            batch_size=n,
            device=device,
            precomputed_text=batch.get("text"),
            text_drops=text_drops,
            generators=generators,
        )
        if not train:
            return cond
        return cond.drop(semantic=drop_semantic, control=drop_control)

    def make(
        self,
        labels: Tensor | None = None,
        control: Mapping[str, Tensor] | Tensor | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        captions: Sequence[str] | None = None,
        precomputed_text: Mapping[str, Mapping[str, Tensor]] | None = None,
        text_drops: Mapping[str, Tensor] | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> Cond:
        """Build a `Cond` from explicit values (used for sampling at chosen classes/controls/captions).

        Args:
            labels: (N,) class indices (``semantic: class``).
            control: Control metadata, a dict of named tensors or an (N, K) matrix in ``control_names`` order.
            batch_size: N, needed when nothing else tells it (unconditional models).
            device: Device of the tensors made here.
            captions: N captions (``semantic: caption``), unless ``precomputed_text`` covers every encoder.
            precomputed_text: ``{name: {"tokens", "mask", "pooled"}}`` states that replace running an encoder.
            text_drops: ``{name: (N,) bool}``: where each encoder's text is replaced by its null (training).
            generators: One per sample, the random source of its noisy text padding, so that a sample's condition
                does not depend on the batch or rank it is drawn in (None: the global RNG).
        """
        label = control_tensor = None
        text: dict[str, Any] = {}
        if device is None and labels is not None:
            device = labels.device
        if self.semantic == "class":
            if labels is None:
                raise KeyError("the conditioner is class-conditional but the batch has no 'class_label'")
            label = labels.long()
            self._check_labels(label)
        elif self.semantic == "caption":
            text = self._text_fields(captions, device, precomputed_text, batch_size, text_drops, generators)
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

    def _check_labels(self, label: Tensor) -> None:
        # Once per batch, here rather than in every backbone forward: one host sync, and no graph break in a
        # compiled backbone.
        if self.num_classes is None or label.is_meta or label.numel() == 0:
            return
        low, high = int(label.min()), int(label.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}), got values in [{low}, {high}]; check the "
                "dataset's num_classes (the model's is linked from the data)"
            )

    def _text_fields(
        self,
        captions: Sequence[str] | None,
        device: torch.device | str | None,
        precomputed: Mapping[str, Mapping[str, Tensor]] | None,
        batch_size: int | None,
        text_drops: Mapping[str, Tensor] | None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> dict[str, Any]:
        states = self.encode_text(captions, device, precomputed, batch_size)
        first = next(iter(states.values()))[0]
        n, device = first.shape[0], first.device
        nulls = {name: self._null_states(name, n, device) for name in self.text_names}
        dropped = torch.zeros(n, len(self.text_names), dtype=torch.bool, device=device)
        for i, name in enumerate(self.text_names):
            drop = None if text_drops is None else text_drops.get(name)
            if drop is None:
                continue
            dropped[:, i] = drop
            states[name] = _where_states(drop, nulls[name], states[name])
        tokens, mask, pooled = self.combine_text(states)
        tokens, mask = pad_text(tokens, mask, self.padding, self.padding_sigma, generator=generators)
        fields: dict[str, Any] = {"tokens": tokens, "token_mask": mask, "pooled": pooled}
        fields["text_names"], fields["text_null"] = self.text_names, dropped
        if self.text_null == "empty":
            null_tokens, null_mask, fields["null_pooled"] = self.combine_text(nulls)
            fields["null_tokens"], fields["null_token_mask"] = pad_text(
                null_tokens, null_mask, self.padding, self.padding_sigma, generator=generators
            )
        # A sample whose every encoder was dropped has no text left: it is semantically dropped.
        fields["semantic_null"] = dropped.all(1)
        return fields

    # ------------------------------------------------------------------------------------- one example

    def example(
        self,
        n: int,
        device: torch.device | str | None = None,
        num_classes: int | None = None,
        resolution: int | None = None,
    ) -> Cond:
        """The benchmark's example condition of ``n`` samples, used by describe, FLOP counts and sample grids.

        Labels ``0..n-1`` modulo the number of classes, the captions of `EXAMPLE_CAPTIONS` (cycled), and the
        default control: the whole square image at the training resolution, not flipped. On the meta device the
        text states are zeros of the right shape and no encoder runs.

        Args:
            n: Number of samples.
            device: Device of the tensors.
            num_classes: Overrides ``self.num_classes`` (set by the owning module).
            resolution: Overrides ``self.resolution`` (set by the owning module).
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        labels = control = captions = None
        if self.semantic == "class":
            classes = num_classes or self.num_classes
            if classes is None:
                raise ValueError("Conditioner.example needs num_classes for a class-conditional model")
            labels = torch.arange(n, device=device) % classes
        elif self.semantic == "caption":
            captions = [EXAMPLE_CAPTIONS[i % len(EXAMPLE_CAPTIONS)] for i in range(n)]
        if self.control_names:
            side = resolution or self.resolution
            if side is None:
                raise ValueError("Conditioner.example needs the resolution for the default control")
            control = default_control(n, side, device)
        with warnings.catch_warnings():
            # The example captions fix shapes for FLOP counts and describe; a short tokenizer (the Shapes CLIP's 16
            # tokens) truncating one is expected there, not a problem of the user's data worth a warning per run.
            warnings.filterwarnings("ignore", message="captions longer than")
            return self.make(labels=labels, control=control, captions=captions, batch_size=n, device=device)


def default_control(n: int, resolution: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Control metadata of an un-augmented sample: the whole square image at ``resolution``, not flipped."""
    full = torch.full((n, 2), float(resolution), device=device)
    return {
        "orig_size": full,
        "crop_coords": torch.zeros(n, 2, device=device),
        "crop_size": full.clone(),
        "flip": torch.zeros(n, device=device),
    }


def _zero_states(encoder: TextEncoder, n: int, device: torch.device) -> TextStates:
    tokens = torch.zeros(n, encoder.max_length, encoder.width, device=device, dtype=encoder.dtype)
    mask = torch.ones(n, encoder.max_length, dtype=torch.bool, device=device)
    pooled_width = encoder.pooled_width
    pooled = None if pooled_width is None else torch.zeros(n, pooled_width, device=device, dtype=encoder.dtype)
    return tokens, mask, pooled


def _where_states(drop: Tensor, null: TextStates, real: TextStates) -> TextStates:
    tokens = torch.where(drop[:, None, None], null[0].to(real[0].dtype), real[0])
    mask = torch.where(drop[:, None], null[1], real[1])
    pooled = None if real[2] is None else torch.where(drop[:, None], null[2].to(real[2].dtype), real[2])
    return tokens, mask, pooled


def _common_dtype(tensors: list[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _batch_size(batch: Mapping[str, Any]) -> int | None:
    for key in ("image", "latent", "latent_mean", "class_label"):
        if key in batch and isinstance(batch[key], Tensor):
            return batch[key].shape[0]
    if isinstance(batch.get("caption"), list | tuple):
        return len(batch["caption"])
    for entry in (batch.get("text") or {}).values():
        return entry["tokens"].shape[0]
    return None


def _batch_device(batch: Mapping[str, Any]) -> torch.device | None:
    for key in ("image", "latent", "class_label"):
        if key in batch and isinstance(batch[key], Tensor):
            return batch[key].device
    for entry in (batch.get("text") or {}).values():
        return entry["tokens"].device
    return None
