"""Counting the cost of a model with torch's FLOP counter (works on the meta device, so paper sizes need no weights).

Two units, each the convention of where it is compared:

- ``gmacs_per_forward``: multiply-accumulates (counted FLOPs / 2) of one backbone forward, DiT's "Gflops" column
  (DiT-XL/2 at 256² reads 118.6).
- ``train_gflops_per_image``: FLOPs (not MACs) of the forward and backward of the whole training loss per image
  (every denoiser pass of a recipe that makes several), the leaderboard's compute-budget unit. The frozen
  autoencoder's encode and the frozen text encoders are counted separately (``autoencoder_gflops_per_image``,
  ``text_gflops_per_image``), since a latent / text cache removes them from training.

Attention is counted with the math SDPA backend, which decomposes it into matmuls the counter always sees (fused
CPU kernels are not in its table on every torch version).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from benchmark.module import DiffusionModule
    from conditioning.text import TextEncoder
    from data.autoencoder import Autoencoder


def _device(module: DiffusionModule) -> torch.device:
    return next(module.backbone.parameters()).device


def dummy_inputs(module: DiffusionModule, batch_size: int = 1):
    """(x_t, t, cond) for one backbone call at the module's resolution, on the backbone's device.

    The condition is the module's example condition (`Conditioner.example`): class labels, captions (zero text
    states on the meta device) and the default control, so class-, caption- and unconditional models all count.
    """
    device = _device(module)
    c, h, w = module.latent_shape
    x = torch.zeros(batch_size, c, h, w, device=device)
    t = torch.full((batch_size,), 0.5, device=device)
    cond = module.conditioner.example(batch_size, device, num_classes=module.num_classes, resolution=module.resolution)
    return x, t, cond


def backbone_macs(module: DiffusionModule, batch_size: int = 1) -> int:
    """Multiply-accumulates of one backbone forward per sample (FLOPs / 2)."""
    x, t, cond = dummy_inputs(module, batch_size)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, torch.no_grad():
        module.backbone(x, t, cond)
    return counter.get_total_flops() // 2 // batch_size


def latent_batch(module: DiffusionModule, batch_size: int = 2) -> dict[str, Any]:
    """A training batch of zero latents with the example condition, text given as precomputed states.

    It is what the training loss sees after the autoencoder and the text encoders, so counting the loss on it
    counts neither of them.
    """
    from conditioning.conditioner import EXAMPLE_CAPTIONS, default_control

    device = _device(module)
    conditioner = module.conditioner
    batch: dict[str, Any] = {"latent": torch.zeros(batch_size, *module.latent_shape, device=device)}
    if conditioner.semantic == "class":
        batch["class_label"] = torch.arange(batch_size, device=device) % module.num_classes
    elif conditioner.semantic == "caption":
        captions = [EXAMPLE_CAPTIONS[i % len(EXAMPLE_CAPTIONS)] for i in range(batch_size)]
        states = conditioner.encode_text(None, torch.device("meta"), batch_size=batch_size)
        batch["caption"] = captions
        batch["text"] = {
            name: {"tokens": torch.zeros_like(tokens, device=device), "mask": torch.ones_like(mask, device=device)}
            | ({} if pooled is None else {"pooled": torch.zeros_like(pooled, device=device)})
            for name, (tokens, mask, pooled) in states.items()
        }
    if conditioner.control_names:
        batch["control"] = default_control(batch_size, module.resolution, device)
    return batch


@contextlib.contextmanager
def _counting_setup(module: DiffusionModule) -> Iterator[None]:
    """Eager backbone, objective on the backbone's device; restored afterwards."""
    device = _device(module)
    saved_forward, saved_objective = module.__dict__["_train_forward"], module.objective
    module.__dict__["_train_forward"] = module.backbone
    module.counting_flops = True
    if device.type == "meta":
        # Schedules are built on the CPU even on the meta device; a meta copy indexes with meta timesteps.
        module.objective = copy.deepcopy(saved_objective).to(device)
    try:
        yield
    finally:
        module.__dict__["_train_forward"] = saved_forward
        module.objective = saved_objective
        del module.counting_flops
        module.backbone.zero_grad(set_to_none=True)


def train_gflops_per_image(module: DiffusionModule, batch_size: int = 2) -> float:
    """GFLOPs (1e9 FLOPs, not MACs) of one forward + backward of ``module.training_loss`` per image.

    Counts every denoiser pass of the recipe's loss (its `training_loss` runs as in training, on a batch of
    latents with the example condition), but neither the autoencoder's encode nor the text encoders (see
    `autoencoder_gflops_per_image` and `text_gflops_per_image`). Works on a real module and on one built on the
    meta device; call it outside a training step (it clears the backbone's gradients).

    Args:
        module: The model.
        batch_size: Images in the counted batch (the result is per image).
    """
    batch = latent_batch(module, batch_size)
    with _counting_setup(module), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        # Seeded (and the caller's RNG state restored): any draw that shapes the work is the same for every run.
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            losses = module.training_loss(batch)
            losses["loss"].backward()
    return counter.get_total_flops() / batch_size / 1e9


def autoencoder_gflops_per_image(autoencoder: Autoencoder, resolution: int) -> float:
    """GFLOPs of the autoencoder's encode of one image at ``resolution`` (counted on the meta device)."""
    from diffusers import AutoencoderKL

    config = dict(autoencoder.config)
    blocks = len(config["block_out_channels"])
    # Configs known offline by their widths only take the SD-VAE family's remaining values.
    config.setdefault("down_block_types", ["DownEncoderBlock2D"] * blocks)
    config.setdefault("up_block_types", ["UpDecoderBlock2D"] * blocks)
    config.setdefault("layers_per_block", 2)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
        image = torch.zeros(1, config.get("in_channels", 3), resolution, resolution)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(image)
    return counter.get_total_flops() / 1e9


def text_gflops_per_image(encoders: dict[str, TextEncoder]) -> float:
    """GFLOPs of encoding one caption with every text encoder (full ``max_length`` tokens, meta device)."""
    total = 0
    for encoder in encoders.values():
        with torch.device("meta"):
            model = encoder.build_from_config()
            ids = torch.zeros(1, encoder.max_length, dtype=torch.long)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids)
        total += counter.get_total_flops()
    return total / 1e9
