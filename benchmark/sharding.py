"""FSDP for models past DDP's memory: `FSDPStrategy` and the sharding `DiffusionModule.configure_model` applies.

Lightning 2.6's ``strategy="fsdp"`` (FSDP1) refuses the CPU; its `ModelParallelStrategy` instead leaves the
parallelisation to the module's ``configure_model`` and runs on CPU processes over gloo as well as on GPUs over NCCL.
`FSDPStrategy` is that strategy with the whole world as the data-parallel (sharding) dimension and the options of
this module; `shard_module` applies PyTorch's ``fully_shard`` (FSDP2):

- **block wrapping**: each unit the backbone names (`shard_units`: its ``shard_units()`` hook, else the children of
  its outermost ``nn.ModuleList`` s: DiT/PixArt/MMDiT blocks, UNet levels) is sharded on its own, then the backbone
  as the root, so at most one unit's full weights exist at a time besides the root's own parameters;
- **bf16**: a ``MixedPrecisionPolicy`` gathers the fp32 master weights as bf16, reduces gradients in fp32 and returns
  fp32 outputs (the objective's loss is computed in fp32); the forward runs under bf16 autocast, so tensors the
  backbone makes itself (positional tables, time embeddings) meet the bf16 weights in one dtype;
- **activation checkpointing**: each unit's forward is recomputed in the backward pass instead of storing its
  activations (the module's parameter names do not change, so checkpoints keep their keys);
- **sharded checkpoints**: each rank writes its shard (``<name>.ckpt/`` holding ``*.distcp`` and ``meta.pt``) and a
  run resumes from that folder with ``--ckpt_path`` (`benchmark.runs.checkpoint_step` reads its ``meta.pt``).

The EMA shadow is sharded the same way (same units, same mesh), so it costs 1/N of a copy per rank instead of a full
copy, and its update is a shard-local ``lerp`` with no communication (a shadow shard and the parameter shard it
follows live on the same rank). It is evaluated in fp32 (no mixed precision): bf16 is a training speed and memory
choice, and the metrics of a row are sampled from the EMA at the precision a DDP row samples at. Only the backbone and
its EMA are sharded; the frozen autoencoder and text encoders stay whole on every rank (they are called outside the
backbone's forward, where FSDP's gathering hooks would not run).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.checkpoint import checkpoint


class FSDPStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` as plain FSDP: every process holds one shard, no tensor parallelism.

    Use it as ``trainer.strategy: {class_path: benchmark.sharding.FSDPStrategy, init_args: {...}}`` with any number of
    ``trainer.devices`` / ``trainer.num_nodes`` (CPU processes over gloo, GPUs over NCCL). Keep ``trainer.precision``
    at ``32-true``: bf16 is applied by FSDP itself (``mixed_precision``).

    Args:
        mixed_precision: ``bf16``: forward and backward in bf16 from fp32 weights, gradients reduced in fp32;
            ``fp32``: everything in fp32 (bit-comparable with a single process, used by the tests).
        activation_checkpointing: Recompute each sharded unit's activations in the backward pass (less memory,
            about one more forward of compute).
        reshard_after_forward: Free each unit's gathered weights after its forward (gathered again for the backward);
            ``False`` keeps them until the backward, trading memory for one all-gather per unit.
        save_distributed_checkpoint: Each rank writes its shard (a folder); ``False`` gathers one full file on rank 0.
        process_group_backend: ``gloo`` / ``nccl``; default: the device's.
        timeout: Timeout of collective operations.
    """

    def __init__(
        self,
        mixed_precision: Literal["bf16", "fp32"] = "bf16",
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" shards across nodes only; plain FSDP shards across every process.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def shard_units(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The submodules sharded one by one, as ``(name, module)``: the backbone's answer to ``shard_units()`` if it has
    that hook (a list of names or modules), else the children of its outermost ``nn.ModuleList`` s."""
    hook = getattr(backbone, "shard_units", None)
    names = {id(m): n for n, m in backbone.named_modules()}
    if hook is not None:
        found = [(u, backbone.get_submodule(u)) if isinstance(u, str) else (names[id(u)], u) for u in hook()]
        return found
    units: list[tuple[str, nn.Module]] = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(f"{u}.") for u, _ in units):
            prefix = f"{name}." if name else ""
            units += [(f"{prefix}{child_name}", child) for child_name, child in module.named_children()]
    return units


def _checkpointed(module: nn.Module) -> None:
    """Recompute ``module``'s forward in the backward pass. The instance's ``forward`` is replaced (not the module
    wrapped), so parameter names, and with them checkpoint keys, stay those of the plain model."""
    forward = module.forward

    def recomputed(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed  # type: ignore[method-assign]


def _autocast(module: nn.Module, device_type: str) -> None:
    """Run ``module``'s forward under bf16 autocast. FSDP casts the gathered parameters and the root's inputs to bf16,
    but not the tensors a forward makes itself (fp32 positional tables, buffers, time embeddings), which would then
    meet bf16 weights; autocast gives each op one dtype."""
    forward = module.forward

    def in_bf16(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    module.forward = in_bf16  # type: ignore[method-assign]


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _fully_shard(
    module: nn.Module, mesh: Any, policy: Any, reshard: bool, checkpointing: bool
) -> Iterator[tuple[str, nn.Module]]:
    from torch.distributed.fsdp import fully_shard

    for name, unit in shard_units(module):
        if checkpointing:
            _checkpointed(unit)
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        yield name, unit
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)


def shard_module(module: Any, strategy: Any) -> None:
    """Shard ``module.backbone`` and its EMA shadow over the strategy's data-parallel mesh (idempotent).

    Args:
        module: A `DiffusionModule` (``backbone`` and ``ema.shadow``) inside a `ModelParallelStrategy` trainer.
        strategy: The trainer's strategy; its ``mixed_precision``, ``activation_checkpointing`` and
            ``reshard_after_forward`` are read when present (a plain `ModelParallelStrategy` gets bf16, no
            checkpointing, resharding).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if is_sharded(module.backbone):
        return
    mesh = module.device_mesh["data_parallel"]
    bf16 = getattr(strategy, "mixed_precision", "bf16") == "bf16"
    train_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    reshard = bool(getattr(strategy, "reshard_after_forward", True))
    checkpointing = bool(getattr(strategy, "activation_checkpointing", False))
    list(_fully_shard(module.backbone, mesh, train_policy, reshard, checkpointing))
    if bf16:
        _autocast(module.backbone, module.device_mesh.device_type)
    # The shadow's units are found the same way on an identical copy, so each shadow shard sits beside its parameter
    # shard and the EMA update needs no communication.
    list(_fully_shard(module.ema.shadow, mesh, MixedPrecisionPolicy(), reshard, False))


def consolidate_checkpoint(folder: str | Path, output: str | Path | None = None) -> Path:
    """Write a sharded checkpoint folder as one ordinary checkpoint file (weights and training state, no optimizer
    state), which one process can evaluate (``ldmbench evaluate --ckpt_path``) or sample from.

    ``python -m benchmark.sharding FOLDER [OUTPUT]``; OUTPUT defaults to ``FOLDER`` with ``.full.ckpt`` in place of
    ``.ckpt``. (Lightning's ``consolidate_checkpoint`` reads the layout of its FSDP strategy, not this one's.)
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(folder)
    output = Path(output) if output else folder.with_name(folder.name.removesuffix(".ckpt") + ".full.ckpt")
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "flat.pt")
        flat = torch.load(Path(tmp) / "flat.pt", map_location="cpu", weights_only=True)
    checkpoint = torch.load(folder / "meta.pt", map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = flat["state_dict"]
    checkpoint["optimizer_states"] = []  # keyed by parameter name here, by index in a plain checkpoint: not carried
    torch.save(checkpoint, output)
    return output


if __name__ == "__main__":
    import sys

    print(consolidate_checkpoint(*sys.argv[1:3]))
