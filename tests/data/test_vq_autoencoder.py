"""LDM's VQ autoencoder behind the Autoencoder interface: a tiny VQModel built from a config, offline, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import VQModel

from data.autoencoder import Autoencoder
from data.vq_autoencoder import VQAutoencoder

ROOT = Path(__file__).resolve().parents[2]
VQ_F4 = ROOT / "leaderboards/reference/ldm-vq-f4"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VQ-f4-shaped model (three levels, 3 latent channels) at toy widths, saved as a pretrained folder."""
    torch.manual_seed(0)
    model = VQModel(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=3,
        num_vq_embeddings=32,
        vq_embed_dim=3,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,  # not LDM's 1.0, so that a missing normalisation shows
    )
    folder = tmp_path_factory.mktemp("vq") / "tiny-vq-f4"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_shipped_vq_f4_config_describes_offline_without_weights() -> None:
    ae = VQAutoencoder(str(VQ_F4))
    assert isinstance(ae, Autoencoder)
    assert ae.latent_shape(256) == (3, 64, 64) and ae.downsample_factor == 4
    assert ae.scaling_factor == 1.0 and ae.shift_factor == 0.0 and ae.num_embeddings == 8192
    with pytest.raises(FileNotFoundError, match="no weights"):
        ae.encode(torch.zeros(1, 3, 8, 8))


def test_round_trip_shapes_dtype_and_range(tiny_folder: Path, images: torch.Tensor) -> None:
    ae = VQAutoencoder(str(tiny_folder))
    z = ae.encode(images)
    assert z.shape == (2, *ae.latent_shape(16)) == (2, 3, 4, 4) and z.dtype == images.dtype
    out = ae.decode(z)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert not any(p.requires_grad for p in ae.vae.parameters())
    ae.train()
    assert not ae.training and not ae.vae.training


def test_latents_follow_the_configs_normalisation(tiny_folder: Path, images: torch.Tensor) -> None:
    ae = VQAutoencoder(str(tiny_folder))
    raw = VQModel.from_pretrained(tiny_folder).eval()
    with torch.no_grad():
        h = raw.encode(images).latents
        expected_images = raw.decode(h).sample.clamp(-1, 1)
    torch.testing.assert_close(ae.encode(images), h * 0.5)
    torch.testing.assert_close(ae.decode(ae.encode(images)), expected_images)


def test_quantisation_snaps_to_codebook_entries(tiny_folder: Path, images: torch.Tensor) -> None:
    ae = VQAutoencoder(str(tiny_folder))
    z = ae.encode(images)
    quant, indices = ae.quantize(z)
    assert indices.shape == (2, 4, 4) and indices.dtype == torch.long
    codebook = ae.vae.quantize.embedding.weight * ae.scaling_factor  # in normalised units
    torch.testing.assert_close(quant, codebook[indices].permute(0, 3, 1, 2), rtol=0, atol=0)
    # The index is the nearest entry: no codebook vector is closer to the latent.
    distances = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 3), codebook)
    assert torch.equal(distances.argmin(dim=1), indices.reshape(-1))
    assert not torch.equal(quant, z)  # the encoder output is continuous; quantising moves it
    # Quantised encoding, and quantising twice, change nothing further; decode quantises, so both decode alike.
    quantized_ae = VQAutoencoder(str(tiny_folder), quantize_latents=True)
    torch.testing.assert_close(quantized_ae.encode(images), quant, rtol=0, atol=0)
    torch.testing.assert_close(ae.quantize(quant)[0], quant, rtol=0, atol=0)
    torch.testing.assert_close(ae.decode(z), ae.decode(quant))


def test_encoding_is_deterministic(tiny_folder: Path, images: torch.Tensor) -> None:
    ae = VQAutoencoder(str(tiny_folder))
    first = ae.encode(images, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    assert torch.equal(first, ae.encode(images))
    assert torch.equal(ae.decode(first), ae.decode(first))
    assert not ae.sample_posterior


def test_rejects_a_kl_autoencoder_config(tmp_path: Path) -> None:
    config = json.loads((ROOT / "data/weights/shapes-vae/config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a VQModel"):
        VQAutoencoder(str(tmp_path))
