"""The proposed model: an mmDiT whose semantic and control conditions are disentangled.

Paper: Tariq Berrada Ifriqi, Pietro Astolfi, Melissa Hall, et al., "On Improved Conditioning Mechanisms and
Pre-training Strategies for Diffusion Models", NeurIPS 2024, https://arxiv.org/abs/2411.03177 (§3).
Reference implementation: none was released. The backbone is :class:`baselines.mmdit.MMDiT` (sd3-ref's MMDiT,
https://github.com/Stability-AI/sd3-ref/blob/65e453f/mmdit.py, pinned at 65e453f); the conditioning changes below are
written from the paper's public description, and every choice it does not state is an argument with a default.

What changes against the mmDiT baseline (SD3's conditioning):

- Semantic conditions (class label, text) reach the network **only through attention**: the class is one (or
  ``class_tokens``) context token(s) of the joint attention, text tokens as in SD3, and the adaLN vector holds no
  semantic term (no class embedding, no pooled text vector). ``semantic_path`` selects ``attention`` (proposed),
  ``both`` (SD3: tokens and the adaLN vector) or ``adaln`` (class only in the adaLN vector; the context stream then
  holds the class table's null row, a learned constant token) for the conditioning study.
- Control metadata (original size, crop box, flip) has its own SDXL-style Fourier embedder, and its embedding is
  added to the adaLN vector **multiplied by a noise-level weight** w(t) (`conditioning.control_schedule`). By
  default ``per_group`` (one embedder and schedule per control group): crop and flip at weight 1 at every noise
  level (the proposal places them in the early, high-noise steps), the original size with w = cos(π/2·t), 1 on
  clean inputs and 0 at pure noise (a late, detail-level control). ``cosine`` (every control faded), ``constant``
  (SDXL's additive conditioning), ``cosine2`` and ``truncated`` are the reconstructed variants.
- Semantic and control groups are dropped independently in training (the conditioner's ``semantic_dropout`` and
  ``control_dropout``, 0.1 each) so that sampling can guide them with separate scales (``ClassifierFreeGuidance``'s
  ``semantic_scale`` and ``control_scale``).
- Text padding (the conditioner's ``padding``): noisy replicate padding is the proposal's; the module default
  conditioner is class-conditional, text entries set it in their YAML (see ``leaderboards/shapes-t2i/proposed.yaml``).

Deviations and reconstructions ([I] in the study's notes): the exact w(t), which controls it applies to, the
dropout rates, the noise σ of the padding and the guidance form are not stated in the available text; the defaults
are cos(π/2·t) on every control, p = 0.1 for both groups, σ = 0.1 × the copied token's RMS, and the three-branch
guidance ε(∅s,∅c) + γc·[ε(∅s,c) − ε(∅s,∅c)] + γs·[ε(s,c) − ε(∅s,c)]. The paper's models are trained at ImageNet /
CC12M scale; here the recipe defaults are the mmDiT baseline's (rectified flow, Euler, AdamW 1e-4).

Legend: N batch, K control scalars, D width.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from baselines.mmdit import MMDiT, MMDiTModule
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.objectives import Objective, RectifiedFlow
from benchmark.samplers import EulerSampler, Sampler
from conditioning.conditioner import CONTROL_NAMES, Conditioner
from conditioning.control_schedule import ControlSchedule
from conditioning.embedders import ControlEmbedder
from conditioning.types import Cond

__all__ = ["SEMANTIC_PATHS", "ProposedMMDiT", "ProposedModule"]

SemanticPath = Literal["attention", "both", "adaln"]
SEMANTIC_PATHS: tuple[str, ...] = ("attention", "both", "adaln")


class ProposedMMDiT(MMDiT):
    """mmDiT with semantic conditions through attention only and a noise-scheduled control embedding.

    Takes every :class:`~baselines.mmdit.MMDiT` argument except ``semantic_in_adaln`` (given by ``semantic_path``).

    Args:
        semantic_path: ``attention`` (proposed: class / text tokens only), ``both`` (SD3: tokens and the class or
            pooled-text vector in adaLN) or ``adaln`` (class-conditional only: the class only in the adaLN vector).
        control_names: Control columns to embed, in the order of ``cond.control``; None: no control path.
        control_schedule: The weight w(t) of the control embedding (per group with ``kind: per_group``); default
            ``ControlSchedule("per_group")``.
        **kwargs: The remaining ``MMDiT`` arguments (size, channels, ``num_classes`` or ``context_dim``, ...).
    """

    def __init__(
        self,
        semantic_path: SemanticPath = "attention",
        control_names: list[str] | None = None,
        control_schedule: ControlSchedule | None = None,
        **kwargs: Any,
    ) -> None:
        if semantic_path not in SEMANTIC_PATHS:
            raise ValueError(f"semantic_path must be one of {SEMANTIC_PATHS}, got {semantic_path!r}")
        if semantic_path == "adaln" and kwargs.get("num_classes") is None:
            raise ValueError("semantic_path='adaln' is for class-conditional models (text always enters as tokens)")
        if "semantic_in_adaln" in kwargs:
            raise ValueError("ProposedMMDiT sets semantic_in_adaln from semantic_path; do not pass both")
        # The parent builds no control embedder: this class owns the (possibly per-group) scheduled ones.
        super().__init__(semantic_in_adaln=semantic_path != "attention", control_names=None, **kwargs)
        self.semantic_path = semantic_path
        self.control_schedule = control_schedule if control_schedule is not None else ControlSchedule()
        self.control_names = tuple(control_names or ())
        groups = self.control_schedule.split(self.control_names) if self.control_names else {}
        self.control_groups = {group: [self.control_names.index(n) for n in names] for group, names in groups.items()}
        self.control_embedders = nn.ModuleDict(
            {group: ControlEmbedder(names, self.hidden_size) for group, names in groups.items()}
        )
        for embedder in self.control_embedders.values():  # as the parent initialises its embedder MLPs
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
            nn.init.zeros_(embedder.mlp[0].bias)
            nn.init.zeros_(embedder.mlp[2].bias)

    def control_embedding(self, cond: Cond) -> dict[str, Tensor]:
        """Each group's unscheduled control embedding (N, D) (learned null where ``cond.control_null``)."""
        if cond.control is None:
            raise ValueError(f"ProposedMMDiT was built with controls {list(self.control_names)}; cond.control is None")
        if cond.control_names and tuple(cond.control_names) != self.control_names:
            raise ValueError(f"cond.control_names {list(cond.control_names)} != {list(self.control_names)}")
        out = {}
        for group, embedder in self.control_embedders.items():
            columns = self.control_groups[group]
            sub = replace(cond, control=cond.control[:, columns], control_names=embedder.names)
            out[group] = embedder(sub)
        return out

    def embed_control(self, t: Tensor, cond: Cond) -> Tensor | None:
        """Σ_g w_g(t) · e_g(control): the scheduled control part of the adaLN vector, or None without controls."""
        if not self.control_embedders:
            return None
        total = None
        for group, emb in self.control_embedding(cond).items():
            part = self.control_schedule.weight(t, group).to(emb.dtype)[:, None] * emb
            total = part if total is None else total + part
        return total

    def embed_context(self, cond: Cond) -> tuple[Tensor, Tensor | None]:
        """Class / text context tokens; with ``semantic_path='adaln'`` the class token is the constant null row."""
        if self.semantic_path == "adaln" and self.num_classes is not None:
            null = torch.ones(cond.batch_size, dtype=torch.bool, device=cond.device)
            return self.class_embedder(replace(cond, semantic_null=null)), None
        return super().embed_context(cond)


class ProposedModule(MMDiTModule):
    """The proposed model with its recipe: the mmDiT baseline's (SD3's) recipe plus disentangled conditioning.

    Recipe defaults beyond the mmDiT baseline's: the conditioner sees every control column (original size, crop
    box, flip) and drops the semantic and control groups independently with p = 0.1 each; guidance has separate
    semantic and control scales (control guidance off, γc = 1, unless set).

    Args:
        size: A row of ``baselines.mmdit.SIZES`` (``mmDiT-XL/2``, ``mmDiT-tiny/2``, ...).
        semantic_path: ``attention`` (proposed), ``both`` (SD3's class / pooled vector also in adaLN) or ``adaln``
            (class-conditional only: class only in adaLN).
        control_schedule: w(t) of the control embedding: ``per_group`` (default: geometric constant, size cosine),
            ``cosine``, ``constant`` (SDXL's additive conditioning), ``cosine2``, ``truncated`` (``t_max``) or ``zero``.
        objective: Training objective (rectified flow, logit-normal t).
        sampler: Sampler for sample grids and ``predict`` (Euler).
        guidance: Two-scale classifier-free guidance (``semantic_scale``, ``control_scale``).
        conditioner: Batch → condition; its ``control_names`` are the controls embedded (empty: no control path),
            ``semantic_dropout`` / ``control_dropout`` the independent drop rates, ``padding`` the text padding.
        **kwargs: The remaining `MMDiTModule` / `DiffusionModule` arguments (learn_sigma, qk_norm, class_tokens,
            mask_context, autoencoder, optimizer, resolution, num_classes, ...), except ``semantic_in_adaln``.
    """

    def __init__(
        self,
        size: str = "mmDiT-XL/2",
        semantic_path: SemanticPath = "attention",
        control_schedule: ControlSchedule = lazy_instance(ControlSchedule, kind="per_group"),
        objective: Objective = lazy_instance(RectifiedFlow),
        sampler: Sampler = lazy_instance(EulerSampler, steps=50),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance, semantic_scale=1.5),
        conditioner: Conditioner = lazy_instance(
            Conditioner,
            semantic="class",
            control_names=list(CONTROL_NAMES),
            semantic_dropout=0.1,
            control_dropout=0.1,
        ),
        **kwargs: Any,
    ) -> None:
        if semantic_path not in SEMANTIC_PATHS:
            raise ValueError(f"semantic_path must be one of {SEMANTIC_PATHS}, got {semantic_path!r}")
        self.semantic_path = semantic_path
        self.control_schedule = control_schedule
        super().__init__(
            size=size,
            semantic_in_adaln=semantic_path != "attention",
            objective=objective,
            sampler=sampler,
            guidance=guidance,
            conditioner=conditioner,
            **kwargs,
        )

    def build_backbone(self) -> nn.Module:
        """The ``ProposedMMDiT`` of ``size`` for this module's latents, conditioning and control schedule."""
        kwargs = self.backbone_kwargs()
        kwargs.pop("semantic_in_adaln")
        return ProposedMMDiT(semantic_path=self.semantic_path, control_schedule=self.control_schedule, **kwargs)
