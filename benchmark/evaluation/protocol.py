"""`EvalProtocol`: one set of sampling and measuring rules applied to every entry of a suite.

Two rows of a results table are comparable only if both were sampled the same way (sampler, number of denoiser
evaluations, guidance, EMA or not), from the same label or caption list and seeds, and measured with the same
feature extractor against the same reference statistics. An `EvalProtocol` fixes all of that once per suite and
overrides the entry's own sampling settings while it is evaluated (`EvalProtocol.apply`). Its `id()` is a stable
hash of every field, recorded in each metrics JSON next to the protocol itself.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from benchmark.module import DiffusionModule

__all__ = ["EvalProtocol", "sample_seed"]

_SEED_STRIDE = 1_000_003  # a prime: (seed, index) pairs map to distinct generator seeds for any index < stride


def sample_seed(seed: int, index: int) -> int:
    """Seed of the generator that draws everything random about sample ``index`` of a set seeded ``seed``."""
    return (seed * _SEED_STRIDE + index) % (2**63 - 1)


@dataclass
class EvalProtocol:
    """How every entry of a suite is sampled and measured.

    Args:
        name: A human-readable name of the protocol (part of the id).
        num_samples: Number of generated images per guidance setting.
        seed: Base seed; sample ``i`` draws its noise from ``torch.Generator().manual_seed(seed * 1_000_003 + i)``.
        batch_size: Images generated per forward batch (per rank). Does not change the samples.
        use_ema: Sample with the EMA weights (the DiT protocol) rather than the raw weights.
        flow_sampler: Sampler for rectified-flow entries (Euler integration of the velocity field).
        flow_steps: Euler steps (denoiser evaluations per sample without guidance) for rectified-flow entries.
        ddpm_sampler: Sampler for DDPM entries: ``"ddim"`` (deterministic, η = 0) or ``"ddpm"`` (ancestral).
        ddpm_steps: Steps of the respaced chain for DDPM entries.
        guidance_scale: Semantic classifier-free guidance scale of the "with guidance" measurement; 1.0 means none
            (then the "without guidance" measurement is not repeated).
        no_guidance: Also measure without guidance (scale 1.0); metrics get the suffix ``_noguidance``.
        label_scheme: Class labels of the samples: ``"balanced"`` gives sample ``i`` the class ``i % num_classes``
            (equal counts when ``num_samples`` is a multiple of ``num_classes``).
        captions: Caption list of caption-conditioned entries: ``"shapes-val"`` (captions of Shapes val items
            ``0..num_samples-1``) or a path to a text file with one caption per line (cycled).
        feature_extractor: ``"shapes-clip"`` (the embedded Shapes CLIP: ``fd_shapes``, class accuracy, CLIP score,
            flip obeyed; Shapes data only), ``"data-classifier"`` (a small classifier trained on the entry's own
            labelled data, offline: ``fd_data``, class accuracy, its own val accuracy; see
            `benchmark.evaluation.data_classifier`) or ``"inception-v3-compat"`` (torch-fidelity's Inception: FID,
            IS, precision / recall; needs its weights).
        reference: Reference statistics: ``"shapes:train"`` / ``"shapes:val"`` (Shapes images of that split with the
            data's own settings, computed once and cached), a path to an ADM-style ``.npz`` with ``mu`` / ``sigma``,
            or ``"data:val"`` / ``"data:train"`` (the DataModule's own split, cached).
        reference_samples: Number of real images in the reference statistics (when they are computed here).
        inception_weights: Path of torch-fidelity's Inception state dict (``weights-inception-2015-12-05-*.pth``)
            for machines without network access; None downloads it once through torch-fidelity.
        precision_recall: Also compute improved precision / recall (k = 3, Kynkäänniemi et al. 2019) in the
            extractor's features against ``reference_samples`` real images of the reference (an error when the
            reference has no images).
        inception_score: Also compute the Inception score.
        bootstrap_reps: Bootstrap resamples behind every metric's evaluation-noise SD (``<key>_sd``; see
            `benchmark.evaluation.stats`); 0 reports no SD.
        sampling: ``"protocol"``: every entry samples with the protocol's sampler for its objective family and
            constant guidance (a shared-recipe view). ``"recipe"``: each entry keeps its own sampler (class and
            settings such as DDIM's η) and guidance schedule (power-cosine, interval, control scale, guided
            channels), as the paper compares models "with their corresponding recipes"; the protocol still fixes
            the number of steps (``flow_steps`` / ``ddpm_steps`` by objective family) and the peak semantic scale.
    """

    name: str = "custom"
    num_samples: int = 1000
    seed: int = 0
    batch_size: int = 250
    use_ema: bool = True
    flow_sampler: Literal["euler"] = "euler"
    flow_steps: int = 50
    ddpm_sampler: Literal["ddim", "ddpm"] = "ddim"
    ddpm_steps: int = 50
    guidance_scale: float = 1.5
    no_guidance: bool = True
    label_scheme: Literal["balanced"] = "balanced"
    captions: str = "shapes-val"
    feature_extractor: str = "shapes-clip"
    reference: str = "shapes:train"
    reference_samples: int = 5000
    inception_weights: str | None = None
    precision_recall: bool = False
    inception_score: bool = False
    bootstrap_reps: int = 200
    sampling: Literal["protocol", "recipe"] = "protocol"
    # Fields that do not change the numbers (where weights live, how big a batch is) stay out of the id.
    _NOT_IN_ID: ClassVar[tuple[str, ...]] = ("batch_size", "inception_weights")

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"EvalProtocol: num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"EvalProtocol: batch_size must be >= 1, got {self.batch_size}")
        if self.flow_steps < 1 or self.ddpm_steps < 2:
            raise ValueError("EvalProtocol: flow_steps must be >= 1 and ddpm_steps >= 2")
        if self.guidance_scale < 0:
            raise ValueError(f"EvalProtocol: guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.flow_sampler != "euler":
            raise ValueError(f"EvalProtocol: flow_sampler must be 'euler', got {self.flow_sampler!r}")
        if self.ddpm_sampler not in ("ddim", "ddpm"):
            raise ValueError(f"EvalProtocol: ddpm_sampler must be 'ddim' or 'ddpm', got {self.ddpm_sampler!r}")
        if self.bootstrap_reps < 0 or self.bootstrap_reps == 1:
            raise ValueError(f"EvalProtocol: bootstrap_reps must be 0 or >= 2, got {self.bootstrap_reps}")
        if self.sampling not in ("protocol", "recipe"):
            raise ValueError(f"EvalProtocol: sampling must be 'protocol' or 'recipe', got {self.sampling!r}")
        if self.label_scheme != "balanced":
            raise ValueError(f"EvalProtocol: label_scheme must be 'balanced', got {self.label_scheme!r}")

    # ------------------------------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able data (the form stored in every metrics JSON)."""
        return asdict(self)

    def id(self) -> str:
        """A stable 12-hex-digit hash of every field that changes the numbers."""
        data = {k: v for k, v in self.to_dict().items() if k not in self._NOT_IN_ID}
        if data["sampling"] == "protocol":  # the default stays out, so protocols written before it keep their id
            del data["sampling"]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalProtocol:
        """Build from a dict; unknown keys raise with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"EvalProtocol: unknown fields {unknown}; valid fields: {sorted(valid)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalProtocol:
        """Load a protocol from a YAML file of fields (optionally nested under ``protocol:``)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if "init_args" in data:  # a jsonargparse-style {class_path, init_args} block
            data = data["init_args"]
        data = data.get("protocol", data)
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> EvalProtocol:
        """A copy with some fields changed (e.g. fewer samples for in-training evaluation)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)

    # ------------------------------------------------------------------------------------------ what to sample
    def guidance_settings(self, conditional: bool = True) -> list[tuple[str, float]]:
        """``(metric suffix, semantic guidance scale)`` pairs to measure; unconditional entries get only 1.0."""
        if not conditional or self.guidance_scale == 1.0:
            return [("", 1.0)]
        settings = [("", float(self.guidance_scale))]
        if self.no_guidance:
            settings.append(("_noguidance", 1.0))
        return settings

    def labels(self, num_classes: int) -> Tensor:
        """(num_samples,) long: sample ``i`` gets class ``i % num_classes``, so every class appears equally often.

        Args:
            num_classes: Number of classes of the entry.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return torch.arange(self.num_samples, dtype=torch.long) % num_classes

    def caption_list(self, resolution: int = 32) -> list[str]:
        """The ``num_samples`` captions of caption-conditioned entries (see ``captions``)."""
        if self.captions == "shapes-val":
            return [item["caption"] for item in shapes_val_descriptions(self.num_samples, resolution)]
        lines = [line.strip() for line in Path(self.captions).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"EvalProtocol: caption file {self.captions} is empty")
        return [lines[i % len(lines)] for i in range(self.num_samples)]

    # ------------------------------------------------------------------------------------------ sampling rules
    def sampler_for(self, module: DiffusionModule) -> Any:
        """The protocol's sampler for the entry's objective family (``sampling: recipe``: the entry's own one)."""
        from benchmark.objectives import DDPM, RectifiedFlow
        from benchmark.samplers import DDIMSampler, DDPMSampler, EulerSampler

        if self.sampling == "recipe" and isinstance(module.objective, (RectifiedFlow, DDPM)):
            own = copy.copy(module.sampler)  # the entry's sampler family and settings, the protocol's steps
            own.steps = self.flow_steps if isinstance(module.objective, RectifiedFlow) else self.ddpm_steps
            return own
        if isinstance(module.objective, RectifiedFlow):
            return EulerSampler(steps=self.flow_steps)
        if isinstance(module.objective, DDPM):
            return DDIMSampler(steps=self.ddpm_steps) if self.ddpm_sampler == "ddim" else DDPMSampler(self.ddpm_steps)
        raise TypeError(f"EvalProtocol has no sampler for objective {type(module.objective).__name__}")

    def guidance_for(self, module: DiffusionModule, scale: float) -> Any:
        """Guidance at semantic scale ``scale``, no control guidance, no interval; under ``sampling: recipe`` the
        entry's own guidance (schedule, interval, control scale) at peak scale ``scale`` (none at 1.0).

        The entry's ``guided_channels`` is kept: it is part of how that model's prediction is defined (DiT's
        3-of-4-channel quirk), not a sampling choice.
        """
        from benchmark.guidance import ClassifierFreeGuidance

        own = getattr(module, "guidance", None)
        if self.sampling == "recipe" and isinstance(own, ClassifierFreeGuidance) and scale != 1.0:
            recipe = copy.copy(own)  # the entry's schedule, interval, control scale and channels at this peak scale
            recipe.semantic_scale = float(scale)
            return recipe
        return ClassifierFreeGuidance(semantic_scale=scale, guided_channels=getattr(own, "guided_channels", None))

    @contextlib.contextmanager
    def apply(self, module: DiffusionModule, guidance_scale: float | None = None) -> Iterator[DiffusionModule]:
        """Within the block, the entry samples with the protocol's sampler and guidance; restored afterwards.

        Args:
            module: The entry.
            guidance_scale: Semantic guidance scale to use; defaults to the protocol's ``guidance_scale``.
        """
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        saved = module.sampler, module.guidance
        module.sampler = self.sampler_for(module)
        module.guidance = self.guidance_for(module, scale)
        try:
            yield module
        finally:
            module.sampler, module.guidance = saved

    def copy(self) -> EvalProtocol:
        """A deep copy."""
        return copy.deepcopy(self)


def shapes_val_descriptions(n: int, resolution: int = 32) -> list[dict[str, Any]]:
    """Caption, class and flip of Shapes val items ``0..n-1``, without drawing them (the scene is enough)."""
    from data.shapes import Shapes

    shapes = Shapes("val", resolution=resolution, length=max(n, 1))
    return [shapes.describe(i) for i in range(n)]  # the same draws as `Shapes.sample`, minus the rendering
