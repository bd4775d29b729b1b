"""Shared fixtures: a tiny DiT on a tiny random VAE (fast), and the reference-statistics cache in a tmp folder."""

import pytest

from baselines.dit import DiTModule
from benchmark.objectives import DDPM, RectifiedFlow
from benchmark.samplers import DDPMSampler, EulerSampler
from data.autoencoder import Autoencoder


def tiny_dit(vae: str, **kwargs) -> DiTModule:
    """Rectified flow with Euler sampling (the DiT module's own default objective is DDPM)."""
    kwargs.setdefault("objective", RectifiedFlow())
    kwargs.setdefault("sampler", EulerSampler(steps=3))
    return DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(vae), **kwargs)


def tiny_ddpm_dit(vae: str) -> DiTModule:
    return tiny_dit(vae, objective=DDPM(), sampler=DDPMSampler(steps=10))


@pytest.fixture(autouse=True)
def _stats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LDMBENCH_CACHE", str(tmp_path / "ldmbench-cache"))
