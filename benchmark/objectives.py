"""Training objectives: what a backbone is asked to predict, and the loss.

Two families, both behind one interface so that recipe and architecture stay separate axes of the study:

- `RectifiedFlow` (SD3, Esser et al. 2024): straight-line interpolation, velocity prediction, logit-normal
  timesteps, resolution-dependent timestep shift.
- `DDPM` (Ho et al. 2020; Nichol & Dhariwal 2021, "IDDPM"; ADM; DiT): discrete Gaussian diffusion, ε-prediction,
  optionally a learned variance trained with the IDDPM hybrid loss.

Time convention at the denoiser interface: continuous t in [0, 1], t = 1 is pure noise. DDPM feeds t = k / T for
the integer step k, so a backbone that wants ADM-style integer timesteps multiplies by its own T.

Differences from the reference code (ADM ``gaussian_diffusion.py``, as vendored by DiT, MDT and PixArt):

- Schedule arrays are computed in float64 and stored as float32 buffers, which is exactly what ADM's
  ``_extract_into_tensor`` (float64 numpy array, indexed, then ``.float()``) yields.
- Only the loss types that the baselines use exist: plain MSE, and MSE + rescaled VB when Σ is learned.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from conditioning.types import Cond

Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]
"""``(x_t (N, C, H, W), t (N,) in [0, 1], cond) -> prediction (N, C or 2C, H, W)``."""


def time_shift(t: Tensor | float, shift: float) -> Tensor | float:
    """SD3's resolution shift of a rectified-flow time, ``t' = s·t / (1 + (s − 1)·t)`` (Esser et al. 2024, §5.3.2).

    It fixes 0 and 1, is monotone, and for s > 1 moves every t towards noise (the identity at s = 1).
    """
    return shift * t / (1 + (shift - 1) * t)


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) so that per-sample scalars multiply (N, C, H, W) tensors."""
    return values.reshape(-1, *[1] * (like.dim() - 1))


def _check_channels(prediction: Tensor, expected: int, who: str) -> None:
    if prediction.shape[1] != expected:
        raise ValueError(
            f"{who} expects the denoiser to predict {expected} channels, got {prediction.shape[1]} "
            f"(prediction shape {tuple(prediction.shape)}); check the backbone's learn_sigma / out_channels"
        )


class Objective(nn.Module, ABC):
    """A training objective. An ``nn.Module`` only so that schedule buffers follow the LightningModule's device."""

    learn_sigma: bool = False
    """Whether the backbone predicts 2C channels (ε and the variance interpolation v, IDDPM) rather than C."""

    def output_channels(self, latent_channels: int) -> int:
        """How many channels the backbone must output for latents with ``latent_channels`` channels."""
        return 2 * latent_channels if self.learn_sigma else latent_channels

    @abstractmethod
    def sample_time(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Draw n training times, (n,) float in [0, 1] (1 = noise), exactly as `loss` draws them when ``t=None``.

        A recipe that queries the denoiser several times at the same noise level (e.g. a masked and an unmasked
        pass) draws ``t`` and ``noise`` once and passes them to each `loss` call.
        """

    @abstractmethod
    def loss(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        cond: Cond,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        **model_kwargs: Any,
    ) -> dict[str, Tensor]:
        """Noise ``x0``, query the denoiser and return ``{"loss": scalar, <component>: scalar, ...}``.

        Args:
            denoiser: The backbone (or any callable with the `Denoiser` signature).
            x0: (N, C, H, W) clean latents.
            cond: The (already CFG-dropped) conditions.
            noise: Gaussian noise like ``x0``; drawn when ``None``.
            t: Per-sample times from `sample_time`; drawn from the objective's training distribution when ``None``.
            **model_kwargs: Extra keyword arguments passed to every denoiser call, ``denoiser(x_t, t, cond,
                **model_kwargs)`` (e.g. a mask ratio).
        """


class RectifiedFlow(Objective):
    """Rectified flow with v-prediction and logit-normal timesteps (SD3; Esser et al. 2024).

    ``x_t = (1 − t)·x0 + t·ε`` and the backbone regresses the constant velocity ``v = ε − x0`` (their Eq. 1–3
    with the "rf" path). Times are drawn as ``t = sigmoid(u)``, ``u ~ N(logit_mean, logit_std²)`` (their §3.1,
    "lognorm(m, s)"), then shifted by `time_shift` so that higher resolutions see more noise (their §5.3.2).

    Args:
        logit_mean: Mean m of the logit-normal timestep density (SD3: 0).
        logit_std: Standard deviation s of the logit-normal timestep density (SD3: 1).
        shift: Resolution shift α applied to training times and, by default, to the Euler sampling grid;
            1 is no shift. Use `RectifiedFlow.shift_for_resolution` to derive it (SD3 used 3.0 at 1024²).
    """

    learn_sigma = False

    def __init__(self, logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0) -> None:
        super().__init__()
        if not logit_std > 0:
            raise ValueError(f"RectifiedFlow: logit_std must be > 0, got {logit_std}")
        if not shift > 0:
            raise ValueError(f"RectifiedFlow: shift must be > 0, got {shift}")
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.shift = float(shift)

    @staticmethod
    def shift_for_resolution(resolution: int | tuple[int, int], base_resolution: int | tuple[int, int]) -> float:
        """SD3's shift α = sqrt(m / n) for m pixels at the new resolution and n at the base (Esser et al. §5.3.2).

        Resolutions are a side (square) or ``(height, width)``; the ratio is the same in pixels or latent cells.
        """

        def pixels(res: int | tuple[int, int]) -> int:
            h, w = (res, res) if isinstance(res, int) else res
            if h <= 0 or w <= 0:
                raise ValueError(f"shift_for_resolution: resolutions must be positive, got {res}")
            return h * w

        return math.sqrt(pixels(resolution) / pixels(base_resolution))

    def sample_time(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Draw n training times: logit-normal, then shifted. Strictly inside (0, 1) up to float rounding."""
        u = torch.randn(n, device=device) * self.logit_std + self.logit_mean
        return time_shift(torch.sigmoid(u), self.shift)

    @staticmethod
    def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The straight path ``x_t = (1 − t)·x0 + t·ε``: x0 at t = 0, pure noise at t = 1."""
        t = _broadcast(t.to(x0.dtype), x0)
        return (1 - t) * x0 + t * noise

    def loss(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        cond: Cond,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        **model_kwargs: Any,
    ) -> dict[str, Tensor]:
        """Velocity MSE, averaged over every dimension (SD3 uses uniform weighting in t after the density)."""
        noise = torch.randn_like(x0) if noise is None else noise
        t = self.sample_time(x0.shape[0], device=x0.device) if t is None else t.to(x0.device, torch.float32)
        prediction = denoiser(self.interpolate(x0, noise, t), t, cond, **model_kwargs)
        _check_channels(prediction, x0.shape[1], "RectifiedFlow")
        # Reduce in float32 even when the backbone ran under bf16 autocast.
        mse = (prediction.float() - (noise - x0).float()).pow(2).mean()
        return {"loss": mse, "mse": mse}


def linear_betas(
    num_timesteps: int, beta_start: float, beta_end: float, kind: Literal["linear", "scaled_linear"] = "linear"
) -> Tensor:
    """β_1..β_T in float64, always on the CPU (a schedule is a constant, even when a model is built on meta).

    ``linear`` is ADM/DiT's ``get_named_beta_schedule("linear")``: the DDPM endpoints (1e-4, 0.02) rescaled by
    1000 / T so that any T gives a similar curve. ``scaled_linear`` is LDM's ``make_beta_schedule("linear")``:
    linear in sqrt(β), endpoints used as given (LDM-4: 0.0015, 0.0195).
    """
    if kind == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64, device="cpu")
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64, device="cpu") ** 2
    raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear' or 'scaled_linear'")


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """IDDPM's evenly spaced subset of ``steps`` out of ``num_timesteps`` steps, first and last included.

    Mirrors ``space_timesteps(T, [steps])`` of IDDPM ``respace.py`` (a float stride accumulated and rounded with
    Python's round), so DiT's "250" respacing selects the very same steps.
    """
    if not 2 <= steps <= num_timesteps:
        raise ValueError(f"respacing needs 2 <= steps <= {num_timesteps}, got steps={steps}")
    stride, position, taken = (num_timesteps - 1) / (steps - 1), 0.0, []
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return taken


def betas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """The β of a chain with the given ᾱ: β_i = 1 − ᾱ_i / ᾱ_{i−1}, with ᾱ_{−1} = 1."""
    return 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])


def shift_betas(betas: Tensor, shift: float) -> Tensor:
    """The β whose ᾱ has the signal-to-noise ratio of ``betas``'s divided by ``shift²`` at every step (float64)."""
    if shift == 1.0:
        return betas
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    snr = alphas_cumprod / (1.0 - alphas_cumprod) / shift**2
    return betas_from_alphas_cumprod(snr / (1.0 + snr))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-likelihood (nats) of data in [-1, 1] quantised to 256 bins under a Gaussian (DDPM §3.3, Eq. 13).

    Each bin has half-width 1/255; the two edge bins extend to ±∞. The CDF is the tanh approximation ADM uses,
    so the numbers match the reference implementation. For latents this is the convention DiT inherits, not a
    true likelihood.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)

    def cdf(z: Tensor) -> Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z.pow(3))))

    cdf_plus = cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class PredictedPosterior(NamedTuple):
    """The model's reverse step p(x_{k−1} | x_k): Gaussian mean and log-variance, plus the implied x0 and ε."""

    mean: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


class DDPM(Objective):
    """Discrete Gaussian diffusion with ε-prediction and optional learned variance (DDPM, IDDPM, ADM, DiT).

    ``q(x_k | x0) = N(sqrt(ᾱ_k)·x0, (1 − ᾱ_k)·I)`` for integer k in [0, T); the backbone sees t = k / T.
    Training draws k uniformly and regresses ε. With ``learn_sigma`` the backbone also outputs v ∈ [-1, 1] per
    element, and the reverse variance interpolates in log space between β_k and the posterior variance β̃_k
    (IDDPM Eq. 15). That half is trained only through the variational bound L_vlb, with the mean stop-gradiented
    so that L_simple alone drives ε (IDDPM §3.1, "hybrid" objective). The VB term is scaled by T / 1000, as ADM's
    ``RESCALED_MSE`` does ("loss = mse + vb"), which keeps its weight fixed when T changes.

    The schedule quantities are float32 buffers (``betas``, ``alphas_cumprod``, ``alphas_cumprod_prev``,
    ``posterior_variance``, ``posterior_log_variance_clipped``, ``posterior_mean_coef1/2``, ...), and
    `DDPM.respace` builds the shorter chain that IDDPM-style samplers walk.

    Args:
        num_timesteps: Number of diffusion steps T (DDPM/ADM/DiT: 1000).
        beta_start: β at k = 0 for T = 1000 (rescaled by 1000 / T for the "linear" schedule).
        beta_end: β at k = T − 1 for T = 1000 (rescaled likewise).
        learn_sigma: Whether the backbone predicts the variance too (2C output channels; DiT, MDT, PixArt: True).
        beta_schedule: ``"linear"`` (ADM/DiT, linear in β) or ``"scaled_linear"`` (LDM, linear in sqrt(β),
            e.g. with beta_start=0.0015, beta_end=0.0195).
        sigma_small: Without learn_sigma, the fixed reverse variance: β̃_k if True (LDM), β_k if False (ADM's
            default ``FIXED_LARGE``).
        shift: Resolution shift α of the schedule's signal-to-noise ratio, SNR'(k) = SNR(k) / α², the same α
            as `RectifiedFlow`'s (α = sqrt(m / n) for m latent pixels against the n the schedule was made for;
            `RectifiedFlow.shift_for_resolution`). 1 is the published schedule. α < 1 suits latents smaller than
            the schedule's own (the shifted schedules of Hoogeboom et al. 2023, "simple diffusion"): DiT's
            linear β was tuned for 32x32 latents, and on 8x8 ones it leaves half the steps at SNR < 0.09, where
            nothing of a shape survives. β is re-derived from the shifted ᾱ, so the learned-Σ range, the
            posterior and `respace` follow.
        min_snr_gamma: Weight each sample's ε MSE by min(SNR_k, γ) / SNR_k ("Min-SNR-γ", Hang et al. 2023), which
            MDTv2 trains with (γ = 5, its "timestep-adapted loss weights"). None (default): the unweighted
            L_simple of DDPM / ADM / DiT. ``mse`` is logged unweighted either way.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        learn_sigma: bool = True,
        beta_schedule: Literal["linear", "scaled_linear"] = "linear",
        sigma_small: bool = False,
        shift: float = 1.0,
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__()
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"DDPM: min_snr_gamma must be > 0 or None, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma
        if num_timesteps < 2:
            raise ValueError(f"DDPM: num_timesteps must be >= 2, got {num_timesteps}")
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"DDPM: shift must be finite and > 0, got {shift}")
        betas = shift_betas(linear_betas(num_timesteps, beta_start, beta_end, beta_schedule), shift)
        if not (betas > 0).all() or not (betas < 1).all():
            raise ValueError(
                f"DDPM: betas must lie in (0, 1); beta_start={beta_start}, beta_end={beta_end} with "
                f"T={num_timesteps} and the {beta_schedule!r} schedule give [{betas.min():.4g}, {betas.max():.4g}]"
            )
        self.learn_sigma = learn_sigma
        self.sigma_small = sigma_small
        self.shift = float(shift)
        self.original_num_timesteps = num_timesteps
        self._set_schedule(betas, torch.arange(num_timesteps, device="cpu"))

    def _set_schedule(self, betas: Tensor, timestep_map: Tensor) -> None:
        """(Re)compute every schedule buffer from float64 betas (the DDPM/IDDPM closed forms)."""
        self.num_timesteps = len(betas)
        self._alphas_cumprod64 = torch.cumprod(1.0 - betas, 0)  # float64 master copy, used by `respace`
        acp = self._alphas_cumprod64
        acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
        # Posterior q(x_{k−1} | x_k, x0) (DDPM Eq. 6–7).
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        # β̃_0 = 0, so ADM clips the log at k = 0 with β̃_1; that value is only used through the decoder NLL.
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        # ADM's fixed variances: FIXED_SMALL is the clipped posterior variance (so k = 0 uses β̃_1, not log 0),
        # FIXED_LARGE is β with its first entry replaced by β̃_1.
        fixed_variance = clipped if self.sigma_small else torch.cat([clipped[:1], betas[1:]])
        schedule = {
            "betas": betas,
            "log_betas": torch.log(betas),
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "sqrt_alphas_cumprod": acp.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(clipped),
            "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * (1.0 - betas).sqrt() / (1.0 - acp),
            "fixed_log_variance": torch.log(fixed_variance),
        }
        device = self.betas.device if hasattr(self, "betas") else None
        for name, value in schedule.items():
            # Derived from the constructor arguments, hence not persistent: checkpoints stay T-agnostic.
            self.register_buffer(name, value.to(device=device, dtype=torch.float32), persistent=False)
        self.register_buffer("timestep_map", timestep_map.to(device=device, dtype=torch.long), persistent=False)

    def respace(self, steps: int) -> DDPM:
        """The IDDPM respaced chain over `space_timesteps` (IDDPM ``respace.py``, used by DiT's 250-step sampler).

        Keeping steps k_1 < ... < k_S, the new β_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i−1}} preserves every marginal
        q(x_{k_i} | x0); all posterior quantities (and the learned-Σ interpolation range) follow from those β.
        ``timestep_map`` records the original k, which the backbone must see (IDDPM ``_WrappedModel``).
        """
        keep = torch.tensor(space_timesteps(self.num_timesteps, steps))
        betas = betas_from_alphas_cumprod(self._alphas_cumprod64[keep])
        respaced = copy.deepcopy(self)
        respaced._set_schedule(betas, self.timestep_map[keep.to(self.timestep_map.device)])
        return respaced

    def model_time(self, k: Tensor) -> Tensor:
        """The continuous time the denoiser sees for chain index k: original step / original T."""
        return self.timestep_map[k].float() / self.original_num_timesteps

    def _at(self, name: str, k: Tensor, like: Tensor) -> Tensor:
        return _broadcast(getattr(self, name)[k], like)

    def q_sample(self, x0: Tensor, k: Tensor, noise: Tensor) -> Tensor:
        """Draw x_k ~ q(x_k | x0) = sqrt(ᾱ_k)·x0 + sqrt(1 − ᾱ_k)·ε (DDPM Eq. 4)."""
        return self._at("sqrt_alphas_cumprod", k, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", k, x0) * noise

    def predict_x0_from_eps(self, x_t: Tensor, k: Tensor, eps: Tensor) -> Tensor:
        """Invert `q_sample` for x0 given ε: x0 = sqrt(1/ᾱ_k)·x_k − sqrt(1/ᾱ_k − 1)·ε."""
        recip, recipm1 = self._at("sqrt_recip_alphas_cumprod", k, x_t), self._at("sqrt_recipm1_alphas_cumprod", k, x_t)
        return recip * x_t - recipm1 * eps

    def q_posterior(self, x0: Tensor, x_t: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log-variance of q(x_{k−1} | x_k, x0) (DDPM Eq. 6–7)."""
        mean = self._at("posterior_mean_coef1", k, x_t) * x0 + self._at("posterior_mean_coef2", k, x_t) * x_t
        return mean, self._at("posterior_log_variance_clipped", k, x_t).expand_as(x_t)

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, k: Tensor) -> PredictedPosterior:
        """The reverse step implied by a backbone output (no x0 clipping: DiT samples with clip_denoised=False).

        With learned Σ, the last C channels are v and log σ² = frac·log β_k + (1 − frac)·log β̃_k, frac = (v+1)/2
        (IDDPM Eq. 15; ADM ``LEARNED_RANGE``); otherwise the fixed variance chosen by ``sigma_small``.
        """
        channels = x_t.shape[1]
        _check_channels(model_output, self.output_channels(channels), "DDPM")
        eps = model_output[:, :channels]
        if self.learn_sigma:
            frac = (model_output[:, channels:] + 1) / 2
            log_variance = frac * self._at("log_betas", k, x_t) + (1 - frac) * self._at(
                "posterior_log_variance_clipped", k, x_t
            )
        else:
            log_variance = self._at("fixed_log_variance", k, x_t).expand_as(x_t)
        pred_x0 = self.predict_x0_from_eps(x_t, k, eps)
        mean, _ = self.q_posterior(pred_x0, x_t, k)
        return PredictedPosterior(mean, log_variance, pred_x0, eps)

    def vb_terms_bpd(self, model_output: Tensor, x0: Tensor, x_t: Tensor, k: Tensor) -> Tensor:
        """Per-sample L_vlb term in bits per dimension (IDDPM Eq. 4–5): KL(q ‖ p) for k > 0, decoder NLL at k = 0."""
        true_mean, true_log_variance = self.q_posterior(x0, x_t, k)
        p = self.p_mean_variance(model_output, x_t, k)
        kl = normal_kl(true_mean, true_log_variance, p.mean, p.log_variance).flatten(1).mean(1)
        nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance).flatten(1).mean(1)
        return torch.where(k == 0, nll, kl) / math.log(2.0)

    def sample_time(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Draw n training times: the step k uniform in [0, T), returned as the float time k / T the backbone sees.

        `loss` rounds such a time back to the same k, so ``loss(..., t=sample_time(n))`` is the default draw.
        """
        k = torch.randint(0, self.num_timesteps, (n,), device=device)
        return self.model_time(k.to(self.timestep_map.device)).to(device)

    def loss(
        self,
        denoiser: Denoiser,
        x0: Tensor,
        cond: Cond,
        noise: Tensor | None = None,
        t: Tensor | None = None,
        **model_kwargs: Any,
    ) -> dict[str, Tensor]:
        """L_simple (ε MSE), plus the stop-gradient VB term when Σ is learned (IDDPM hybrid loss).

        ``t`` may be integer indices k of this chain or continuous times in [0, 1] of the original chain (k / T;
        on a respaced chain the nearest kept step is used), as drawn by `sample_time`. ``model_kwargs`` are passed
        to the denoiser.
        """
        n, channels = x0.shape[0], x0.shape[1]
        if t is None:
            k = torch.randint(0, self.num_timesteps, (n,), device=x0.device)
        elif t.is_floating_point():
            # t is a time of the original chain (what `model_time` gives); on a respaced chain take the kept step
            # nearest to it, so that the backbone sees (almost) the t it was given.
            original = (t * self.original_num_timesteps).round().long().to(self.timestep_map.device)
            k = (self.timestep_map[None, :] - original[:, None]).abs().argmin(dim=1).to(x0.device)
        else:
            k = t.long().to(x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, k, noise)
        output = denoiser(x_t, self.model_time(k), cond, **model_kwargs).float()
        _check_channels(output, self.output_channels(channels), "DDPM")
        mse = (output[:, :channels] - noise.float()).pow(2).mean()
        simple = mse if self.min_snr_gamma is None else self._min_snr_weighted(output[:, :channels], noise, k)
        if not self.learn_sigma:
            return {"loss": simple, "mse": mse}
        # Freeze ε so that L_vlb trains only the variance (IDDPM §3.1: L_hybrid = L_simple + λ·L_vlb).
        frozen = torch.cat([output[:, :channels].detach(), output[:, channels:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x0.float(), x_t.float(), k).mean() * (self.num_timesteps / 1000.0)
        return {"loss": simple + vb, "mse": mse, "vb": vb}

    def _min_snr_weighted(self, eps: Tensor, noise: Tensor, k: Tensor) -> Tensor:
        """Per-sample ε MSE weighted by min(SNR_k, γ) / SNR_k, averaged over the batch."""
        alpha_bar = self.alphas_cumprod[k.to(self.alphas_cumprod.device)].to(eps.device)
        snr = alpha_bar / (1 - alpha_bar)
        weight = snr.clamp(max=self.min_snr_gamma) / snr
        per_sample = (eps.float() - noise.float()).pow(2).flatten(1).mean(dim=1)
        return (weight * per_sample).mean()
