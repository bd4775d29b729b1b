"""Samplers: turn Gaussian noise into clean latents with a trained denoiser.

Each sampler supports one objective family and says so when handed another. All take the (possibly guided,
see `benchmark.guidance`) denoiser, so guidance never has to know which sampler runs it. They return x0, the
clean latent, which the caller decodes with the autoencoder.

- `EulerSampler`: first-order ODE integration of a `RectifiedFlow` velocity field (SD3 samples this way).
- `DDPMSampler`: IDDPM ancestral sampling on a respaced chain, learned or fixed Σ (DiT's 250-step protocol).
- `DDIMSampler`: deterministic (η = 0) or stochastic DDIM on a respaced chain (Song et al. 2021).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark.objectives import DDPM, Denoiser, Objective, RectifiedFlow, time_shift
from conditioning.types import Cond


class Sampler(ABC):
    """Maps noise to x0 by repeatedly querying a denoiser."""

    supports: type[Objective] = Objective
    """The objective family this sampler integrates."""

    def _check(self, objective: Objective) -> None:
        if not isinstance(objective, self.supports):
            raise TypeError(
                f"{type(self).__name__} samples {self.supports.__name__} objectives, but the model was trained "
                f"with {type(objective).__name__}; pick a sampler for {type(objective).__name__} "
                "(RectifiedFlow: EulerSampler; DDPM: DDPMSampler or DDIMSampler)"
            )

    @abstractmethod
    def sample(
        self,
        denoiser: Denoiser,
        objective: Objective,
        noise: Tensor,
        cond: Cond,
        *,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Integrate from pure noise to a clean latent.

        Args:
            denoiser: The (possibly guided) backbone, ``(x_t, t in [0, 1], cond) -> prediction``.
            objective: The objective the backbone was trained with; supplies the schedule.
            noise: (N, C, H, W) standard Gaussian noise, the starting point at t = 1.
            cond: Conditions for the N samples.
            progress: Show a progress bar over the steps.
            generator: RNG for the noise injected by stochastic samplers (reproducible sample grids).

        Returns:
            (N, C, H, W) clean latents.
        """


class EulerSampler(Sampler):
    """Euler integration of the rectified-flow ODE dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data).

    The grid is uniform in t and then shifted with SD3's formula (Esser et al. 2024, §5.3.2), which spends more
    steps at high noise for shift > 1. Each step is ``x ← x + (t_next − t)·v``, so the denoiser is never queried
    at t = 0.

    Args:
        steps: Number of Euler steps (denoiser evaluations).
        shift: Time shift of the sampling grid; ``None`` uses the objective's training shift, so training and
            sampling see the same noise levels.
    """

    supports = RectifiedFlow

    def __init__(self, steps: int = 50, shift: float | None = None) -> None:
        if steps < 1:
            raise ValueError(f"EulerSampler: steps must be >= 1, got {steps}")
        if shift is not None and not shift > 0:
            raise ValueError(f"EulerSampler: shift must be > 0 or None, got {shift}")
        self.steps = steps
        self.shift = shift

    def timesteps(self, objective: RectifiedFlow, device: torch.device | str | None = None) -> Tensor:
        """The ``steps + 1`` grid points, decreasing from 1 to 0."""
        shift = objective.shift if self.shift is None else self.shift
        return time_shift(torch.linspace(1.0, 0.0, self.steps + 1, device=device), shift)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        objective: Objective,
        noise: Tensor,
        cond: Cond,
        *,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        self._check(objective)
        grid = self.timesteps(objective, device=noise.device).tolist()
        x = noise
        for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), desc="euler", disable=not progress, leave=False):
            v = denoiser(x, torch.full((x.shape[0],), t, device=x.device), cond)
            if v.shape != x.shape:
                raise ValueError(f"EulerSampler: the velocity has shape {tuple(v.shape)}, expected {tuple(x.shape)}")
            x = x + (t_next - t) * v.to(x.dtype)
        return x


class DDPMSampler(Sampler):
    """IDDPM ancestral sampling on an evenly respaced chain (Nichol & Dhariwal 2021, §4; DiT uses 250 steps).

    The chain keeps `steps` of the T training steps and recomputes β from ᾱ of the kept steps (`DDPM.respace`),
    so a learned Σ interpolates between the *respaced* β and β̃. Each step draws
    x_{k−1} ~ N(μ_θ, σ²_θ), without noise at the last step; predictions of x0 are not clipped
    (DiT's ``clip_denoised=False``, which suits unbounded latents). The denoiser sees the original step k / T,
    not the index in the short chain (IDDPM's ``_WrappedModel``).

    Args:
        steps: Number of kept steps (denoiser evaluations); T keeps the full chain.
    """

    supports = DDPM

    def __init__(self, steps: int = 250) -> None:
        if steps < 2:
            raise ValueError(f"DDPMSampler: steps must be >= 2, got {steps}")
        self.steps = steps

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        objective: Objective,
        noise: Tensor,
        cond: Cond,
        *,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        self._check(objective)
        chain = objective.respace(self.steps).to(noise.device)
        x, n = noise, noise.shape[0]
        for i in tqdm(range(chain.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress, leave=False):
            k = torch.full((n,), i, device=x.device, dtype=torch.long)
            step = chain.p_mean_variance(denoiser(x, chain.model_time(k), cond).float(), x.float(), k)
            x = step.mean
            if i > 0:
                x = x + torch.exp(0.5 * step.log_variance) * _randn_like(x, generator)
        return x.to(noise.dtype)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, Eq. 12) on the same evenly respaced chain as `DDPMSampler`.

    Uses only the ε channels of the prediction (a learned Σ is ignored). With η = 0 the map from noise to data
    is deterministic; η = 1 matches the DDPM posterior variance. The spacing is IDDPM's (first and last step
    kept, so sampling starts at k = T − 1), not ADM's ``ddimN`` stride, which would start at T − T/N.

    Args:
        steps: Number of kept steps (denoiser evaluations).
        eta: Scale of the injected noise, η ∈ [0, 1] in the paper's parameterisation.
    """

    supports = DDPM

    def __init__(self, steps: int = 50, eta: float = 0.0) -> None:
        if steps < 2:
            raise ValueError(f"DDIMSampler: steps must be >= 2, got {steps}")
        if eta < 0:
            raise ValueError(f"DDIMSampler: eta must be >= 0, got {eta}")
        self.steps = steps
        self.eta = eta

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        objective: Objective,
        noise: Tensor,
        cond: Cond,
        *,
        progress: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        self._check(objective)
        chain = objective.respace(self.steps).to(noise.device)
        x, (n, channels) = noise.float(), noise.shape[:2]
        for i in tqdm(range(chain.num_timesteps - 1, -1, -1), desc="ddim", disable=not progress, leave=False):
            k = torch.full((n,), i, device=x.device, dtype=torch.long)
            eps = denoiser(x, chain.model_time(k), cond)[:, :channels].float()
            pred_x0 = chain.predict_x0_from_eps(x, k, eps)
            alpha_bar, alpha_bar_prev = chain.alphas_cumprod[i], chain.alphas_cumprod_prev[i]
            # σ_k of Song et al. Eq. 16; the direction term keeps the marginal variance at 1 − ᾱ_{k−1}.
            sigma = self.eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
            x = alpha_bar_prev.sqrt() * pred_x0 + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
            if i > 0 and self.eta > 0:
                x = x + sigma * _randn_like(x, generator)
        return x.to(noise.dtype)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
