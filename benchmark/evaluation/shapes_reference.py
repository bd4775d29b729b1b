"""The Shapes images a reference names (``shapes:train`` / ``shapes:val``), drawn with the data's own settings.

Apart from `benchmark.evaluation.evaluate` (which re-exports it) so that the metrics evaluate runs, such as the
cut-object rate, can use it without importing evaluate back.
"""

from __future__ import annotations

import inspect
from typing import Any


def shapes_reference_dataset(reference: str, resolution: int, datamodule: Any, length: int):
    """The Shapes images of the reference: the split named in ``reference`` with the data's own settings."""
    from data.shapes import Shapes

    split = reference.split(":", 1)[1] if ":" in reference else "train"
    source = getattr(datamodule, "train_set", None)
    kwargs: dict[str, Any] = {}
    if isinstance(source, Shapes):
        # Every option of the data's own Shapes (renderer settings), whatever options Shapes has now.
        params = inspect.signature(Shapes.__init__).parameters
        kwargs = {k: getattr(source, k) for k in params if k not in ("self", "split", "resolution", "length")
                  and hasattr(source, k)}  # fmt: skip
    return Shapes(split, resolution=resolution, length=length, **kwargs)


def is_shapes(datamodule: Any) -> bool:
    """Whether the data is the embedded Shapes (None: unknown, assumed Shapes as the protocol's reference says)."""
    if datamodule is None:
        return True
    from data.shapes import Shapes, ShapesDataModule

    return isinstance(datamodule, ShapesDataModule) or isinstance(getattr(datamodule, "train_set", None), Shapes)
