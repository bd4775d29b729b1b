"""Exponential moving average of the backbone only (never the frozen autoencoder or text encoder)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class BackboneEMA(nn.Module):
    """Keep ``shadow`` = EMA of a backbone's parameters; buffers are copied as they are.

    The shadow is a registered submodule, so its weights live in the LightningModule's ``state_dict`` and thus in
    every checkpoint (DiT's recipe saves ``ema`` beside ``model``). It starts as an exact copy of the backbone,
    as DiT's ``update_ema(ema, model, decay=0)`` does.

    Args:
        backbone: The module to average.
        decay: EMA decay per update (DiT: 0.9999).
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` so that short runs get a useful average.
    """

    def __init__(self, backbone: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> None:
        decay = self.current_decay()
        shadow_params = list(self.shadow.parameters())
        params = [p.detach() for p in backbone.parameters()]
        if len(shadow_params) != len(params):
            raise RuntimeError("EMA shadow and backbone have different parameter lists")
        torch._foreach_lerp_(shadow_params, params, 1.0 - decay)
        for s, b in zip(self.shadow.buffers(), backbone.buffers()):
            s.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> BackboneEMA:
        # The shadow is only ever evaluated; keep it in eval mode whatever the parent does.
        super().train(mode)
        self.shadow.eval()
        return self
