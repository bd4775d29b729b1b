"""CC12M-style webdataset shards: exact-once splitting over ranks x workers, resampling, bad samples, held-out split."""

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data.webdataset as wd
from data.bad_input import TooManyBadInputs
from data.crop_policy import CropPolicy

sys.path.insert(0, str(Path(__file__).parent))
from realdata_fixtures import make_shards  # noqa: E402


def _stream(shards, **kwargs):
    return wd.WebDatasetStream(shards, 16, CropPolicy("center", flip_p=0.5), seed=3, **kwargs)


def _read(stream, rank, world, worker, workers, monkeypatch, epoch=0):
    """Everything one (rank, worker) pair yields in an epoch, with the worker info the DataLoader would give."""
    stream.rank, stream.world_size, stream.epoch = rank, world, epoch
    monkeypatch.setattr(wd, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
    return list(stream)


def test_assign_shards_partitions_every_epoch():
    for epoch in range(3):
        parts = [assigned for r in range(2) for w in range(2) for assigned in [wd.assign_shards(10, epoch, r, 2, w, 2)]]
        assert sorted(i for p in parts for i in p) == list(range(10))
    assert wd.assign_shards(10, 0, 0, 2, 0, 2) != wd.assign_shards(10, 1, 0, 2, 0, 2)  # a new order each epoch


def test_two_ranks_two_workers_see_every_shard_and_sample_exactly_once(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, shards=6, per_shard=3)
    stream = _stream(shards)
    for epoch in range(2):
        seen = [
            (item["key"], item["caption"])
            for rank in range(2)
            for worker in range(2)
            for item in _read(stream, rank, 2, worker, 2, monkeypatch, epoch)
        ]
        assert len(seen) == 18 and len(set(seen)) == 18
        assert sorted(c for _, c in seen) == sorted(f"caption {s}-{i}" for s in range(6) for i in range(3))


def test_resampled_shard_frequencies_are_uniform(tmp_path):
    """Draws over 2 ranks x 2 workers x 50 epochs: each of 8 shards within 15% of its expected count (relative)."""
    draws = Counter(
        s
        for epoch in range(50)
        for rank in range(2)
        for worker in range(2)
        for s in wd.assign_shards(8, epoch, rank, 2, worker, 2, seed=0, resampled=100)
    )
    expected = 50 * 4 * 100 / 8  # 2500 per shard; binomial std about 47, so 15% is over 7 standard deviations
    assert set(draws) == set(range(8))
    assert all(abs(n - expected) / expected < 0.15 for n in draws.values()), draws
    # different (rank, worker) pairs draw different shard sequences
    assert wd.assign_shards(8, 0, 0, 2, 0, 2, resampled=20) != wd.assign_shards(8, 0, 1, 2, 0, 2, resampled=20)


def test_resampled_stream_gives_each_rank_the_same_number_of_samples(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, shards=3, per_shard=4)
    stream = _stream(shards, resampled=True, samples_per_epoch=10)
    counts = [len(_read(stream, r, 2, w, 2, monkeypatch)) for r in range(2) for w in range(2)]
    assert counts == [5, 5, 5, 5]


def test_corrupt_image_and_empty_caption_are_substituted_and_counted(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, shards=2, per_shard=4, bad={(0, 1): "corrupt", (1, 3): "empty"})
    stream = _stream(shards, counter=wd.BadInputCounter(max_fraction=0.5, min_items=0))
    items = _read(stream, 0, 1, 0, 1, monkeypatch)
    assert len(items) == 8  # shapes hold: every bad sample has a substitute
    captions = Counter(i["caption"] for i in items)
    assert "caption 0-1" not in captions and captions["caption 0-2"] == 2  # the next good sample of the shard
    assert "caption 1-3" not in captions and captions["caption 1-2"] == 2  # a shard's trailing bad: its last good
    assert sum(int(i["bad_input"]) for i in items) == 2
    assert stream.counter.reasons == {"corrupt_image": 1, "empty_caption": 1} and stream.counter.seen == 8


def test_too_many_bad_samples_stop_with_a_clear_message(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, shards=1, per_shard=4, bad={(0, 0): "corrupt", (0, 2): "empty"})
    stream = _stream(shards, counter=wd.BadInputCounter(max_fraction=0.2, min_items=2))
    with pytest.raises(TooManyBadInputs, match=r"2 of 3 items were bad.*max_bad_fraction"):
        _read(stream, 0, 1, 0, 1, monkeypatch)


def test_datamodule_batches_held_out_split_and_real_workers(tmp_path):
    make_shards(tmp_path / "train", shards=4, per_shard=3)
    make_shards(tmp_path / "val", shards=1, per_shard=3, bad={(0, 1): "empty"})
    dm = wd.WebDatasetDataModule(
        root=str(tmp_path), train_shards="train/*.tar", val_shards="val/{00000..00000}.tar", resolution=16,
        batch_size=2, num_workers=2, max_bad_fraction=0.5, min_items_before_stop=0,
    )  # fmt: skip
    dm.setup("fit")
    batches = list(dm.train_dataloader())  # two real loader workers, each reading two whole shards
    captions = [c for b in batches for c in b["caption"]]
    # 2 workers x 6 samples, batches of 2 per worker, nothing dropped: every sample exactly once
    assert sorted(captions) == sorted(f"caption {s}-{i}" for s in range(4) for i in range(3))
    batch = batches[0]
    assert batch["image"].shape == (2, 3, 16, 16) and batch["control"]["crop_size"].shape == (2, 2)
    assert dm.val_captions() == ["caption 0-0", "", "caption 0-2"]  # raw, the empty one included
    val = [dm.val_set[i] for i in range(len(dm.val_set))]
    assert [v["caption"] for v in val] == ["caption 0-0", "caption 0-2", "caption 0-2"]
    assert all(float(v["control"]["flip"]) == 0 for v in val)  # evaluation never flips
    # a centre crop at evaluation (the deterministic counterpart of the training policy)
    image = val[0]["image"]
    assert torch.equal(image, dm.val_set[0]["image"])


def test_crops_are_a_function_of_key_and_epoch(tmp_path, monkeypatch):
    shards = make_shards(tmp_path, shards=1, per_shard=3)
    stream = wd.WebDatasetStream(shards, 16, CropPolicy("random_crop", flip_p=0.5), seed=1)
    a, b = _read(stream, 0, 1, 0, 1, monkeypatch), _read(stream, 0, 1, 0, 1, monkeypatch)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    c = _read(stream, 0, 1, 0, 1, monkeypatch, epoch=1)
    offsets = lambda items: np.array([i["control"]["crop_coords"].numpy() for i in items])  # noqa: E731
    assert not np.array_equal(offsets(a), offsets(c)) or not all(
        float(x["control"]["flip"]) == float(y["control"]["flip"]) for x, y in zip(a, c, strict=True)
    )


def test_missing_root_and_shards_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("CC12M_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="CC12M_ROOT"):
        wd.WebDatasetDataModule(train_shards="a.tar").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"2 of 2 shards do not exist, e.g. .*00000\.tar"):
        wd.WebDatasetDataModule(root=str(tmp_path), train_shards="{00000..00001}.tar").setup("fit")


def test_val_captions_script_writes_the_protocol_prompts(tmp_path, monkeypatch):
    import importlib.util

    make_shards(tmp_path / "cc" / "val", shards=1, per_shard=3, bad={(0, 1): "empty"})
    monkeypatch.setenv("CC12M_ROOT", str(tmp_path / "cc"))
    spec = importlib.util.spec_from_file_location("wvc", Path(__file__).parents[2] / "scripts/write_val_captions.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = Path(__file__).parents[2] / "leaderboards/cc12m-256/pixart_alpha_xl_2.yaml"
    out = script.main(["--config", str(config), "--output", str(tmp_path / "captions.txt")])
    assert out.read_text() == "caption 0-0\ncaption 0-2\n"


def test_resampled_datamodule_yields_whole_batches_of_the_stated_epoch(tmp_path):
    make_shards(tmp_path, shards=3, per_shard=4)
    dm = wd.WebDatasetDataModule(
        root=str(tmp_path), train_shards="*.tar", resolution=16, batch_size=2, num_workers=2, resampled=True,
        samples_per_epoch=11,
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)  # 11 -> 5 whole batches, split 3 + 2 over the two workers
    assert len(batches) == len(loader) == 5 and all(b["image"].shape[0] == 2 for b in batches)
