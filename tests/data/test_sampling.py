"""ResumableSampler: deterministic endless stream, rank split, and exact continuation after a save/restore."""

from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest

from data.sampling import ResumableSampler


def stream(sampler: ResumableSampler, n: int) -> list[int]:
    """The next ``n`` indices, iterating over as many ``__iter__`` calls (epochs) as needed."""
    out: list[int] = []
    while len(out) < n:
        out.extend(islice(iter(sampler), n - len(out)))
    return out


def test_each_epoch_is_a_seeded_permutation():
    sampler = ResumableSampler(10, seed=3)
    assert len(sampler) == 10
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # epoch 1 is a new permutation
    assert first == list(ResumableSampler(10, seed=3)) and first != list(ResumableSampler(10, seed=4))
    assert sampler.position == 20


def test_no_shuffle_is_identity_stream():
    assert stream(ResumableSampler(4, shuffle=False), 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_ranks_partition_the_global_stream():
    full = stream(ResumableSampler(12, seed=1), 36)
    ranks = [stream(ResumableSampler(12, seed=1, rank=r, world_size=3), 12) for r in range(3)]
    for r in range(3):
        assert ranks[r] == full[r::3]
    assert sorted(sum((rank[:4] for rank in ranks), [])) == list(range(12))  # one epoch, split disjointly
    assert len(ResumableSampler(12, rank=0, world_size=3)) == 4


@pytest.mark.parametrize("consumed", [3, 7, 10, 13, 25])
@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_continues_the_uninterrupted_stream(consumed, world_size):
    """Consume k indices, save, rebuild from the state: the continuation equals the uninterrupted stream.

    length=10 so every k >= 10 crosses an epoch boundary before or after the save.
    """
    reference = stream(ResumableSampler(10, seed=5, rank=world_size - 1, world_size=world_size), 40)
    sampler = ResumableSampler(10, seed=5, rank=world_size - 1, world_size=world_size)
    head = stream(sampler, consumed)
    state = sampler.state_dict()
    assert state == {"position": consumed}
    resumed = ResumableSampler(10, seed=5, rank=world_size - 1, world_size=world_size)
    resumed.load_state_dict(state)
    assert head + stream(resumed, 40 - consumed) == reference


def test_iter_yields_num_samples_from_position():
    sampler = ResumableSampler(10, seed=0, num_samples=4)
    sampler.position = 8
    got = list(sampler)
    assert len(got) == 4 and sampler.position == 12
    assert got == [sampler.index_at(k) for k in range(8, 12)]


def test_position_advances_only_as_indices_are_taken():
    sampler = ResumableSampler(10)
    iterator = iter(sampler)
    assert sampler.position == 0
    next(iterator), next(iterator)
    assert sampler.position == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"length": 10, "rank": 2, "world_size": 2}, {"length": 1, "world_size": 2}, {"length": 10, "num_samples": 0}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ResumableSampler(**kwargs)


def test_position_rejects_negative_and_fractional():
    sampler = ResumableSampler(5)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="position"):
            sampler.position = bad


def test_permutations_are_numpy_seeded_per_epoch():
    sampler = ResumableSampler(7, seed=11)
    assert stream(sampler, 14)[7:] == np.random.default_rng([11, 1]).permutation(7).tolist()


def test_datamodule_refuses_lightning_sampler_injection():
    from data.shapes import ShapesDataModule

    dm = ShapesDataModule(train_length=64, val_length=8, batch_size=4)
    dm.trainer = SimpleNamespace(
        global_rank=0,
        world_size=2,
        global_step=0,
        accumulate_grad_batches=1,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=True),
    )
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()
