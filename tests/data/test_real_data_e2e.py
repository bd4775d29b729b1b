"""End to end on the CPU: real-layout data with bad items -> DataModules -> tiny VAE -> caches -> fast_dev_run."""

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import data.latent_cache as lc
import data.parallel_cache as pc
import data.text_cache as tc
from baselines.dit import DiTModule
from baselines.pixart_alpha import PixArtModule
from conditioning.conditioner import Conditioner
from conditioning.text import TextEncoder
from data.crop_policy import CropPolicy
from data.imagenet import ImageNetDataModule
from data.webdataset import WebDatasetDataModule

sys.path.insert(0, str(Path(__file__).parent))
from realdata_fixtures import make_imagefolder, make_shards  # noqa: E402
from test_caches_at_scale import tiny_autoencoder  # noqa: E402


def _trainer():
    return Trainer(
        fast_dev_run=True, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


class _Seen:
    """Records the training batches a DataModule hands to the model (after its own bad-input accounting)."""

    def __init__(self, datamodule):
        self.batches = []
        original = datamodule.on_after_batch_transfer

        def hook(batch, dataloader_idx):
            batch = original(batch, dataloader_idx)
            if datamodule.trainer.training:
                self.batches.append(batch)
            return batch

        datamodule.on_after_batch_transfer = hook


def test_imagenet_folder_through_parallel_cache_into_dit(tmp_path):
    autoencoder = tiny_autoencoder(tmp_path / "vae")
    root = make_imagefolder(tmp_path / "imagenet")  # one truncated JPEG among 12 training images
    data = dict(root=str(root), resolution=16, batch_size=4, num_workers=0, num_classes=3, max_bad_fraction=0.5,
                min_items_before_stop=4)  # fmt: skip
    builder = ImageNetDataModule(**data)
    builder.setup("validate")
    for rank in (0, 1):  # two ranks encode disjoint halves; the last one merges the manifest
        pc.build_parallel(builder.train_set, autoencoder, tmp_path / "cache", rank, 2, shard_size=4, progress=False)
    assert lc.read_manifest(tmp_path / "cache")["complete"]

    dm = ImageNetDataModule(**data, latent_cache=str(tmp_path / "cache"))
    model = DiTModule(size="DiT-tiny/2", autoencoder=autoencoder, resolution=16, num_classes=3)
    seen = _Seen(dm)
    _trainer().fit(model, datamodule=dm)
    assert isinstance(dm.cached_train_set, lc.LatentCacheDataset)  # the merged cache was accepted by key
    batch = seen.batches[0]
    assert batch["latent_mean"].shape == (4, 4, 8, 8) and "image" not in batch
    assert all(torch.isfinite(p).all() for p in model.backbone.parameters())


def test_webdataset_shards_through_latent_and_text_caches_into_pixart(tmp_path):
    autoencoder = tiny_autoencoder(tmp_path / "vae")
    make_shards(tmp_path / "cc" / "train", shards=3, per_shard=4, bad={(0, 1): "corrupt", (2, 3): "empty"})
    make_shards(tmp_path / "cc" / "val", shards=1, per_shard=4)
    data = dict(root=str(tmp_path / "cc"), train_shards="train/*.tar", val_shards="val/*.tar", resolution=16,
                batch_size=4, num_workers=0, crop_policy=CropPolicy("center", flip_p=0.5), max_bad_fraction=0.5,
                min_items_before_stop=0)  # fmt: skip
    conditioner = Conditioner(
        semantic="caption",
        semantic_dropout=0.1,
        text_encoders={"clip": TextEncoder("embedded:shapes-clip", kind="clip", max_length=16)},
    )
    # latent cache of the shards (2 ranks, whole shards each), then the text cache over the captions it stored
    shards = WebDatasetDataModule(**data).cache_dataset()
    for rank in (0, 1):
        pc.build_parallel(shards, autoencoder, tmp_path / "latents", rank, 2, progress=False)
    captions = tc.latent_cache_captions(tmp_path / "latents")
    assert "" not in captions and len(captions) == 12  # the empty caption was substituted, not stored
    tc.build_text_cache(conditioner, captions, tmp_path / "text", keys=shards.keys())

    dm = WebDatasetDataModule(**data, latent_cache=str(tmp_path / "latents"), text_cache=str(tmp_path / "text"))
    model = PixArtModule(size="PixArt-tiny/2", conditioner=conditioner, autoencoder=autoencoder, resolution=16)
    seen = _Seen(dm)
    _trainer().fit(model, datamodule=dm)
    batch = seen.batches[0]
    assert batch["text"]["clip"]["tokens"].shape == (4, 16, 64) and batch["latent_mean"].shape == (4, 4, 8, 8)


@pytest.mark.parametrize("crop", ["random_crop"])
def test_webdataset_stream_into_pixart_from_jpegs(tmp_path, crop):
    """Without caches: the JPEG stream (random crop, bad samples substituted) trains directly."""
    autoencoder = tiny_autoencoder(tmp_path / "vae")
    make_shards(tmp_path / "cc" / "train", shards=2, per_shard=4, bad={(1, 2): "corrupt"})
    dm = WebDatasetDataModule(
        root=str(tmp_path / "cc"), train_shards="train/{00000..00001}.tar", resolution=16, batch_size=4,
        num_workers=0, crop_policy=CropPolicy(crop), max_bad_fraction=0.5, min_items_before_stop=0,
    )  # fmt: skip
    conditioner = Conditioner(
        semantic="caption", text_encoders={"clip": TextEncoder("embedded:shapes-clip", kind="clip", max_length=16)}
    )
    model = PixArtModule(size="PixArt-tiny/2", conditioner=conditioner, autoencoder=autoencoder, resolution=16)
    seen = _Seen(dm)
    trainer = Trainer(
        max_steps=2, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert [b["image"].shape[0] for b in seen.batches] == [4, 4]
    assert sum(int(b["bad_input"].sum()) for b in seen.batches) == 1  # one substitute, counted in the main process
    assert dm.bad_inputs.counter.bad == 1
