"""Training randomness that does not depend on how a batch is split across ranks.

Under DDP each rank trains on its share of the global batch: rank ``r`` of ``W`` holds elements ``r, r + W, ...`` of
the data stream (`data.sampling`). If each rank drew its noise, timesteps and dropout from its own seed, two
processes would train on other draws than one process does on the same images, and a 2-GPU row could not be compared
with a 1-GPU row number for number.

`global_batch_draws` makes every rank draw as if it held the whole global batch and keep its own rows: inside it, a
random draw whose first dimension is the local batch size (``torch.randn(n, ...)``, ``torch.rand``,
``torch.randint(..., (n,))``, ``torch.randn_like(x)`` with ``len(x) == n``, ...) is drawn with first dimension
``n * W`` from the RNG state every rank shares, and rows ``r::W`` are returned. The global RNG then advances exactly
as in one process drawing for the whole batch, so every later draw agrees too, and each sample gets the numbers one
process would give it. Other draws (a scalar, a mask ratio) are drawn whole, as one process draws them.

The cost is ``W`` times the draws, which are small beside a forward pass. A draw whose first dimension equals the
local batch size by coincidence is still i.i.d. after slicing, so nothing is biased; it only stops matching the
one-process draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Draws given an output size, and draws shaped like a given tensor.
_SIZED = (torch.randn, torch.rand, torch.randint, torch.normal)
_LIKE = (torch.randn_like, torch.rand_like, torch.randint_like)


def _size_of(func: Callable, args: tuple, kwargs: dict) -> tuple[Sequence[int] | None, Callable[[Sequence[int]], Any]]:
    """The requested size of a sized draw and a function that rebuilds (args, kwargs) with another size."""
    if "size" in kwargs:
        return tuple(kwargs["size"]), lambda size: (args, {**kwargs, "size": tuple(size)})
    if func is torch.randint:  # randint(high, size) or randint(low, high, size)
        for i, arg in enumerate(args):
            if isinstance(arg, (tuple, list, torch.Size)):
                return tuple(arg), lambda size, i=i: ((*args[:i], tuple(size), *args[i + 1 :]), kwargs)
        return None, lambda size: (args, kwargs)
    if func is torch.normal:  # only normal(mean: float, std: float, size) draws a fresh shape
        if len(args) >= 3 and isinstance(args[2], (tuple, list, torch.Size)):
            return tuple(args[2]), lambda size: ((*args[:2], tuple(size), *args[3:]), kwargs)
        return None, lambda size: (args, kwargs)
    # randn / rand: randn(2, 3) or randn((2, 3))
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0]), lambda size: ((tuple(size),), kwargs)
    if args and all(isinstance(a, int) for a in args):
        return tuple(args), lambda size: (tuple(size), kwargs)
    return None, lambda size: (args, kwargs)


class _GlobalBatchDraws(TorchFunctionMode):
    def __init__(self, local: int, rank: int, world: int) -> None:
        super().__init__()
        self.local, self.rank, self.world = local, rank, world

    def _mine(self, drawn: torch.Tensor) -> torch.Tensor:
        return drawn[self.rank :: self.world]

    def _bigger(self, like: torch.Tensor) -> torch.Tensor:
        """An empty global-batch tensor laid out in memory like ``like``: a ``*_like`` draw fills memory in order, so
        a channels-last latent (what a VAE's convolutions return) must stay channels-last to get one process's
        values."""
        order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), d))  # outermost dimension first
        shape = (self.local * self.world, *like.shape[1:])
        base = like.new_empty([shape[d] for d in order])
        return base.permute([order.index(d) for d in range(like.dim())])

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func in _SIZED:
            size, with_size = _size_of(func, args, kwargs)
            if size and size[0] == self.local:
                new_args, new_kwargs = with_size((self.local * self.world, *size[1:]))
                return self._mine(func(*new_args, **new_kwargs))
        elif func in _LIKE and args and isinstance(args[0], torch.Tensor):
            like = args[0]
            if like.dim() >= 1 and like.shape[0] == self.local:
                return self._mine(func(self._bigger(like), *args[1:], **kwargs))
        return func(*args, **kwargs)


@contextmanager
def global_batch_draws(local: int, rank: int, world: int) -> Iterator[None]:
    """Inside, per-sample random draws of a rank holding ``local`` samples of a ``local * world`` global batch
    (interleaved: rank ``r`` holds rows ``r::world``) equal one process's draws for the whole batch.

    A no-op for one process. Every rank must enter it with the same RNG state (seeded without the rank).
    """
    if world <= 1:
        yield
        return
    if not 0 <= rank < world or local < 1:
        raise ValueError(f"need 0 <= rank < world and local >= 1, got rank={rank}, world={world}, local={local}")
    with _GlobalBatchDraws(local, rank, world):
        yield
