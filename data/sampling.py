"""A resumable, endless index stream and the DataModule base that checkpoints its position.

`fit --ckpt_path last` must continue the data stream where the killed run was, not restart the epoch. Two pieces:

- `ResumableSampler`: an endless deterministic stream of indices (epoch ``e`` is a permutation seeded by
  ``(seed, e)``), split across ranks; each ``__iter__`` continues from its ``position``.
- `ResumableDataModule`: a LightningDataModule base whose ``state_dict`` records how many samples TRAINING consumed.
  DataLoader workers prefetch, so the sampler's own counter runs ahead of training; the consumed count is instead
  derived from the trainer's optimizer steps. Lightning stores the state in the checkpoint and calls
  ``load_state_dict`` before it builds the dataloaders on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from data.compat import uses_distributed_sampler


def epoch_permutation(seed: int, epoch: int, length: int) -> np.ndarray:
    """Epoch ``epoch`` of the shuffled training stream: the permutation of ``range(length)`` seeded by
    ``(seed, epoch)``. The latent cache builds in this order, so a run's first reads are the first items cached."""
    return np.random.default_rng([seed, epoch]).permutation(length)


class ResumableSampler(Sampler[int]):
    """Endless, deterministic, rank-split index stream that resumes from a position.

    The global stream concatenates epochs; epoch ``e`` is a permutation of ``range(length)`` seeded by
    ``(seed, e)`` (identity when ``shuffle=False``). Rank ``r`` takes every ``world_size``-th element starting at
    ``r``. Each ``__iter__`` yields ``len(self)`` indices, continuing from ``position`` (this rank's indices already
    consumed) and advancing it as it yields.

    Args:
        length: Dataset length.
        seed: Seed of the epoch permutations.
        shuffle: Permute each epoch; if False the stream is ``0, 1, ..., length - 1, 0, 1, ...``.
        rank: This process's rank.
        world_size: Number of ranks sharing the stream.
        num_samples: Indices per ``__iter__``; default ``length // world_size``. A DataModule rounds it down to whole
            batches so ``drop_last`` never discards indices the sampler already counted.
        with_position: Yield ``(index, p)`` pairs, ``p`` being the element's position in the global stream, for
            datasets that draw a per-epoch augmentation from it (a latent cache's flip).
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_samples: int | None = None,
        with_position: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if length < world_size:
            raise ValueError(f"length ({length}) must be >= world_size ({world_size})")
        self.length, self.seed, self.shuffle, self.rank, self.world_size = length, seed, shuffle, rank, world_size
        self.num_samples = length // world_size if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        self.with_position = with_position
        self._position = 0
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def position(self) -> int:
        """Number of this rank's indices already yielded (the next index is element ``position`` of its stream)."""
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        if int(value) != value or value < 0:
            raise ValueError(f"position must be a non-negative integer, got {value!r}")
        self._position = int(value)

    def __len__(self) -> int:
        return self.num_samples

    def index_at(self, k: int) -> int:
        """Element ``k`` of this rank's stream."""
        epoch, offset = divmod(k * self.world_size + self.rank, self.length)
        return int(self._permutation(epoch)[offset]) if self.shuffle else offset

    def _permutation(self, epoch: int) -> np.ndarray:
        # One cached epoch: a rank's consecutive indices leave an epoch at most once per boundary.
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_permutation(self.seed, epoch, self.length))
        return self._cached[1]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        for _ in range(self.num_samples):
            k = self._position
            index = self.index_at(k)
            self._position += 1  # before yielding, so `position` counts exactly what the consumer received
            yield (index, k * self.world_size + self.rank) if self.with_position else index

    def state_dict(self) -> dict[str, int]:
        """The stream position."""
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the stream position."""
        self.position = state["position"]


class _SyncedSampler(ResumableSampler):
    """A `ResumableSampler` that re-reads the consumed position at the start of every epoch.

    Prefetching, ``limit_train_batches`` or an early epoch end leave the sampler's counter ahead of training;
    re-syncing makes an uninterrupted run and a resumed one see the same stream.
    """

    def __init__(self, *args: Any, consumed: Callable[[], int | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = consumed

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        position = self._consumed()
        if position is not None:
            self.position = position
        return super().__iter__()


class _StatefulLoader(DataLoader):
    """A training DataLoader that exposes its DataModule's stream position as ``state_dict``.

    Lightning treats loaders with ``state_dict``/``load_state_dict`` as resumable: it then checkpoints them with the
    loop state and does not warn that a mid-epoch resume is unreliable (which, with our sampler, it is not).
    """

    owner: ResumableDataModule | None = None

    def state_dict(self) -> dict[str, int]:
        return self.owner.state_dict() if self.owner is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self.owner is not None and state:
            self.owner.load_state_dict(state)


class ResumableDataModule(LightningDataModule):
    """Base DataModule whose training stream position is saved in and restored from checkpoints.

    Subclasses build datasets and call `_train_loader` / `_eval_loader`.

    Args:
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the training shuffle.
    """

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self._loaded = {"position": 0, "world_size": 1, "global_step": 0}
        self._train_sampler: ResumableSampler | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def consumed_position(self) -> int:
        """Per-rank samples training has consumed: the sampler position a resumed run must start from."""
        _, world = self._rank_world()
        # The saved position is per rank; rescale it if the job resumes on a different number of ranks.
        base = self._loaded["position"] * self._loaded["world_size"] // world
        if self.trainer is None:
            return self._train_sampler.position if self._train_sampler is not None else base
        steps = max(self.trainer.global_step - self._loaded["global_step"], 0)
        return base + steps * self.trainer.accumulate_grad_batches * self.batch_size

    def _synced_position(self) -> int | None:
        return self.consumed_position() if self.trainer is not None else None

    def state_dict(self) -> dict[str, int]:
        """Consumed per-rank position, the world size it refers to, and the trainer step it was taken at."""
        _, world = self._rank_world()
        step = self.trainer.global_step if self.trainer is not None else self._loaded["global_step"]
        if self.trainer is None and self._train_sampler is not None:
            world = self._train_sampler.world_size
        return {"position": self.consumed_position(), "world_size": world, "global_step": step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position saved by `state_dict` (Lightning calls this before building the dataloaders)."""
        missing = {"position", "world_size", "global_step"} - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {sorted(missing)}; got {sorted(state)}")
        if state["position"] < 0 or state["world_size"] < 1:
            raise ValueError(f"invalid {type(self).__name__} state {state}")
        self._loaded = {key: int(state[key]) for key in ("position", "world_size", "global_step")}
        if self._train_sampler is not None:
            self._train_sampler.position = self.consumed_position()

    def _check_sampler_injection(self) -> None:
        # Lightning wraps any non-DistributedSampler in DistributedSamplerWrapper under DDP, which would split our
        # already rank-split stream a second time: each rank would silently see 1/world_size of its share.
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and uses_distributed_sampler(trainer):
            raise ValueError(
                f"{type(self).__name__} splits its training stream across ranks itself; "
                "construct the Trainer with use_distributed_sampler=False (trainer.use_distributed_sampler: false)"
            )

    def _train_loader(self, dataset: Dataset, length: int) -> DataLoader:
        """Training loader: `ResumableSampler` from the consumed position, whole batches only."""
        self._check_sampler_injection()
        rank, world = self._rank_world()
        per_rank = length // world
        if per_rank < self.batch_size:
            raise ValueError(f"{per_rank} training samples per rank cannot fill one batch of {self.batch_size}")
        sampler = _SyncedSampler(
            length,
            seed=self.seed,
            rank=rank,
            world_size=world,
            num_samples=per_rank // self.batch_size * self.batch_size,
            consumed=self._synced_position,
            with_position=getattr(dataset, "wants_stream_position", False),
        )
        sampler.position = self.consumed_position()
        self._train_sampler = sampler
        loader = _StatefulLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        loader.owner = self
        return loader

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Evaluation loader: fixed sequential order, every sample (last batch may be short).

        Under multi-rank runs (where `use_distributed_sampler=False` stops Lightning from sharding) the set is split
        across ranks in fixed order, as Lightning's own injection would: DistributedSampler without shuffling. Each
        item gains ``index``, its position in the dataset: per-sample seeds and file names follow it, and the repeats
        DistributedSampler pads the last batches with are recognised by it.
        """
        rank, world = self._rank_world()
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(
            _Indexed(dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class _Indexed(Dataset):
    """A dict-item dataset whose items also carry their ``index``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}
