"""A frozen Hugging Face text encoder behind one interface: captions in, ``Cond`` tokens, mask and pooled vector out.

Text-to-image recipes differ mostly in *which* encoder they use and *which* of its outputs they keep:

* **PixArt-α** (Chen et al., 2023): T5-XXL (``DeepFloyd/t5-v1_1-xxl`` / ``google/t5-v1_1-xxl``), the final
  hidden state of **120** tokens, fed to cross-attention with its padding mask. No pooled vector
  (``TextEncoder(..., kind="t5", max_length=120)``).
* **SD3 / MMDiT** (Esser et al., 2024): two CLIPs and T5. CLIP-L/14 and OpenCLIP bigG/14 each give their
  *penultimate* hidden state (77 tokens) and their projected pooled vector (``text_embeds``); the two token
  sequences are concatenated along the width and zero-padded to T5's width, then concatenated with T5-XXL's
  final hidden state along the sequence; the two pooled vectors are concatenated into the 2048-d "vector" input
  (together with the timestep embedding). Three instances of this class, named in
  ``conditioning.conditioner.Conditioner(text_encoders=...)``, which combines them this way.
* **SDXL** (Podell et al., 2023): the *penultimate* hidden state of CLIP-L and of OpenCLIP bigG (concatenated
  along the width), plus bigG's projected pooled vector, added to the timestep embedding together with the
  size / crop embeddings (``hidden_state="penultimate"``).

The encoder is **frozen** and **lazy**: constructing a :class:`TextEncoder` reads nothing (so that a config can
be parsed, printed and instantiated on the meta device offline); the tokenizer and model are loaded on the first
:meth:`TextEncoder.encode`. The loaded model is kept *outside* the ``nn.Module`` tree, so frozen weights never
appear in ``parameters()``, ``state_dict()`` or checkpoints, and optimizers / EMA / DDP never see them.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder", "shipped_config_dir"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Objects loaded from `pretrained`; never part of the module tree, state_dict or pickles.
_LOADED = ("_tokenizer", "_model", "_config")


class TextEncoder(nn.Module):
    """A frozen CLIP or T5 text encoder that turns captions into padded token states, a mask and a pooled vector.

    Example:
        >>> enc = TextEncoder("google/t5-v1_1-xxl", kind="t5", max_length=120, dtype="bfloat16")  # loads nothing
        >>> tokens, mask, pooled = enc.encode(["a photo of a cat", ""], device="cuda")  # loads, moves, encodes
        >>> cond = Cond(tokens=tokens, token_mask=mask, pooled=pooled)

    The module has no parameters and no state_dict entries. ``module.to(device)`` / Lightning's device placement
    only records the device; the hidden model follows on the next :meth:`encode`. Encoding runs under
    ``torch.no_grad()`` with autocast disabled, so the features depend on ``dtype`` only, not on the trainer's
    precision (online encoding then matches pre-computed embeddings).
    """

    def __init__(
        self,
        pretrained: str,
        kind: Literal["clip", "t5"] = "clip",
        max_length: int = 77,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        hidden_state: Literal["last", "penultimate"] = "last",
    ) -> None:
        """Describe the encoder; nothing is read from disk or the hub until first use.

        Args:
            pretrained: Hugging Face hub id (e.g. ``"openai/clip-vit-large-patch14"``, ``"google/t5-v1_1-xxl"``),
                a local folder written by ``save_pretrained`` holding both the model and its tokenizer, or
                ``"embedded:shapes-clip"`` (the Shapes CLIP shipped with ldmbench; use ``max_length=16``).
                With ``HF_HUB_OFFLINE=1`` a hub id must already be in the local Hugging Face cache.
            kind: Encoder family. ``"clip"`` loads ``CLIPTextModelWithProjection`` (or ``CLIPTextModel`` if the
                checkpoint has no text projection) and returns a pooled vector; ``"t5"`` loads
                ``T5EncoderModel`` and returns no pooled vector. A full ``CLIPModel`` checkpoint works too
                (its vision tower is ignored).
            max_length: Number of tokens L. Captions are tokenized with special tokens, truncated to L and padded
                to L. CLIP: at most its position-table size (77). PixArt-α uses 120 with T5.
            dtype: Dtype the frozen weights are loaded in, and hence of ``tokens`` / ``pooled``. Use
                ``"bfloat16"`` (or ``"float32"``) for T5 v1.1: it overflows in ``"float16"``.
            hidden_state: Which hidden state becomes ``tokens``. ``"last"``: the final output (after CLIP's final
                layer norm; PixArt-α's T5). ``"penultimate"``: the output of the second-to-last layer, without
                the final norm (SDXL and SD3 CLIP features).
        """
        super().__init__()
        if kind not in ("clip", "t5"):
            raise ValueError(f"kind must be 'clip' or 't5', got {kind!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if hidden_state not in ("last", "penultimate"):
            raise ValueError(f"hidden_state must be 'last' or 'penultimate', got {hidden_state!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if not isinstance(pretrained, str | os.PathLike) or not str(pretrained):
            raise ValueError(f"pretrained must be a hub id or a local folder, got {pretrained!r}")
        self.pretrained = str(pretrained)
        self.kind = kind
        self.max_length = max_length
        self.dtype = _DTYPES[dtype]
        self.hidden_state = hidden_state
        # Where `.to()` / Lightning last put this module: the default device of `encode`.
        self.__dict__["_device"] = torch.device("cpu")
        for name in _LOADED:
            self.__dict__[name] = None

    # ------------------------------------------------------------------ sizes, without loading weights

    @property
    def width(self) -> int:
        """E, the width of ``tokens`` (reads only the model config)."""
        config = self._get_config()
        return int(config.hidden_size if self.kind == "clip" else config.d_model)

    @property
    def pooled_width(self) -> int | None:
        """E', the width of ``pooled`` (CLIP projection dim, or hidden size without a projection); None for T5.

        Before the weights are loaded, whether a CLIP checkpoint has a projection is read from the config's
        ``architectures`` (``CLIPTextModel`` alone means no projection).
        """
        if self.kind == "t5":
            return None
        config = self._get_config()
        model = self.__dict__["_model"]
        has_projection = hasattr(model, "text_projection") if model is not None else _config_has_projection(config)
        return int(config.projection_dim if has_projection else config.hidden_size)

    def build_from_config(self) -> nn.Module:
        """The encoder's architecture with fresh weights (for counting FLOPs on the meta device); loads nothing."""
        config = self._get_config()
        if self.kind == "t5":
            from transformers import T5EncoderModel

            return T5EncoderModel(config)
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return (CLIPTextModelWithProjection if _config_has_projection(config) else CLIPTextModel)(config)

    @property
    def loaded(self) -> bool:
        """Whether the tokenizer and weights have been loaded."""
        return self.__dict__["_model"] is not None

    # ------------------------------------------------------------------ encoding

    def forward(
        self, captions: list[str], device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Same as :meth:`encode`."""
        return self.encode(captions, device)

    def encode(
        self, captions: list[str], device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Encode a batch of captions (the empty string is the null prompt).

        Args:
            captions: N captions.
            device: Device of the outputs; the frozen model is moved there on first use. Defaults to the device
                this module was last moved to with ``.to()`` (CPU initially).

        Returns:
            ``tokens`` (N, max_length, E) in ``dtype``, ``token_mask`` (N, max_length) bool (True on real tokens,
            special tokens included) and ``pooled`` (N, E') in ``dtype`` for CLIP (projected ``text_embeds``, or
            ``pooler_output`` without a projection), None for T5.
        """
        if not isinstance(captions, list | tuple):
            raise TypeError(
                f"captions must be a list of str, got {type(captions).__name__}"
                + (" (wrap a single caption in a list)" if isinstance(captions, str) else "")
            )
        if not captions:
            raise ValueError("captions is empty")
        bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
        if bad:
            raise TypeError(f"captions must be a list of str, found elements of type {sorted(set(bad))}")
        device = torch.device(device) if device is not None else self.__dict__["_device"]
        if device.type == "meta":
            raise RuntimeError("TextEncoder cannot encode on the meta device; move it to a real device first")
        tokenizer, model = self._load()
        if next(model.parameters()).device != device:
            model.to(device)
        self._count_truncated(tokenizer, captions)
        batch = tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        penultimate = self.hidden_state == "penultimate"
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if self.kind == "clip":
                # CLIP is causal: padding never changes real tokens, and the SD / SDXL / SD3 pipelines pass no mask.
                out = model(input_ids=input_ids, output_hidden_states=penultimate)
                pooled = out.text_embeds if hasattr(model, "text_projection") else out.pooler_output
            else:
                # PixArt-α passes T5 the padding mask.
                out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=penultimate)
                pooled = None
            tokens = out.hidden_states[-2] if penultimate else out.last_hidden_state
        return tokens, mask.bool(), pooled

    truncated: int = 0
    """Captions encoded so far that were longer than ``max_length`` tokens and lost their end (warned once)."""

    def _count_truncated(self, tokenizer: Any, captions: list[str]) -> None:
        # One token past max_length tells a caption that was cut from one that fits exactly.
        ids = tokenizer(list(captions), truncation=True, max_length=self.max_length + 1)["input_ids"]
        cut = sum(len(i) > self.max_length for i in ids)
        if cut:
            if not self.truncated:
                warnings.warn(
                    f"captions longer than max_length={self.max_length} tokens are truncated to it (the first: "
                    f"{next(c for c, i in zip(captions, ids) if len(i) > self.max_length)[:80]!r}...); "
                    f"{type(self).__name__}.truncated counts them",
                    stacklevel=3,
                )
            self.truncated += cut

    # ------------------------------------------------------------------ lazy loading

    def _get_config(self):
        config = self.__dict__["_config"]
        if config is None:
            from transformers import AutoConfig

            try:
                config = self._from_pretrained(AutoConfig, "config")
            except OSError:
                shipped = shipped_config_dir(self.pretrained)
                if shipped is None:
                    raise
                # Offline and not cached: the shipped copy of the hub config gives the widths (weights still need
                # the hub or a local folder).
                config = AutoConfig.from_pretrained(shipped)
            if self.kind == "clip":
                if not config.model_type.startswith("clip"):
                    raise ValueError(f"kind='clip' but {self.pretrained!r} is a {config.model_type!r} model")
                config = getattr(config, "text_config", config)  # a full CLIPConfig holds the text config
            elif "t5" not in config.model_type:
                raise ValueError(f"kind='t5' but {self.pretrained!r} is a {config.model_type!r} model")
            self.__dict__["_config"] = config
        return config

    def _load(self):
        model = self.__dict__["_model"]
        if model is not None:
            return self.__dict__["_tokenizer"], model
        from transformers import AutoTokenizer

        config = self._get_config()
        if self.kind == "clip" and self.max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length={self.max_length} exceeds the {config.max_position_embeddings} positions of "
                f"CLIP text encoder {self.pretrained!r}"
            )
        tokenizer = self._from_pretrained(AutoTokenizer, "tokenizer")
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer of {self.pretrained!r} has no pad token")
        if self.kind == "t5":
            from transformers import T5EncoderModel

            model = self._from_pretrained(T5EncoderModel, "model", dtype=self.dtype)
        else:
            from transformers import CLIPTextModel, CLIPTextModelWithProjection

            model = None
            if _config_has_projection(config):
                model, info = self._from_pretrained(
                    CLIPTextModelWithProjection, "model", dtype=self.dtype, output_loading_info=True
                )
                if any(key.startswith("text_projection") for key in info.get("missing_keys", ())):
                    model = None  # no projection in the checkpoint: don't use a random one
            if model is None:
                model = self._from_pretrained(CLIPTextModel, "model", dtype=self.dtype)
        model.requires_grad_(False)
        model.eval()  # outside the module tree, so `module.train()` never reaches it
        self.__dict__["_tokenizer"] = tokenizer
        self.__dict__["_model"] = model
        return tokenizer, model

    def _from_pretrained(self, cls, what: str, **kwargs):
        source = self.pretrained
        if source.startswith("embedded:"):  # weights shipped in data/weights/ (e.g. embedded:shapes-clip)
            from data.autoencoder import embedded_weights_dir

            source = str(embedded_weights_dir(source))
        try:
            return cls.from_pretrained(source, **kwargs)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "unset")
            raise OSError(
                f"TextEncoder could not load the {what} of {self.pretrained!r} (HF_HUB_OFFLINE={offline}). "
                "A hub id must be downloaded once with network access (it is then read from the Hugging Face "
                "cache, also with HF_HUB_OFFLINE=1); alternatively pass a local folder written by "
                "`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`. "
                f"Cause: {e}"
            ) from e

    # ------------------------------------------------------------------ nn.Module plumbing

    def _apply(self, fn, recurse: bool = True):
        # Record where `.to()` / `.cuda()` / Lightning sends this module; the hidden model follows lazily.
        self.__dict__["_device"] = fn(torch.empty(0, device=self.__dict__["_device"])).device
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (spawned workers, `torch.save(module)`) carry the description only and reload lazily.
        state = self.__dict__.copy()
        for name in _LOADED:
            state[name] = None
        return state

    def __deepcopy__(self, memo: dict) -> TextEncoder:
        # Copies (EMA models, ...) share the frozen tokenizer and weights instead of duplicating them.
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = value if key in _LOADED else copy.deepcopy(value, memo)
        return new

    def extra_repr(self) -> str:
        return (
            f"{self.pretrained!r}, kind={self.kind!r}, max_length={self.max_length}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, hidden_state={self.hidden_state!r}, "
            f"loaded={self.loaded}"
        )


_SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "weights" / "configs"
_CONFIG_ALIASES = {"DeepFloyd/t5-v1_1-xxl": "google/t5-v1_1-xxl"}  # the same T5 v1.1 XXL weights, re-hosted


def shipped_config_dir(pretrained: str) -> Path | None:
    """The folder of the shipped ``config.json`` of a well-known hub text encoder, or None.

    Shipped: ``google/t5-v1_1-xxl`` (and ``DeepFloyd/t5-v1_1-xxl``), ``openai/clip-vit-large-patch14`` and
    ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``; used only when the hub config cannot be read.
    """
    hub_id = _CONFIG_ALIASES.get(pretrained, pretrained)
    folder = _SHIPPED_CONFIGS / hub_id.replace("/", "--")
    return folder if "/" in hub_id and (folder / "config.json").is_file() else None


def _config_has_projection(config) -> bool:
    """Whether a CLIP checkpoint is expected to hold ``text_projection`` (a bare ``CLIPTextModel`` does not)."""
    architectures = getattr(config, "architectures", None) or []
    return not architectures or any(a != "CLIPTextModel" for a in architectures)
