"""Counting the cost of a backbone forward with torch's FLOP counter (works on the meta device).

Numbers are reported as **MACs** (multiply-accumulates = counted FLOPs / 2), the convention of DiT's "Gflops"
column, so DiT-XL/2 at 256² reads 118.6 (reference/anchors.md §0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from benchmark.module import DiffusionModule


def dummy_inputs(module: DiffusionModule, batch_size: int = 1):
    """(x_t, t, cond) for one backbone call at the module's resolution, on the backbone's device.

    The condition is the module's example condition (`Conditioner.example`): class labels, captions (zero text
    states on the meta device) and the default control, so class-, caption- and unconditional models all count.
    """
    device = next(module.backbone.parameters()).device
    c, h, w = module.latent_shape
    x = torch.zeros(batch_size, c, h, w, device=device)
    t = torch.full((batch_size,), 0.5, device=device)
    cond = module.conditioner.example(batch_size, device, num_classes=module.num_classes, resolution=module.resolution)
    return x, t, cond


def backbone_macs(module: DiffusionModule, batch_size: int = 1) -> int:
    """Multiply-accumulates of one backbone forward per sample (FLOPs / 2)."""
    x, t, cond = dummy_inputs(module, batch_size)
    # The math SDPA backend decomposes attention into matmuls, which the counter always sees (fused CPU kernels
    # are not in its table on every torch version).
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        module.backbone(x, t, cond)
    return counter.get_total_flops() // 2 // batch_size


def train_flops_per_sample(module: DiffusionModule, batch_size: int = 1) -> int:
    """FLOPs (not MACs) of one forward + backward of the backbone per sample: the budget unit of a leaderboard."""
    x, t, cond = dummy_inputs(module, batch_size)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        module.backbone(x, t, cond).float().square().mean().backward()
    module.backbone.zero_grad(set_to_none=True)
    return counter.get_total_flops() // batch_size
