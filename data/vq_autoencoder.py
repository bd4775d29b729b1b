"""LDM's vector-quantised autoencoders (VQ-f4, VQ-f8) behind the suite's :class:`~data.autoencoder.Autoencoder` API.

LDM-4, the class-conditional ImageNet model of Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent
Diffusion Models", https://arxiv.org/abs/2112.10752), was trained on the latents of a VQ-regularised autoencoder with
downsampling factor 4 (3 x 64 x 64 at 256²; CompVis/latent-diffusion a506df5, ``configs/latent-diffusion/
cin256-v2.yaml``, first stage ``ldm.models.autoencoder.VQModelInterface``). diffusers' ``VQModel`` is the same network;
this wrapper gives it the interface every entry codes against: ``encode`` / ``decode`` between images in [-1, 1] and
normalised latents, ``latent_shape``, ``scaling_factor`` / ``shift_factor`` read from the config, frozen weights, and a
config read without the weights (so a config describes offline, e.g. ``leaderboards/reference/ldm-vq-f4``).

As in LDM, the diffusion model works on the encoder's output *before* quantisation and ``decode`` quantises to the
nearest codebook entries first (``VQModelInterface.decode``, ``force_not_quantize=False``); ``quantize_latents=True``
makes ``encode`` return the quantised latents instead. Encoding is deterministic: there is no posterior to sample, so
``sample_posterior`` is always False.

Not supported: the latent cache (``data/latent_cache.py``) stores a Gaussian posterior's moments, which a VQ model does
not have, so VQ entries encode on the fly. The autoencoder-FLOP count of ``describe`` builds an ``AutoencoderKL``
encoder of the same widths (the quantisation convolution differs by a few kFLOPs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import VQModel
from diffusers.utils import is_accelerate_available
from torch import Tensor

from data.autoencoder import Autoencoder, _hub_error, _resolve_source

__all__ = ["VQAutoencoder"]

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _nearest_entries(vae: VQModel, h: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, h, w) raw latents → the exact nearest codebook vectors (same shape) and their (B, h, w) indices.

    ``VQModel.quantize`` returns ``z + (z_q - z).detach()`` (a straight-through estimator for training), which can
    differ from the codebook entry in the last bit; a frozen autoencoder looks the entry up instead.
    """
    _, _, (_, _, indices) = vae.quantize(h)
    indices = indices.reshape(h.shape[0], h.shape[2], h.shape[3])
    quant = vae.quantize.embedding(indices).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
    return quant.to(h.dtype), indices


class VQAutoencoder(Autoencoder):
    """A frozen ``diffusers.VQModel`` mapping images in [-1, 1] to normalised (pre-quantisation) latents and back.

    Example:
        >>> ae = VQAutoencoder("leaderboards/reference/ldm-vq-f4")  # config only: shapes and describe work offline
        >>> ae.latent_shape(256)
        (3, 64, 64)
    """

    def __init__(
        self,
        pretrained: str,
        subfolder: str | None = None,
        quantize_latents: bool = False,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    ) -> None:
        """Read the config (weights load on first use) and freeze.

        Args:
            pretrained: A local folder written by ``VQModel.save_pretrained`` (``config.json``, plus
                ``diffusion_pytorch_model.safetensors`` to encode or decode), or a Hugging Face hub id.
            subfolder: Folder inside ``pretrained`` holding the VQ model (e.g. ``"vqvae"`` of a pipeline repo).
            quantize_latents: ``encode`` returns the latents snapped to the codebook; False (LDM) returns the
                encoder's continuous output and quantises in ``decode``.
            dtype: Precision the weights are loaded and run in.
        """
        super().__init__(pretrained=pretrained, subfolder=subfolder, sample_posterior=False, dtype=dtype)
        kind = self.config.get("_class_name")
        if kind not in (None, "VQModel"):
            raise ValueError(f"{pretrained!r} holds a {kind}, not a VQModel; use data.autoencoder.Autoencoder for it")
        if "num_vq_embeddings" not in self.config:
            raise ValueError(f"{pretrained!r} has no num_vq_embeddings: not a VQModel config")
        self.quantize_latents = quantize_latents

    @property
    def vae(self) -> VQModel:
        """The frozen diffusers ``VQModel``, loaded on first access."""
        if self.__dict__["_vae"] is None:
            source = _resolve_source(self.pretrained, self.subfolder)
            folder = Path(source) / (self.subfolder or "")
            if source != self.pretrained or folder.is_dir():  # a local folder: say plainly when it is config-only
                if not any((folder / name).is_file() for name in _WEIGHT_FILES):
                    raise FileNotFoundError(
                        f"{folder} holds a VQModel config but no weights ({' or '.join(_WEIGHT_FILES)}): it can "
                        "describe a model, not encode or decode; point pretrained at a VQModel.save_pretrained folder"
                    )
            try:
                vae = VQModel.from_pretrained(
                    source,
                    subfolder=self.subfolder,
                    torch_dtype=self.torch_dtype,
                    low_cpu_mem_usage=is_accelerate_available(),
                )
            except OSError as err:
                if source != self.pretrained:
                    raise
                raise _hub_error(self.pretrained, self.subfolder, err) from err
            self.__dict__["_vae"] = vae.requires_grad_(False).eval()
        return self.__dict__["_vae"]

    @property
    def num_embeddings(self) -> int:
        """Codebook size (8192 for LDM's VQ-f4)."""
        return int(self.config["num_vq_embeddings"])

    @torch.no_grad()
    def encode(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Encode images to normalised latents ``(h - shift_factor) * scaling_factor``.

        Args:
            image: (B, 3, H, W) images in [-1, 1]; H and W multiples of ``downsample_factor``.
            generator: Accepted for interface compatibility and unused (VQ encoding is deterministic).

        Returns:
            (B, C, H / f, W / f) latents in the dtype of ``image``: the encoder's output, quantised to the codebook
            when ``quantize_latents``.
        """
        vae = self._vae_on(image.device)
        h = vae.encode(image.to(self.torch_dtype)).latents
        if self.quantize_latents:
            h = _nearest_entries(vae, h)[0]
        return ((h - self.shift_factor) * self.scaling_factor).to(image.dtype)

    @torch.no_grad()
    def quantize(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Snap normalised latents to their nearest codebook entries.

        Args:
            latent: (B, C, h, w) normalised latents.

        Returns:
            The quantised latents (same shape and normalisation) and the (B, h, w) long codebook indices.
        """
        vae = self._vae_on(latent.device)
        h = latent.to(self.torch_dtype) / self.scaling_factor + self.shift_factor
        quant, indices = _nearest_entries(vae, h)
        return ((quant - self.shift_factor) * self.scaling_factor).to(latent.dtype), indices

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Quantise normalised latents to the codebook and decode them, as LDM does.

        Args:
            latent: (B, C, h, w) latents as produced by ``encode`` (or a sampler).

        Returns:
            (B, 3, h * f, w * f) images clamped to [-1, 1], in the dtype of ``latent``.
        """
        vae = self._vae_on(latent.device)
        h = latent.to(self.torch_dtype) / self.scaling_factor + self.shift_factor
        return vae.decode(h).sample.clamp(-1.0, 1.0).to(latent.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_embeddings={self.num_embeddings}, quantize_latents={self.quantize_latents}"
