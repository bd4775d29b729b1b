"""The resolution shift of the noise schedule: α = 1 is the identity; α applies to training times and sampling grids."""

import pytest
import torch

from benchmark.objectives import DDPM, RectifiedFlow, linear_betas, time_shift
from benchmark.samplers import EulerSampler


def test_shift_for_resolution_is_the_square_root_of_the_pixel_ratio():
    assert RectifiedFlow.shift_for_resolution(64, 32) == 2.0
    assert RectifiedFlow.shift_for_resolution(512, 256) == 2.0
    assert RectifiedFlow.shift_for_resolution(32, 32) == 1.0


def test_rectified_flow_shift_one_is_the_identity_in_training_and_sampling():
    t = torch.linspace(0, 1, 101)
    assert torch.equal(time_shift(t, 1.0), t)
    torch.manual_seed(5)
    drawn = RectifiedFlow(shift=1.0).sample_time(64)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.sigmoid(torch.randn(64)))  # the unshifted logit-normal draw
    grid = EulerSampler(steps=8).timesteps(RectifiedFlow(shift=1.0))
    assert torch.equal(grid, torch.linspace(1.0, 0.0, 9))


def test_rectified_flow_shift_moves_training_times_and_the_euler_grid_alike():
    torch.manual_seed(5)
    plain = RectifiedFlow().sample_time(64)
    torch.manual_seed(5)
    shifted = RectifiedFlow(shift=2.0).sample_time(64)
    torch.testing.assert_close(shifted, time_shift(plain, 2.0))
    assert (shifted >= plain).all() and (shifted > plain).any()  # towards noise
    grid = EulerSampler(steps=8).timesteps(RectifiedFlow(shift=2.0))  # shift=None follows the objective
    torch.testing.assert_close(grid, time_shift(torch.linspace(1.0, 0.0, 9), 2.0))
    unshifted = EulerSampler(steps=8, shift=1.0).timesteps(RectifiedFlow(shift=2.0))  # an explicit override
    assert torch.equal(unshifted, torch.linspace(1.0, 0.0, 9))


def _snr(objective: DDPM) -> torch.Tensor:
    acp = objective.alphas_cumprod.double()
    return acp / (1 - acp)


def test_ddpm_shift_one_is_the_published_schedule():
    acp = torch.cumprod(1 - linear_betas(1000, 1e-4, 0.02, "linear").double(), 0)
    torch.testing.assert_close(DDPM(shift=1.0).alphas_cumprod.double(), acp, rtol=0, atol=1e-7)
    assert torch.equal(DDPM(shift=1.0).alphas_cumprod, DDPM().alphas_cumprod)


@pytest.mark.parametrize("shift", [0.5, 2.0])
def test_ddpm_shift_divides_the_snr_in_training_and_in_the_respaced_sampling_chain(shift):
    plain, shifted = DDPM(), DDPM(shift=shift)
    # float32 buffers: near k = 0, 1 - ᾱ keeps only a few digits
    torch.testing.assert_close(_snr(shifted), _snr(plain) / shift**2, rtol=5e-3, atol=0)
    # Training: q_sample at a given step mixes with the shifted ᾱ.
    x0, noise, k = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([500])
    expected = shifted.alphas_cumprod[500].sqrt()
    torch.testing.assert_close(shifted.q_sample(x0, k, noise).flatten(), expected.reshape(1))
    # Sampling: DDPM and DDIM samplers integrate objective.respace(steps), which keeps the shifted marginals.
    chain = shifted.respace(10)
    kept = chain.timestep_map
    torch.testing.assert_close(chain.alphas_cumprod, shifted.alphas_cumprod[kept])
    assert not torch.allclose(chain.alphas_cumprod, plain.respace(10).alphas_cumprod)
