"""Two-scale classifier-free guidance: reductions to plain CFG, evaluation counts, channels, interval."""

import pytest
import torch

from benchmark.guidance import ClassifierFreeGuidance
from conditioning.types import Cond

N, C, H, W = 3, 4, 2, 2


class ToyDenoiser:
    """Each condition group shifts the output by a different per-channel pattern; records every call's batch."""

    def __init__(self, out_channels: int = C) -> None:
        self.out_channels = out_channels
        self.batches: list[int] = []

    def __call__(self, x, t, cond: Cond):
        self.batches.append(x.shape[0])
        cond = cond.fill_masks()
        sem = (~cond.semantic_null).float().view(-1, 1, 1, 1)
        ctl = (~cond.control_null).float().view(-1, 1, 1, 1)
        ch = torch.arange(self.out_channels, dtype=x.dtype).view(1, -1, 1, 1)
        base = torch.cat([x] * (self.out_channels // x.shape[1]), 1) * (1 + t.view(-1, 1, 1, 1))
        return base + sem * (1.0 + ch) + ctl * (10.0 - ch) + sem * ctl * 0.5


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return torch.randn(N, C, H, W), torch.rand(N), Cond(label=torch.arange(N))


def test_unit_scales_are_the_plain_conditional_call(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser()
    guided = ClassifierFreeGuidance().wrap(toy, C)
    assert torch.equal(guided(x, t, cond), toy(x, t, cond))
    assert toy.batches == [N, N]


def test_control_scale_one_is_two_branch_cfg(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser()
    out = ClassifierFreeGuidance(semantic_scale=4.0).wrap(toy, C)(x, t, cond)
    assert toy.batches == [2 * N]
    full, no_sem = toy(x, t, cond), toy(x, t, cond.drop(semantic=True))
    assert torch.allclose(out, no_sem + 4.0 * (full - no_sem), atol=1e-5)


def test_equal_scales_is_cfg_against_fully_dropped(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser()
    out = ClassifierFreeGuidance(semantic_scale=2.5, control_scale=2.5).wrap(toy, C)(x, t, cond)
    assert toy.batches == [2 * N]
    full, none = toy(x, t, cond), toy(x, t, cond.drop(semantic=True, control=True))
    assert torch.allclose(out, none + 2.5 * (full - none), atol=1e-5)


def test_three_branch_formula(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser()
    out = ClassifierFreeGuidance(semantic_scale=3.0, control_scale=1.5).wrap(toy, C)(x, t, cond)
    assert toy.batches == [3 * N]
    full, no_sem = toy(x, t, cond), toy(x, t, cond.drop(semantic=True))
    none = toy(x, t, cond.drop(semantic=True, control=True))
    assert torch.allclose(out, none + 1.5 * (no_sem - none) + 3.0 * (full - no_sem), atol=1e-5)
    # The control push alone (γs = 1) still needs all three branches.
    toy.batches.clear()
    ClassifierFreeGuidance(control_scale=2.0).wrap(toy, C)(x, t, cond)
    assert toy.batches == [3 * N]


def test_learned_sigma_channels_come_from_conditional_branch(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser(out_channels=2 * C)
    out = ClassifierFreeGuidance(semantic_scale=4.0, control_scale=2.0).wrap(toy, C)(x, t, cond)
    full = toy(x, t, cond)
    assert out.shape == (N, 2 * C, H, W)
    assert torch.equal(out[:, C:], full[:, C:])
    assert not torch.allclose(out[:, :C], full[:, :C])


def test_dit_three_channel_quirk(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser(out_channels=2 * C)
    out = ClassifierFreeGuidance(semantic_scale=4.0, guided_channels=3).wrap(toy, C)(x, t, cond)
    full, no_sem = toy(x, t, cond), toy(x, t, cond.drop(semantic=True))
    assert torch.allclose(out[:, :3], no_sem[:, :3] + 4.0 * (full[:, :3] - no_sem[:, :3]), atol=1e-5)
    assert torch.equal(out[:, 3:], full[:, 3:])  # ε channel 3 and all of Σ are conditional
    with pytest.raises(ValueError, match="guided_channels"):
        ClassifierFreeGuidance(semantic_scale=2.0, guided_channels=5).wrap(toy, C)


def test_interval(inputs):
    x, _, cond = inputs
    toy = ToyDenoiser()
    cfg = ClassifierFreeGuidance(semantic_scale=4.0, interval=(0.3, 0.7))
    guided = cfg.wrap(toy, C)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = guided(x, t, cond)
    full, no_sem = toy(x, t, cond), toy(x, t, cond.drop(semantic=True))
    assert torch.allclose(out[1], (no_sem + 4.0 * (full - no_sem))[1], atol=1e-5)
    assert torch.equal(out[[0, 2]], full[[0, 2]])
    toy.batches.clear()
    assert torch.equal(guided(x, torch.full((N,), 0.95), cond), toy(x, torch.full((N,), 0.95), cond))
    assert toy.batches == [N, N]  # entirely outside the interval: a single, unguided evaluation


def test_existing_drop_masks_are_kept(inputs):
    x, t, cond = inputs
    toy = ToyDenoiser()
    dropped = cond.drop(semantic=torch.tensor([True, False, False]))
    out = ClassifierFreeGuidance(semantic_scale=4.0).wrap(toy, C)(x, t, dropped)
    # A sample whose semantic group is already dropped gets no semantic push.
    assert torch.allclose(out[0], toy(x, t, dropped)[0], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"semantic_scale": -1.0},
        {"control_scale": float("nan")},
        {"guided_channels": 0},
        {"interval": (0.8, 0.2)},
        {"interval": (-0.1, 0.5)},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ClassifierFreeGuidance(**kwargs)


def test_power_cosine_schedule_follows_mdt_v2(inputs):
    """γ(t) = 1 + (γ − 1)·½(1 − cos(π(1 − t)^p)): 1 at pure noise, γ at t = 0, MDT-v2's curve in between."""
    x, _, cond = inputs
    cfg = ClassifierFreeGuidance(semantic_scale=3.8, schedule="power_cosine", schedule_power=4.0)
    t = torch.tensor([1.0, 0.5, 0.0])
    gs, gc = cfg.scales_at(t)
    k = t * 1000  # MDT's integer step, 1000 = noise
    mdt = (3.8 - 1) * (1 - torch.cos(((1 - k / 1000) ** 4.0) * torch.pi)) / 2 + 1
    torch.testing.assert_close(gs, mdt)
    assert gs[0] == 1.0 and gs[2] == pytest.approx(3.8) and torch.equal(gc, torch.ones(3))
    toy = ToyDenoiser()
    out = cfg.wrap(toy, C)(x, t, cond)
    cond_out, uncond = toy(x, t, cond), toy(x, t, cond.drop(semantic=True))
    expected = uncond + gs.view(-1, 1, 1, 1) * (cond_out - uncond)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, ClassifierFreeGuidance(semantic_scale=3.8).wrap(toy, C)(x, t, cond))
    with pytest.raises(ValueError, match="schedule"):
        ClassifierFreeGuidance(schedule="linear")
