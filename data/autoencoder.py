"""Frozen latent autoencoder: one code path for the SD-VAE family and the embedded Shapes VAE.

Every latent-diffusion entry encodes images into a latent space with a *frozen* autoencoder and decodes
samples back for FID. The paper-scale suites use the Stable Diffusion VAE (``stabilityai/sd-vae-ft-ema``
or ``-mse``, as DiT does); the embedded ``shapes`` suite uses a tiny ``diffusers.AutoencoderKL`` trained
by ``scripts/train_shapes_vae.py`` and shipped with the package in ``data/weights/shapes-vae/``.
Both are loaded with ``AutoencoderKL.from_pretrained`` so the embedded suite exercises exactly the code
that real runs use.

Latent normalisation follows diffusers' convention and is always read from the loaded config:
``z_model = (z - shift_factor) * scaling_factor`` with ``shift_factor = None`` meaning 0
(SD1/DiT: 0.18215 and no shift; SDXL: 0.13025; Flux: 0.3611 with shift 0.1159).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL
from diffusers.utils import is_accelerate_available
from huggingface_hub import constants as hf_constants
from torch import nn

__all__ = ["EMBEDDED_PREFIX", "Autoencoder", "embedded_weights_dir"]

#: ``pretrained`` values starting with this prefix name a weight folder shipped inside the package.
EMBEDDED_PREFIX = "embedded:"

_WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def embedded_weights_dir(name: str) -> Path:
    """Resolve an embedded model name (``"shapes-vae"`` or ``"embedded:shapes-vae"``) to its weight folder.

    Args:
        name: Folder name under ``data/weights/``, with or without the ``embedded:`` prefix.

    Returns:
        The directory holding ``config.json`` and ``diffusion_pytorch_model.safetensors``.

    Raises:
        FileNotFoundError: If no such embedded model is shipped with this installation.
    """
    name = name.removeprefix(EMBEDDED_PREFIX)
    path = _WEIGHTS_ROOT / name
    if not (path / "config.json").is_file():
        available = sorted(p.name for p in _WEIGHTS_ROOT.glob("*") if (p / "config.json").is_file())
        raise FileNotFoundError(
            f"No embedded model {name!r} in {_WEIGHTS_ROOT} (available: {available or 'none'}). "
            "Embedded weights are package data; reinstall ldmbench if the folder is missing."
        )
    return path


def _looks_like_path(pretrained: str) -> bool:
    # A hub id is "owner/name"; anything that starts like a filesystem path, or exists on disk, is a path.
    # Telling them apart up front lets a typo'd local path fail with "not found" instead of a hub error.
    return pretrained.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(pretrained))


# Configs of well-known hub autoencoders, used only when the hub cannot be reached and the config is not cached, so
# that a paper-scale config can still be parsed and described (sizes, FLOPs) offline. Weights always come from the hub
# or a local folder. Values from each model's config.json on the hub.
_SD_FAMILY = {"latent_channels": 4, "block_out_channels": [128, 256, 512, 512], "shift_factor": None}
KNOWN_CONFIGS: dict[str, dict] = {
    "stabilityai/sd-vae-ft-ema": {**_SD_FAMILY, "scaling_factor": 0.18215},
    "stabilityai/sd-vae-ft-mse": {**_SD_FAMILY, "scaling_factor": 0.18215},
    "stabilityai/sdxl-vae": {**_SD_FAMILY, "scaling_factor": 0.13025},
    "madebyollin/sdxl-vae-fp16-fix": {**_SD_FAMILY, "scaling_factor": 0.13025},
    # SD3's 16-channel VAE lives in the pipeline repository's "vae" subfolder (key "<repo>:<subfolder>").
    "stabilityai/stable-diffusion-3-medium-diffusers:vae": {
        "latent_channels": 16,
        "block_out_channels": [128, 256, 512, 512],
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
    },
}


def _resolve_source(pretrained: str, subfolder: str | None) -> str:
    """The folder or hub id that ``from_pretrained`` should read; local folders are checked here."""
    if pretrained.startswith(EMBEDDED_PREFIX):
        return str(embedded_weights_dir(pretrained))
    if not _looks_like_path(pretrained):
        return pretrained
    source = os.path.expanduser(pretrained)
    folder = Path(source) / (subfolder or "")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"Autoencoder path {folder} has no config.json; expected a folder written by "
            "AutoencoderKL.save_pretrained (config.json + diffusion_pytorch_model.safetensors)."
        )
    return source


def _hub_error(pretrained: str, subfolder: str | None, err: Exception) -> OSError:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; check both it and the current environment.
    env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    offline = env_offline or bool(hf_constants.HF_HUB_OFFLINE)
    where = f"{pretrained!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    reason = (
        "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
        if offline
        else "it could not be downloaded from the Hugging Face Hub and is not in the local cache"
    )
    return OSError(
        f"Could not load the autoencoder {where}: {reason}. Either cache it once with network access "
        f"(`hf download {pretrained}`, then HF_HUB_OFFLINE=1 works), or pass a local folder written by "
        "AutoencoderKL.save_pretrained (config.json + diffusion_pytorch_model.safetensors), e.g. "
        "`--model.autoencoder.pretrained /path/to/vae`. For the offline Shapes suite use "
        f"'{EMBEDDED_PREFIX}shapes-vae'. Original error: {err}"
    )


def _load_config(pretrained: str, subfolder: str | None) -> dict:
    """The autoencoder's config (no weights): from the folder, the hub cache, the hub, or `KNOWN_CONFIGS`."""
    source = _resolve_source(pretrained, subfolder)
    try:
        return dict(AutoencoderKL.load_config(source, subfolder=subfolder))
    except OSError as err:
        if source != pretrained:  # local folder: the diffusers message already names the bad file
            raise
        known = KNOWN_CONFIGS.get(pretrained if subfolder is None else f"{pretrained}:{subfolder}")
        if known is not None:
            return dict(known)
        raise _hub_error(pretrained, subfolder, err) from err


def _load_autoencoder_kl(pretrained: str, subfolder: str | None, torch_dtype: torch.dtype) -> AutoencoderKL:
    """Load an ``AutoencoderKL`` from an embedded name, a local folder or a hub id, with clear errors."""
    source = _resolve_source(pretrained, subfolder)
    try:
        # Without accelerate, diffusers falls back to a normal load anyway but warns on every call; ask for it directly.
        return AutoencoderKL.from_pretrained(
            source, subfolder=subfolder, torch_dtype=torch_dtype, low_cpu_mem_usage=is_accelerate_available()
        )
    except OSError as err:
        if source != pretrained:
            raise
        raise _hub_error(pretrained, subfolder, err) from err


class Autoencoder(nn.Module):
    """A frozen ``diffusers.AutoencoderKL`` that maps images in [-1, 1] to normalised latents and back.

    The wrapped model never trains: every parameter has ``requires_grad=False``, ``train()`` keeps it in
    eval mode (so a LightningModule switching to train mode cannot enable dropout or change norms), and
    ``encode``/``decode`` run under ``torch.no_grad()``.

    Example:
        >>> ae = Autoencoder("embedded:shapes-vae")
        >>> z = ae.encode(images)  # (B, 4, 8, 8) for 32x32 Shapes images
        >>> images_hat = ae.decode(z)  # (B, 3, 32, 32) in [-1, 1]
    """

    def __init__(
        self,
        pretrained: str = "embedded:shapes-vae",
        subfolder: str | None = None,
        sample_posterior: bool = True,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    ) -> None:
        """Load and freeze the autoencoder.

        Args:
            pretrained: Which autoencoder to load. ``"embedded:<name>"`` selects weights shipped inside
                ldmbench (``"embedded:shapes-vae"``, the offline default for 32x32 Shapes); otherwise a
                Hugging Face hub id such as ``"stabilityai/sd-vae-ft-ema"`` or ``"stabilityai/sd-vae-ft-mse"``
                (DiT's VAEs), or a local folder written by ``AutoencoderKL.save_pretrained``.
            subfolder: Folder inside ``pretrained`` holding the VAE, e.g. ``"vae"`` for a full pipeline repo
                such as ``"stabilityai/stable-diffusion-xl-base-1.0"``. None for a standalone VAE.
            sample_posterior: If True, ``encode`` draws ``z ~ q(z|x)`` (the LDM/DiT training recipe: the
                posterior noise acts as a tiny augmentation); if False it returns the posterior mean
                (deterministic, e.g. for latent caching or evaluation).
            dtype: Precision the autoencoder weights are loaded and run in. ``"float32"`` is exact;
                ``"float16"``/``"bfloat16"`` halve memory on GPU (the SDXL VAE overflows in float16 unless
                a fixed variant such as ``"madebyollin/sdxl-vae-fp16-fix"`` is used).
        """
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.pretrained = pretrained
        self.subfolder = subfolder
        self.sample_posterior = sample_posterior
        self.torch_dtype = _DTYPES[dtype]
        # Only the config is read here: enough for latent shapes, so a config can be parsed and a model described
        # (even on the meta device, offline) without the weights. They load on first use (`vae`).
        self.config = _load_config(pretrained, subfolder)
        if len(self.config.get("down_block_types", self.config["block_out_channels"])) != len(
            self.config["block_out_channels"]
        ):
            raise ValueError(f"Inconsistent AutoencoderKL config in {pretrained!r}: block counts differ")
        # Kept out of the module tree on purpose: the frozen weights are not part of checkpoints (they are reloaded
        # from `pretrained`) and the LightningModule's `.to()` does not touch them; `encode`/`decode` move them.
        self.__dict__["_vae"] = None
        self.train(False)

    @property
    def vae(self) -> AutoencoderKL:
        """The frozen diffusers model, loaded on first access."""
        if self.__dict__["_vae"] is None:
            vae = _load_autoencoder_kl(self.pretrained, self.subfolder, self.torch_dtype)
            self.__dict__["_vae"] = vae.requires_grad_(False).eval()
        return self.__dict__["_vae"]

    def _vae_on(self, device: torch.device) -> AutoencoderKL:
        vae = self.vae
        if vae.device != device:
            vae.to(device)
        return vae

    # ------------------------------------------------------------------------------------------------
    # Properties read from the loaded config (never hard-coded: each VAE family has its own values).
    # ------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Identifier for protocol records: ``pretrained``, plus ``/subfolder`` when one is given."""
        return self.pretrained if self.subfolder is None else f"{self.pretrained}/{self.subfolder}"

    @property
    def latent_channels(self) -> int:
        """Number of latent channels (4 for SD-VAE and the Shapes VAE)."""
        return int(self.config["latent_channels"])

    @property
    def downsample_factor(self) -> int:
        """Spatial downsampling factor: 2 ** (number of encoder blocks - 1) (8 for SD-VAE, 4 for Shapes)."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def scaling_factor(self) -> float:
        """Multiplier that brings (shifted) latents to roughly unit variance, from the model config."""
        return float(self.config["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        """Offset subtracted from raw latents before scaling, from the model config (None there means 0)."""
        shift = self.config.get("shift_factor")
        return 0.0 if shift is None else float(shift)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the autoencoder weights."""
        return self.torch_dtype

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of the latent of a square image.

        Args:
            resolution: Image side length in pixels.

        Returns:
            ``(latent_channels, resolution // f, resolution // f)`` with ``f = downsample_factor``.

        Raises:
            ValueError: If ``resolution`` is not a positive multiple of the downsampling factor.
        """
        f = self.downsample_factor
        if resolution <= 0 or resolution % f != 0:
            raise ValueError(
                f"Resolution {resolution} is not a positive multiple of the downsampling factor {f} "
                f"of autoencoder {self.name!r}"
            )
        return (self.latent_channels, resolution // f, resolution // f)

    # ------------------------------------------------------------------------------------------------
    # Frozen behaviour
    # ------------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Autoencoder:
        """Ignore ``mode`` and stay in eval mode: the autoencoder is frozen for the whole run.

        Args:
            mode: Requested mode; ignored.

        Returns:
            self, in eval mode.
        """
        return super().train(False)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode images to normalised latents ``(z - shift_factor) * scaling_factor``.

        Args:
            image: (B, 3, H, W) images in [-1, 1]; H and W multiples of ``downsample_factor``.
            generator: Optional RNG for the posterior sample (ignored when ``sample_posterior`` is False).

        Returns:
            (B, C, H / f, W / f) latents in the dtype of ``image``.
        """
        vae = self._vae_on(image.device)
        posterior = vae.encode(image.to(self.torch_dtype)).latent_dist
        z = posterior.sample(generator=generator) if self.sample_posterior else posterior.mode()
        return ((z - self.shift_factor) * self.scaling_factor).to(image.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents back to images.

        Args:
            latent: (B, C, h, w) latents as produced by ``encode`` (or a sampler).

        Returns:
            (B, 3, h * f, w * f) images clamped to [-1, 1], in the dtype of ``latent``.
        """
        vae = self._vae_on(latent.device)
        z = latent.to(self.torch_dtype) / self.scaling_factor + self.shift_factor
        return vae.decode(z).sample.clamp(-1.0, 1.0).to(latent.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Round trip ``decode(encode(image))``, handy for measuring reconstruction error.

        Args:
            image: (B, 3, H, W) images in [-1, 1].

        Returns:
            Reconstructed images in [-1, 1].
        """
        return self.decode(self.encode(image))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, latent_channels={self.latent_channels}, downsample_factor={self.downsample_factor}, "
            f"scaling_factor={self.scaling_factor:.6g}, shift_factor={self.shift_factor:.6g}, "
            f"sample_posterior={self.sample_posterior}"
        )
