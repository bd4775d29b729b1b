"""Weights of DiT from elsewhere: official facebookresearch/DiT checkpoints and diffusers' ``DiTTransformer2DModel``.

Kept apart from ``baselines/dit.py`` so that the architecture reads top to bottom like the reference's
``models.py`` (https://github.com/facebookresearch/DiT/blob/ed81ce2/models.py).

- :func:`load_official_checkpoint` reads a released checkpoint (``DiT-XL-2-256x256.pt``, ...) or a training
  checkpoint of the reference's ``train.py`` into a state dict for :class:`baselines.dit.DiT`. The official weights
  are published under CC-BY-NC 4.0 (non-commercial use only), unlike this code.
- :func:`diffusers_config`, :func:`to_diffusers_state_dict` and :func:`from_diffusers_state_dict` convert to and from
  diffusers' ``DiTTransformer2DModel`` (bit-exact outputs; see ``tests/baselines/test_dit_parity.py``).

The only state-dict rename against the reference is ``adaLN_modulation.1`` → ``adaLN_modulation.linear``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from baselines.layers import get_2d_sincos_pos_embed
from benchmark.runs import read_checkpoint

if TYPE_CHECKING:
    from baselines.dit import DiT

__all__ = ["diffusers_config", "from_diffusers_state_dict", "load_official_checkpoint", "to_diffusers_state_dict"]


_TOP_KEYS = (
    "pos_embed",
    "x_embedder.proj.weight",
    "x_embedder.proj.bias",
    "t_embedder.mlp.0.weight",
    "t_embedder.mlp.0.bias",
    "t_embedder.mlp.2.weight",
    "t_embedder.mlp.2.bias",
    "y_embedder.embedding_table.weight",
    "final_layer.linear.weight",
    "final_layer.linear.bias",
    "final_layer.adaLN_modulation.linear.weight",
    "final_layer.adaLN_modulation.linear.bias",
)
_BLOCK_KEYS = tuple(
    f"{layer}.{kind}"
    for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.linear")
    for kind in ("weight", "bias")
)
# Ours → diffusers, per block (the attention's fused qkv is handled separately: diffusers splits it in three).
_DIFFUSERS_BLOCK = {
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.linear": "norm1.linear",
}
_DIFFUSERS_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.linear": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}
# diffusers keeps a copy of the time/class embedders in every block (block 0's also feeds the final layer).
_DIFFUSERS_EMBED = {
    "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
    "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table",
}


def _depth_of(keys: list[str], prefix: str) -> int:
    indices = [int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))]
    return max(indices) + 1 if indices else 0


def _check_keys(found: Mapping[str, Tensor], expected: set[str], what: str) -> None:
    unknown, missing = sorted(set(found) - expected), sorted(expected - set(found))
    if unknown or missing:
        raise ValueError(
            f"{what} does not match DiT: {len(unknown)} unknown key(s) {unknown[:20]}, "
            f"{len(missing)} missing key(s) {missing[:20]}"
        )


def _expected_keys(depth: int, with_pos_embed: bool = True) -> set[str]:
    keys = {k for k in _TOP_KEYS if with_pos_embed or k != "pos_embed"}
    return keys | {f"blocks.{i}.{k}" for i in range(depth) for k in _BLOCK_KEYS}


def load_official_checkpoint(path_or_state_dict: str | os.PathLike | Mapping[str, object]) -> dict[str, Tensor]:
    """Read a facebookresearch/DiT checkpoint and return a state dict for :class:`DiT`.

    The released files (``DiT-XL-2-256x256.pt``, ...) are plain state dicts of the EMA weights; training
    checkpoints are ``{"model", "ema", "opt", "args"}``, from which ``"ema"`` is taken (else ``"model"``).
    Files load with ``weights_only=True`` (``argparse.Namespace`` is allowed for the ``"args"`` entry).

    Args:
        path_or_state_dict: a checkpoint path, or an already loaded checkpoint / state dict.

    Returns:
        The state dict under our names (``adaLN_modulation.1`` → ``adaLN_modulation.linear``), checked to be a
        complete DiT without control embedder; load it with ``model.load_state_dict(sd)``.
    """
    ckpt = path_or_state_dict
    if isinstance(ckpt, str | os.PathLike):
        # Training checkpoints carry their argparse.Namespace; allow just that class and nothing else.
        ckpt = read_checkpoint(ckpt, allow=[argparse.Namespace])
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected a DiT checkpoint dict, got {type(ckpt).__name__}")
    for wrapper in ("ema", "model"):
        if isinstance(ckpt.get(wrapper), Mapping):
            ckpt = ckpt[wrapper]
            break
    sd = {k.replace("adaLN_modulation.1.", "adaLN_modulation.linear."): v for k, v in ckpt.items()}
    _check_keys(sd, _expected_keys(_depth_of(list(sd), "blocks")), "official DiT checkpoint")
    return sd


def diffusers_config(model: DiT) -> dict[str, object]:
    """Keyword arguments of the ``diffusers.DiTTransformer2DModel`` with the same architecture as ``model``.

    ``norm_eps=1e-6`` matches DiT's MLP-branch LayerNorm (diffusers defaults to 1e-5 there, and so do its converted
    hub checkpoints). diffusers' timestep embedding uses ``downscale_freq_shift=1`` where the official DiT uses 0:
    to reproduce a diffusers model's outputs set ``model.t_embedder.downscale_freq_shift = 1.0``; weights converted
    from the official release are meant for 0, our default.
    """
    if model.control_embedder is not None:
        raise ValueError(
            "diffusers' DiTTransformer2DModel has no control embedder; build the DiT without control_names"
        )
    return {
        "num_attention_heads": model.num_heads,
        "attention_head_dim": model.hidden_size // model.num_heads,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": model.depth,
        "sample_size": model.input_size,
        "patch_size": model.patch_size,
        "num_embeds_ada_norm": model.num_classes,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
    }


def to_diffusers_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a :class:`DiT` state dict to ``DiTTransformer2DModel`` names (see :func:`diffusers_config`).

    The fixed ``pos_embed`` is dropped (diffusers recomputes it as a non-persistent buffer); the time and class
    embedders are copied into every block, as diffusers stores them.
    """
    if any(k.startswith("control_embedder.") for k in sd):
        raise ValueError("diffusers' DiTTransformer2DModel has no control embedder; this state dict has one")
    depth = _depth_of(list(sd), "blocks")
    _check_keys(sd, _expected_keys(depth), "DiT state dict")
    out: dict[str, Tensor] = {}
    for ours, theirs in _DIFFUSERS_TOP.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = sd[f"{ours}.{kind}"]
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            # Cloned so that the three tensors do not share storage (safetensors refuses shared tensors).
            q, k, v = (part.clone() for part in sd[f"{src}attn.qkv.{kind}"].chunk(3, dim=0))
            out.update({f"{dst}attn1.to_q.{kind}": q, f"{dst}attn1.to_k.{kind}": k, f"{dst}attn1.to_v.{kind}": v})
            for ours, theirs in _DIFFUSERS_BLOCK.items():
                out[f"{dst}{theirs}.{kind}"] = sd[f"{src}{ours}.{kind}"]
        for ours, theirs in _DIFFUSERS_EMBED.items():
            for kind in ("weight",) if ours.startswith("y_") else ("weight", "bias"):
                out[f"{dst}{theirs}.{kind}"] = sd[f"{ours}.{kind}"].clone()
    return out


def from_diffusers_state_dict(sd: Mapping[str, Tensor], input_size: int | None = None) -> dict[str, Tensor]:
    """Convert a ``DiTTransformer2DModel`` state dict to :class:`DiT` names.

    Args:
        sd: the diffusers state dict.
        input_size: latent side the model is for (diffusers' ``sample_size``). When given, the fixed ``pos_embed``
            (not stored by diffusers) is computed and included, so that ``load_state_dict`` can be strict;
            otherwise it is omitted and the target model keeps its own.

    Returns:
        Our state dict. The per-block copies of the time / class embedders must be identical (they are in
        converted checkpoints); a model whose copies diverged cannot be represented and raises.
    """
    depth = _depth_of(list(sd), "transformer_blocks")
    expected = {f"{theirs}.{kind}" for theirs in _DIFFUSERS_TOP.values() for kind in ("weight", "bias")}
    for i in range(depth):
        dst = f"transformer_blocks.{i}."
        expected |= {f"{dst}attn1.to_{n}.{kind}" for n in "qkv" for kind in ("weight", "bias")}
        expected |= {f"{dst}{theirs}.{kind}" for theirs in _DIFFUSERS_BLOCK.values() for kind in ("weight", "bias")}
        expected |= {f"{dst}{theirs}.weight" for theirs in _DIFFUSERS_EMBED.values()}
        expected |= {f"{dst}{theirs}.bias" for ours, theirs in _DIFFUSERS_EMBED.items() if not ours.startswith("y_")}
    _check_keys(sd, expected, "diffusers DiTTransformer2DModel state dict")

    out: dict[str, Tensor] = {}
    for ours, theirs in _DIFFUSERS_TOP.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = sd[f"{theirs}.{kind}"]
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}attn1.to_{n}.{kind}"] for n in "qkv"]
            out[f"{dst}attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
            for ours, theirs in _DIFFUSERS_BLOCK.items():
                out[f"{dst}{ours}.{kind}"] = sd[f"{src}{theirs}.{kind}"]
    for ours, theirs in _DIFFUSERS_EMBED.items():
        for kind in ("weight",) if ours.startswith("y_") else ("weight", "bias"):
            first = sd[f"transformer_blocks.0.{theirs}.{kind}"]
            for i in range(1, depth):
                if not torch.equal(sd[f"transformer_blocks.{i}.{theirs}.{kind}"], first):
                    raise ValueError(
                        f"transformer_blocks.{i}.{theirs}.{kind} differs from block 0's copy; DiT shares one "
                        "time/class embedder across blocks, so this diffusers model cannot be converted"
                    )
            out[f"{ours}.{kind}"] = first
    if input_size is not None:
        hidden, _, patch, _ = out["x_embedder.proj.weight"].shape
        if input_size % patch:
            raise ValueError(f"input_size={input_size} is not divisible by the checkpoint's patch size {patch}")
        table = get_2d_sincos_pos_embed(hidden, input_size // patch)
        out["pos_embed"] = torch.from_numpy(table).float().unsqueeze(0)
    return out
