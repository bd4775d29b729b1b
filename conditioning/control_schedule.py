"""Noise-level schedules for control metadata: how strongly crop / size / flip conditioning acts at time t.

SDXL adds its micro-conditioning embedding to the time embedding with weight 1 at every noise level. The
disentangled-conditioning proposal instead multiplies the control embedding by a weight w(t) that fades it out at
high noise, so that the early (coarse, semantic) denoising steps see no control signal and cannot tie the image
content to it. With t in [0, 1] and t = 1 pure noise:

================  ====================================  =================================================
kind              w(t)                                  use
================  ====================================  =================================================
``cosine``        cos(π/2 · t)                          one cosine for every control (1 at t = 0, 0 at t = 1)
``cosine2``       cos²(π/2 · t)                         a faster fade
``truncated``     cos(π/2 · min(1, t / t_max))          reaches 0 already at t = t_max
``constant``      1                                     SDXL: control added at every noise level
``zero``          0                                     control path switched off (ablation / checks)
``per_group``     one of the above per control group    the default: geometric ``constant``, size ``cosine``
================  ====================================  =================================================

The functional form and its constants are a reconstruction (the proposal states "a cosine schedule" and the
direction only), so every choice is an argument. Why ``per_group`` is the default: the proposal's stated rationale
(``shared/reference/paper.md`` §2.3) is that "low-level augmentations (e.g., resolution, color) only influence later
stages of denoising when sufficient detail is present, while high-level augmentations (e.g., cropping, flipping)
affect earlier stages". Earlier stages are the high-noise ones, where one cosine for every control is already near
0, so a single cosine would switch crop and flip off exactly where the proposal places them. ``per_group`` follows
the sentence: geometric controls (crop box, flip; they decide the layout, which is fixed early) keep a constant
weight, and the size control (original image size, the proxy for resolution / detail) follows the cosine, so it
acts late. A single ``cosine`` (every control faded at high noise), ``cosine2``, ``truncated`` and ``constant``
(SDXL) are ablation cells of ``leaderboards/shapes-ablations``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_GROUPS", "SCHEDULE_KINDS", "ControlSchedule", "schedule_weight"]

SCHEDULE_KINDS = ("cosine", "cosine2", "truncated", "constant", "zero")

DEFAULT_GROUPS: dict[str, list[str]] = {
    "geometric": ["crop_top", "crop_left", "crop_h", "crop_w", "flip"],
    "photometric": ["orig_h", "orig_w"],
}
"""Control columns per group for ``per_group`` schedules; columns named in no group join the last group."""


def schedule_weight(t: Tensor, kind: str, t_max: float = 1.0) -> Tensor:
    """w(t) of one schedule ``kind`` (see the module table), float32 of the shape of ``t``.

    Args:
        t: Time in [0, 1] (1 = noise); values outside are clamped.
        kind: One of ``SCHEDULE_KINDS``.
        t_max: The time at which ``truncated`` reaches 0.
    """
    t = t.float().clamp(0.0, 1.0)
    if kind == "cosine":
        return torch.cos(0.5 * math.pi * t)
    if kind == "cosine2":
        return torch.cos(0.5 * math.pi * t) ** 2
    if kind == "truncated":
        return torch.cos(0.5 * math.pi * (t / t_max).clamp(max=1.0))
    if kind == "constant":
        return torch.ones_like(t)
    if kind == "zero":
        return torch.zeros_like(t)
    raise ValueError(f"unknown control schedule {kind!r}; valid kinds: {', '.join(SCHEDULE_KINDS)}")


class ControlSchedule:
    """The weight w(t) of the control embedding in the adaLN vector, one schedule or one per control group.

    Args:
        kind: ``per_group`` (default): each group of ``groups`` follows its entry in ``group_kinds``; or one
            schedule for every control (``cosine``, ``cosine2``, ``truncated``, ``constant``, ``zero``).
        t_max: Where ``truncated`` schedules reach 0 (in (0, 1]).
        groups: Control columns per group (``per_group`` only); default `DEFAULT_GROUPS`.
        group_kinds: Schedule of each group (``per_group`` only); default geometric ``constant``, photometric
            ``cosine``.
    """

    def __init__(
        self,
        kind: str = "per_group",
        t_max: float = 1.0,
        groups: dict[str, list[str]] | None = None,
        group_kinds: dict[str, str] | None = None,
    ) -> None:
        if kind not in (*SCHEDULE_KINDS, "per_group"):
            raise ValueError(f"unknown control schedule {kind!r}; valid: {', '.join(SCHEDULE_KINDS)}, per_group")
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must be in (0, 1], got {t_max}")
        self.kind, self.t_max = kind, float(t_max)
        self.groups = {k: list(v) for k, v in (groups or DEFAULT_GROUPS).items()}
        self.group_kinds = dict(group_kinds or {"geometric": "constant", "photometric": "cosine"})
        if kind == "per_group":
            if not self.groups:
                raise ValueError("a per_group control schedule needs at least one group")
            missing = sorted(set(self.groups) - set(self.group_kinds))
            if missing:
                raise ValueError(f"group_kinds has no schedule for groups {missing}")
            for name, group_kind in self.group_kinds.items():
                if group_kind not in SCHEDULE_KINDS:
                    raise ValueError(f"group {name!r}: unknown schedule {group_kind!r}")

    def split(self, control_names: Sequence[str]) -> dict[str, list[str]]:
        """The control columns of each group that has any, in ``control_names`` order (one group ``all`` unless
        ``per_group``)."""
        names = list(control_names)
        if self.kind != "per_group":
            return {"all": names}
        out: dict[str, list[str]] = {group: [] for group in self.groups}
        last = list(self.groups)[-1]
        for name in names:
            group = next((g for g, members in self.groups.items() if name in members), last)
            out[group].append(name)
        return {group: members for group, members in out.items() if members}

    def weight(self, t: Tensor, group: str = "all") -> Tensor:
        """w(t) (N,) of ``group`` (any group name gives the single schedule unless ``per_group``)."""
        kind = self.group_kinds[group] if self.kind == "per_group" else self.kind
        return schedule_weight(t, kind, self.t_max)

    def __repr__(self) -> str:
        if self.kind == "per_group":
            return f"ControlSchedule(per_group, {self.group_kinds}, t_max={self.t_max})"
        return f"ControlSchedule({self.kind!r}, t_max={self.t_max})"
