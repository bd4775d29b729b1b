"""Caches at scale: parallel latent caching over ImageFolder and tar shards, kill + resume, the text-embedding cache."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

import data.latent_cache as lc
import data.parallel_cache as pc
import data.text_cache as tc
from conditioning.conditioner import Conditioner
from conditioning.text import TextEncoder
from data.autoencoder import Autoencoder
from data.bad_input import BadInputCounter
from data.crop_policy import CropPolicy
from data.imagenet import ImageNetDataModule
from data.webdataset import TarIndexDataset

sys.path.insert(0, str(Path(__file__).parent))
from realdata_fixtures import make_imagefolder, make_shards  # noqa: E402


def tiny_autoencoder(folder: Path) -> Autoencoder:
    """A randomly initialised two-level AutoencoderKL (factor 2, 4 latent channels), saved and loaded from config."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )
    vae.save_pretrained(folder)
    return Autoencoder(str(folder))


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    return tiny_autoencoder(tmp_path_factory.mktemp("vae"))


@pytest.fixture
def imagenet(tmp_path):
    dm = ImageNetDataModule(
        root=str(make_imagefolder(tmp_path / "in")), resolution=16, num_workers=0, num_classes=3,
        max_bad_fraction=0.5, min_items_before_stop=4,
    )  # fmt: skip
    dm.setup("validate")
    return dm.train_set


def _items(directory):
    cached = lc.LatentCacheDataset(directory, flip_p=0.0)
    return [cached[i] for i in range(len(cached))]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["latent_mean"], y["latent_mean"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x["latent_std"], y["latent_std"], atol=1e-5, rtol=1e-5)
        assert x["caption"] == y["caption"] and int(x["class_label"]) == int(y["class_label"])
        assert all(torch.equal(x["control"][k], y["control"][k]) for k in x["control"])


def test_two_ranks_build_the_cache_one_device_builds(tmp_path, imagenet, autoencoder):
    single = lc.build_cache(imagenet, autoencoder, tmp_path / "one", shard_size=4, batch_size=4, progress=False)
    for rank in (1, 0):  # any order: each rank writes only its own part
        pc.build_parallel(imagenet, autoencoder, tmp_path / "two", rank, 2, merge=False, shard_size=2, progress=False)
    merged = pc.merge_parts(tmp_path / "two", 2, lc.cache_key(imagenet, autoencoder))
    assert merged["key"] == single["key"] and merged["num_items"] == single["num_items"] == len(imagenet)
    assert [s["start"] for s in merged["shards"]] == list(range(0, 12, 2))
    _assert_same(_items(tmp_path / "one"), _items(tmp_path / "two"))
    # two views per item (the image and its flip), the cache's flip draw picks one
    cached = lc.LatentCacheDataset(tmp_path / "two", key=lc.cache_key(imagenet, autoencoder))
    assert cached.num_views == 2


def test_merge_refuses_missing_parts(tmp_path, imagenet, autoencoder):
    pc.build_part(imagenet, autoencoder, tmp_path / "c", 0, 2, shard_size=4, progress=False)
    with pytest.raises(FileNotFoundError, match=r"part-00001-of-00002 is not complete; run rank 1 again"):
        pc.merge_parts(tmp_path / "c", 2, lc.cache_key(imagenet, autoencoder))


class _Killed(RuntimeError):
    pass


class _DiesAfter:
    """The dataset, except that its ``n``-th ``cache_views`` call kills the build."""

    def __init__(self, dataset, n):
        self.dataset, self.n, self.calls = dataset, n, 0

    def __len__(self):
        return len(self.dataset)

    def cache_key(self):
        return self.dataset.cache_key()

    def cache_views(self, index):
        self.calls += 1
        if self.calls == self.n:
            raise _Killed(f"killed at item {index}")
        return self.dataset.cache_views(index)


def test_a_killed_parallel_build_resumed_gives_every_item_exactly_once(tmp_path, imagenet, autoencoder):
    dying = _DiesAfter(imagenet, n=4)  # rank 0 has items 0..5: shard [0, 2) is written, the kill hits the second
    with pytest.raises(_Killed):
        pc.build_part(dying, autoencoder, tmp_path / "c", 0, 2, shard_size=2, batch_size=1, progress=False)
    part = lc.read_manifest(tmp_path / "c" / pc.part_name(0, 2))
    assert not part["complete"] and [s["count"] for s in part["shards"]] == [2]
    # the rerun of both ranks resumes after the verified shard; the last one to finish merges
    for rank in (0, 1):
        pc.build_parallel(imagenet, autoencoder, tmp_path / "c", rank, 2, shard_size=2, progress=False)
    manifest = lc.read_manifest(tmp_path / "c")
    assert manifest["complete"] and sum(s["count"] for s in manifest["shards"]) == len(imagenet)
    starts = [s["start"] for s in manifest["shards"]]
    assert starts == sorted(set(starts)) and starts == list(range(0, len(imagenet), 2))
    lc.build_cache(imagenet, autoencoder, tmp_path / "ref", shard_size=12, progress=False)
    _assert_same(_items(tmp_path / "ref"), _items(tmp_path / "c"))


def test_tar_shards_are_cached_by_whole_shards_per_rank(tmp_path, autoencoder):
    shards = make_shards(tmp_path / "wds", shards=3, per_shard=3, bad={(1, 0): "corrupt"})
    counter = BadInputCounter(max_fraction=0.5, min_items=0)
    dataset = TarIndexDataset(shards, 16, CropPolicy("center", flip_p=0.5), "train", counter)
    parts = dataset.split_parts(2)
    assert [p.shards for p in parts] == [shards[:2], shards[2:]]  # each rank opens only its own shards
    for rank in (0, 1):
        pc.build_parallel(dataset, autoencoder, tmp_path / "c", rank, 2, merge=False, progress=False)
    merged = pc.merge_parts(tmp_path / "c", 2, lc.cache_key(dataset, autoencoder))
    captions = [item["caption"] for item in _items(tmp_path / "c")]
    assert merged["num_items"] == 9
    expected = [f"caption {s}-{i}" for s in range(3) for i in range(3)]
    expected[3] = "caption 1-1"  # the corrupt sample 1-0 is replaced by the next readable one
    assert captions == expected
    assert tc.latent_cache_captions(tmp_path / "c") == captions


@pytest.fixture(scope="module")
def conditioner():
    encoder = TextEncoder("embedded:shapes-clip", kind="clip", max_length=16)
    return Conditioner(semantic="caption", text_encoders={"clip": encoder}, semantic_dropout=0.0)


CAPTIONS = ["a red circle", "a blue square next to a green triangle", "x", "a large yellow star", "an arrow"]


def test_text_cache_round_trip_feeds_the_conditioner(tmp_path, conditioner):
    keys = [f"k{i}" for i in range(len(CAPTIONS))]
    tc.build_text_cache(conditioner, CAPTIONS, tmp_path / "t", keys=keys, shard_size=5, batch_size=5)
    cache = tc.TextCache(tmp_path / "t", conditioner)
    assert len(cache) == 5 and cache.index_of("k3") == 3
    batch = torch.utils.data.default_collate([cache[i] for i in range(5)])
    assert set(batch["clip"]) == {"tokens", "mask", "pooled"} and batch["clip"]["tokens"].shape == (5, 16, 64)
    from_cache = conditioner({"caption": CAPTIONS, "text": batch}, train=False)
    encoded = conditioner({"caption": CAPTIONS}, train=False)
    assert torch.equal(from_cache.tokens, encoded.tokens) and torch.equal(from_cache.token_mask, encoded.token_mask)
    torch.testing.assert_close(from_cache.pooled, encoded.pooled, atol=0, rtol=0)
    # the cache replaces the encoders: a batch with only the states (no captions) conditions the same way
    text_only = conditioner({"text": batch}, train=False)
    assert torch.equal(text_only.tokens, encoded.tokens)


def test_text_cache_resumes_after_a_kill_and_refuses_other_encoders(tmp_path, conditioner, monkeypatch):
    real = tc._write_shard
    calls = {"n": 0}

    def dies_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "_write_shard", dies_on_second)
    with pytest.raises(_Killed):
        tc.build_text_cache(conditioner, CAPTIONS, tmp_path / "t", shard_size=2, batch_size=2)
    monkeypatch.setattr(tc, "_write_shard", real)
    manifest = tc.build_text_cache(conditioner, CAPTIONS, tmp_path / "t", shard_size=2, batch_size=2)
    assert [(s["start"], s["count"]) for s in manifest["shards"]] == [(0, 2), (2, 2), (4, 1)]
    tc.build_text_cache(conditioner, CAPTIONS, tmp_path / "ref", shard_size=2, batch_size=2)
    resumed, ref = tc.TextCache(tmp_path / "t"), tc.TextCache(tmp_path / "ref")
    for i in range(5):
        assert all(torch.equal(resumed[i]["clip"][f], ref[i]["clip"][f]) for f in ("tokens", "mask", "pooled"))
    other = Conditioner(
        semantic="caption", text_encoders={"clip": TextEncoder("embedded:shapes-clip", kind="clip", max_length=8)}
    )
    with pytest.raises(lc.CacheMismatchError, match="max_length"):
        tc.TextCache(tmp_path / "t", other)


def test_cache_latents_command_builds_parts_and_merges(tmp_path, autoencoder, capsys):
    """``ldmbench cache-latents --rank R --world-size W`` per job (e.g. a SLURM array), then ``--merge``."""
    import yaml

    from benchmark.cli import main

    root = make_imagefolder(tmp_path / "in")
    config = {
        "model": {
            "class_path": "baselines.dit.DiTModule",
            "init_args": {"size": "DiT-tiny/2", "autoencoder": {"init_args": {"pretrained": autoencoder.name}}},
        },
        "data": {
            "class_path": "data.imagenet.ImageNetDataModule",
            "init_args": {
                "root": str(root),
                "resolution": 16,
                "num_workers": 0,
                "num_classes": 3,
                "max_bad_fraction": 0.5,
                "min_items_before_stop": 4,
            },  # fmt: skip
        },
    }
    path = tmp_path / "entry.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "cache"
    main(["cache-latents", "--config", str(path), "--output", str(out), "--rank", "1", "--world-size", "2"])
    assert "part-00001-of-00002: 6 items" in capsys.readouterr().out and lc.read_manifest(out) is None
    with pytest.raises(FileNotFoundError, match="run rank 0 again"):
        main(["cache-latents", "--config", str(path), "--output", str(out), "--world-size", "2", "--merge"])
    main(["cache-latents", "--config", str(path), "--output", str(out), "--rank", "0", "--world-size", "2"])
    assert f"latent cache {out}: 12 items, 2 shards" in capsys.readouterr().out  # rank 0 finished last: it merged
    assert lc.read_manifest(out)["complete"] and len(lc.LatentCacheDataset(out)) == 12
