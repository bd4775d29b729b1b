"""Samplers: exact solutions for single-point data, the respaced DDPM chain, objective checks."""

import pytest
import torch

from benchmark.objectives import DDPM, RectifiedFlow, space_timesteps
from benchmark.samplers import DDIMSampler, DDPMSampler, EulerSampler
from conditioning.types import Cond

N, C, H, W = 4, 4, 4, 4


@pytest.fixture
def cond() -> Cond:
    return Cond(label=torch.zeros(N, dtype=torch.long))


def _single_point_eps(ddpm: DDPM, x0: torch.Tensor, learn_sigma: bool):
    """The exact ε of a data distribution concentrated on x0, with v = 0 for a learned Σ."""
    acp = ddpm.alphas_cumprod  # the denoiser sees the ORIGINAL k / T, so use the full schedule

    def denoiser(x_t, t, c):
        k = (t * ddpm.num_timesteps).round().long()
        a = acp[k].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learn_sigma else eps

    return denoiser


def test_euler_zero_velocity_is_identity(cond):
    noise = torch.randn(N, C, H, W)
    out = EulerSampler(steps=7).sample(lambda x, t, c: torch.zeros_like(x), RectifiedFlow(), noise, cond)
    assert torch.equal(out, noise)


@pytest.mark.parametrize("shift", [None, 3.0])
def test_euler_exact_velocity_lands_on_data(cond, shift):
    x0, noise = torch.randn(1, C, H, W).expand(N, -1, -1, -1), torch.randn(N, C, H, W)
    seen = []

    def velocity(x_t, t, c):
        seen.append(t[0].item())
        return (x_t - x0) / t.view(-1, 1, 1, 1)  # v = ε − x0 on the straight path through x0

    out = EulerSampler(steps=5, shift=shift).sample(velocity, RectifiedFlow(shift=2.0), noise, cond)
    assert torch.allclose(out, x0, atol=1e-5)
    assert len(seen) == 5 and seen[0] == 1.0 and min(seen) > 0
    # shift=None takes the objective's shift: the second grid point is time_shift(0.8, 2) = 1.6 / 1.8.
    expected = 1.6 / 1.8 if shift is None else 2.4 / 2.6
    assert seen[1] == pytest.approx(expected)


def test_ddim_oracle_recovers_data(cond):
    ddpm = DDPM()
    x0 = torch.randn(1, C, H, W).expand(N, -1, -1, -1)
    out = DDIMSampler(steps=20).sample(_single_point_eps(ddpm, x0, True), ddpm, torch.randn(N, C, H, W), cond)
    assert torch.allclose(out, x0, atol=1e-3)


def test_ddpm_oracle_ends_near_data(cond):
    torch.manual_seed(0)
    for learn_sigma in (True, False):
        ddpm = DDPM(learn_sigma=learn_sigma)
        x0 = torch.randn(1, C, H, W).expand(N, -1, -1, -1)
        denoiser = _single_point_eps(ddpm, x0, learn_sigma)
        out = DDPMSampler(steps=25).sample(denoiser, ddpm, torch.randn(N, C, H, W), cond)
        assert torch.allclose(out, x0, atol=1e-3)


def test_ddpm_sampler_uses_original_timesteps(cond):
    ddpm, seen = DDPM(learn_sigma=False), []

    def denoiser(x, t, c):
        seen.append(t.clone())
        return torch.zeros_like(x)

    DDPMSampler(steps=10).sample(denoiser, ddpm, torch.randn(N, C, H, W), cond)
    ks = [round(t[0].item() * 1000) for t in seen]
    assert ks == space_timesteps(1000, 10)[::-1] and ks[0] == 999 and ks[-1] == 0
    assert all(torch.allclose(t, torch.full((N,), k / 1000)) for t, k in zip(seen, ks))


def test_ddpm_sampler_noise_is_reproducible_with_generator(cond):
    ddpm, noise = DDPM(learn_sigma=False), torch.randn(N, C, H, W)

    def run():
        g = torch.Generator().manual_seed(3)
        return DDPMSampler(steps=5).sample(lambda x, t, c: torch.zeros_like(x), ddpm, noise, cond, generator=g)

    assert torch.equal(run(), run())


def test_wrong_objective_raises(cond):
    noise = torch.randn(N, C, H, W)
    with pytest.raises(TypeError, match="EulerSampler.*DDPM"):
        EulerSampler().sample(lambda x, t, c: x, DDPM(), noise, cond)
    for sampler in (DDPMSampler(steps=5), DDIMSampler(steps=5)):
        with pytest.raises(TypeError, match=f"{type(sampler).__name__}.*RectifiedFlow"):
            sampler.sample(lambda x, t, c: x, RectifiedFlow(), noise, cond)
    with pytest.raises(ValueError):
        DDPMSampler(steps=1)
