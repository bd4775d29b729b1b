"""Objectives: interpolation endpoints, oracle losses, the SD3 shift, the DDPM schedule and the hybrid loss."""

import math

import pytest
import torch

from benchmark.objectives import DDPM, RectifiedFlow, space_timesteps, time_shift
from conditioning.types import Cond

N, C, H, W = 8, 4, 4, 4


@pytest.fixture
def cond() -> Cond:
    return Cond(label=torch.zeros(N, dtype=torch.long))


def test_rf_interpolation_endpoints():
    x0, noise = torch.randn(N, C, H, W), torch.randn(N, C, H, W)
    assert torch.equal(RectifiedFlow.interpolate(x0, noise, torch.zeros(N)), x0)
    assert torch.equal(RectifiedFlow.interpolate(x0, noise, torch.ones(N)), noise)


def test_rf_oracle_velocity_has_zero_loss(cond):
    rf, x0 = RectifiedFlow(), torch.randn(N, C, H, W)
    noise = torch.randn_like(x0)
    seen = {}

    def oracle(x_t, t, c):
        seen["t"] = t
        return noise - x0

    out = rf.loss(oracle, x0, cond, noise=noise)
    assert out["loss"].item() < 1e-12
    assert ((seen["t"] > 0) & (seen["t"] < 1)).all()
    assert rf.loss(lambda x_t, t, c: torch.zeros_like(x_t), x0, cond, noise=noise)["loss"] > 0.5


def test_rf_rejects_learned_sigma_output(cond):
    with pytest.raises(ValueError, match="channels"):
        RectifiedFlow().loss(lambda x, t, c: torch.cat([x, x], 1), torch.randn(N, C, H, W), cond)


def test_time_shift_properties():
    t = torch.linspace(0, 1, 101)
    for s in (0.5, 2.0, 3.0):
        shifted = time_shift(t, s)
        assert shifted[0] == 0 and torch.isclose(shifted[-1], torch.tensor(1.0))
        assert (shifted.diff() > 0).all()
    assert torch.allclose(time_shift(t, 1.0), t)
    assert (time_shift(t[1:-1], 3.0) > t[1:-1]).all()  # s > 1 moves towards noise
    assert RectifiedFlow.shift_for_resolution(512, 256) == pytest.approx(2.0)
    assert RectifiedFlow.shift_for_resolution((256, 256), (256, 256)) == pytest.approx(1.0)
    assert RectifiedFlow.shift_for_resolution((512, 128), 256) == pytest.approx(1.0)


@pytest.mark.parametrize("mean,shift", [(0.0, 1.0), (1.0, 1.0), (0.0, 3.0)])
def test_logit_normal_median(mean, shift):
    torch.manual_seed(0)
    t = RectifiedFlow(logit_mean=mean, shift=shift).sample_time(200_000)
    assert ((t > 0) & (t < 1)).all()
    expected = time_shift(1 / (1 + math.exp(-mean)), shift)
    assert t.median().item() == pytest.approx(expected, abs=5e-3)


def test_ddpm_schedule_matches_adm_linear():
    ddpm = DDPM()
    assert ddpm.betas[0].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)
    assert (ddpm.alphas_cumprod.diff() < 0).all()
    assert ddpm.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    # T = 250 rescales the endpoints by 1000 / T.
    assert DDPM(num_timesteps=250).betas[-1].item() == pytest.approx(0.08)
    assert DDPM(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear").betas[-1].item() == pytest.approx(
        0.0195
    )
    assert "betas" not in ddpm.state_dict()  # derived buffers stay out of checkpoints
    with pytest.raises(ValueError, match="betas"):
        DDPM(num_timesteps=10)


@pytest.mark.parametrize("shift", [0.25, 2.0])
def test_ddpm_shift_divides_snr_at_every_step(shift):
    def snr(d: DDPM) -> torch.Tensor:
        acp = d._alphas_cumprod64
        return acp / (1 - acp)

    plain, shifted = DDPM(), DDPM(shift=shift)
    assert torch.allclose(snr(shifted), snr(plain) / shift**2, rtol=1e-9)
    assert ((shifted.betas > 0) & (shifted.betas < 1)).all()
    # Respacing keeps the shifted marginals at the kept steps.
    keep = torch.tensor(space_timesteps(1000, 25))
    assert torch.allclose(shifted.respace(25)._alphas_cumprod64, shifted._alphas_cumprod64[keep])
    assert torch.equal(DDPM(shift=1.0).betas, plain.betas)
    with pytest.raises(ValueError, match="shift"):
        DDPM(shift=0.0)


def test_ddpm_q_sample_and_inverse():
    ddpm, x0 = DDPM(), torch.randn(N, C, H, W)
    noise = torch.randn_like(x0)
    x_0 = ddpm.q_sample(x0, torch.zeros(N, dtype=torch.long), noise)
    assert (x_0 - x0).abs().max() < 0.06 and (x_0 - x0).std().item() == pytest.approx(0.01, rel=0.2)  # √β_0 = 0.01
    k = torch.randint(0, 1000, (N,))
    x_t = ddpm.q_sample(x0, k, noise)
    assert torch.allclose(ddpm.predict_x0_from_eps(x_t, k, noise), x0, atol=1e-3)


def test_space_timesteps_matches_iddpm():
    assert space_timesteps(1000, 250)[:4] == [0, 4, 8, 12] and space_timesteps(1000, 250)[-1] == 999
    assert space_timesteps(10, 10) == list(range(10))
    respaced = DDPM().respace(10)
    assert respaced.num_timesteps == 10 and respaced.timestep_map.tolist() == space_timesteps(1000, 10)
    # Respacing keeps the marginals q(x_k | x0) of the kept steps.
    assert torch.allclose(respaced.alphas_cumprod, DDPM().alphas_cumprod[respaced.timestep_map])


def _oracle_output(ddpm: DDPM, x_t, k, noise, v_value: float):
    return torch.cat([noise, torch.full_like(noise, v_value)], dim=1)


def test_hybrid_loss_oracle_true_variance_gives_zero_kl(cond):
    ddpm, x0 = DDPM(), torch.randn(N, C, H, W).clamp(-1, 1)
    noise = torch.randn_like(x0)
    k = torch.randint(1, 1000, (N,))
    x_t = ddpm.q_sample(x0, k, noise)
    # v = -1 gives frac = 0, i.e. σ² = β̃_k, the true posterior variance.
    vb = ddpm.vb_terms_bpd(_oracle_output(ddpm, x_t, k, noise, -1.0), x0, x_t, k)
    assert vb.abs().max().item() < 1e-3
    # Any other variance costs bits; β and β̃ differ most at small k (at large k, β̃_k → β_k).
    k_small = torch.randint(1, 10, (N,))
    x_small = ddpm.q_sample(x0, k_small, noise)
    kl = ddpm.vb_terms_bpd(_oracle_output(ddpm, x_small, k_small, noise, 1.0), x0, x_small, k_small)
    ratio = ddpm.posterior_variance[k_small] / ddpm.betas[k_small]  # KL(N(μ, β̃) ‖ N(μ, β)) in closed form
    assert torch.allclose(kl, 0.5 * (ratio - 1 - ratio.log()) / math.log(2), rtol=1e-3, atol=1e-5)
    assert (kl > 1e-3).all()
    out = ddpm.loss(lambda x, t, c: torch.cat([noise, -torch.ones_like(noise)], 1), x0, cond, noise=noise, t=k)
    assert out["mse"].item() < 1e-12 and out["vb"].abs().item() < 1e-3
    assert set(out) == {"loss", "mse", "vb"}


def test_hybrid_loss_decoder_nll_at_k0(cond):
    ddpm, x0 = DDPM(), torch.rand(N, C, H, W) * 1.8 - 0.9
    k = torch.zeros(N, dtype=torch.long)
    noise = torch.randn_like(x0)
    x_t = ddpm.q_sample(x0, k, noise)
    nll = ddpm.vb_terms_bpd(_oracle_output(ddpm, x_t, k, noise, 0.0), x0, x_t, k)
    # A perfect mean: the NLL is −log2 of the Gaussian mass of the bin [x0 − 1/255, x0 + 1/255] (interior values).
    sigma = torch.exp(0.25 * (ddpm.log_betas[0] + ddpm.posterior_log_variance_clipped[0]))
    expected = -math.log2(math.erf((1 / 255) / (sigma.item() * math.sqrt(2))))
    assert torch.allclose(nll, torch.full_like(nll, expected), atol=5e-3)
    # The edge bins extend to ±∞: at x0 = ±1 the mass is P(z > −(1/255)/σ), so the NLL is smaller.
    edge = torch.ones_like(x0) * torch.tensor([1.0, -1.0]).repeat(N // 2).view(N, 1, 1, 1)
    nll_edge = ddpm.vb_terms_bpd(_oracle_output(ddpm, edge, k, torch.zeros_like(x0), 0.0), edge, edge, k)
    expected_edge = -math.log2(0.5 * (1 + math.erf((1 / 255) / (sigma.item() * math.sqrt(2)))))
    assert torch.allclose(nll_edge, torch.full_like(nll_edge, expected_edge), atol=5e-3)


def test_vb_term_is_stop_gradient_on_eps(cond):
    ddpm, x0 = DDPM(), torch.randn(N, C, H, W)
    k = torch.randint(0, 1000, (N,))
    prediction = torch.randn(N, 2 * C, H, W, requires_grad=True)
    out = ddpm.loss(lambda x, t, c: prediction, x0, cond, t=k)
    (grad,) = torch.autograd.grad(out["vb"], prediction)
    assert grad[:, :C].abs().max() == 0
    assert grad[:, C:].abs().max() > 0
    (grad,) = torch.autograd.grad(out["mse"], prediction)
    assert grad[:, :C].abs().max() > 0 and grad[:, C:].abs().max() == 0


def test_ddpm_denoiser_sees_k_over_T(cond):
    ddpm, seen = DDPM(learn_sigma=False), {}

    def denoiser(x, t, c):
        seen["t"] = t
        return torch.zeros_like(x)

    k = torch.tensor([0, 1, 500, 999] * 2)
    ddpm.loss(denoiser, torch.randn(N, C, H, W), cond, t=k)
    assert torch.allclose(seen["t"], k.float() / 1000)
    with pytest.raises(ValueError, match="channels"):
        DDPM(learn_sigma=True).loss(denoiser, torch.randn(N, C, H, W), cond)


def test_float_t_on_a_respaced_chain_picks_the_nearest_kept_step(cond):
    """A float t is a time of the original chain; the respaced chain must not clamp t·T to its own length."""
    chain, seen = DDPM(learn_sigma=False).respace(10), {}

    def denoiser(x, t, c):
        seen["t"] = t
        return torch.zeros_like(x)

    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999, 0.3, 0.7, 0.2])
    chain.loss(denoiser, torch.randn(N, C, H, W), cond, t=t)
    spacing = 1 / 9  # ten kept steps over [0, 0.999]
    assert (seen["t"] - t).abs().max() <= spacing / 2 + 1e-3
    # Unrespaced chains still round t·T to the nearest step.
    DDPM(learn_sigma=False).loss(denoiser, torch.randn(N, C, H, W), cond, t=torch.tensor([0.5004] * N))
    assert torch.allclose(seen["t"], torch.full((N,), 0.5))


def test_fixed_small_uses_the_clipped_posterior_log_variance_at_k0():
    """ADM's FIXED_SMALL: log β̃ clipped at k = 0 to β̃_1 (not log 1e-20), for the full and the respaced chain."""
    for ddpm in (DDPM(learn_sigma=False, sigma_small=True), DDPM(learn_sigma=False, sigma_small=True).respace(50)):
        torch.testing.assert_close(ddpm.fixed_log_variance, ddpm.posterior_log_variance_clipped)
        assert ddpm.fixed_log_variance[0] == ddpm.fixed_log_variance[1] > -20
    large = DDPM(learn_sigma=False, sigma_small=False)
    assert large.fixed_log_variance[0] == large.posterior_log_variance_clipped[1]
    torch.testing.assert_close(large.fixed_log_variance[1:], large.log_betas[1:])


def test_min_snr_weight_matches_its_formula_and_leaves_mse_unweighted():
    """Min-SNR-γ weights each sample's ε MSE by min(SNR_k, γ) / SNR_k; the logged mse stays the plain L_simple."""
    torch.manual_seed(0)
    plain, weighted = DDPM(learn_sigma=False), DDPM(learn_sigma=False, min_snr_gamma=5.0)
    x0, noise = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    k = torch.tensor([0, 10, 500, 999])
    bias = torch.arange(4.0).view(4, 1, 1, 1) * 0.1

    def denoiser(x, t, cond):
        return noise + bias  # a per-sample error so that the weights matter

    out_plain, out_weighted = (
        plain.loss(denoiser, x0, None, noise=noise, t=k),
        weighted.loss(denoiser, x0, None, noise=noise, t=k),
    )
    snr = plain.alphas_cumprod[k] / (1 - plain.alphas_cumprod[k])
    expected = (snr.clamp(max=5.0) / snr * bias.flatten() ** 2).mean()
    assert torch.allclose(out_weighted["loss"], expected, rtol=1e-5)
    assert torch.allclose(out_weighted["mse"], out_plain["mse"]) and torch.allclose(out_plain["loss"], out_plain["mse"])
    assert snr[0] > 5 > snr[-1]  # both sides of the clamp are exercised
