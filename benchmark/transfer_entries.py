"""Baseline modules that carry an `InitFrom` in their model config, for leaderboard suites.

The leaderboard runner keeps an entry's ``model`` and ``data`` config (and keys its rows on them) but replaces the
trainer's callbacks with its own, so an ``InitFrom`` listed under ``trainer.callbacks`` works with ``ldmbench fit``
and is dropped by ``ldmbench leaderboard run``. These subclasses take the same ``InitFrom`` as a model argument,
``transfer``, and hand it to Lightning through ``configure_callbacks``; it is then part of the row's key, so
changing the source entry, the position strategy or anything else of the transfer makes the row stale. Everything
else is the parent module's, unchanged::

    model:
      class_path: benchmark.transfer_entries.TransferMMDiTModule
      init_args:
        transfer: {checkpoint: "entry:pretrain32", pos_embed: interpolate}
        size: mmDiT-tiny/2
        ...

``transfer: null`` (the default) is the parent module exactly, which is how a suite's from-scratch entries can use
the same class as its transferred ones.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from baselines.dit import DiTModule
from baselines.ldm_unet import LDMModule
from baselines.mdt import MDTModule
from baselines.mmdit import MMDiTModule
from baselines.pixart_alpha import PixArtModule
from baselines.proposed import ProposedModule
from benchmark.transfer import InitFrom

__all__ = [
    "TransferDiTModule",
    "TransferLDMModule",
    "TransferMDTModule",
    "TransferMMDiTModule",
    "TransferPixArtModule",
    "TransferProposedModule",
]


class _CarriesTransfer:
    """Adds ``transfer: InitFrom | None`` to a module and registers it as a callback of the trainer that fits it."""

    def __init__(self, transfer: InitFrom | None = None, **kwargs: Any) -> None:
        """Set ``transfer`` before the parent module builds, then record it as a config would.

        Args:
            transfer: The initialisation (``benchmark.transfer.InitFrom`` arguments); None trains from scratch.
            **kwargs: Every argument of the parent module.
        """
        self.transfer = transfer
        super().__init__(**kwargs)
        self._record_transfer()

    def configure_callbacks(self) -> list[Callback]:
        return [self.transfer] if self.transfer is not None else []

    def _record_transfer(self) -> None:
        # Built in Python (not from a config), the hyper-parameters would hold the callback object itself, which a
        # checkpoint loaded with weights_only=True cannot contain: record its arguments, as a config would.
        recorded = self.hparams.get("transfer")
        if isinstance(recorded, InitFrom):
            self.hparams["transfer"] = {"class_path": "benchmark.transfer.InitFrom", "init_args": recorded.init_args()}


class TransferDiTModule(_CarriesTransfer, DiTModule):
    """`baselines.dit.DiTModule` initialised from one of our checkpoints.

    Takes ``transfer`` and every argument of its parent.
    """


class TransferMDTModule(_CarriesTransfer, MDTModule):
    """`baselines.mdt.MDTModule` initialised from one of our checkpoints.

    Takes ``transfer`` and every argument of its parent.
    """


class TransferPixArtModule(_CarriesTransfer, PixArtModule):
    """`baselines.pixart_alpha.PixArtModule` initialised from one of our checkpoints.

    Takes ``transfer`` and every argument of its parent.
    """


class TransferMMDiTModule(_CarriesTransfer, MMDiTModule):
    """`baselines.mmdit.MMDiTModule` initialised from one of our checkpoints.

    Takes ``transfer`` and every argument of its parent.
    """


class TransferProposedModule(_CarriesTransfer, ProposedModule):
    """`baselines.proposed.ProposedModule` initialised from one of our checkpoints.

    Takes ``transfer`` and every argument of its parent.
    """


class TransferLDMModule(_CarriesTransfer, LDMModule):
    """`baselines.ldm_unet.LDMModule` initialised from one of our checkpoints (UNets have no position tables).

    Takes ``transfer`` and every argument of its parent.
    """
