"""Initialise an entry from one of our own checkpoints trained at another resolution or on another dataset.

The pre-training study (Berrada Ifriqi et al., "On Improved Conditioning Mechanisms and Pre-training Strategies for
Diffusion Models", NeurIPS 2024, §2.6 and §3.3; SD3, Esser et al. 2024, §5.3; PixArt-α, Chen et al. 2024, §2.4)
trains at a low resolution or on class-labelled data first and continues at a higher resolution or on captions.
`InitFrom` is the Lightning callback that does the hand-over: before the first training step it copies the
backbone (EMA weights when the checkpoint has them) of a ``.ckpt`` written by ``ldmbench fit`` or the leaderboard
runner into the new entry's backbone, adapts what depends on the token grid, refreshes the EMA copy and logs a
table of what was kept, resized, re-initialised or dropped. Official checkpoints (DiT, MDT, PixArt) load into a
model of their own resolution through each model's ``init_from`` argument, and into any other resolution through
``InitFrom(source_format=...)``, which reads them with the same importers.

Where each backbone keeps its positions (the tensors resized here; everything else must keep its shape):

========================  =================================================================  ===================
backbone                  tensor(s)                                                           kind
========================  =================================================================  ===================
DiT                       ``pos_embed`` (1, g², D), frozen ``nn.Parameter``                   fixed 2-D sin-cos
MDTv2                     ``pos_embed``, ``decoder_pos_embed`` (1, g², D)                     learned, sin-cos init
MDTv2                     ``*.rel_pos_bias.relative_position_bias_table`` ((2g-1)²+3, heads)  learned, per offset
PixArt-α                  ``pos_embed`` buffer, positions ``index / pos_embed_scale``         fixed 2-D sin-cos
MMDiT, proposed           ``pos_embed`` buffer of side ``pos_embed_max_size`` or g            fixed, centre-crop
LDM / SDXL UNet           none (convolutions and attention are resolution-free)               —
========================  =================================================================  ===================

Strategies for a g x g source grid and a G x G target grid (``pos_embed``):

- ``extend``: the new grid at the same frequencies. A fixed sin-cos table is recomputed for G x G at the source's
  position scale; a learned table keeps its g x g values on the top-left positions and takes the target's fresh
  (sin-cos) values elsewhere; a relative table keeps the biases of the offsets it has.
- ``interpolate``: the new grid mapped onto the old range (PixArt's ``lewei_scale``): a sin-cos table is recomputed
  with the scale multiplied by G / g; a learned table is resampled bilinearly.
- ``resample``: bilinear resampling of the stored table (corners onto corners), learned or fixed.
- ``crop``: SD3's centre crop of a larger stored table (the source grid must be at least the target's).

Class-conditional → text-conditional: the trunk (patch embedding, time embedder, every block, the final layer)
carries over bit-equal; the class table is dropped; the modules that read the text (text projection, context
embedder, pooled-vector embedder, cross-attention keys and values of UNets) start from their fresh initialisation.
Every other shape difference fails, naming the tensor, unless ``strict_shapes`` is False or it matches ``reinit``.

The conventions follow the reference code they name: PixArt-α's ``lewei_scale``
(https://github.com/PixArt-alpha/PixArt-alpha/blob/cac2fd3/diffusion/model/nets/PixArt.py), SD3's
``cropped_pos_embed`` (https://github.com/Stability-AI/sd3-ref/blob/65e453f/mmdit.py) and BEiT's resizing of
relative-position tables; the code here is written against our own tables (``baselines.layers``).

Resolution-dependent noise shift and crop policy are configuration, not this callback: ``RectifiedFlow(shift=α)`` with
α = ``RectifiedFlow.shift_for_resolution(new, old)`` = sqrt(m / n) shifts the training times and the Euler grid;
``DDPM(shift=α)`` divides the schedule's SNR by α² for training and every sampler. α = 1 is the identity. The crop
policy is the data's: ``ShapesDataModule(augment, min_scale)`` (random resized crops at low resolution,
``augment: false`` for whole canvases), ``ImageFolderDataModule`` centre-crops.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from baselines.layers import get_2d_sincos_pos_embed

__all__ = [
    "POSITION_TABLES",
    "SEMANTIC_INPUTS",
    "InitFrom",
    "TransferRow",
    "format_report",
    "load_backbone_state",
    "load_source_state",
    "resolve_checkpoint",
    "sincos_scale",
    "transfer_weights",
]

PosEmbedStrategy = Literal["extend", "interpolate", "crop", "resample"]
STRATEGIES: tuple[str, ...] = ("extend", "interpolate", "crop", "resample")

# Name patterns of the position tables of each backbone class (looked up along the class's MRO, so a subclass such as
# ProposedMMDiT inherits MMDiT's row). Token tables are (1, side², D); relative tables are (side² + 3, heads).
POSITION_TABLES: dict[str, tuple[str, ...]] = {
    "DiT": ("pos_embed",),
    "MDTv2": ("pos_embed", "decoder_pos_embed", "*relative_position_bias_table"),
    "PixArt": ("pos_embed",),
    "MMDiT": ("pos_embed",),
    "LDMUNet": (),
}
# Tensors of a text-conditional backbone that read the text: left at their fresh initialisation when the source was
# class-conditional. DiT and MDT have no text-conditional form.
SEMANTIC_INPUTS: dict[str, tuple[str, ...]] = {
    "PixArt": ("caption_projection.*",),
    "MMDiT": ("context_embedder.*", "y_embedder.*"),
    "LDMUNet": ("*.attn2.to_k.*", "*.attn2.to_v.*", "vector_embedder.*"),
}
# Tensors that exist only in a class-conditional backbone (the class tables), by backbone.
CLASS_TABLES: dict[str, tuple[str, ...]] = {
    "DiT": ("y_embedder.*",),
    "MDTv2": ("y_embedder.*",),
    "PixArt": ("class_embedder.*",),
    "MMDiT": ("class_embedder.*", "y_embedder.embedding_table.*"),
    "LDMUNet": ("class_embedder.*",),
}
_RELATIVE_EXTRA_ROWS = 3  # BEiT's class-token rows of a relative bias table (MDT keeps them, never indexes them)


@dataclass(frozen=True)
class TransferRow:
    """What happened to one tensor: ``kept``, ``resized``, ``new``, ``reinit`` or ``dropped``, and why."""

    name: str
    action: str
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    note: str = ""


# ----------------------------------------------------------------------------------------------------- checkpoints
def load_backbone_state(path: str | Path, weights: Literal["ema", "raw"] = "ema") -> dict[str, Tensor]:
    """The backbone weights of one of our Lightning checkpoints (or of a plain backbone state dict).

    Args:
        path: A ``.ckpt`` written by ``ldmbench fit`` / the leaderboard runner, or a ``torch.save``d state dict.
        weights: ``ema`` takes the EMA copy (``ema.shadow.*``) when the checkpoint has one, else the raw backbone;
            ``raw`` always takes ``backbone.*``.

    Returns:
        The backbone's state dict, names without the ``ema.shadow.`` / ``backbone.`` prefix.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} is not a checkpoint of this benchmark (no state dict)")
    prefixes = ("ema.shadow.", "backbone.") if weights == "ema" else ("backbone.",)
    for prefix in prefixes:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    if any(k.startswith(("ema.", "backbone.", "autoencoder.")) for k in state):
        raise ValueError(f"{path} has no {' or '.join(prefixes)} weights")
    return dict(state)  # a plain backbone state dict


SourceFormat = Literal["lightning", "dit", "mdt", "pixart"]
# Official checkpoints read by each baseline's own importer (which renames to our tensor names and checks the keys).
_OFFICIAL_IMPORTERS = {
    "dit": "baselines.dit_convert",
    "mdt": "baselines.mdt",
    "pixart": "baselines.pixart_alpha",
}


def load_source_state(path: str | Path, source_format: SourceFormat = "lightning", weights: str = "ema") -> dict:
    """The backbone state dict of a checkpoint in one of the formats `InitFrom` reads.

    Args:
        path: The checkpoint file.
        source_format: ``lightning`` (ours, `load_backbone_state`), or an official release read by that baseline's
            importer: ``dit`` (facebookresearch/DiT ``.pt``), ``mdt`` (sail-sg/MDT), ``pixart`` (PixArt-α ``.pth``).
        weights: ``ema`` or ``raw`` (ours only; official importers take the EMA weights when the file has both).
    """
    if source_format == "lightning":
        return load_backbone_state(path, weights)  # type: ignore[arg-type]
    if source_format not in _OFFICIAL_IMPORTERS:
        raise ValueError(f"source_format must be 'lightning' or one of {sorted(_OFFICIAL_IMPORTERS)}")
    import importlib

    return importlib.import_module(_OFFICIAL_IMPORTERS[source_format]).load_official_checkpoint(str(path))


def resolve_checkpoint(spec: str, run_dir: str | Path | None = None) -> Path:
    """The file a checkpoint spec names.

    Args:
        spec: A path; a glob (the newest match wins); or ``entry:<name>``: the final checkpoint of entry ``<name>``
            of the same leaderboard run and seed, i.e. ``<output>/<name>/seed<S>-*/final.ckpt`` next to
            ``run_dir = <output>/<this entry>/seed<S>-<key>`` (the runner's layout; the newest match wins).
        run_dir: This run's folder (``trainer.default_root_dir``), needed for ``entry:`` specs.
    """
    if spec.startswith("entry:"):
        name = spec.removeprefix("entry:")
        run = Path(run_dir) if run_dir is not None else None
        seed = re.match(r"seed(\d+)-", run.name) if run is not None else None
        if run is None or seed is None:
            raise ValueError(
                f"checkpoint {spec!r} names a suite entry, which only the leaderboard runner's folder layout "
                f"(<output>/<entry>/seed<S>-<key>) resolves; this run's folder is {run_dir}; give a path instead"
            )
        pattern = str(run.parent.parent / name / f"seed{seed.group(1)}-*" / "final.ckpt")
        hint = f"run the entry {name!r} first (list it before this one in suite.yaml `entries`)"
    else:
        pattern, hint = spec, "check the path"
    matches = sorted(Path(p) for p in _glob(pattern))
    if not matches:
        raise FileNotFoundError(f"no checkpoint matches {pattern}; {hint}")
    return max(matches, key=lambda p: p.stat().st_mtime)


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern) if glob.has_magic(pattern) else ([pattern] if Path(pattern).is_file() else [])


# ------------------------------------------------------------------------------------------------- position tables
def sincos_scale(table: Tensor) -> float | None:
    """The position scale s of a square 2-D sin-cos table (``baselines.layers.get_2d_sincos_pos_embed``), or None.

    Token 1 is column 1 of row 0; its lowest-frequency column channel pair is (sin, cos) of ω/s with
    ω = 10000^(-(q-1)/q), q = D/4, an angle below π for any scale used in practice. The whole table is then
    recomputed at that scale and compared, so a learned or fine-tuned table returns None.
    """
    table = table.detach().reshape(-1, table.shape[-1]).double().cpu()
    tokens, width = table.shape
    side = math.isqrt(tokens)
    if side * side != tokens or side < 2 or width % 4:
        return None
    q = width // 4
    omega = 1.0 / 10000 ** ((q - 1) / q)
    angle = math.atan2(float(table[1, q - 1]), float(table[1, 2 * q - 1]))
    if angle <= 0:
        return None
    scale = omega / angle
    expected = torch.from_numpy(get_2d_sincos_pos_embed(width, side, scale=scale))
    return scale if torch.allclose(table, expected, atol=1e-4) else None


def _as_grid(table: Tensor, side: int) -> Tensor:
    """(…, side², C) row-major table → (1, C, side, side) image."""
    return table.reshape(side, side, -1).permute(2, 0, 1)[None]


def _from_grid(grid: Tensor, like: Tensor) -> Tensor:
    """(1, C, side, side) → the layout of ``like`` ((1, side², C) or (side², C))."""
    flat = grid[0].permute(1, 2, 0).reshape(-1, grid.shape[1])
    return flat.reshape(*like.shape[:-2], flat.shape[0], flat.shape[1]) if like.dim() == 3 else flat


def _resample(grid: Tensor, side: int) -> Tensor:
    # Corners onto corners: the first and last positions (or offsets) keep their values, the rest interpolate.
    return F.interpolate(grid.double(), size=(side, side), mode="bilinear", align_corners=True).to(grid.dtype)


def _crop(grid: Tensor, side: int, name: str) -> Tensor:
    old = grid.shape[-1]
    if old < side:
        raise ValueError(
            f"pos_embed='crop' needs a source table at least as large as the target's: {name} is {old} x {old} in "
            f"the checkpoint and {side} x {side} here; train the source with a larger table (MMDiT's "
            "pos_embed_max_size) or use extend / interpolate / resample"
        )
    top = (old - side) // 2
    return grid[..., top : top + side, top : top + side]


def _place(small: Tensor, big: Tensor, centre: bool) -> Tensor:
    """``big`` with ``small`` written into its top-left (or centre) corner."""
    out, side = big.clone(), small.shape[-1]
    top = (big.shape[-1] - side) // 2 if centre else 0
    out[..., top : top + side, top : top + side] = small
    return out


def _token_table(name: str, source: Tensor, target: Tensor, strategy: str) -> tuple[Tensor, str]:
    """A (1, g², D) token table adapted to the target's (1, G², D); returns the tensor and a note."""
    g, side = math.isqrt(source.shape[-2]), math.isqrt(target.shape[-2])
    if g * g != source.shape[-2] or side * side != target.shape[-2] or source.shape[-1] != target.shape[-1]:
        raise ValueError(f"{name}: cannot map a {tuple(source.shape)} position table onto {tuple(target.shape)}")
    scale = sincos_scale(source)
    if strategy in ("extend", "interpolate") and scale is not None:
        new_scale = scale if strategy == "extend" else scale * side / g
        table = torch.from_numpy(get_2d_sincos_pos_embed(target.shape[-1], side, scale=new_scale)).to(target.dtype)
        grid_text = "same frequencies, new grid" if strategy == "extend" else "grid mapped onto the old range"
        return table.reshape(target.shape), f"sin-cos {g}x{g} → {side}x{side}, scale {scale:.4g} → {new_scale:.4g}" + (
            f" ({grid_text})"
        )
    src = _as_grid(source, g).to(target.dtype)
    if strategy == "extend":
        if side < g:
            raise ValueError(f"{name}: pos_embed='extend' grows a table; {g}x{g} → {side}x{side} shrinks it (crop)")
        out = _place(src, _as_grid(target, side), centre=False)
        note = f"learned {g}x{g} kept at the top-left of {side}x{side}, the rest from the fresh sin-cos init"
    elif strategy == "crop":
        out, note = _crop(src, side, name), f"centre crop {g}x{g} → {side}x{side}"
    else:  # interpolate on a learned table, or resample
        out, note = _resample(src, side), f"bilinear {g}x{g} → {side}x{side}"
    return _from_grid(out, target), note


def _relative_table(name: str, source: Tensor, target: Tensor, strategy: str) -> tuple[Tensor, str]:
    """A ((2g-1)² + 3, h) relative-bias table adapted to ((2G-1)² + 3, h): the offset grid is the image."""
    extra = _RELATIVE_EXTRA_ROWS
    s_old, s_new = math.isqrt(source.shape[0] - extra), math.isqrt(target.shape[0] - extra)
    if s_old**2 + extra != source.shape[0] or s_new**2 + extra != target.shape[0] or source.shape[1] != target.shape[1]:
        raise ValueError(f"{name}: cannot map a {tuple(source.shape)} relative table onto {tuple(target.shape)}")
    src = _as_grid(source[:-extra], s_old).to(target.dtype)
    if strategy == "extend":
        if s_new < s_old:
            raise ValueError(f"{name}: pos_embed='extend' grows a table; {s_old} → {s_new} offsets shrinks it")
        out = _place(src, _as_grid(target[:-extra], s_new), centre=True)
        note = f"offsets ±{(s_old - 1) // 2} kept, new offsets from the fresh init"
    elif strategy == "crop":
        out, note = _crop(src, s_new, name), f"centre crop of the offsets {s_old}² → {s_new}²"
    else:
        out, note = _resample(src, s_new), f"bilinear over offsets {s_old}² → {s_new}²"
    return torch.cat([_from_grid(out, target[:-extra]), source[-extra:].to(target.dtype)]), note


# ------------------------------------------------------------------------------------------------- the transfer
def _patterns(backbone: nn.Module, table: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    for cls in type(backbone).__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_position_table(name: str, backbone: nn.Module) -> bool:
    known = _patterns(backbone, POSITION_TABLES)
    if known is not None:
        return _matches(name, known)
    leaf = name.rsplit(".", 1)[-1]  # unknown backbones: by name, as every backbone here names them
    return leaf.endswith("pos_embed") or leaf == "relative_position_bias_table"


def _class_to_text(source: Mapping[str, Tensor], target: Mapping[str, Tensor], backbone: nn.Module) -> bool:
    """True when the source has a class table and the target backbone reads text instead."""
    tables = _patterns(backbone, CLASS_TABLES) or ()
    source_is_class = any(_matches(k, tables) for k in source)
    target_is_text = getattr(backbone, "num_classes", None) is None and not any(_matches(k, tables) for k in target)
    return source_is_class and target_is_text


@torch.no_grad()
def transfer_weights(
    source: Mapping[str, Tensor],
    backbone: nn.Module,
    pos_embed: PosEmbedStrategy = "interpolate",
    strict_shapes: bool = True,
    reinit: Sequence[str] = (),
) -> list[TransferRow]:
    """Copy ``source`` into ``backbone`` in place, adapting position tables; return one row per tensor.

    Args:
        source: The source backbone's state dict (`load_backbone_state`).
        backbone: The freshly initialised target backbone.
        pos_embed: How position tables of another grid are adapted (module docstring).
        strict_shapes: Fail on a shape difference outside the position tables (and, for class → text, outside the
            text inputs), naming the tensor. False re-initialises such tensors instead (reported as ``reinit``).
        reinit: Name patterns (``fnmatch``, e.g. ``"final_layer.*"``) left at their fresh initialisation.

    Returns:
        The rows of the report, in the target's order, then the dropped source tensors.
    """
    if pos_embed not in STRATEGIES:
        raise ValueError(f"pos_embed must be one of {STRATEGIES}, got {pos_embed!r}")
    target = backbone.state_dict(keep_vars=True)
    semantic_change = _class_to_text(source, target, backbone)
    text_inputs: tuple[str, ...] = ()
    if semantic_change:
        text_inputs = _patterns(backbone, SEMANTIC_INPUTS)
        if text_inputs is None:
            raise ValueError(f"{type(backbone).__name__} has no text-conditional form to initialise from a class model")
    rows, updates = [], {}
    for name, tensor in target.items():
        old = source.get(name)
        shape = tuple(tensor.shape)
        if old is None:
            why = "text input, not in the class-conditional source" if _matches(name, text_inputs) else "not in source"
            rows.append(TransferRow(name, "new", None, shape, why))
            continue
        old_shape = tuple(old.shape)
        if _matches(name, reinit):
            rows.append(TransferRow(name, "reinit", old_shape, shape, "matches reinit"))
        elif _matches(name, text_inputs):
            rows.append(TransferRow(name, "reinit", old_shape, shape, "text input (source read class embeddings)"))
        elif old_shape == shape:
            updates[name] = old
            rows.append(TransferRow(name, "kept", old_shape, shape))
        elif _is_position_table(name, backbone):
            adapt = _relative_table if name.endswith("relative_position_bias_table") else _token_table
            value, note = adapt(name, old, tensor.detach(), pos_embed)
            updates[name] = value
            rows.append(TransferRow(name, "resized", old_shape, shape, f"{pos_embed}: {note}"))
        elif strict_shapes:
            raise ValueError(
                f"cannot initialise {name}: shape {old_shape} in the checkpoint, {shape} in this model; only "
                "position tables are resized (set strict_shapes: false to re-initialise it, or list it in reinit)"
            )
        else:
            rows.append(TransferRow(name, "reinit", old_shape, shape, "shape differs (strict_shapes off)"))
    for name, value in updates.items():
        target[name].copy_(value.to(dtype=target[name].dtype, device=target[name].device))
    class_tables = _patterns(backbone, CLASS_TABLES) or ()
    for name in source:
        if name not in target:
            why = "class table (target reads text)" if semantic_change and _matches(name, class_tables) else ""
            rows.append(TransferRow(name, "dropped", tuple(source[name].shape), None, why or "not in this model"))
    return rows


def format_report(rows: Sequence[TransferRow], source: str = "") -> str:
    """A plain-text table: the kept tensors summed up, every other tensor on its own line."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    summary = ", ".join(f"{counts[a]} {a}" for a in ("kept", "resized", "new", "reinit", "dropped") if a in counts)
    lines = [f"InitFrom {source}: {summary}".rstrip()]
    width = max([len(r.name) for r in rows if r.action != "kept"] + [6])
    lines.append(f"  {'tensor':<{width}}  {'action':<8}  {'checkpoint':<18}  {'model':<18}  note")
    for row in rows:
        if row.action == "kept":
            continue
        src = "-" if row.source_shape is None else str(list(row.source_shape))
        dst = "-" if row.target_shape is None else str(list(row.target_shape))
        lines.append(f"  {row.name:<{width}}  {row.action:<8}  {src:<18}  {dst:<18}  {row.note}")
    kept = [r for r in rows if r.action == "kept"]
    if kept:
        groups = sorted({r.name.split(".", 1)[0] for r in kept})
        lines.append(f"  kept bit-equal: {len(kept)} tensors in {', '.join(groups)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the callback
class InitFrom(pl.Callback):
    """Initialise the backbone (and its EMA copy) from one of our checkpoints before training starts.

    Applied in ``on_fit_start``, before the first training step. A run resumed with ``--ckpt_path`` (``last``, or
    the leaderboard runner's resume) is not re-initialised: its checkpoint already holds the transferred and
    trained weights.

    Args:
        checkpoint: A ``.ckpt`` of ``ldmbench fit`` / the leaderboard runner, a glob (newest match), or
            ``entry:<name>`` for the final checkpoint of another entry of the same leaderboard run and seed.
        pos_embed: ``extend``, ``interpolate`` (default), ``resample`` or ``crop`` for position tables of another
            grid size (module docstring).
        strict_shapes: Fail on any other shape difference, naming the tensor; False re-initialises it instead.
        weights: ``ema`` (default) takes the checkpoint's EMA weights, ``raw`` the trained weights.
        reinit: Name patterns of backbone tensors to leave at their fresh initialisation (e.g. ``final_layer.*``).
        source_format: ``lightning`` (default: ours) or an official release read by its baseline's importer
            (``dit``, ``mdt``, ``pixart``), e.g. DiT-XL-2-256x256.pt into a 512 px DiT with ``pos_embed``.
    """

    def __init__(
        self,
        checkpoint: str,
        pos_embed: PosEmbedStrategy = "interpolate",
        strict_shapes: bool = True,
        weights: Literal["ema", "raw"] = "ema",
        reinit: list[str] | None = None,
        source_format: SourceFormat = "lightning",
    ) -> None:
        if pos_embed not in STRATEGIES:
            raise ValueError(f"pos_embed must be one of {STRATEGIES}, got {pos_embed!r}")
        if source_format != "lightning" and source_format not in _OFFICIAL_IMPORTERS:
            raise ValueError(f"source_format must be 'lightning' or one of {sorted(_OFFICIAL_IMPORTERS)}")
        self.checkpoint, self.pos_embed, self.strict_shapes = checkpoint, pos_embed, strict_shapes
        self.weights, self.reinit, self.source_format = weights, list(reinit or []), source_format
        self.report: list[TransferRow] | None = None
        self.source_path: Path | None = None

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, as a config would state them."""
        return {
            "checkpoint": self.checkpoint,
            "pos_embed": self.pos_embed,
            "strict_shapes": self.strict_shapes,
            "weights": self.weights,
            "reinit": list(self.reinit),
            "source_format": self.source_format,
        }

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here rather than in `setup`: a resumed run's checkpoint is restored between the two, and only here does
        # `trainer.ckpt_path` tell a resumed run from a new one. The optimizer already exists but has no state yet,
        # and holds the same parameter tensors, which are overwritten in place.
        if trainer.ckpt_path is not None:
            rank_zero_info(f"InitFrom: resuming from {trainer.ckpt_path}; its weights are used as they are")
            return
        self.apply(pl_module, run_dir=trainer.default_root_dir)

    def apply(self, pl_module: pl.LightningModule, run_dir: str | Path | None = None) -> list[TransferRow]:
        """Load the checkpoint into ``pl_module.backbone``, copy the result into the EMA, log and return the report."""
        self.source_path = resolve_checkpoint(self.checkpoint, run_dir)
        source = load_source_state(self.source_path, self.source_format, self.weights)
        self.report = transfer_weights(source, pl_module.backbone, self.pos_embed, self.strict_shapes, self.reinit)
        ema = getattr(pl_module, "ema", None)
        if ema is not None:
            # The EMA starts from the transferred weights (as a fresh run's starts from the fresh ones).
            ema.shadow.load_state_dict(pl_module.backbone.state_dict())
            ema.num_updates.zero_()
        rank_zero_info(format_report(self.report, str(self.source_path)))
        return self.report

    def state_dict(self) -> dict[str, Any]:
        return {"source": None if self.source_path is None else str(self.source_path)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        source = state_dict.get("source")
        self.source_path = None if source is None else Path(source)
