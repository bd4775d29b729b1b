"""Tests for the frozen autoencoder wrapper and the embedded Shapes VAE (CPU, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from huggingface_hub import constants as hf_constants

from data.autoencoder import Autoencoder, embedded_weights_dir
from data.shapes import Shapes

# Posterior-mean reconstruction MSE of the shipped weights on the first 64 val images of the current Shapes, in
# [-1, 1] units (data/weights/shapes-vae/README.md; measured after the weights were adapted to the photograph-like
# Shapes of issue 24). The test allows a 1.5x margin.
MEASURED_VAL64_MSE = 0.00291  # PSNR 31.4 dB
MSE_THRESHOLD = 1.5 * MEASURED_VAL64_MSE


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # No test here may touch the network, whatever the caller's environment says.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def shapes_vae() -> Autoencoder:
    return Autoencoder("embedded:shapes-vae", sample_posterior=False)


@pytest.fixture(scope="module")
def val_images() -> torch.Tensor:
    ds = Shapes(split="val", resolution=32)
    return torch.stack([ds[i]["image"] for i in range(64)])


def _tiny_vae(**config: float | None) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        **config,
    )


def test_embedded_weights_are_a_save_pretrained_folder() -> None:
    folder = embedded_weights_dir("shapes-vae")
    assert (folder / "config.json").is_file()
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 8 * 2**20  # "a few MB at most"
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert config["scaling_factor"] != 0.18215  # measured for this VAE, not the SD default


def test_embedded_vae_loads_through_from_pretrained(shapes_vae: Autoencoder) -> None:
    assert isinstance(shapes_vae.vae, AutoencoderKL)
    assert shapes_vae.name == "embedded:shapes-vae"
    assert shapes_vae.latent_channels == 4
    assert shapes_vae.downsample_factor == 4
    assert shapes_vae.latent_shape(32) == (4, 8, 8)
    config = json.loads((embedded_weights_dir("shapes-vae") / "config.json").read_text())
    assert shapes_vae.scaling_factor == pytest.approx(config["scaling_factor"])
    assert shapes_vae.shift_factor == pytest.approx(config["shift_factor"] or 0.0)


def test_latent_shape_rejects_indivisible_resolution(shapes_vae: Autoencoder) -> None:
    assert shapes_vae.latent_shape(64) == (4, 16, 16)
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        shapes_vae.latent_shape(30)


def test_encode_decode_shapes_and_range(shapes_vae: Autoencoder, val_images: torch.Tensor) -> None:
    z = shapes_vae.encode(val_images[:8])
    assert z.shape == (8, 4, 8, 8) and z.dtype == torch.float32
    x = shapes_vae.decode(z)
    assert x.shape == (8, 3, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_normalised_latents_are_roughly_standard(shapes_vae: Autoencoder, val_images: torch.Tensor) -> None:
    # scaling/shift were measured on other held-out images; these 64 should land near N(0, 1) too.
    z = shapes_vae.encode(val_images)
    assert abs(z.mean().item()) < 0.3
    assert 0.7 < z.std().item() < 1.3


def test_embedded_vae_reconstructs_val_shapes(shapes_vae: Autoencoder, val_images: torch.Tensor) -> None:
    mse = torch.mean((shapes_vae(val_images) - val_images) ** 2).item()
    psnr = 10 * math.log10(4.0 / mse)
    assert mse < MSE_THRESHOLD, f"val reconstruction MSE {mse:.5f} (PSNR {psnr:.2f} dB) above {MSE_THRESHOLD:.5f}"


def test_sample_posterior_is_stochastic_and_mean_is_not(val_images: torch.Tensor) -> None:
    sampled = Autoencoder("embedded:shapes-vae", sample_posterior=True)
    a = sampled.encode(val_images[:4], generator=torch.Generator().manual_seed(0))
    b = sampled.encode(val_images[:4], generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    mean = Autoencoder("embedded:shapes-vae", sample_posterior=False)
    assert torch.equal(mean.encode(val_images[:4]), mean.encode(val_images[:4]))


def test_frozen_and_always_eval(shapes_vae: Autoencoder, val_images: torch.Tensor) -> None:
    assert all(not p.requires_grad for p in shapes_vae.vae.parameters())
    # The frozen weights are reloaded from `pretrained`, never stored in a model checkpoint.
    assert not shapes_vae.state_dict() and not list(shapes_vae.parameters())
    parent = torch.nn.Sequential(shapes_vae)
    parent.train()
    assert not shapes_vae.training and not shapes_vae.vae.training
    assert all(not m.training for m in shapes_vae.modules())
    x = val_images[:2].clone().requires_grad_(True)
    assert not shapes_vae.encode(x).requires_grad  # encode runs under no_grad


def test_scaling_and_shift_are_read_from_config(tmp_path: Path) -> None:
    scale, shift = 0.37, 0.25
    _tiny_vae(scaling_factor=scale, shift_factor=shift).save_pretrained(tmp_path, safe_serialization=True)
    ae = Autoencoder(str(tmp_path), sample_posterior=False)
    assert ae.scaling_factor == pytest.approx(scale) and ae.shift_factor == pytest.approx(shift)
    assert ae.name == str(tmp_path) and ae.downsample_factor == 2 and ae.latent_shape(16) == (4, 8, 8)

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    raw = ae.vae.encode(x).latent_dist.mode()
    z = ae.encode(x)
    torch.testing.assert_close(z, (raw - shift) * scale)
    # decode inverts the normalisation before the diffusers decoder
    torch.testing.assert_close(ae.decode(z), ae.vae.decode(raw).sample.clamp(-1, 1), rtol=1e-5, atol=1e-5)


def test_missing_shift_factor_means_zero(tmp_path: Path) -> None:
    _tiny_vae(scaling_factor=2.0).save_pretrained(tmp_path, safe_serialization=True)
    ae = Autoencoder(str(tmp_path), sample_posterior=False)
    assert ae.shift_factor == 0.0 and ae.scaling_factor == 2.0
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ae.encode(x), ae.vae.encode(x).latent_dist.mode() * 2.0)


def test_subfolder_and_dtype(tmp_path: Path) -> None:
    _tiny_vae().save_pretrained(tmp_path / "vae", safe_serialization=True)
    ae = Autoencoder(str(tmp_path), subfolder="vae", dtype="bfloat16")
    assert ae.dtype == torch.bfloat16 and ae.name == f"{tmp_path}/vae"
    z = ae.encode(torch.zeros(1, 3, 16, 16))
    assert z.dtype == torch.float32  # results come back in the caller's dtype
    with pytest.raises(ValueError, match="dtype must be one of"):
        Autoencoder(str(tmp_path), subfolder="vae", dtype="float64")  # type: ignore[arg-type]


def test_uncached_hub_id_offline_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    # huggingface_hub reads these variables once, at import: patch its constants too, so the test can neither
    # download (if the hub was imported before tests/conftest.py set HF_HUB_OFFLINE) nor hit a warm user cache.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    # A well-known id still describes itself offline (config from KNOWN_CONFIGS) ...
    known = Autoencoder("stabilityai/sd-vae-ft-ema")
    assert known.latent_shape(256) == (4, 32, 32) and known.scaling_factor == 0.18215
    # ... but its weights cannot come from nowhere: first use fails with the clear message.
    with pytest.raises(OSError) as info:
        known.encode(torch.zeros(1, 3, 256, 256))
    message = str(info.value)
    assert "'stabilityai/sd-vae-ft-ema'" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local folder" in message
    with pytest.raises(OSError, match="someone/unknown-vae"):
        Autoencoder("someone/unknown-vae")


def test_missing_local_path_and_unknown_embedded_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Autoencoder(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="No embedded model 'nope'.*shapes-vae"):
        Autoencoder("embedded:nope")
