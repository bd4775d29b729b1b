"""Classifier-free guidance with separate semantic and control scales.

Ho & Salimans 2022 extrapolate from the unconditional towards the conditional prediction. Here the condition
has two groups that are dropped independently during training (semantic: class / text; control: crop, size,
flip, ... metadata), so guidance can push on each separately. The factorisation below needs three denoiser
evaluations and telescopes back to plain CFG in its special cases (see `ClassifierFreeGuidance`). The same
formula applies to ε (DDPM) and to the velocity (rectified flow), both linear in the score.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from benchmark.objectives import Denoiser
from conditioning.types import Cond


class ClassifierFreeGuidance:
    """Two-scale classifier-free guidance, evaluated in one batched denoiser call.

    With ∅s / ∅c the semantic / control group dropped::

        pred = ε(∅s,∅c) + γc·[ε(∅s,c) − ε(∅s,∅c)] + γs·[ε(s,c) − ε(∅s,c)]

    It reduces to the familiar forms, and then evaluates only the branches it needs:

    - γs = γc = 1: the conditional prediction ε(s,c), one evaluation;
    - γc = 1: plain CFG on the semantic group, ε(∅s,c) + γs·[ε(s,c) − ε(∅s,c)], two evaluations;
    - γs = γc = γ: plain CFG with everything dropped, ε(∅s,∅c) + γ·[ε(s,c) − ε(∅s,∅c)], two evaluations;
    - otherwise three evaluations (the branches are concatenated along the batch with `Cond.cat`).

    Only the first ``prediction_channels`` channels (ε or v) are guided; extra channels (DiT's learned Σ) come
    from the fully conditional branch, as in DiT's ``forward_with_cfg``.

    Args:
        semantic_scale: γs, the weight of the semantic (class / text) difference; 1 disables it.
        control_scale: γc, the weight of the control-metadata difference; 1 disables it.
        guided_channels: Guide only the first this-many channels and take the rest from the conditional branch.
            ``None`` guides every prediction channel. ``3`` with 4-channel latents reproduces DiT's sampler, which
            guides ε channels 0–2 only: a carry-over from GLIDE's 3-channel pixel models that the DiT authors keep
            "for exact reproducibility" (DiT PR #12, issue #41). Off by default.
        interval: ``(lo, hi)``: guide only where lo ≤ t ≤ hi (t = 1 is noise), and return the conditional
            prediction elsewhere ("guidance interval", Kynkäänniemi et al. 2024). ``None`` guides every step.
        schedule: How each scale γ varies with t: ``"constant"``, or ``"power_cosine"`` (MDT-v2, Gao et al. 2023),
            γ(t) = 1 + (γ − 1)·½·(1 − cos(π·(1 − t)^p)): no guidance at pure noise (t = 1), the full γ at t = 0.
            With t = k / 1000 this is sail-sg/MDT's ``forward_with_cfg`` scaling.
        schedule_power: The power p of ``"power_cosine"`` (MDT-v2: 4.0 at CFG 3.8, or 0.01 ≈ constant).
    """

    def __init__(
        self,
        semantic_scale: float = 1.0,
        control_scale: float = 1.0,
        guided_channels: int | None = None,
        interval: tuple[float, float] | None = None,
        schedule: Literal["constant", "power_cosine"] = "constant",
        schedule_power: float = 4.0,
    ) -> None:
        for name, scale in (("semantic_scale", semantic_scale), ("control_scale", control_scale)):
            if not math.isfinite(scale) or scale < 0:
                raise ValueError(f"ClassifierFreeGuidance: {name} must be finite and >= 0, got {scale}")
        if guided_channels is not None and guided_channels < 1:
            raise ValueError(f"ClassifierFreeGuidance: guided_channels must be >= 1 or None, got {guided_channels}")
        if interval is not None:
            lo, hi = interval
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"ClassifierFreeGuidance: interval must satisfy 0 <= lo <= hi <= 1, got {interval}")
            interval = (float(lo), float(hi))
        if schedule not in ("constant", "power_cosine"):
            raise ValueError(f"ClassifierFreeGuidance: schedule must be 'constant' or 'power_cosine', got {schedule!r}")
        if not (math.isfinite(schedule_power) and schedule_power > 0):
            raise ValueError(f"ClassifierFreeGuidance: schedule_power must be finite and > 0, got {schedule_power}")
        self.schedule = schedule
        self.schedule_power = float(schedule_power)
        self.semantic_scale = float(semantic_scale)
        self.control_scale = float(control_scale)
        self.guided_channels = guided_channels
        self.interval = interval

    def branches(self) -> list[tuple[bool, bool]]:
        """The (drop semantic, drop control) branches to evaluate; the conditional branch always comes first."""
        gs, gc = self.semantic_scale, self.control_scale
        if gs == 1.0 and gc == 1.0:
            return [(False, False)]
        if gc == 1.0:
            return [(False, False), (True, False)]
        if gs == gc:
            return [(False, False), (True, True)]
        return [(False, False), (True, False), (True, True)]

    def schedule_weight(self, t: Tensor) -> Tensor:
        """w(t) in [0, 1], the fraction of each scale's distance from 1 applied at time t (1 for ``constant``)."""
        if self.schedule == "constant":
            return torch.ones_like(t, dtype=torch.float32)
        return 0.5 * (1 - torch.cos(math.pi * (1 - t.float()).clamp(0, 1) ** self.schedule_power))

    def scales_at(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(γs(t), γc(t)), each (N,): the scales the schedule gives at the samples' times."""
        w = self.schedule_weight(t)
        return 1 + (self.semantic_scale - 1) * w, 1 + (self.control_scale - 1) * w

    def combine(self, outputs: list[Tensor], scales: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Apply the guidance formula to the branch outputs, in the order of `branches`.

        Args:
            outputs: The branch predictions.
            scales: Per-sample ``(γs, γc)``, each (N,), from `scales_at`; ``None`` uses the constant scales.
        """
        gs, gc = self.semantic_scale, self.control_scale
        if scales is not None:
            like = outputs[0]
            gs, gc = (s.to(like.dtype).reshape(-1, *[1] * (like.dim() - 1)) for s in scales)
        two_branch_scale = gs if self.control_scale == 1.0 else gc
        if len(outputs) == 1:
            return outputs[0]
        if len(outputs) == 2:
            cond, uncond = outputs
            return uncond + two_branch_scale * (cond - uncond)
        full, no_semantic, none = outputs
        return none + gc * (no_semantic - none) + gs * (full - no_semantic)

    def wrap(self, denoiser: Denoiser, prediction_channels: int) -> Denoiser:
        """Return a guided denoiser with the same signature.

        Args:
            denoiser: The backbone, ``(x_t, t, cond) -> prediction`` with at least ``prediction_channels`` channels.
            prediction_channels: Channels of the guided quantity, the latent channels C (the ε / v part of a
                C- or 2C-channel prediction).
        """
        if prediction_channels < 1:
            raise ValueError(f"ClassifierFreeGuidance: prediction_channels must be >= 1, got {prediction_channels}")
        guided = prediction_channels if self.guided_channels is None else self.guided_channels
        if guided > prediction_channels:
            raise ValueError(
                f"ClassifierFreeGuidance: guided_channels={guided} exceeds prediction_channels={prediction_channels}"
            )
        branches = self.branches()
        if len(branches) == 1:
            return denoiser

        def guided_denoiser(x: Tensor, t: Tensor, cond: Cond, **model_kwargs: Any) -> Tensor:
            active = None
            if self.interval is not None:
                active = (t >= self.interval[0]) & (t <= self.interval[1])
                if not bool(active.any()):
                    # Outside the interval: the conditional prediction, one evaluation.
                    return denoiser(x, t, cond, **model_kwargs)
            b = len(branches)
            conds = Cond.cat([cond.drop(semantic=s, control=c) for s, c in branches])
            out = denoiser(x.repeat(b, *[1] * (x.dim() - 1)), t.repeat(b), conds, **model_kwargs)
            if out.shape[1] < prediction_channels:
                raise ValueError(
                    f"ClassifierFreeGuidance: the denoiser predicts {out.shape[1]} channels, "
                    f"fewer than prediction_channels={prediction_channels}"
                )
            outputs = list(out.chunk(b))
            conditional = outputs[0]
            scales = None if self.schedule == "constant" else self.scales_at(t)
            mixed = self.combine([o[:, :guided] for o in outputs], scales)
            result = torch.cat([mixed, conditional[:, guided:]], dim=1)
            if active is not None:
                result = torch.where(active.reshape(-1, *[1] * (x.dim() - 1)), result, conditional)
            return result

        return guided_denoiser
