"""Checkpoint files written so that a kill or a full disk never leaves a damaged ``last.ckpt``.

Lightning's `TorchCheckpointIO` serialises the whole checkpoint into memory, writes it to a temporary file in the
system temporary folder and moves it over the target. Where that folder and the run are on different filesystems (a
node-local ``/tmp`` and a cluster's shared run folder, the usual case), the move is a copy into the target itself:
a kill during it leaves a truncated checkpoint that resume then refuses, and a kill at any point leaves a
checkpoint-sized file in ``/tmp``. A full disk names the temporary file, not the checkpoint.

`AtomicCheckpointIO` writes beside the target instead (``.<name>.tmp-<pid>``, a name ``--ckpt_path last`` never
picks), flushes it to disk and renames it over the target with ``os.replace``: a reader, or a resumed run, sees the
previous checkpoint or the new one, whole. A failed write removes its temporary file and raises an ``OSError`` that
names the checkpoint. The CLI installs it in every trainer (`with_atomic_io`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.plugins.io import TorchCheckpointIO


def temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose writes are atomic on the target's own filesystem (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage: Lightning's fsspec transaction is the tool there
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(target)
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise OSError(
                error.errno,
                f"could not write checkpoint {target} ({error.strerror or error}); the previous "
                f"checkpoint there, if any, is unchanged",
            ) from error
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def with_atomic_io(plugins: Any) -> list[Any]:
    """``plugins`` (a Trainer argument: None, one plugin or a list) with `AtomicCheckpointIO` added when it names no
    checkpoint IO of its own."""
    found = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in found):
        return found
    return [*found, AtomicCheckpointIO()]
