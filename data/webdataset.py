"""CC12M-style image-caption data in webdataset tar shards (``.jpg`` / ``.txt`` pairs, as img2dataset writes them).

Layout: ``root/<train_shards>`` and ``root/<val_shards>``, brace patterns such as ``train/{00000..01242}.tar``; a
sample is the tar members sharing a key (``000123.jpg``, ``000123.txt``, optionally ``000123.json``). Captions are
passed raw (no tokenization here): the text encoders of the conditioner tokenize them, or a text-embedding cache
(`data.text_cache`) replaces them.

**Splitting.** Lightning injects no sampler into an iterable dataset, so the split is explicit and testable
(`assign_shards`): every epoch the shard list is permuted by ``(seed, epoch)`` and shard ``i`` goes to the loader
worker with global number ``i mod (world_size * num_workers)`` (global number ``rank * num_workers + worker``). Over
all ranks and workers, every shard, hence every sample, is read exactly once per epoch. With ``resampled`` each
worker instead draws shards uniformly with replacement from a generator seeded by ``(seed, epoch, rank, worker)``
(webdataset's resampled epochs, made deterministic), and ``samples_per_epoch`` cuts every rank's stream to the same
length, so no rank waits for another at the end of an epoch under DDP (shards rarely hold equal numbers of samples).

**Control metadata and bad input.** Images go through a `data.crop_policy.CropPolicy` whose applied geometry is the
control metadata; random draws are seeded by the sample's key, epoch and seed. A corrupt image or an empty caption is
replaced by the next good sample of the same shard (the shard's last good one when it ends with bad samples), counted
and warned about (`data.bad_input`), so batch shapes hold; above ``max_bad_fraction`` the run stops.

**Held-out split.** ``val_shards`` are read as an indexable dataset (`TarIndexDataset`), in fixed order: FID reference
images (``reference: data:val``), captions for generation and CLIP score (`WebDatasetDataModule.val_captions`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from data.bad_input import BadInputCounter, BadInputError, BadInputMonitor, MonitorsBadInputs, substitute_next
from data.crop_policy import CropPolicy
from data.imagenet import eval_policy
from data.sampling import ResumableDataModule
from data.transforms import CONTROL_NAMES

log = logging.getLogger(__name__)

ENV_ROOT = "CC12M_ROOT"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_shards(pattern: str | list[str], root: str | Path | None = None) -> list[str]:
    """Shard paths of brace patterns (``"train/{00000..01099}.tar"``), globs (``"train/*.tar"``, sorted) or lists.

    Relative paths are under ``root``; a glob that matches nothing is kept as written (reported missing later).
    """
    urls = [u for p in ([pattern] if isinstance(pattern, str) else pattern) for u in expand_urls(p)]
    if root is not None:
        urls = [u if os.path.isabs(u) or "://" in u else str(Path(root) / u) for u in urls]
    out: list[str] = []
    for url in urls:
        matches = sorted(glob.glob(url)) if any(c in url for c in "*?[") and "://" not in url else []
        out += matches or [url]
    return out


def assign_shards(
    num_shards: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    seed: int = 0,
    shuffle: bool = True,
    resampled: int | None = None,
) -> list[int]:
    """The shard indices one loader worker of one rank reads in an epoch.

    Args:
        num_shards: Number of shards.
        epoch: Epoch number (changes the order, or the resampled draws).
        rank: This process's rank; ``world_size`` ranks in all.
        world_size: Number of ranks.
        worker: This loader worker's number; ``num_workers`` per rank (1 when loading in the main process).
        num_workers: Loader workers per rank.
        seed: Seed of the permutation / draws.
        shuffle: Permute the shard order every epoch (without resampling).
        resampled: If given, draw this many shards uniformly with replacement instead of partitioning.

    Returns:
        Shard indices in reading order. Without resampling the lists of all ``(rank, worker)`` pairs partition
        ``range(num_shards)``.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"need 0 <= rank < {world_size} and 0 <= worker < {num_workers}, got {rank}, {worker}")
    slot, slots = rank * num_workers + worker, world_size * num_workers
    if resampled is not None:
        rng = np.random.default_rng([seed, epoch, rank, worker, 1])
        return rng.integers(0, num_shards, size=resampled).tolist()
    order = np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)
    return order[slot::slots].tolist()


def decode_sample(
    sample: dict[str, Any],
    resolution: int,
    policy: CropPolicy,
    rng: np.random.Generator | None,
    flip: bool | None = None,
    caption_key: str = "txt",
) -> dict[str, Any]:
    """Decode one raw webdataset sample into a training item; raise `BadInputError` if it is unusable.

    Args:
        sample: Raw members by extension (bytes), with ``__key__``.
        resolution: Output side in pixels.
        policy: Crop policy.
        rng: Source of the crop / flip draws.
        flip: Force the flip (caching).
        caption_key: Extension of the caption member.
    """
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '')}:{key}"
    data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if data is None:
        raise BadInputError("missing_image", where)
    caption = sample.get(caption_key)
    caption = caption.decode("utf-8", errors="replace").strip() if isinstance(caption, bytes) else caption
    if not caption:
        raise BadInputError("empty_caption", where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadInputError("corrupt_image", f"{where}: {error}") from error
    tensor, control = policy(image, resolution, rng, flip)
    return {"image": tensor, "caption": caption, "control": control, "key": str(key)}


def _sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, epoch, digest])


class WebDatasetStream(IterableDataset):
    """The training stream over tar shards: split per rank and worker, decoded, cropped, bad samples substituted.

    Args:
        shards: Shard paths.
        resolution: Output side in pixels.
        crop_policy: Training crop policy.
        seed: Seed of the shard order, the resampled draws and the per-sample crops.
        resampled: Draw shards with replacement (each worker endlessly, cut by ``samples_per_epoch``).
        samples_per_epoch: Samples per epoch of each RANK (all its workers together); None reads every assigned shard
            once (required without resampling to see each sample exactly once).
        counter: Counts bad samples (each worker holds its own copy).
        caption_key: Extension of the caption member.
    """

    def __init__(
        self,
        shards: list[str],
        resolution: int,
        crop_policy: CropPolicy,
        seed: int = 0,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        counter: BadInputCounter | None = None,
        caption_key: str = "txt",
    ) -> None:
        if not shards:
            raise ValueError("WebDatasetStream needs at least one shard")
        if resampled and samples_per_epoch is None:
            raise ValueError("resampled epochs need samples_per_epoch (a resampled stream has no natural end)")
        self.shards, self.resolution, self.crop_policy, self.seed = shards, resolution, crop_policy, seed
        self.resampled, self.samples_per_epoch, self.caption_key = resampled, samples_per_epoch, caption_key
        self.counter = counter if counter is not None else BadInputCounter(name="webdataset train")
        self.rank, self.world_size, self.epoch = 0, 1, 0
        self.batch_size = 1  # set by the DataModule: worker quotas are whole batches, so drop_last drops nothing

    def __len__(self) -> int:
        if self.samples_per_epoch is None:
            raise TypeError("this stream reads whole shards; its length is unknown until read")
        return self.samples_per_epoch // self.batch_size * self.batch_size

    def worker_quota(self, worker: int, num_workers: int) -> int | None:
        """Samples this rank's worker yields per epoch (None: whole shards)."""
        if self.samples_per_epoch is None:
            return None
        base, extra = divmod(self.samples_per_epoch // self.batch_size, num_workers)
        return (base + (worker < extra)) * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        quota = self.worker_quota(worker, num_workers)
        produced, passes = 0, 0
        while quota is None or produced < quota:
            # Without resampling but with a quota, a worker that runs out of shards starts another pass (the next
            # epoch's order), so every rank yields the same number of samples.
            epoch = self.epoch if passes == 0 else self.epoch * 1_000_003 + passes
            per_pass = 64 if self.resampled else None
            order = assign_shards(
                len(self.shards), epoch, self.rank, self.world_size, worker, num_workers, self.seed,
                resampled=per_pass,
            )  # fmt: skip
            if not order:
                if quota is not None and passes == 0:
                    log.warning("worker %d of rank %d has no shard; it yields nothing", worker, self.rank)
                return
            for shard in order:
                for item in self.shard_items(self.shards[shard], epoch):
                    yield item
                    produced += 1
                    if quota is not None and produced >= quota:
                        return
            passes += 1
            if quota is None:
                return

    def shard_items(self, shard: str, epoch: int) -> Iterator[dict[str, Any]]:
        """The decoded samples of one shard, bad ones replaced by the next good one (or the shard's last good one)."""
        with open(shard, "rb") as handle:  # closed even when the consumer stops mid-shard (a per-rank quota)
            samples = group_by_keys(tar_file_expander([{"url": shard, "stream": handle}]))
            yield from self._substituted(shard, samples, epoch)

    def _substituted(self, shard: str, samples: Iterator[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        pending = 0  # bad samples waiting for their substitute
        last: dict[str, Any] | None = None
        for raw in samples:
            key = f"{Path(shard).name}:{raw.get('__key__')}"  # not the full path: moving the data keeps the crops
            try:
                item = decode_sample(
                    raw, self.resolution, self.crop_policy, _sample_rng(self.seed, epoch, key), None, self.caption_key
                )
            except BadInputError as error:
                self.counter.add_bad(error.reason, error.detail)
                pending += 1
                continue
            self.counter.good()
            item["bad_input"] = torch.tensor(0)
            yield item
            for _ in range(pending):
                yield {**item, "bad_input": torch.tensor(1)}
            pending, last = 0, item
        if pending and last is not None:
            for _ in range(pending):
                yield {**last, "bad_input": torch.tensor(1)}
        elif pending:
            log.warning("shard %s has no readable sample; its %d samples are dropped", shard, pending)


class TarIndexDataset(Dataset):
    """Indexable samples of a few tar shards (the held-out split, or a rank's part of a latent cache).

    The member headers are read once (lazily) to build an index ``key -> {extension: (offset, size)}``; items are then
    read by seeking. Item ``i`` is the ``i``-th key in shard order, then member order.

    Args:
        shards: Shard paths.
        resolution: Output side in pixels.
        crop_policy: Crop policy (deterministic for evaluation and caching; its flip is forced off / on there).
        split: Name of the split (part of a latent cache's key).
        counter: Counts bad samples (None: a bad sample raises).
        caption_key: Extension of the caption member.
    """

    def __init__(
        self,
        shards: list[str],
        resolution: int,
        crop_policy: CropPolicy,
        split: str = "val",
        counter: BadInputCounter | None = None,
        caption_key: str = "txt",
    ) -> None:
        self.shards, self.resolution, self.crop_policy, self.split = shards, resolution, crop_policy, split
        self.counter, self.caption_key = counter, caption_key
        self._index: list[tuple[int, str, dict[str, tuple[int, int]]]] | None = None

    @property
    def index(self) -> list[tuple[int, str, dict[str, tuple[int, int]]]]:
        """``(shard number, key, {extension: (offset, size)})`` per sample."""
        if self._index is None:
            index = []
            for s, path in enumerate(self.shards):
                members: dict[str, dict[str, tuple[int, int]]] = {}
                with tarfile.open(path) as tar:
                    for info in tar:
                        if not info.isreg() or "." not in Path(info.name).name:
                            continue
                        key, ext = info.name.split(".", 1) if "/" not in info.name else _split_name(info.name)
                        members.setdefault(key, {})[ext.lower()] = (info.offset_data, info.size)
                index += [(s, key, exts) for key, exts in members.items()]
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, i: int) -> dict[str, Any]:
        """The raw members (bytes) of sample ``i``, with ``__key__`` and ``__url__``."""
        s, key, exts = self.index[i]
        out: dict[str, Any] = {"__key__": key, "__url__": self.shards[s]}
        with open(self.shards[s], "rb") as f:
            for ext, (offset, size) in exts.items():
                f.seek(offset)
                out[ext] = f.read(size)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return substitute_next(lambda j: self._load(j, False), i, len(self), self.counter)

    def _load(self, i: int, flip: bool) -> dict[str, Any]:
        return decode_sample(self.raw(i), self.resolution, self.crop_policy, None, flip, self.caption_key)

    def keys(self) -> list[str]:
        """Every sample's key, in order (what a training stream's items carry as ``key``)."""
        return [key for _, key, _ in self.index]

    def captions(self) -> list[str]:
        """Every sample's caption, in order (empty string where it is missing)."""
        out = []
        for i in range(len(self)):
            caption = self.raw(i).get(self.caption_key, b"")
            out.append(caption.decode("utf-8", errors="replace").strip() if isinstance(caption, bytes) else "")
        return out

    # ------------------------------------------------------------------------------- latent cache protocol
    def cache_key(self) -> dict:
        """What determines a latent cache of these shards (their paths, sizes and the crop policy)."""
        if self.crop_policy.is_random(self.resolution):
            raise ValueError("a latent cache needs a deterministic crop policy (center, adm_center, aspect_preserving)")
        listing = [(Path(p).name, os.path.getsize(p)) for p in self.shards]
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "split": self.split,
            "resolution": self.resolution,
            "options": {
                "num_shards": len(self.shards),
                "shards_sha256": hashlib.sha256(repr(listing).encode()).hexdigest(),
                "crop": self.crop_policy.describe(self.resolution),
            },
            "crops_per_item": 1,
            "flip_moments": self.crop_policy.flip_p > 0,
        }

    def split_parts(self, parts: int) -> list[TarIndexDataset]:
        """Contiguous groups of whole shards, one per rank of a parallel cache build (part ``r`` reads only its own)."""
        groups = np.array_split(np.arange(len(self.shards)), parts)
        shards = [[self.shards[i] for i in group] for group in groups]
        return [
            TarIndexDataset(s, self.resolution, self.crop_policy, self.split, self.counter, self.caption_key)
            for s in shards
        ]

    def cache_views(self, i: int) -> list[dict]:
        """Item ``i`` (or its substitute) unflipped and, if the policy flips, mirrored; class label 0 (captions)."""
        flips = [False, True] if self.crop_policy.flip_p > 0 else [False]
        views = [substitute_next(lambda j, f=f: self._load(j, f), i, len(self), self.counter) for f in flips]
        return [{**v, "class_label": torch.tensor(0)} for v in views]


def _split_name(name: str) -> tuple[str, str]:
    folder, base = name.rsplit("/", 1)
    stem, ext = base.split(".", 1)
    return f"{folder}/{stem}", ext


class _StreamLoader(DataLoader):
    """A DataLoader over `WebDatasetStream` that tells the stream its epoch before workers copy it."""

    owner: WebDatasetDataModule | None = None

    _epochs = 0  # epochs started without a trainer (tests, scripts)

    def __iter__(self):  # type: ignore[override]
        # Set in the main process, before the (non-persistent) workers copy the stream: each epoch reads its own order.
        trainer = self.owner.trainer if self.owner is not None else None
        stream = getattr(self.dataset, "stream", self.dataset)  # under a text-cache wrapper
        stream.epoch = trainer.current_epoch if trainer is not None else self._epochs
        self._epochs += 1
        return super().__iter__()


class WebDatasetDataModule(MonitorsBadInputs, ResumableDataModule):
    """Image-caption webdataset shards (CC12M) with node/worker splitting, crop policy, bad input and a held-out split.

    Args:
        root: Folder the shard patterns are relative to; None reads ``$CC12M_ROOT``. Nothing is read before
            ``setup``; a missing root or shard stops training with a message naming the path.
        train_shards: Brace pattern or list of the training shards.
        val_shards: Brace pattern or list of the held-out shards (FID reference, captions for generation and CLIP
            score); None holds out nothing.
        resolution: Output side in pixels.
        batch_size: Per-device batch size.
        num_workers: Loader workers per rank (each reads whole shards; give every rank at least one shard per worker).
        seed: Seed of the shard order, resampling and crop / flip draws.
        crop_policy: Training crop policy (default: centre crop with a random flip).
        resampled: Resampled epochs (shards drawn with replacement); needs ``samples_per_epoch``.
        samples_per_epoch: Samples per epoch of the whole job (all ranks), cut into equal per-rank streams; None reads
            every shard exactly once per epoch.
        max_bad_fraction: Stop when more than this fraction of the samples seen was bad (corrupt image, empty caption).
        min_items_before_stop: Samples to see before ``max_bad_fraction`` is enforced.
        latent_cache: A latent cache built by ``ldmbench cache-latents`` over ``train_shards``: training then reads
            cached moments with an exactly resumable shuffled stream instead of decoding JPEGs. None decodes.
        caption_key: Extension of the caption members.
        text_cache: A text-embedding cache (`data.text_cache`) built over the training captions, in the order of
            `cache_dataset` and with the sample keys: batches then carry the precomputed ``text`` states, and the
            conditioner does not run its text encoders. None encodes captions in the training step.
    """

    root_env = ENV_ROOT  # read by the CLI's data-root check, before anything is built

    def __init__(
        self,
        root: str | None = None,
        train_shards: str | list[str] = "train/{00000..00009}.tar",
        val_shards: str | list[str] | None = None,
        resolution: int = 256,
        batch_size: int = 32,
        num_workers: int = 8,
        seed: int = 0,
        crop_policy: CropPolicy | None = None,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        max_bad_fraction: float = 0.01,
        min_items_before_stop: int = 1000,
        latent_cache: str | None = None,
        caption_key: str = "txt",
        text_cache: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if resampled and samples_per_epoch is None:
            raise ValueError("resampled: true needs samples_per_epoch")
        self.save_hyperparameters(ignore=["crop_policy"])
        self._root_option, self._resolution = root, resolution
        self.train_shards, self.val_shards = train_shards, val_shards
        self.crop_policy = crop_policy if crop_policy is not None else CropPolicy("center", flip_p=0.5)
        self.resampled, self.samples_per_epoch, self.caption_key = resampled, samples_per_epoch, caption_key
        self.latent_cache, self.text_cache = latent_cache, text_cache
        self._counter_args = (max_bad_fraction, min_items_before_stop)
        self.bad_inputs = BadInputMonitor(
            BadInputCounter(max_bad_fraction, min_items_before_stop, name="webdataset train (all workers)")
        )
        self.train_set: WebDatasetStream | None = None
        self.val_set: TarIndexDataset | None = None
        self.cached_train_set: Dataset | None = None

    # ------------------------------------------------------------------------------- facts read by the CLI
    @property
    def resolution(self) -> int:
        """Output side in pixels."""
        return self._resolution

    @property
    def num_classes(self) -> int:
        """Caption data has no classes; 1 satisfies the model's argument (caption models ignore it)."""
        return 1

    @property
    def control_names(self) -> tuple[str, ...]:
        """Control scalars recorded per sample."""
        return CONTROL_NAMES

    @property
    def root(self) -> Path:
        """The shard root, checked to exist."""
        root = self._root_option or os.environ.get(ENV_ROOT)
        if not root:
            raise FileNotFoundError(
                f"CC12M root not set: export {ENV_ROOT}=/path/to/cc12m or pass --data.init_args.root"
            )
        if not Path(root).is_dir():
            raise FileNotFoundError(f"webdataset root {root} does not exist or is not a directory")
        return Path(root)

    def _shards(self, pattern: str | list[str]) -> list[str]:
        shards = expand_shards(pattern, self.root)
        missing = [s for s in shards if "://" not in s and not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}")
        return shards

    # ------------------------------------------------------------------------------- datasets
    def setup(self, stage: str | None = None) -> None:
        """Expand and check the shard lists; build the held-out set and, for ``fit``, the stream or the cache reader."""
        if self.val_set is None and self.val_shards is not None:
            val_counter = BadInputCounter(1.0, name="webdataset val")
            policy = eval_policy(self.crop_policy)
            self.val_set = TarIndexDataset(
                self._shards(self.val_shards), self.resolution, policy, "val", val_counter, self.caption_key
            )
        if self.train_set is None and stage in ("fit", None):
            counter = BadInputCounter(*self._counter_args, name="webdataset train")
            self.train_set = WebDatasetStream(
                self._shards(self.train_shards),
                self.resolution,
                self.crop_policy,
                self.seed,
                self.resampled,
                self.samples_per_epoch,  # the job's; train_dataloader sets this rank's share
                counter,
                self.caption_key,
            )
        if stage in ("fit", None) and self.latent_cache is not None and self.cached_train_set is None:
            from data.latent_cache import LatentCacheDataset

            self.cached_train_set = LatentCacheDataset(
                self.latent_cache, flip_p=self.crop_policy.flip_p, seed=self.seed
            )
            if self.text_cache is not None:
                from data.text_cache import TextCacheDataset

                self.cached_train_set = TextCacheDataset(self.cached_train_set, self.text_cache)

    def train_dataloader(self) -> DataLoader:
        """The rank's part of the stream (or the resumable cached stream when a latent cache is set)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        if self.cached_train_set is not None:
            return self._train_loader(self.cached_train_set, len(self.cached_train_set))
        stream = self.train_set
        assert stream is not None
        loaded: IterableDataset = stream
        if self.text_cache is not None:
            from data.text_cache import TextCacheStream

            loaded = TextCacheStream(stream, self.text_cache)
        rank, world = self._rank_world()
        stream.rank, stream.world_size = rank, world
        if self.samples_per_epoch is not None:
            per_rank = self.samples_per_epoch // world
            stream.samples_per_epoch = per_rank // self.batch_size * self.batch_size  # whole batches on every rank
        stream.batch_size = self.batch_size
        workers = max(self.num_workers, 1)
        if len(stream.shards) < world * workers and not self.resampled:
            log.warning(
                "%d shards for %d ranks x %d workers: some workers read nothing", len(stream.shards), world, workers
            )
        loader = _StreamLoader(loaded, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True)
        loader.owner = self
        return loader

    def val_dataloader(self) -> DataLoader:
        """The held-out samples in fixed order, unflipped, centre-cropped."""
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            raise ValueError("no held-out split: set data.init_args.val_shards")
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """Same as `val_dataloader`."""
        return self.val_dataloader()

    def cache_dataset(self) -> TarIndexDataset:
        """The training shards as an indexable dataset for ``ldmbench cache-latents`` (deterministic crop, flip kept).

        Raises:
            ValueError: If the training crop is random (a cache would freeze one crop per sample).
        """
        if self.crop_policy.is_random(self.resolution):
            raise ValueError(
                f"crop policy {self.crop_policy.policy_at(self.resolution)!r} is random; a latent cache needs a "
                "deterministic one (center, adm_center, aspect_preserving)"
            )
        counter = BadInputCounter(*self._counter_args, name="webdataset cache")
        shards = self._shards(self.train_shards)
        return TarIndexDataset(shards, self.resolution, self.crop_policy, "train", counter, self.caption_key)

    def val_captions(self, n: int | None = None) -> list[str]:
        """Captions of the held-out samples in order (the first ``n``): prompts for FID and CLIP score."""
        if self.val_set is None:
            self.setup("validate")
        if self.val_set is None:
            raise ValueError("no held-out split: set data.init_args.val_shards")
        captions = self.val_set.captions()
        return captions if n is None else captions[:n]
