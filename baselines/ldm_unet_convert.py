"""Weight conversion for ``baselines/ldm_unet.py``: diffusers' ``UNet2DConditionModel`` both ways, and the official
LDM checkpoint layout (CompVis/latent-diffusion a506df5, ``openaimodel.UNetModel``).

Each UNet module of :class:`~baselines.ldm_unet.LDMUNet` has one counterpart in each layout: diffusers names them by
block (``down_blocks.i.resnets.j``, ``attentions.j``, ``downsamplers.0.conv``, ``mid_block``, ``up_blocks``), LDM by
position in flat sequences (``input_blocks.k.m``, ``middle_block.m``, ``output_blocks.k.m``, ``out``,
``time_embed``). Only ResBlock leaves and transformer leaves are renamed inside a module; the 1×1-convolution
projections of LDM (and of diffusers without ``use_linear_projection``) are reshaped to this file's ``Linear``.
diffusers' UNet has no slot for the class table (it is a cross-attention token here), so it travels separately.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the UNet module imports this one to load checkpoints
    from baselines.ldm_unet import LDMUNet

__all__ = ["diffusers_config", "from_diffusers", "load_ldm_checkpoint", "to_diffusers"]


# Leaf names of a ResBlock in each layout; transformer leaves differ only by the renames in `_ATTN_RENAMES`.
_RES_LEAVES = {
    "diffusers": {"time_proj": "time_emb_proj", "skip": "conv_shortcut"},
    "ldm": {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "skip": "skip_connection",
    },
}
_ATTN_RENAMES = [
    (r"^layers\.(\d+)\.", r"transformer_blocks.\1."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.out\.", ".ff.net.2."),
]


def _prefixes(model: LDMUNet, layout: str) -> dict[str, tuple[str, str]]:
    """This model's module prefixes → (the same module's prefix in ``layout``, kind in {res, attn, plain})."""
    ldm = layout == "ldm"
    pairs: dict[str, tuple[str, str]] = {
        "time_embedder.mlp.0.": ("time_embed.0." if ldm else "time_embedding.linear_1.", "plain"),
        "time_embedder.mlp.2.": ("time_embed.2." if ldm else "time_embedding.linear_2.", "plain"),
        "conv_in.": ("input_blocks.0.0." if ldm else "conv_in.", "plain"),
        "norm_out.": ("out.0." if ldm else "conv_norm_out.", "plain"),
        "conv_out.": ("out.2." if ldm else "conv_out.", "plain"),
    }
    if model.vector_embedder is not None:
        if ldm:
            raise ValueError("the LDM checkpoint layout has no text-time vector path")
        pairs["vector_embedder.mlp.0."] = ("add_embedding.linear_1.", "plain")
        pairs["vector_embedder.mlp.2."] = ("add_embedding.linear_2.", "plain")
    mid = ["res.0", "attn.0", "res.1"]
    for i, name in enumerate(mid):
        kind, j = name.split(".")
        other = f"middle_block.{i}." if ldm else f"mid_block.{'resnets' if kind == 'res' else 'attentions'}.{j}."
        pairs[f"mid.{name}."] = (other, kind)
    _level_pairs(pairs, model.down, "down", ldm)
    _level_pairs(pairs, model.up, "up", ldm)
    return pairs


def _level_pairs(pairs: dict[str, tuple[str, str]], levels: torch.nn.ModuleList, side: str, ldm: bool) -> None:
    """Add the prefixes of the encoder (``side="down"``) or decoder (``"up"``) levels to ``pairs``.

    LDM numbers the modules of a side in one flat sequence (``input_blocks`` starts at 1, after ``conv_in``;
    ``output_blocks`` at 0), one element per ResBlock with its transformer as sub-module 1. A downsampler is an
    element of its own; an upsampler joins the element of the level's last ResBlock, after its transformer.

    Args:
        pairs: The mapping being built (this model's prefix → (prefix in the layout, kind)); extended in place.
        levels: ``model.down`` or ``model.up``.
        side: ``"down"`` or ``"up"``, the prefix of ``levels`` in this model.
        ldm: Name in LDM's layout (True) or diffusers' (False).
    """
    down = side == "down"
    sequence, blocks = ("input_blocks", "down_blocks") if down else ("output_blocks", "up_blocks")
    k = 1 if down else 0
    for i, level in enumerate(levels):
        for j in range(len(level.res)):
            pairs[f"{side}.{i}.res.{j}."] = (f"{sequence}.{k}.0." if ldm else f"{blocks}.{i}.resnets.{j}.", "res")
            if len(level.attn):
                pairs[f"{side}.{i}.attn.{j}."] = (
                    f"{sequence}.{k}.1." if ldm else f"{blocks}.{i}.attentions.{j}.",
                    "attn",
                )
            k += 1
        if level.resample is None:
            continue
        if down:
            ldm_name, diffusers_name = f"input_blocks.{k}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."
            k += 1
        else:
            slot = 2 if len(level.attn) else 1
            ldm_name, diffusers_name = f"output_blocks.{k - 1}.{slot}.conv.", f"up_blocks.{i}.upsamplers.0.conv."
        pairs[f"{side}.{i}.resample."] = (ldm_name if ldm else diffusers_name, "plain")


def _key_map(model: LDMUNet, layout: str) -> dict[str, str]:
    """Every UNet state-dict key of ``model`` (class table excluded) → its name in ``layout``."""
    pairs = _prefixes(model, layout)
    out = {}
    for key in model.state_dict():
        if key.startswith("class_embedder."):
            continue
        prefix = next((p for p in pairs if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no {layout} name for {key}")
        other, kind = pairs[prefix]
        leaf = key[len(prefix) :]
        if kind == "res":
            head, _, tail = leaf.partition(".")
            leaf = f"{_RES_LEAVES[layout].get(head, head)}.{tail}"
        elif kind == "attn":
            for pattern, repl in _ATTN_RENAMES:
                leaf = re.sub(pattern, repl, leaf) if pattern.startswith("^") else re.sub(pattern, repl, "." + leaf)[1:]
        out[key] = other + leaf
    return out


def _is_projection(key: str) -> bool:
    return bool(re.search(r"attn\.\d+\.proj_(in|out)\.weight$", key))


def to_diffusers(model: LDMUNet, linear_projection: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
    """Convert to diffusers' ``UNet2DConditionModel`` names.

    Args:
        model: The UNet to convert.
        linear_projection: The target's ``use_linear_projection`` (True for SDXL; False stores 1×1 convolutions).

    Returns:
        The UNet state dict in diffusers' names, and the class table (``None`` for text models), which diffusers'
        UNet has no place for.
    """
    state = model.state_dict()
    out = {}
    for key, other in _key_map(model, "diffusers").items():
        value = state[key]
        out[other] = value if linear_projection or not _is_projection(key) else value[:, :, None, None]
    table = state.get("class_embedder.embedding_table.weight")
    return out, table


def from_diffusers(model: LDMUNet, state: Mapping[str, Tensor], class_table: Tensor | None = None) -> dict[str, Tensor]:
    """A state dict for ``model`` from a diffusers ``UNet2DConditionModel`` state dict (1×1 or linear projections).

    Args:
        model: A UNet of the same configuration (only its key names and shapes are read).
        state: diffusers' UNet state dict.
        class_table: The (num_classes + 1, E) class table of a class-conditional model.

    Returns:
        ``model.state_dict()``-shaped dict; load it with ``model.load_state_dict``.
    """
    return _import(model, state, _key_map(model, "diffusers"), class_table, "diffusers")


def _import(model: LDMUNet, state: Mapping[str, Tensor], keys: dict[str, str], table: Tensor | None, what: str):
    missing = [other for other in keys.values() if other not in state]
    unused = sorted(set(state) - set(keys.values()))
    if missing or unused:
        raise KeyError(f"{what} state dict does not match this UNet: missing {missing[:5]}, unexpected {unused[:5]}")
    out = {key: state[other].reshape(model.state_dict()[key].shape) for key, other in keys.items()}
    if model.class_embedder is not None:
        if table is None:
            raise KeyError(f"{what}: a class-conditional UNet needs the class table")
        out["class_embedder.embedding_table.weight"] = table
    return out


def load_ldm_checkpoint(model: LDMUNet, source: str | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Read an official LDM checkpoint (e.g. ``cin256-v2.ckpt``) into a state dict for ``model``.

    Args:
        model: A UNet of the checkpoint's configuration (``LDM-4`` for cin256-v2).
        source: Path of the ``.ckpt`` (a dict with ``state_dict``) or the state dict itself. UNet weights are read
            from ``model.diffusion_model.*`` and the class table from ``cond_stage_model.embedding.weight``; the
            autoencoder (``first_stage_model.*``), EMA copies and schedule buffers are ignored.

    Returns:
        ``model.state_dict()``-shaped dict.
    """
    if isinstance(source, str):
        source = torch.load(source, map_location="cpu", weights_only=False)
        source = source.get("state_dict", source)
    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
    return _import(model, unet, _key_map(model, "ldm"), source.get("cond_stage_model.embedding.weight"), "LDM")


def diffusers_config(model: LDMUNet, sample_size: int = 64, linear_projection: bool = True) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` configuration equal to ``model`` (class table aside)."""
    cfg = model.config
    channels = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    heads = [level.attn[0].layers[0].attn1.heads if len(level.attn) else 1 for level in model.down]
    depth = list(cfg["transformer_depth"])
    if cfg["mid_transformer_depth"] != depth[-1] or not depth[-1]:
        raise ValueError("diffusers' middle block uses the last level's transformer depth")
    heads[-1] = model.mid.attn[0].layers[0].attn1.heads
    config: dict[str, Any] = dict(
        sample_size=sample_size, in_channels=model.in_channels, out_channels=model.out_channels,
        block_out_channels=channels, layers_per_block=cfg["num_res_blocks"], norm_num_groups=cfg["norm_groups"],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)],
        attention_head_dim=heads,  # diffusers' historical name for the number of heads
        transformer_layers_per_block=[max(d, 1) for d in depth], cross_attention_dim=cfg["context_dim"],
        use_linear_projection=linear_projection,
        resnet_time_scale_shift="scale_shift" if cfg["time_scale_shift"] else "default",
    )  # fmt: skip
    if model.vector_embedder is not None:
        v = model.vector_embedder
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=v.frequency_size,
            projection_class_embeddings_input_dim=v.pooled_dim + len(v.names) * v.frequency_size,
        )
    return config
