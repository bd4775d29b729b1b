"""Vector embedders: diffusion time, class labels and control metadata, each mapped to an (N, D) vector.

The sinusoidal embedding is written once, with the switches that distinguish the references:

=================  ===============  ======================  ==========  =========================================
reference          order            frequency denominator   time scale  flags here
=================  ===============  ======================  ==========  =========================================
DiT / MDT / SiT    cat[cos, sin]    half                    1000 (t=k)  ``flip_sin_to_cos=True, shift=0``
PixArt-α           cat[cos, sin]    half                    1000        ``flip_sin_to_cos=True, shift=0``
SD3 / MMDiT        cat[cos, sin]    half                    1000        ``flip_sin_to_cos=True, shift=0``
SDXL micro-cond.   cat[cos, sin]    half                    1 (raw)     ``flip_sin_to_cos=True, shift=0``
LDM UNet (ADM)     cat[cos, sin]    half                    1000        ``flip_sin_to_cos=True, shift=0``
DDPM (Ho, TF)      cat[sin, cos]    half - 1                1000        ``flip_sin_to_cos=False, shift=1``
diffusers' DiT     cat[cos, sin]    half - 1                1000        ``flip_sin_to_cos=True, shift=1``
=================  ===============  ======================  ==========  =========================================

diffusers' ``DiTTransformer2DModel`` (its ``CombinedTimestepLabelEmbeddings``; diffusers' PixArt and SD3 use 0)
uses ``downscale_freq_shift=1``, so its frequencies are ``max_period ** (-i / (half - 1))`` rather than the official
``max_period ** (-i / half)``; reproducing a diffusers DiT therefore needs ``downscale_freq_shift=1.0``.

Legend: N batch, K control scalars, F frequency features per scalar, D model width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from conditioning.types import Cond

__all__ = ["ClassEmbedder", "ControlEmbedder", "TimestepEmbedder", "normalise_controls", "timestep_frequencies"]


def timestep_frequencies(
    t: Tensor,
    dim: int,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
) -> Tensor:
    """Sinusoidal features of scalars (GLIDE / DDPM "timestep embedding").

    ``freqs[i] = exp(-ln(max_period) * i / (half - downscale_freq_shift))`` for ``i < half = dim // 2``, and the
    features are ``cat[cos(t * freqs), sin(t * freqs)]`` (``flip_sin_to_cos=True``) or ``cat[sin, cos]``. An odd
    ``dim`` is padded with one zero column. Computed in float32 whatever the input dtype, as every reference does.

    Args:
        t: (N,) values, already in the unit the reference expects (DDPM step index, pixel size, ...); may be
            fractional.
        dim: number of output features.
        max_period: the longest period, i.e. the inverse of the smallest frequency (up to the shift).
        flip_sin_to_cos: True puts the cosines first (DiT, SD3, PixArt, SDXL); False puts sines first (DDPM).
        downscale_freq_shift: 0 divides the exponent by ``half`` (official DiT, SD3, SDXL); 1 divides by
            ``half - 1`` (diffusers' DiT and PixArt timestep embedding).

    Returns:
        (N, dim) float32 features.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_frequencies expects a 1-D tensor of N values, got shape {tuple(t.shape)}")
    half = dim // 2
    if half - downscale_freq_shift <= 0:
        raise ValueError(f"dim={dim} is too small for downscale_freq_shift={downscale_freq_shift}")
    # Same operation order as the references (exponent, then divide, then exp) so that results are bitwise equal.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = t[:, None].float() * freqs[None]
    cos, sin = torch.cos(args), torch.sin(args)
    features = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class TimestepEmbedder(nn.Module):
    """Diffusion time → (N, D): sinusoidal features, then Linear → SiLU → Linear (DiT's ``TimestepEmbedder``).

    The module input is the benchmark's continuous time ``t`` in [0, 1] (t = 1 is pure noise). It is multiplied by
    ``time_scale`` before the features, so with the default 1000 a DDPM step ``k`` passed as ``t = k / 1000``
    reproduces the reference's integer-step embedding up to float32 rounding (``k / 1000 * 1000`` is ``k`` for
    99% of the integers up to 1000 and within 3e-5 of it for the rest).
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_size: int = 256,
        time_scale: float = 1000.0,
        flip_sin_to_cos: bool = True,
        downscale_freq_shift: float = 0.0,
    ) -> None:
        """Build the embedder.

        Args:
            hidden_size: output width D.
            frequency_size: number of sinusoidal features fed to the MLP (256 in DiT, SD3, PixArt).
            time_scale: factor applied to ``t`` in [0, 1] before the features (1000 = DDPM step units).
            flip_sin_to_cos: feature order, see :func:`timestep_frequencies`.
            downscale_freq_shift: frequency spacing, see :func:`timestep_frequencies` (1 for diffusers' DiT).
        """
        super().__init__()
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        # Sequential indices 0 and 2 keep DiT's state-dict names (t_embedder.mlp.0 / mlp.2).
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        """Embed time.

        Args:
            t: (N,) continuous time in [0, 1].

        Returns:
            (N, D) embedding.
        """
        if t.dim() != 1:
            raise ValueError(f"TimestepEmbedder expects t of shape (N,), got {tuple(t.shape)}")
        scaled = t.float() * self.time_scale
        freq = timestep_frequencies(
            scaled,
            self.frequency_size,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
        )
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class ClassEmbedder(nn.Module):
    """Class label → (N, D) from a table with ``num_classes + 1`` rows; the last row is the learned null class.

    The row is selected where ``cond.semantic_null`` is True. CFG label dropout is *not* done here: the shared
    conditioner sets ``semantic_null`` (DiT's ``LabelEmbedder.token_drop`` moved out of the model).
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        """Build the table.

        Args:
            num_classes: number of real classes; valid labels are ``[0, num_classes)``.
            hidden_size: output width D.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, cond: Cond) -> Tensor:
        """Look up ``cond.label``, substituting the null row where ``cond.semantic_null``.

        Args:
            cond: conditions; ``label`` (N,) int64 is required, ``semantic_null`` (N,) bool is optional.

        Returns:
            (N, D) embedding.
        """
        label = cond.label
        if label is None:
            raise ValueError("ClassEmbedder needs cond.label (N,) int64, but it is None")
        if label.dim() != 1 or label.dtype.is_floating_point or label.dtype == torch.bool:
            raise ValueError(f"cond.label must be an (N,) integer tensor, got shape {tuple(label.shape)} {label.dtype}")
        null = cond.semantic_null
        if null is not None and null.shape != label.shape:
            raise ValueError(f"cond.semantic_null has shape {tuple(null.shape)}, cond.label {tuple(label.shape)}")
        # Labels are range-checked once per batch by the conditioner, not here: a check in the forward would be a
        # host sync on every call and a graph break under torch.compile.
        index = label.long()
        if null is not None:
            index = torch.where(null.bool(), torch.full_like(index, self.num_classes), index)
        return self.embedding_table(index)


_SIZES = ("orig_h", "orig_w", "crop_h", "crop_w")
_CROP_SIZES = {"crop_h": "orig_h", "crop_w": "orig_w"}  # a crop side is read relative to this original side
_OFFSETS = {"crop_top": ("orig_h", "crop_h"), "crop_left": ("orig_w", "crop_w")}  # preferred denominators, in order


def normalise_controls(control: Tensor, names: tuple[str, ...] | list[str]) -> Tensor:
    """Map raw control columns (pixels, 0/1 flip) to comparable, resolution-free scales before embedding.

    Raw pixel values make the sizes dominate the Fourier features (85 % of the input variance on Shapes against
    1.1 % for flip) and alias at the high frequencies, so each kind of control gets its own scale:

    - original sizes (``orig_h``, ``orig_w``): ``log2(pixels)``, 2 units from 8 to 32 px (log, so one embedder
      serves every resolution);
    - crop sizes (``crop_h``, ``crop_w``): ``log2(crop / original)`` (0 = the whole canvas, -1 = half its side)
      when the embedder also sees the original side, so that how much of the canvas is kept is one input, not the
      difference of two; else ``log2(pixels)``;
    - crop offsets (``crop_top``, ``crop_left``): a fraction of the original side when the embedder also sees
      ``orig_h`` / ``orig_w``, else of the crop side (a per-group embedder that sees only the crop box);
      ``log2(1 + pixels)`` when it sees neither;
    - ``flip``: ``2 * flip - 1``, i.e. ±1;
    - any other column passes through unchanged.

    Args:
        control: (N, K) raw values in the column order ``names``.
        names: The K column names.

    Returns:
        (N, K) float32 normalised values.
    """
    names = tuple(names)
    x = control.float()
    out = []
    for k, name in enumerate(names):
        col = x[:, k]
        if name in _CROP_SIZES and _CROP_SIZES[name] in names:
            col = torch.log2(col.clamp_min(1.0) / x[:, names.index(_CROP_SIZES[name])].clamp_min(1.0))
        elif name in _SIZES:
            col = torch.log2(col.clamp_min(1.0))
        elif name in _OFFSETS:
            denominator = next((d for d in _OFFSETS[name] if d in names), None)
            col = torch.log2(1 + col.clamp_min(0.0)) if denominator is None else col / x[:, names.index(denominator)]
        elif name == "flip":
            col = 2 * col - 1
        out.append(col)
    return torch.stack(out, dim=1)


class ControlEmbedder(nn.Module):
    """Micro-conditioning: K control scalars → normalised → Fourier features → Linear → SiLU → Linear → (N, D).

    Each scalar is first put on its own scale by `normalise_controls` (log sizes, fractional crop offsets, ±1 flip),
    then multiplied by ``input_scale`` and given ``frequency_size`` sinusoidal features. With the default scale 1
    the normalised ranges (about 2 units) sit where every feature changes smoothly with the value: at init a linear
    probe recovers each Shapes control from the embedding with R² > 0.999, and flip carries a third of the feature
    variance (1 % with raw pixels). Scaling by 30 or more makes the top frequencies wrap and the probe drops below
    0.95 on crop offsets (measured on 900 Shapes controls). ``normalise=False`` is SDXL's raw-pixel embedding. The
    K blocks are concatenated in the order of ``names``. Where ``cond.control_null`` is True the embedding is
    replaced by a learned ``null`` vector (zero at init, so a dropped control contributes nothing at first).

    **Centred, scaled features** (``centre``, ``feature_scale``): AdamW moves every weight by about the learning
    rate per step whatever the size of its input, so a hidden unit's pre-activation moves by about
    ``lr · Σ_j |f_j|`` per step. On unit-range values most of the 256 frequencies per scalar are far below one
    cycle: their cosines are 1 for every value (71 % of the 1,792 columns of the seven Shapes controls vary by
    less than 0.01), so ``Σ |f|`` is about 970 and the first layer behaves as a bias with a 970× learning rate.
    At lr 3e-3 the additive mmDiT cell pushed 118 of its 128 hidden units into SiLU's flat negative tail within
    100 steps, and all 128 by the end (pre-activations ≤ −15): the trained embedding was its output bias, a flip
    changed it by 2.5e-7, and the model could not learn any control (docs/controls.md). The cosines are therefore
    taken as ``cos − 1`` (a column that does not change with the value is 0, not 1) and the features multiplied by
    ``feature_scale`` (0.1: ``Σ |f|`` is about 25 on Shapes, ``lr · Σ |f|`` 0.08 per step at lr 3e-3, and every
    unit stays alive).
    ``centre=False, feature_scale=1`` is the plain Fourier embedding.
    """

    def __init__(
        self,
        names: list[str],
        hidden_size: int,
        frequency_size: int = 256,
        normalise: bool = True,
        input_scale: float = 1.0,
        centre: bool = True,
        feature_scale: float = 0.1,
    ) -> None:
        """Build the embedder.

        Args:
            names: names of the K control columns, in the order ``cond.control`` stores them.
            hidden_size: output width D.
            frequency_size: sinusoidal features per scalar (256 as SDXL's ``addition_time_embed_dim``).
            normalise: apply `normalise_controls` before the features (False: raw values, SDXL).
            input_scale: factor on the (normalised) values before the features.
            centre: take the cosine features as ``cos − 1``, so constant columns are 0 (see the class doc).
            feature_scale: factor on the Fourier features (see the class doc).
        """
        super().__init__()
        names = tuple(names)
        if not names:
            raise ValueError("ControlEmbedder needs at least one control name")
        if len(set(names)) != len(names):
            raise ValueError(f"ControlEmbedder names must be unique, got {list(names)}")
        self.names = names
        self.frequency_size = frequency_size
        self.normalise, self.input_scale = normalise, float(input_scale)
        if not feature_scale > 0:
            raise ValueError(f"feature_scale must be > 0, got {feature_scale}")
        self.centre, self.feature_scale = bool(centre), float(feature_scale)
        self.mlp = nn.Sequential(
            nn.Linear(len(names) * frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.null = nn.Parameter(torch.zeros(hidden_size))

    def features(self, control: Tensor) -> Tensor:
        """(N, K * frequency_size) Fourier features of the (normalised, scaled) control (N, K)."""
        n, k = control.shape
        values = normalise_controls(control, self.names) if self.normalise else control.float()
        values = values * self.input_scale
        features = timestep_frequencies(values.reshape(n * k), self.frequency_size)  # (N * K, F): [cos, sin]
        if self.centre:
            offset = torch.zeros(self.frequency_size, device=features.device)
            offset[: self.frequency_size // 2] = 1.0  # cos(0) = 1: the cosines become cos - 1
            features = features - offset
        return (features * self.feature_scale).reshape(n, k * self.frequency_size)

    def forward(self, cond: Cond) -> Tensor:
        """Embed ``cond.control``, substituting ``null`` where ``cond.control_null``.

        Args:
            cond: conditions; ``control`` (N, K) float is required, ``control_names`` is checked when non-empty.

        Returns:
            (N, D) embedding.
        """
        control = cond.control
        if control is None:
            raise ValueError(f"ControlEmbedder({list(self.names)}) needs cond.control (N, K), but it is None")
        if control.dim() != 2 or control.shape[1] != len(self.names):
            raise ValueError(
                f"cond.control has shape {tuple(control.shape)} but the embedder expects (N, {len(self.names)}) "
                f"columns {list(self.names)}"
            )
        if cond.control_names and tuple(cond.control_names) != self.names:
            raise ValueError(
                f"cond.control_names {list(cond.control_names)} do not match the embedder's names {list(self.names)}"
            )
        n = control.shape[0]
        emb = self.mlp(self.features(control).to(self.mlp[0].weight.dtype))  # (N, D)
        if cond.control_null is not None:
            if cond.control_null.shape != (n,):
                raise ValueError(f"cond.control_null has shape {tuple(cond.control_null.shape)}, expected ({n},)")
            emb = torch.where(cond.control_null.bool()[:, None], self.null.to(emb.dtype), emb)
        return emb
