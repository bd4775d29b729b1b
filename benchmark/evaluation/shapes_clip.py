"""The embedded Shapes evaluator: a small CLIP trained on Shapes, shipped in ``data/weights/shapes-clip/``.

It is a ``transformers.CLIPModel`` (tiny text and vision towers, trained by ``scripts/train_shapes_clip.py``) plus
linear heads on its pooled image feature that read the attributes a Shapes caption states: the shape kind, the
direction an asymmetric kind faces (what a horizontal flip changes), the size word, the shape colour and the
background colour. From it come, for generated Shapes images:

- ``fd_shapes``: the Fréchet distance of its pooled image features (``pool``) against real Shapes. It is *not*
  FID: the features are this small CLIP's, so numbers only compare with other ``fd_shapes`` numbers.
  ``fd_shapes_inf`` beside it is the same distance extrapolated in 1/n to infinitely many samples (FD∞).
- ``class_accuracy``: the fraction of samples whose kind, read by the class head, is the class asked for.
- ``flip_obeyed``: among samples of the asymmetric kinds (arrow, crescent, L shape), the fraction facing the way
  the flip control asked for (right without flip, left with it); 0.5 is chance. `flip_obeyed` is the function the
  conditioning study reuses.
- ``clip_score``: 100 × the mean positive cosine of image and caption embeddings (torchmetrics' definition), for
  caption-conditioned entries.

The vision tower reads 32-pixel images. Larger images are area-averaged down to 32 pixels first (an exact 2x2 box
average at 64 pixels, which is how the training images themselves were made from 64-pixel renders), other sizes
resized with an antialiased bilinear filter; the weights README states the accuracy at 32 and at 64 pixels.
The model is registered as the torch-fidelity feature extractor ``"shapes-clip"`` (features ``pool``,
``embeds``), so torch-fidelity computes the same ``fd_shapes`` from two image sets.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASYMMETRIC_KINDS", "ShapesCLIP", "flip_obeyed", "register_torch_fidelity"]

EMBEDDED_NAME = "embedded:shapes-clip"
ASYMMETRIC_KINDS = ("arrow", "crescent", "L shape")
"""Kinds that are not mirror-symmetric: a horizontal flip changes the direction they face."""
HEADS = ("class", "direction", "size", "colour", "background")
_FEATURE_BATCH = 512


def resolve(pretrained: str) -> Path:
    """The weight folder of ``"embedded:shapes-clip"`` or a local folder."""
    if pretrained.startswith("embedded:"):
        from data.autoencoder import embedded_weights_dir

        return embedded_weights_dir(pretrained)
    return Path(pretrained)


class ShapesCLIP(nn.Module):
    """The Shapes CLIP with its attribute heads. Build with `ShapesCLIP.load`.

    Args:
        model: The ``CLIPModel``.
        tokenizer: Its tokenizer.
        heads: Linear heads on the pooled image feature, keyed by attribute (see ``HEADS``).
        names: Class names of every head's outputs.
        source: Where the weights came from (recorded in statistics specs).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, heads: nn.ModuleDict, names: dict[str, list[str]], source: str
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.heads = heads.eval().requires_grad_(False)
        self.names = names
        self.source = source

    @classmethod
    def load(cls, pretrained: str = EMBEDDED_NAME, device: torch.device | str = "cpu") -> ShapesCLIP:
        """Load model, tokenizer and heads from ``pretrained`` (``embedded:shapes-clip`` or a folder); cached."""
        return _load(str(pretrained), str(device))

    # ------------------------------------------------------------------------------------------ images
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (N, 3, H, W) -> float in [-1, 1] at the tower's size (32 px)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"ShapesCLIP reads uint8 images in [0, 255], got {images.dtype}")
        x = images.to(self.device, torch.float32) / 127.5 - 1
        size, native = x.shape[-1], self.model.config.vision_config.image_size
        if size != native:
            if size % native == 0 and x.shape[-2] == size:
                x = F.avg_pool2d(x, size // native)
            else:
                x = F.interpolate(x, size=(native, native), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def image_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """``pool`` (N, D) pooled vision feature, ``embeds`` (N, P) projected embedding, and every head's logits."""
        out: dict[str, list[Tensor]] = {}
        for lo in range(0, images.shape[0], _FEATURE_BATCH):
            x = self.preprocess(images[lo : lo + _FEATURE_BATCH])
            pool = self.model.vision_model(pixel_values=x).pooler_output
            result = {"pool": pool, "embeds": self.model.visual_projection(pool)}
            result.update({name: head(pool) for name, head in self.heads.items()})
            for key, value in result.items():
                out.setdefault(key, []).append(value.float().cpu())
        return {key: torch.cat(values) for key, values in out.items()}

    def features(self, images: Tensor) -> Tensor:
        """(N, D) pooled image features: what ``fd_shapes`` compares."""
        return self.image_outputs(images)["pool"]

    def spec(self) -> dict[str, Any]:
        """What the features depend on (recorded with cached reference statistics)."""
        return {"extractor": "shapes-clip", "layer": "pool", "weights_sha256": _weights_hash(self.source)}

    # ------------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def text_embeds(self, captions: list[str]) -> Tensor:
        """(N, P) projected caption embeddings."""
        batch = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
        pooled = self.model.text_model(input_ids=batch["input_ids"].to(self.device)).pooler_output
        return self.model.text_projection(pooled).float().cpu()

    def clip_score(self, images: Tensor, captions: list[str]) -> float:
        """100 × mean(max(cos(image, caption), 0)) over matched pairs (torchmetrics' CLIPScore definition)."""
        img = F.normalize(self.image_outputs(images)["embeds"], dim=-1)
        txt = F.normalize(self.text_embeds(captions), dim=-1)
        return float(100 * (img * txt).sum(-1).clamp(min=0).mean())

    # ------------------------------------------------------------------------------------------ metrics
    def metrics(
        self,
        generated: Any,
        reference: tuple[Any, Any],
        *,
        real_features: Tensor | None = None,
        bootstrap_reps: int = 200,
    ) -> dict[str, float]:
        """``fd_shapes`` and, where the set says what was asked for, class accuracy, flip obeyed and CLIP score.

        Each value comes with ``<key>_sd``, its bootstrap evaluation-noise SD (`benchmark.evaluation.metrics`).
        Under DDP ``generated`` may be this rank's slice: the metrics gather features, not images.

        Args:
            generated: A `benchmark.evaluation.generate.GeneratedSet`.
            reference: ``(mu, sigma)`` of the real reference features.
            real_features: Real ``pool`` features: adds ``precision`` / ``recall`` (k-NN manifolds, k = 3).
            bootstrap_reps: Bootstrap resamples of the SDs (0: none).
        """
        from benchmark.evaluation import metrics as M

        outputs = self.image_outputs(generated.images)
        labels = None if generated.labels is None else generated.labels.cpu().reshape(-1)
        reps = {"bootstrap_reps": bootstrap_reps}
        updates: list[tuple[M.FeatureMetric, Any, Any]] = [
            (M.FrechetDistance(reference, name="fd_shapes", **reps), outputs["pool"], labels),
            # Beside it, FD extrapolated to infinitely many samples: at n = 1,000 real images still score 1.2 against
            # the reference (docs/evaluation.md); FD∞ removes most of that floor, at 1.4 times the noise.
            (M.FrechetDistanceInfinity(reference, name="fd_shapes_inf", **reps), outputs["pool"], labels),
        ]
        if labels is not None:
            updates.append((M.ClassAccuracy(**reps), outputs["class"], labels))
            if generated.control is not None:
                shown = torch.tensor([self.names["class"][int(k)] in ASYMMETRIC_KINDS for k in labels])
                flip_labels = torch.stack([generated.control.cpu().float().reshape(-1), shown.float()], 1)
                updates.append((M.FlipObeyed(**reps), outputs["direction"], flip_labels))
        if generated.captions is not None:
            updates.append((M.CLIPScore(**reps), outputs["embeds"], self.text_embeds(generated.captions)))
        if real_features is not None:
            updates.append((M.PrecisionRecall(real_features, **reps), outputs["pool"], None))
        return M.measure_all(updates)

    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Predicted index of every head for uint8 images (e.g. ``predict(x)["class"]``)."""
        outputs = self.image_outputs(images)
        return {name: outputs[name].argmax(-1) for name in self.heads}


def flip_obeyed(direction_logits: Tensor, labels: Tensor, flips: Tensor, class_names: list[str]) -> float | None:
    """Fraction of asymmetric-kind samples that face the way their flip control asked (None if there are none).

    Shapes draws the asymmetric kinds facing right; a flipped image faces left. So a sample asked for ``flip`` = 1
    obeys if the direction head reads "left" (index 1), and one asked for ``flip`` = 0 if it reads "right" (0).

    Args:
        direction_logits: (N, 2) logits of the direction head (0 = right, 1 = left).
        labels: (N,) requested classes.
        flips: (N,) requested flip flags (0 or 1).
        class_names: Class names, indexed by label.
    """
    asym = torch.tensor([class_names[int(k)] in ASYMMETRIC_KINDS for k in labels], dtype=torch.bool)
    if not bool(asym.any()):
        return None
    wanted = flips.cpu().round().long()[asym]
    return float((direction_logits.cpu().argmax(-1)[asym] == wanted).float().mean())


# ---------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=4)
def _load(pretrained: str, device: str) -> ShapesCLIP:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPModel

    folder = resolve(pretrained)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no Shapes CLIP in {folder}: train one with `python scripts/train_shapes_clip.py --out {folder}`"
        )
    with _no_loading_bar():  # a bar over the 110 tensors of a 1 MB model, printed by every evaluated row
        model = CLIPModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    names = json.loads((folder / "heads.json").read_text())
    state = load_file(folder / "heads.safetensors")
    width = model.config.vision_config.hidden_size
    heads = nn.ModuleDict({name: nn.Linear(width, len(names[name])) for name in HEADS})
    heads.load_state_dict({k: v for k, v in state.items()}, strict=True)
    return ShapesCLIP(model, tokenizer, heads, names, str(folder)).to(device)


@lru_cache(maxsize=8)
def _weights_hash(folder: str) -> str:
    from benchmark.evaluation.provenance import file_sha256

    files = sorted(Path(folder).glob("*.safetensors"))
    return "-".join(file_sha256(f)[:16] for f in files)


# ---------------------------------------------------------------------------------------------- torch-fidelity
def register_torch_fidelity(name: str = "shapes-clip") -> str:
    """Register the Shapes CLIP as a torch-fidelity feature extractor (idempotent); returns its name.

    Use ``feature_extractor="shapes-clip", feature_layer_fid="pool"``; ``feature_extractor_weights_path`` may name
    another weight folder (default: the embedded one). torch-fidelity then reports ``fd_shapes`` under its FID key.
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class ShapesCLIPExtractor(torch_fidelity.FeatureExtractorBase):
        def __init__(
            self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(name, features_list)
            self.clip = ShapesCLIP.load(feature_extractor_weights_path or EMBEDDED_NAME)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("pool", "embeds")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "pool"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            outputs = self.clip.image_outputs(x)
            return tuple(outputs[f] for f in self.features_list)

    torch_fidelity.register_feature_extractor(name, ShapesCLIPExtractor)
    return name
