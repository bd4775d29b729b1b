"""Training options that trade speed for memory or change the memory layout, for any backbone: gradient
checkpointing of its blocks and the channels-last format of its convolutions.

They are callbacks, so a config turns them on with a ``class_path`` and every baseline gets them without code of its
own::

    trainer:
      callbacks:
        - class_path: benchmark.callbacks.fast_paths.GradientCheckpointing
        - class_path: benchmark.callbacks.fast_paths.ChannelsLast      # UNets: convolutions in NHWC

Neither changes what is computed: checkpointing recomputes each block's forward in the backward pass (the same
outputs and gradients, bit for bit on a CPU; tested), and channels-last changes the memory order of the
convolution weights, so only the convolution kernels' rounding can differ. What each costs or saves is measured in
``leaderboards/perf/README.md``.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ChannelsLast", "GradientCheckpointing", "checkpoint_units"]


def _has_forward(module: nn.Module) -> bool:
    return type(module).forward is not nn.Module.forward


def checkpoint_units(backbone: nn.Module) -> Iterator[nn.Module]:
    """The modules gradient checkpointing wraps: the elements of the backbone's ``nn.ModuleList`` s (transformer
    blocks, a UNet level's ResBlocks and spatial transformers). A list element or child without a ``forward`` of its
    own (a UNet ``Level``) is searched inside; other children (embedders, final layer) and the insides of a unit are
    not."""
    for child in backbone.children():
        if isinstance(child, nn.ModuleList):
            for element in child:
                if _has_forward(element):
                    yield element
                else:
                    yield from checkpoint_units(element)
        elif not _has_forward(child):
            yield from checkpoint_units(child)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own ``forward`` under ``torch.utils.checkpoint`` while it trains with gradients."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


class GradientCheckpointing(pl.Callback):
    """Recompute each block's activations in the backward pass instead of keeping them: less memory for about one
    more forward pass of compute.

    A backbone with a ``gradient_checkpointing`` switch of its own (DiT) gets it turned on; any other backbone gets
    each of its :func:`checkpoint_units` wrapped. Only training with gradients is affected (sampling and the EMA copy
    run as before), and the wrapping is undone at ``teardown``.
    """

    def __init__(self) -> None:
        self._wrapped: list[nn.Module] = []
        self._switched: nn.Module | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._wrapped or self._switched is not None:
            return
        self.enable(pl_module.backbone)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.disable()

    def enable(self, backbone: nn.Module) -> int:
        """Turn checkpointing on for ``backbone``; returns the number of units wrapped (0 when the backbone has
        its own switch)."""
        if isinstance(getattr(backbone, "gradient_checkpointing", None), bool):
            backbone.gradient_checkpointing = True
            self._switched = backbone
            return 0
        units = list(checkpoint_units(backbone))
        if not units:
            raise ValueError(f"{type(backbone).__name__} has no blocks in an nn.ModuleList to checkpoint")
        for unit in units:
            # Bound to the unit (not a closure over it), so a deep copy of the backbone binds to the copy.
            unit.forward = types.MethodType(_checkpointed_forward, unit)
        self._wrapped = units
        return len(units)

    def disable(self) -> None:
        """Undo :meth:`enable`."""
        for unit in self._wrapped:
            del unit.forward  # back to the class's forward
        self._wrapped = []
        if self._switched is not None:
            self._switched.gradient_checkpointing = False
            self._switched = None


class ChannelsLast(pl.Callback):
    """Store the backbone's (and its EMA copy's) 4-D weights channels-last before training, so that every
    convolution runs in NHWC (the layout oneDNN and cuDNN prefer for convolutions; tensor cores need it for
    convolutions in bf16/fp16). Inputs need no change: a convolution with channels-last weights returns
    channels-last activations, and the layout then follows through the network. For the UNets; a transformer's
    only convolution is its patch embedding."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.backbone.to(memory_format=torch.channels_last)
        ema = getattr(pl_module, "ema", None)
        if isinstance(getattr(ema, "shadow", None), nn.Module):
            ema.shadow.to(memory_format=torch.channels_last)
