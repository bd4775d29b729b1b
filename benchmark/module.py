"""`DiffusionModule`: the LightningModule every entry of the benchmark is.

It owns the pieces of a latent-diffusion training recipe as separate, injectable objects:

- a frozen **autoencoder** (image ↔ latent, scaling read from its config),
- a **conditioner** (batch → `Cond`, with independent semantic / control CFG dropout),
- the **backbone** ``forward(x_t, t, cond)`` with t in [0, 1],
- an **objective** (training loss) and a **sampler** + **guidance** (generation),
- an **EMA** of the backbone only, used for sampling and validation and saved in checkpoints,
- optimizer / LR-scheduler callables, so a recipe's optimizer is a constructor default that ``--help`` shows.

A baseline subclasses it, declares its own arguments and its recipe as defaults, and builds its backbone in
`DiffusionModule.build_backbone`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from benchmark.batch_draws import global_batch_draws
from benchmark.ema import BackboneEMA
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.objectives import Objective, RectifiedFlow
from benchmark.samplers import EulerSampler, Sampler
from conditioning.conditioner import Conditioner, _batch_size, default_control
from conditioning.types import Cond
from data.autoencoder import Autoencoder
from data.compat import cli_given_hyperparameters, owned


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, lr 1e-4, no weight decay, constant: the DiT / SiT recipe."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


class DiffusionModule(pl.LightningModule):
    """Latent diffusion training and sampling around a backbone that is given or built by `build_backbone`.

    A baseline subclasses it, declares only its own arguments and its recipe defaults, forwards the rest with
    ``**kwargs`` and overrides `build_backbone`. The constructor sets every component first, then builds the
    backbone, then checks that the pieces fit together, then makes the EMA copy, so an architecture changed in
    `build_backbone` is the one the EMA follows.

    Args:
        objective: The training objective (e.g. ``benchmark.objectives.DDPM`` or ``RectifiedFlow``).
        sampler: How samples are generated; must match the objective family (checked here).
        guidance: Classifier-free guidance applied while sampling (scales 1.0 disable it).
        conditioner: Batch → condition, including CFG dropout and, for captions, the frozen text encoders.
        autoencoder: The frozen autoencoder; ``embedded:shapes-vae`` or a diffusers AutoencoderKL id/path.
        backbone: The denoiser ``forward(x_t, t, cond) -> prediction``, declaring ``in_channels`` and
            ``out_channels``. ``None`` (the default) builds it with `build_backbone`.
        optimizer: Optimizer factory called with the backbone's trainable parameters.
        lr_scheduler: Optional LR-scheduler factory called with the optimizer (stepped every training step).
        ema_decay: Decay of the backbone EMA.
        ema_warmup: Ramp the EMA decay as ``min(decay, (1+n)/(10+n))``; useful for short runs.
        resolution: Image resolution in pixels (linked from the data by the CLI).
        num_classes: Number of classes of a class-conditional model (linked from the data by the CLI).
        compile: ``torch.compile`` the backbone's forward for training (the sampling loop stays eager).
    """

    def __init__(
        self,
        objective: Objective = lazy_instance(RectifiedFlow),
        sampler: Sampler = lazy_instance(EulerSampler),
        guidance: ClassifierFreeGuidance = lazy_instance(ClassifierFreeGuidance),
        conditioner: Conditioner = lazy_instance(Conditioner),
        autoencoder: Autoencoder = lazy_instance(Autoencoder, pretrained="stabilityai/sd-vae-ft-ema"),
        backbone: nn.Module | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = False,
        resolution: int = 256,
        num_classes: int = 1000,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self._record_hyperparameters(inspect.currentframe())
        self.objective = owned(objective)
        self.sampler = owned(sampler)
        self.guidance = owned(guidance)
        self.conditioner = owned(conditioner)
        self.autoencoder = owned(autoencoder)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.resolution = resolution
        self.num_classes = num_classes
        self.compile = compile
        # The conditioner range-checks labels once per batch and builds the example condition at this resolution.
        self.conditioner.num_classes = num_classes if self.conditioner.semantic == "class" else None
        self.conditioner.resolution = resolution
        self.backbone = backbone if backbone is not None else self.build_backbone()
        self._check_compatible()
        self.ema = BackboneEMA(self.backbone, decay=ema_decay, warmup=ema_warmup)
        # The module that training calls: the backbone, or its compiled wrapper. Kept out of the module tree so that
        # the backbone's weights are not registered (and checkpointed) twice.
        self.__dict__["_train_forward"] = self.backbone

    # ----------------------------------------------------------------------------------------------- set-up
    def build_backbone(self) -> nn.Module:
        """Build the denoiser when none is passed; subclasses override this.

        Called once by the constructor after every component is set and before the compatibility checks and the
        EMA copy. It may read ``self.latent_shape`` (C, H, W), ``self.num_classes``, ``self.conditioner``
        (``semantic``, ``control_names``, ``context_dim``, ``context_length``, ``pooled_dim``),
        ``self.objective.learn_sigma`` and any attribute the subclass set before calling ``super().__init__``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no backbone: pass backbone=... or override build_backbone() in a subclass"
        )

    COMPONENTS = (
        "backbone",
        "objective",
        "sampler",
        "guidance",
        "conditioner",
        "autoencoder",
        "optimizer",
        "lr_scheduler",
    )

    def _record_hyperparameters(self, frame: Any) -> None:
        """Record the constructor arguments of the whole subclass chain in ``hparams`` (and so in checkpoints).

        Built by the CLI, the arguments are the parsed config (``class_path`` dicts for every component): plain data
        that loads with ``weights_only=True``, from which ``load_from_checkpoint`` rebuilds the exact model. Built in
        Python, component objects are left out, since storing them would mean pickling code.
        """
        ignore = [] if cli_given_hyperparameters() is not None else list(self.COMPONENTS)
        self.save_hyperparameters(ignore=ignore, frame=frame)

    def _check_compatible(self) -> None:
        c, h, w = self.latent_shape
        if getattr(self.backbone, "in_channels", c) != c:
            raise ValueError(f"backbone.in_channels={self.backbone.in_channels} but the autoencoder gives {c} channels")
        expected_out = 2 * c if self.objective.learn_sigma else c
        out = getattr(self.backbone, "out_channels", expected_out)
        if out != expected_out:
            raise ValueError(
                f"{type(self.objective).__name__}(learn_sigma={self.objective.learn_sigma}) needs {expected_out} "
                f"output channels but the backbone predicts {out}; set learn_sigma consistently on both"
            )
        supports = getattr(self.sampler, "supports", Objective)
        if not isinstance(self.objective, supports):
            raise ValueError(
                f"the sampler {type(self.sampler).__name__} integrates {supports.__name__} models but the objective is "
                f"{type(self.objective).__name__}; pick a matching sampler (RectifiedFlow: "
                "benchmark.samplers.EulerSampler; DDPM: benchmark.samplers.DDPMSampler or DDIMSampler) or objective"
            )
        self._check_guidance_was_trained()

    def _check_guidance_was_trained(self) -> None:
        """Refuse guidance that queries a condition the training never showed the model (a dropped group)."""
        cond = self.conditioner
        branches = self.guidance.branches()
        if cond.control_names and cond.control_dropout == 0 and any(c for _, c in branches):
            raise ValueError(
                f"guidance (semantic_scale={self.guidance.semantic_scale}, control_scale="
                f"{self.guidance.control_scale}) evaluates the model with the control group dropped, but "
                "conditioner.control_dropout is 0, so that branch is never trained; set conditioner.control_dropout "
                "> 0 (e.g. 0.1), or guidance.control_scale: 1.0 to guide the semantic group only"
            )
        text_trained = bool(cond.text_names) and all(p > 0 for p in cond.text_dropout.values())
        if cond.semantic != "none" and cond.semantic_dropout == 0 and not text_trained and any(s for s, _ in branches):
            raise ValueError(
                f"guidance (semantic_scale={self.guidance.semantic_scale}) evaluates the model with the "
                f"{cond.semantic} dropped, but conditioner.semantic_dropout is 0, so that branch is never trained; "
                "set conditioner.semantic_dropout > 0 (e.g. 0.1) or the guidance scales to 1.0"
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(self.resolution)

    def configure_model(self) -> None:
        if self.device_mesh is not None:  # a ModelParallelStrategy (e.g. benchmark.sharding.FSDPStrategy)
            from benchmark.sharding import shard_module

            shard_module(self, self.trainer.strategy)
        if self.compile and self._train_forward is self.backbone:
            self.__dict__["_train_forward"] = torch.compile(self.backbone)

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

    def step_seed(self, micro_batch: int = 0) -> int:
        """Seed of all randomness of one training micro-batch (condition dropout, t, noise, posterior sample).

        A function of the run's base seed, the optimizer step and the micro-batch within the step (with
        ``accumulate_grad_batches > 1`` each micro-batch draws its own randomness); not of the rank: every rank draws
        for the global batch and keeps its rows (`benchmark.batch_draws`), so N processes train on the draws of one.
        """
        seed = getattr(self, "_seed_base", 0)
        for value in (self.global_step, micro_batch, 0):  # 0: the rank's place, kept so one process's seeds stay
            seed = (seed * 1_000_003 + value) % (2**63 - 1)
        return seed

    def _attached_trainer(self) -> pl.Trainer | None:
        """The Trainer running this module, or None (built in Python, counting FLOPs, sampling outside ``fit``)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's way of saying that no Trainer is attached
            return None

    def _micro_batch(self, batch_idx: int) -> int:
        trainer = self._attached_trainer()
        accumulate = getattr(trainer, "accumulate_grad_batches", 1) if trainer is not None else 1
        return batch_idx % max(int(accumulate), 1)

    counting_flops: bool = False
    """True while `benchmark.flops` counts a training step: a recipe whose cost depends on a random draw (MDT's mask
    ratio) then uses the draw's expected value, so the FLOPs per image, and with them a budget's steps, are the same
    for every seed."""

    def training_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The training losses of one batch, ``{"loss": scalar, <component>: scalar, ...}``; recipes override this.

        Runs inside `training_step`'s seeded context, so any randomness drawn here (``self.objective.sample_time``,
        ``torch.randn_like``, the conditioner's dropout) is reproducible and resumable. Call the denoiser through
        ``self._train_forward`` (the compiled backbone when ``compile`` is on). Every key is logged as
        ``train/<key>``; ``"loss"`` is the one optimised.
        """
        x0 = self.encode(batch)
        cond = self.conditioner(batch, train=True)
        return self.objective.loss(self._train_forward, x0, cond)

    def _is_logging_step(self) -> bool:
        trainer = self._attached_trainer()
        if trainer is None:
            return True
        every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)
        return (self.global_step + 1) % every == 0 or self.global_step == 0

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        # The step's randomness is a pure function of (seed, step, micro-batch, sample): a run resumed from a
        # checkpoint then continues exactly as the uninterrupted run would have, with no RNG state to save, and N
        # ranks draw for each sample what one process draws for it.
        trainer = self._attached_trainer()
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        with self.seeded(self.step_seed(self._micro_batch(batch_idx))):
            with global_batch_draws(_batch_size(batch) or 1, rank, world):
                losses = self.training_loss(batch)
        if "loss" not in losses:
            raise KeyError(f"{type(self).__name__}.training_loss must return a 'loss' entry, got {sorted(losses)}")
        loss = losses["loss"]
        # Checked on logging steps only (a host sync): a NaN poisons the weights, so it is still caught within
        # log_every_n_steps steps.
        if self._is_logging_step():
            if not torch.isfinite(loss):
                first = getattr(self, "_last_finite_step", -1) + 1
                raise FloatingPointError(
                    f"non-finite training loss {loss.item()} at global step {self.global_step}, first non-finite "
                    f"between steps {first} and {self.global_step} (checked on logging steps); lower the learning "
                    "rate, enable gradient clipping, or train in fp32 to locate the cause"
                )
            self._last_finite_step = self.global_step
        n = _batch_size(batch) or 1
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=n)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=n)
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
            cond = self.conditioner(batch, train=False)
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
        generators: list[torch.Generator] | None = None,
    ) -> Tensor:
        """Generate images in [-1, 1] for the given classes and control metadata (defaults: the whole canvas).

        ``generators`` (one per sample) draw what the condition itself draws (noisy text padding), so that a
        sample does not depend on its batch.
        """
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
            generators=generators,
        )
        latents = self.sample_latents(cond, seed=seed, use_ema=use_ema, progress=progress, noise=noise)
        return self.autoencoder.decode(latents)  # already clamped to [-1, 1]

    def default_control(self, n: int) -> dict[str, Tensor]:
        """Control metadata of an un-augmented sample: the whole square image at the training resolution, no flip."""
        return default_control(n, self.resolution, self.device)

    def example_cond(self, n: int) -> Cond:
        """The example condition of ``n`` samples on this module's device (see `Conditioner.example`)."""
        return self.conditioner.example(n, self.device, num_classes=self.num_classes, resolution=self.resolution)

    def on_predict_start(self) -> None:
        self._predict_seed_base = torch.initial_seed() % (2**31)

    def sample_seed(self, global_index: int) -> int:
        """Seed of the starting noise of generated sample ``global_index`` (its index in the whole predict set)."""
        return (getattr(self, "_predict_seed_base", 0) * 1_000_003 + int(global_index)) % (2**63 - 1)

    def sample_noise(self, global_indices: Tensor | list[int]) -> Tensor:
        """Starting noise of the given samples, each from its own generator: independent of batching and ranks."""
        noise = []
        for index in [int(i) for i in global_indices]:
            generator = torch.Generator(device="cpu").manual_seed(self.sample_seed(index))
            noise.append(torch.randn(self.latent_shape, generator=generator))
        return torch.stack(noise)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Generate one image per batch element, conditioned on its class / caption and control metadata.

        Each sample's starting noise is seeded by its global index in the predict set: ``batch["index"]`` when the
        dataset provides it; otherwise the index is inferred from the batch position, which is exact only when
        every batch is full and the data is not sharded across ranks. Stochastic samplers' per-step noise is
        seeded by the batch's first index.
        """
        index = batch.get("index")
        if index is None:
            n = _batch_size(batch) or self.conditioner(batch, train=False).batch_size
            trainer = self._attached_trainer()
            world = trainer.world_size if trainer is not None else 1
            index = torch.arange(n) + (batch_idx * world + self.global_rank) * n
        index = torch.as_tensor(index).reshape(-1).cpu()
        # Each sample's own generator draws its starting noise, then its noisy text padding (if any).
        generators = [torch.Generator(device="cpu").manual_seed(self.sample_seed(int(i))) for i in index]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators])
        cond = self.conditioner(batch, train=False, generators=generators)
        latents = self.sample_latents(cond, seed=self.sample_seed(int(index[0])), noise=noise)
        return self.autoencoder.decode(latents)  # already clamped to [-1, 1]

    # ------------------------------------------------------------------------------------------- describe
    def describe(self) -> dict[str, Any]:
        """Size and cost of the model at this config's resolution (no data, no training; works on meta).

        ``gmacs_per_forward`` is multiply-accumulates of one backbone forward per image; ``train_gflops_per_image``
        is FLOPs of the forward and backward of the whole training loss per image (every denoiser pass), without
        the frozen autoencoder's encode and text encoders, which are reported on their own.
        """
        from benchmark.flops import (
            autoencoder_gflops_per_image,
            backbone_macs,
            text_gflops_per_image,
            train_gflops_per_image,
        )

        c, h, w = self.latent_shape
        params = sum(p.numel() for p in self.backbone.parameters())
        trainable = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        patch = getattr(self.backbone, "patch_size", 1)
        encoders = dict(self.conditioner.text_encoders.items())
        return {
            "model": type(self).__name__,
            "backbone": type(self.backbone).__name__,
            "params": params,
            "trainable_params": trainable,
            "gmacs_per_forward": round(backbone_macs(self) / 1e9, 4),
            "train_gflops_per_image": round(train_gflops_per_image(self), 4),
            "autoencoder_gflops_per_image": round(autoencoder_gflops_per_image(self.autoencoder, self.resolution), 4),
            "text_gflops_per_image": round(text_gflops_per_image(encoders), 4) if encoders else 0.0,
            "tokens": (h // patch) * (w // patch),
            "resolution": self.resolution,
            "latent_shape": [c, h, w],
            "semantic": self.conditioner.semantic,
            "objective": type(self.objective).__name__,
            "sampler": type(self.sampler).__name__,
        }
