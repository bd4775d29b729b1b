"""`DiffusionModule`: the LightningModule every entry of the benchmark is.

It owns the pieces of a latent-diffusion training recipe as separate, injectable objects (DESIGN.md §3):

- a frozen **autoencoder** (image ↔ latent, scaling read from its config),
- a **conditioner** (batch → `Cond`, with independent semantic / control CFG dropout),
- the **backbone** ``forward(x_t, t, cond)`` with t in [0, 1],
- an **objective** (training loss) and a **sampler** + **guidance** (generation),
- an **EMA** of the backbone only, used for sampling and validation and saved in checkpoints,
- optimizer / LR-scheduler callables, so a recipe's optimizer is a constructor default that ``--help`` shows.

A baseline subclasses it, builds its backbone from a few size arguments, and declares its recipe as defaults.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from benchmark.ema import BackboneEMA
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.objectives import Objective
from benchmark.samplers import Sampler
from conditioning.conditioner import Conditioner
from conditioning.text import TextEncoder
from conditioning.types import Cond
from data.autoencoder import Autoencoder


def owned(component: Any) -> Any:
    """A real, private instance of a component given as a `lazy_instance` default.

    A lazy default is one object shared by every call of the constructor and only initialised by a method call, so
    plain attribute reads on it fail; build a fresh instance of the class from its recorded arguments instead.
    """
    lazy_type = getattr(component, "_lazy_class_type", None)
    if lazy_type is None:
        return component
    return lazy_type(**component._lazy_kwargs)


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, no weight decay, constant: the DiT / SiT recipe."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class DiffusionModule(pl.LightningModule):
    """Latent diffusion training and sampling around an injected backbone.

    Args:
        backbone: The denoiser ``forward(x_t, t, cond) -> prediction``; declares ``in_channels``/``out_channels``.
        objective: The training objective (e.g. ``benchmark.objectives.DDPM`` or ``RectifiedFlow``).
        sampler: How samples are generated (must match the objective family).
        guidance: Classifier-free guidance applied while sampling (scales 1.0 disable it).
        conditioner: Batch → condition, including CFG dropout.
        autoencoder: The frozen autoencoder; ``embedded:shapes-vae`` or a diffusers AutoencoderKL id/path.
        optimizer: Optimizer factory called with the backbone's trainable parameters.
        lr_scheduler: Optional LR-scheduler factory called with the optimizer (stepped every training step).
        ema_decay: Decay of the backbone EMA.
        ema_warmup: Ramp the EMA decay as ``min(decay, (1+n)/(10+n))``; useful for short runs.
        resolution: Image resolution in pixels (usually linked from the data).
        compile: ``torch.compile`` the backbone's forward for training (the sampling loop stays eager).
        text_encoder: Frozen text encoder for caption conditioning (``conditioner.semantic: caption``); its weights
            load on first use and are never part of checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        objective: Objective,
        sampler: Sampler,
        guidance: ClassifierFreeGuidance,
        conditioner: Conditioner,
        autoencoder: Autoencoder,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        resolution: int = 256,
        compile: bool = False,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = owned(text_encoder)
        self.objective = owned(objective)
        self.sampler = owned(sampler)
        self.guidance = owned(guidance)
        self.conditioner = owned(conditioner)
        self.autoencoder = owned(autoencoder)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.resolution = resolution
        self.compile = compile
        self._check_compatible()
        self.ema = BackboneEMA(backbone, decay=ema_decay, warmup=ema_warmup)
        # The module that training calls: the backbone, or its compiled wrapper. Kept out of the module tree so that
        # the backbone's weights are not registered (and checkpointed) twice.
        self.__dict__["_train_forward"] = backbone

    # ----------------------------------------------------------------------------------------------- set-up
    def _check_compatible(self) -> None:
        c, h, w = self.autoencoder.latent_shape(self.resolution)
        if getattr(self.backbone, "in_channels", c) != c:
            raise ValueError(f"backbone.in_channels={self.backbone.in_channels} but the autoencoder gives {c} channels")
        expected_out = 2 * c if self.objective.learn_sigma else c
        out = getattr(self.backbone, "out_channels", expected_out)
        if out != expected_out:
            raise ValueError(
                f"{type(self.objective).__name__}(learn_sigma={self.objective.learn_sigma}) needs {expected_out} "
                f"output channels but the backbone predicts {out}; set learn_sigma consistently on both"
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(self.resolution)

    def configure_model(self) -> None:
        if self.compile and self._train_forward is self.backbone:
            self.__dict__["_train_forward"] = torch.compile(self.backbone)

    COMPONENTS = (
        "backbone",
        "objective",
        "sampler",
        "guidance",
        "conditioner",
        "autoencoder",
        "optimizer",
        "lr_scheduler",
        "text_encoder",
    )

    def save_config(self) -> None:
        """Record the constructor arguments in ``hparams`` (and so in checkpoints), called by subclasses.

        Built by the CLI, the arguments are the parsed config (``class_path`` dicts for every component): plain data
        that loads with ``weights_only=True``, from which ``load_from_checkpoint`` rebuilds the exact model. Built in
        Python, component objects are left out, since storing them would mean pickling code.
        """
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        ignore = [] if _given_hyperparameters.get() is not None else list(self.COMPONENTS)
        self.save_hyperparameters(ignore=ignore, frame=inspect.currentframe().f_back)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------- training
    def encode(self, batch: Mapping[str, Any]) -> Tensor:
        """The clean latent of a batch: precomputed ``latent`` if present, else the autoencoder's encoding."""
        if "latent" in batch:
            return batch["latent"]
        if "latent_mean" in batch:  # a latent cache's posterior moments: sampled here, in the step's seeded RNG
            from data.latent_cache import sample_latent

            return sample_latent(self.autoencoder, batch["latent_mean"], batch["latent_std"])
        if "image" not in batch:
            raise KeyError(f"a batch needs 'image' or 'latent'; it has {sorted(batch)}")
        return self.autoencoder.encode(batch["image"])

    def on_fit_start(self) -> None:
        # After `seed_everything(s)` this is `s`, so a resumed run gets the same base seed as the original one.
        self._seed_base = torch.initial_seed() % (2**31)

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Run a block with the global RNGs (CPU and this module's GPU) seeded by ``seed``, restored afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            yield

    def step_seed(self) -> int:
        """Seed of all randomness of the current training step (condition dropout, t, noise, posterior sample)."""
        base = getattr(self, "_seed_base", 0)
        return (base * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**63 - 1)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        # The step's randomness is a pure function of (seed, step, rank): a run resumed from a checkpoint then
        # continues exactly as the uninterrupted run would have, with no RNG state to save.
        with self.seeded(self.step_seed()):
            x0 = self.encode(batch)
            cond = self.conditioner(batch, train=True, text_encoder=self.text_encoder)
            losses = self.objective.loss(self._train_forward, x0, cond)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at global step {self.global_step}; "
                "lower the learning rate, enable gradient clipping, or train in fp32 to locate the cause"
            )
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=x0.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=x0.shape[0])
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the weights change, before any callback (e.g. ModelCheckpoint) sees the step, so a checkpoint
        # of step k always holds the EMA of step k.
        self.ema.update(self.backbone)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """EMA loss at fixed noise and time (seeded by the batch index), comparable across steps and runs."""
        with self.seeded(10_000 + batch_idx):
            x0 = self.encode(batch)  # the posterior sample is seeded too
            cond = self.conditioner(batch, train=False, text_encoder=self.text_encoder)
            noise, t = torch.randn_like(x0), torch.rand(x0.shape[0], device=x0.device)
            losses = self.objective.loss(self.ema.shadow, x0, cond, noise=noise, t=t)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=x0.shape[0], sync_dist=True)
        return losses["loss"]

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self.validation_step(batch, batch_idx)

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_latents(
        self, cond: Cond, seed: int = 0, use_ema: bool = True, progress: bool = False, noise: Tensor | None = None
    ) -> Tensor:
        """Generate latents for ``cond`` with the configured sampler and guidance.

        The starting noise is ``noise`` if given, else drawn on the CPU from ``seed`` (so it is the same on every
        device and run).
        """
        backbone = self.ema.shadow if use_ema else self.backbone
        if noise is None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.randn((cond.batch_size, *self.latent_shape), generator=generator)
        noise = noise.to(self.device)
        denoiser = self.guidance.wrap(backbone, prediction_channels=self.latent_shape[0])
        was_training = backbone.training
        backbone.eval()
        try:
            # The sampler's per-step noise comes from its own generator too, so a grid is a function of the seed.
            generator = torch.Generator(device=noise.device).manual_seed(seed)
            return self.sampler.sample(denoiser, self.objective, noise, cond, progress=progress, generator=generator)
        finally:
            backbone.train(was_training)

    @torch.no_grad()
    def sample_images(
        self,
        labels: Tensor | None = None,
        control: Mapping[str, Tensor] | Tensor | None = None,
        captions: list[str] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        use_ema: bool = True,
        progress: bool = False,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Generate images in [-1, 1] for the given classes and control metadata (defaults: the whole canvas)."""
        if labels is not None:
            labels = labels.to(self.device)
            num_samples = labels.shape[0]
        elif captions is not None:
            num_samples = len(captions)
        if num_samples is None:
            raise ValueError("pass labels or num_samples")
        if control is None and self.conditioner.control_names:
            control = self.default_control(num_samples)
        cond = self.conditioner.make(
            labels=labels,
            control=control,
            captions=captions,
            batch_size=num_samples,
            device=self.device,
            text_encoder=self.text_encoder,
        )
        latents = self.sample_latents(cond, seed=seed, use_ema=use_ema, progress=progress, noise=noise)
        return self.autoencoder.decode(latents)  # already clamped to [-1, 1]

    def default_control(self, n: int) -> dict[str, Tensor]:
        """Control metadata of an un-augmented sample: the whole square image at the training resolution, no flip."""
        r = float(self.resolution)
        full = torch.tensor([r, r], device=self.device).expand(n, 2)
        return {
            "orig_size": full,
            "crop_coords": torch.zeros(n, 2, device=self.device),
            "crop_size": full,
            "flip": torch.zeros(n, device=self.device),
        }

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Generate one image per batch element, conditioned on its class and control metadata."""
        cond = self.conditioner(batch, train=False, text_encoder=self.text_encoder)
        latents = self.sample_latents(cond, seed=batch_idx)
        return self.autoencoder.decode(latents)  # already clamped to [-1, 1]

    # ------------------------------------------------------------------------------------------- describe
    def describe(self) -> dict[str, Any]:
        """Size and cost of the backbone at this config's resolution (no data, no training)."""
        from benchmark.flops import backbone_macs

        c, h, w = self.latent_shape
        params = sum(p.numel() for p in self.backbone.parameters())
        trainable = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        patch = getattr(self.backbone, "patch_size", 1)
        return {
            "model": type(self).__name__,
            "backbone": type(self.backbone).__name__,
            "params": params,
            "trainable_params": trainable,
            "gmacs_per_forward": round(backbone_macs(self) / 1e9, 4),
            "tokens": (h // patch) * (w // patch),
            "resolution": self.resolution,
            "latent_shape": [c, h, w],
            "objective": type(self.objective).__name__,
            "sampler": type(self.sampler).__name__,
        }
