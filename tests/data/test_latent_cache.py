"""The latent cache: exact round trip, refused mismatches, resumable builds, flip moments, locked builders, training."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.latent_cache as lc
import data.latent_key
import data.latent_store
from data.autoencoder import Autoencoder
from data.imagefolder import ImageFolderDataset
from data.sampling import ResumableSampler
from data.shapes import Shapes

ROOT = Path(__file__).resolve().parents[2]
SHAPES_YAML = str(ROOT / "leaderboards/shapes/dit.yaml")


@pytest.fixture(scope="module")
def autoencoder():
    return Autoencoder("embedded:shapes-vae")


def _posterior(autoencoder, images):
    with torch.no_grad():
        dist = autoencoder.vae.encode(images).latent_dist
    return dist.mean, dist.std


def _all_indices(directory: Path) -> list[int]:
    manifest = lc.read_manifest(directory)
    out = []
    for shard in manifest["shards"]:
        from safetensors.torch import load_file

        out += load_file(directory / shard["file"])["index"].tolist()
    return out


def test_round_trip_matches_the_dataset_and_the_encoder(tmp_path, autoencoder):
    shapes = Shapes("train", 32, length=23, seed=3)
    manifest = lc.build_cache(shapes, autoencoder, tmp_path / "c", shard_size=10, batch_size=8, progress=False)
    assert manifest["complete"] and [s["count"] for s in manifest["shards"]] == [10, 10, 3]
    cached = lc.LatentCacheDataset(tmp_path / "c", key=lc.cache_key(shapes, autoencoder))
    assert len(cached) == 23 and cached.num_views == 1
    images = torch.stack([shapes[i]["image"] for i in range(23)])
    mean, std = _posterior(autoencoder, images)
    for i in range(23):
        item, ref = cached[i], shapes[i]
        torch.testing.assert_close(item["latent_mean"], mean[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["latent_std"], std[i], atol=1e-6, rtol=1e-4)
        assert item["class_label"] == ref["class_label"] and item["caption"] == ref["caption"]
        for name, value in ref["control"].items():
            torch.testing.assert_close(item["control"][name], value, rtol=0, atol=0)
    # The stored moments sampled under a seed give the latent the uncached encode draws under that seed.
    torch.manual_seed(7)
    direct = autoencoder.encode(images[:4])
    batch = torch.utils.data.default_collate([cached[i] for i in range(4)])
    torch.manual_seed(7)
    from_cache = lc.sample_latent(autoencoder, batch["latent_mean"], batch["latent_std"])
    torch.testing.assert_close(from_cache, direct, atol=1e-5, rtol=1e-5)


def test_mismatched_manifest_is_refused_naming_the_key(tmp_path, autoencoder):
    built = Shapes("train", 32, length=6, min_scale=0.8)
    lc.build_cache(built, autoencoder, tmp_path / "c", progress=False)
    other = Shapes("train", 32, length=6, min_scale=0.5)
    with pytest.raises(lc.CacheMismatchError, match=r"options\.min_scale: cache has 0\.8, config wants 0\.5"):
        lc.LatentCacheDataset(tmp_path / "c", key=lc.cache_key(other, autoencoder))
    with pytest.raises(lc.CacheMismatchError, match=r"options\.length"):
        lc.build_cache(Shapes("train", 32, length=7), autoencoder, tmp_path / "c", progress=False)
    # The default location is named by the key, so another config never even meets this cache.
    assert lc.default_cache_dir(lc.cache_key(built, autoencoder)) != lc.default_cache_dir(
        lc.cache_key(other, autoencoder)
    )


def test_killed_build_resumes_with_every_item_exactly_once(tmp_path, autoencoder, monkeypatch):
    shapes = Shapes("train", 32, length=25, seed=1)
    real_save, calls = data.latent_store.save_file, []

    def dying_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"half a shard")  # the kill happens mid-write of the third shard
            raise KeyboardInterrupt("killed")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(data.latent_store, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        lc.build_cache(shapes, autoencoder, tmp_path / "c", shard_size=6, batch_size=4, progress=False)
    monkeypatch.setattr(data.latent_store, "save_file", real_save)
    partial = lc.read_manifest(tmp_path / "c")
    assert not partial["complete"] and len(partial["shards"]) == 2
    with pytest.raises(FileNotFoundError, match="no complete latent cache"):
        lc.LatentCacheDataset(tmp_path / "c")
    # A corrupt recorded shard is rebuilt too (from that shard on), not trusted.
    (tmp_path / "c" / partial["shards"][1]["file"]).write_bytes(b"garbage")
    resumed = lc.build_cache(shapes, autoencoder, tmp_path / "c", shard_size=6, batch_size=4, progress=False)
    assert resumed["complete"] and _all_indices(tmp_path / "c") == list(range(25))
    straight = lc.build_cache(shapes, autoencoder, tmp_path / "d", shard_size=6, batch_size=4, progress=False)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in straight["shards"]]


def _folder(root: Path) -> list[tuple[str, int]]:
    samples = []
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            array = np.random.default_rng(10 * c + i).integers(0, 256, (20 + 8 * i, 28, 3), dtype=np.uint8)
            path = root / name / f"{i}.png"
            Image.fromarray(array).save(path)
            samples.append((str(path), c))
    return samples


def test_imagefolder_stores_moments_of_the_image_and_its_flip(tmp_path, autoencoder):
    dataset = ImageFolderDataset(_folder(tmp_path / "img"), ["a", "b"], resolution=16, flip_p=0.5)
    lc.build_cache(dataset, autoencoder, tmp_path / "c", shard_size=4, progress=False)
    cached = lc.LatentCacheDataset(tmp_path / "c", flip_p=0.5, seed=0)
    assert cached.num_views == 2 and cached.manifest["key"]["flip_moments"] is True
    plain = torch.stack([dataset.cache_views(i)[0]["image"] for i in range(len(dataset))])
    mean, _ = _posterior(autoencoder, plain)
    mean_flipped, _ = _posterior(autoencoder, torch.flip(plain, dims=[-1]))
    seen = set()
    for position in range(40):
        i = position % len(dataset)
        item = cached[(i, position)]
        flip = bool(item["control"]["flip"])
        seen.add(flip)
        torch.testing.assert_close(item["latent_mean"], (mean_flipped if flip else mean)[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached[(i, position)]["latent_mean"], item["latent_mean"])  # a pure function
        ref = dataset.cache_views(i)[0]["control"]
        torch.testing.assert_close(item["control"]["crop_size"], ref["crop_size"])
    assert seen == {False, True}  # the flip stays a random augmentation
    no_flip = ImageFolderDataset(dataset.samples, ["a", "b"], resolution=16, flip_p=0.0)
    assert no_flip.cache_key()["flip_moments"] is False and len(no_flip.cache_views(0)) == 1


def test_a_stream_ordered_cache_holds_what_the_sampler_reads_first_and_grows(tmp_path, autoencoder):
    shapes = Shapes("train", 32, length=30, seed=4)
    build = {"shard_size": 8, "batch_size": 8, "progress": False}
    manifest = lc.build_cache(shapes, autoencoder, tmp_path / "c", order_seed=4, upto=12, **build)
    assert not manifest["complete"] and lc.covered_items(manifest) == 12
    first = [ResumableSampler(30, seed=4).index_at(k) for k in range(12)]
    assert _all_indices(tmp_path / "c") == first  # the sampler's first reads, in its order
    cached = lc.LatentCacheDataset(tmp_path / "c", require_complete=False)
    lc.build_cache(shapes, autoencoder, tmp_path / "full", **build)
    reference = lc.LatentCacheDataset(tmp_path / "full")
    for i in first:
        torch.testing.assert_close(cached[i]["latent_mean"], reference[i]["latent_mean"], atol=1e-5, rtol=1e-5)
        assert cached[i]["class_label"] == reference[i]["class_label"]
    missing = next(i for i in range(30) if i not in first)
    with pytest.raises(KeyError, match="holds the first 12 of 30 items"):
        cached[missing]
    with pytest.raises(FileNotFoundError, match="no complete latent cache"):
        lc.LatentCacheDataset(tmp_path / "c")
    # A run that reads further extends the cache: the shards already written stay as they are.
    longer = lc.build_cache(shapes, autoencoder, tmp_path / "c", order_seed=4, upto=20, **build)
    assert lc.covered_items(longer) == 20
    assert [s["sha256"] for s in longer["shards"][:2]] == [s["sha256"] for s in manifest["shards"][:2]]
    # A run under another seed reads other items first: the cache is completed rather than trusted.
    other = lc.build_cache(shapes, autoencoder, tmp_path / "c", order_seed=5, upto=3, **build)
    assert other["complete"] and sorted(_all_indices(tmp_path / "c")) == list(range(30))


def test_sampler_passes_the_global_stream_position():
    sampler = ResumableSampler(10, seed=2, rank=1, world_size=2, with_position=True)
    pairs = list(sampler)
    assert pairs == [(sampler.index_at(k), 2 * k + 1) for k in range(5)]


def test_a_second_builder_waits_and_then_reads_the_finished_cache(tmp_path, autoencoder):
    shapes = Shapes("train", 32, length=5)
    directory = tmp_path / "c"
    done = threading.Event()
    result = {}

    def second():
        result["manifest"] = lc.build_cache(shapes, autoencoder, directory, progress=False)
        done.set()

    with lc.build_lock(directory):
        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.5), "the second builder did not wait for the lock"
        # The first builder (this test) writes the cache while holding the lock, bypassing build_cache's own lock.
        directory.mkdir()
        manifest = {"key": lc.cache_key(shapes, autoencoder), "num_items": 5, "shard_size": 8, "shards": []}
        lc._write_shards(shapes, autoencoder, directory, manifest, 5, 8, 0, torch.device("cpu"), False)
        manifest["complete"] = True
        lc._atomic_write_json(directory / lc.MANIFEST, manifest)
        mtime = (directory / "shard-00000.safetensors").stat().st_mtime_ns
    thread.join(10)
    assert done.is_set() and result["manifest"]["complete"]
    assert (directory / "shard-00000.safetensors").stat().st_mtime_ns == mtime  # read, not rewritten


# ------------------------------------------------------------------------------------------------ through the CLI
FAST = [
    "--trainer.limit_val_batches=1",
    "--data.init_args.batch_size=8",
    "--data.init_args.num_workers=0",
    "--data.init_args.train_length=64",
    "--model.init_args.sampler.init_args.steps=4",
    "--trainer.val_check_interval=2",
]
CHECKPOINT_EVERY_2 = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: 0}
"""


def _fit(tmp_path, *extra):
    from benchmark.cli import main

    override = tmp_path / "every2.yaml"
    override.write_text(CHECKPOINT_EVERY_2)
    main(["fit", "--config", SHAPES_YAML, "--config", str(override), *FAST, *extra])


def test_shipped_config_builds_on_first_fit_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """`latent_cache: auto` builds under runs/cache once; 4 steps + resume to 6 equal 6 straight steps."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(lc.ENV_ROOT, raising=False)
    _fit(tmp_path, "--trainer.max_steps=6")
    assert "building latent cache" in capsys.readouterr().out
    (cache,) = [p for p in (tmp_path / "runs/cache").iterdir() if p.is_dir()]
    assert lc.read_manifest(cache)["complete"] and cache.name.startswith("shapes-train-")
    run = tmp_path / "runs/dit-DiTModule"
    straight = torch.load(run / "version_0/checkpoints/last.ckpt", weights_only=True)
    _fit(tmp_path, "--trainer.max_steps=4")  # a new run: version_1
    _fit(tmp_path, "--trainer.max_steps=6", "--ckpt_path=last")  # resumes the newest run, in its own folder
    out = capsys.readouterr().out
    assert "building latent cache" not in out and "training from latent cache" in out
    resumed = torch.load(run / "version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 6
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_auto_caches_what_a_run_reads_and_a_longer_run_extends_it(tmp_path, monkeypatch, capsys):
    """A 1-step run (batch 8, no workers) reads 8 items: its cache holds those plus 4 batches of margin, 40 of 64;
    a 3-step run extends it to 56; the explicit builder caches all 64; a cache of another config is refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(lc.ENV_ROOT, raising=False)
    _fit(tmp_path, "--trainer.max_steps=1")
    out = capsys.readouterr().out
    assert "building latent cache" in out and "40 of 64 training items, the ones this run reads" in out
    (cache,) = [p for p in (tmp_path / "runs/cache").iterdir() if p.is_dir()]
    manifest = lc.read_manifest(cache)
    assert not manifest["complete"] and lc.covered_items(manifest) == 40
    _fit(tmp_path, "--trainer.max_steps=3")
    out = capsys.readouterr().out
    assert "extending latent cache" in out and "from 40 items to 56 of 64" in out and "training from latent" in out
    _fit(tmp_path, "--trainer.max_steps=2")  # reads less than the cache holds: no build at all
    out = capsys.readouterr().out
    assert "latent cache built" not in out and "training from latent cache" in out
    from benchmark.cli import main

    main(["cache-latents", "--config", SHAPES_YAML, *FAST, "--output", str(tmp_path / "c")])
    summary = capsys.readouterr().out
    assert "64 items, 1 shards" in summary and "items/s" in summary
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["complete"]
    with pytest.raises(lc.CacheMismatchError, match=r"options\.seed"):
        _fit(
            tmp_path,
            "--trainer.max_steps=1",
            f"--data.init_args.latent_cache={tmp_path / 'c'}",
            "--seed_everything=0",
            "--data.init_args.seed=5",
        )


def test_auto_reads_a_leaderboard_budget_instead_of_max_steps():
    """A leaderboard run has no max_steps: 'auto' must plan from its budget callback, not assume an endless run."""
    from types import SimpleNamespace

    from benchmark.callbacks.budget import ComputeBudget
    from data.latent_cache import _planned_items

    budget = ComputeBudget(train_flops=1e10, flops_per_image=1e6)  # 10,000 images
    trainer = SimpleNamespace(
        fast_dev_run=False, max_steps=-1, accumulate_grad_batches=1, world_size=2, callbacks=[budget]
    )
    assert _planned_items(trainer, batch_size=32) == 157 * 64  # ceil(10,000 / 64) steps of a global batch of 64
    trainer.callbacks = []
    assert _planned_items(trainer, batch_size=32) == float("inf")


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of the project's floor-1 packages that `data.sources` hashes instead of the checkout."""
    import shutil

    import data.sources as sources

    root = tmp_path / "src"
    for package in ("data", "conditioning"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    monkeypatch.setattr(sources, "REPO_ROOT", root)
    return root


def test_a_change_to_the_code_that_draws_or_encodes_the_items_is_a_new_cache(tmp_path, autoencoder, source_copy):
    shapes = Shapes("train", 32, length=6)
    key = lc.cache_key(shapes, autoencoder)
    lc.build_cache(shapes, autoencoder, tmp_path / "c", progress=False)
    (source_copy / "data/imagefolder.py").write_text("# another dataset's module: not this cache's code\n")
    assert lc.cache_key(shapes, autoencoder) == key
    for changed in ("data/shapes.py", "data/transforms.py", "data/autoencoder.py"):
        path = source_copy / changed
        original = path.read_text()
        path.write_text(original + "\n# changed\n")
        new_key = lc.cache_key(shapes, autoencoder)
        assert new_key["code"]["source"] != key["code"]["source"], changed
        assert lc.default_cache_dir(new_key) != lc.default_cache_dir(key)
        with pytest.raises(lc.CacheMismatchError, match=r"code\.source"):
            lc.LatentCacheDataset(tmp_path / "c", key=new_key)
        path.write_text(original)
    assert lc.cache_key(shapes, autoencoder) == key
    assert key["code"]["versions"]["Pillow"] and key["code"]["versions"]["diffusers"]


# Every name `data.latent_cache` offered before its key and store moved out (issue 25), by its new home.
_MOVED = {
    data.latent_key: (
        "FORMAT_VERSION ENV_ROOT DEFAULT_ROOT CacheMismatchError default_cache_root weights_sha256 cache_key "
        "cache_code key_digest default_cache_dir key_differences _check_key"
    ),
    data.latent_store: (
        "MANIFEST CONTROL_LAYOUT VERIFY_HASH_BELOW CacheCorruptError LatentCacheDataset read_manifest build_lock "
        "build_cache covered_items cache_order sample_latent _atomic_write_json _sha256_file _verified_prefix "
        "_write_shards"
    ),
}


@pytest.mark.parametrize("home", sorted(_MOVED, key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_old_import_paths_keep_working(home):
    """``data.latent_cache.<name>`` is the very object of the key / store module it moved to, and the public ones
    are in ``__all__``; ``data.<name>`` (lazy exports) still resolve."""
    import data

    for name in _MOVED[home].split():
        assert getattr(lc, name) is getattr(home, name), name
        assert name.startswith("_") or name in lc.__all__, name
    assert data.LatentCacheDataset is data.latent_store.LatentCacheDataset
    assert data.build_cache is data.latent_store.build_cache


def test_budget_steps_ask_the_callback_without_importing_the_engine():
    """The glue asks a budget callback for its planned steps, handing it the module to measure FLOPs from."""
    seen = []

    class Budget:
        def planned_steps(self, global_batch, pl_module):
            seen.append((global_batch, pl_module))
            return 7

    class Trainer:
        max_steps, fast_dev_run, accumulate_grad_batches, world_size = -1, False, 1, 2
        lightning_module = "the module"
        callbacks = [object(), Budget()]

    assert lc._planned_items(Trainer(), 4) == 7 * 8
    assert seen == [(8, "the module")]
