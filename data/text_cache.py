"""An optional text-embedding cache: each caption encoded once by the frozen text encoders, read instead of them.

T5-XXL is the most expensive frozen part of a text-to-image step (PixArt-α precomputes its features for this reason).
The cache stores, per caption and per named encoder of the `conditioning.conditioner.Conditioner`, exactly what the
conditioner accepts as precomputed text: token states ``tokens`` (L, E) in the encoder's dtype, the token mask
``mask`` (L,) and, for CLIP encoders, the pooled vector ``pooled`` (E'). A dataset wrapper adds them to every item as
``item["text"] = {name: {"tokens", "mask"[, "pooled"]}}``; collated, that is the ``batch["text"]`` the conditioner
reads instead of encoding ``batch["caption"]`` (condition dropout and padding still happen in the conditioner).

Layout and safety are those of the latent cache (`data.latent_cache`), whose helpers this module reuses: a manifest
with the key (each encoder's checkpoint, kind, length, dtype, hidden state, and a hash of the caption list), shards
``shard-00000.safetensors`` written to a temporary name and renamed, a ``fcntl`` build lock, and resumption after the
last shard whose sha256 verifies. Items are addressed by caption index, or by sample key (a webdataset ``__key__``)
when keys were given at build time. Size: T5-XXL at 120 tokens in bfloat16 is about 1 MB per caption.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from data.latent_cache import (
    MANIFEST,
    _atomic_write_json,
    _check_key,
    _sha256_file,
    _verified_prefix,
    build_lock,
    read_manifest,
)

FORMAT_VERSION = 1


def text_cache_key(conditioner: Any, captions: Sequence[str]) -> dict[str, Any]:
    """What determines a text cache: every encoder's identity and settings, and the captions in order.

    Args:
        conditioner: The caption `Conditioner` whose ``text_encoders`` the cache replaces.
        captions: The captions, in item order.
    """
    encoders = {
        name: {
            "pretrained": e.pretrained,
            "kind": e.kind,
            "max_length": e.max_length,
            "dtype": str(e.dtype),
            "hidden_state": e.hidden_state,
        }
        for name, e in conditioner.text_encoders.items()
    }
    if not encoders:
        raise ValueError("a text cache needs a conditioner with text_encoders (semantic: caption)")
    digest = hashlib.sha256(json.dumps(list(captions)).encode()).hexdigest()
    return {
        "format": FORMAT_VERSION,
        "kind": "text",
        "encoders": encoders,
        "num_items": len(captions),
        "captions": digest,
    }


def build_text_cache(
    conditioner: Any,
    captions: Sequence[str],
    directory: str | Path,
    keys: Sequence[str] | None = None,
    shard_size: int = 4096,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Encode every caption once with each text encoder and store the states (resumable, locked, atomic).

    Args:
        conditioner: Caption `Conditioner`; its encoders load on first use.
        captions: Captions in item order (raw; tokenized by each encoder).
        directory: Cache folder (created).
        keys: Optional sample keys, one per caption, for lookups by key (webdataset streams).
        shard_size: Captions per shard file.
        batch_size: Captions per encoder forward.
        device: Where the encoders run.

    Returns:
        The complete manifest.
    """
    directory = Path(directory)
    if keys is not None and len(keys) != len(captions):
        raise ValueError(f"{len(keys)} keys for {len(captions)} captions")
    key = text_cache_key(conditioner, captions)
    with build_lock(directory):
        manifest = read_manifest(directory)
        if manifest is not None:
            _check_key(directory, manifest["key"], key)
            if manifest["complete"]:
                return manifest
            manifest["shards"] = _verified_prefix(directory, manifest["shards"])
        else:
            directory.mkdir(parents=True, exist_ok=True)
            manifest = {
                "key": key,
                "num_items": len(captions),
                "shard_size": shard_size,
                "shards": [],
                "complete": False,
            }
        shard_size = manifest["shard_size"]
        done = sum(s["count"] for s in manifest["shards"])
        for start in range(done, len(captions), shard_size):
            stop = min(start + shard_size, len(captions))
            _write_shard(conditioner, captions, keys, directory, manifest, start, stop, batch_size, device)
        manifest["complete"] = True
        _atomic_write_json(directory / MANIFEST, manifest)
        return manifest


@torch.no_grad()
def _write_shard(
    conditioner: Any,
    captions: Sequence[str],
    keys: Sequence[str] | None,
    directory: Path,
    manifest: dict[str, Any],
    start: int,
    stop: int,
    batch_size: int,
    device: str | torch.device,
) -> None:
    parts: dict[str, list[Tensor]] = {}
    for at in range(start, stop, batch_size):
        chunk = list(captions[at : min(at + batch_size, stop)])
        for name, (tokens, mask, pooled) in conditioner.encode_text(chunk, device).items():
            parts.setdefault(f"{name}.tokens", []).append(tokens.cpu())
            parts.setdefault(f"{name}.mask", []).append(mask.cpu())
            if pooled is not None:
                parts.setdefault(f"{name}.pooled", []).append(pooled.cpu())
    tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
    name = f"shard-{len(manifest['shards']):05d}.safetensors"
    tmp = directory / f".{name}.tmp{os.getpid()}"
    metadata = {"keys": json.dumps(list(keys[start:stop]))} if keys is not None else None
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, directory / name)
    manifest["shards"].append(
        {"file": name, "start": start, "count": stop - start, "sha256": _sha256_file(directory / name)}
    )
    _atomic_write_json(directory / MANIFEST, manifest)


class TextCache:
    """Reader of a complete text cache: the states of caption ``i`` (or of sample key ``k``).

    Args:
        directory: The cache folder.
        conditioner: If given, the cache must have been built for its encoders (the captions are not re-checked).
    """

    def __init__(self, directory: str | Path, conditioner: Any = None) -> None:
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None or not manifest["complete"]:
            raise FileNotFoundError(f"no complete text cache in {self.directory}; build it with build_text_cache")
        if conditioner is not None:
            wanted = {**manifest["key"], "encoders": text_cache_key(conditioner, [])["encoders"]}
            _check_key(self.directory, manifest["key"], wanted)
        self.manifest = manifest
        self._handles: list[Any] | None = None
        self._by_key: dict[str, int] | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None}  # loader workers open the files themselves

    @property
    def names(self) -> list[str]:
        """Encoder names in the cache."""
        return list(self.manifest["key"]["encoders"])

    def _open(self) -> list[Any]:
        if self._handles is None:
            self._handles = [
                safe_open(str(self.directory / s["file"]), framework="pt") for s in self.manifest["shards"]
            ]
        return self._handles

    def index_of(self, key: str) -> int:
        """Item index of a sample key (the cache must have been built with keys)."""
        if self._by_key is None:
            by_key: dict[str, int] = {}
            for shard, handle in zip(self.manifest["shards"], self._open(), strict=True):
                keys = json.loads((handle.metadata() or {}).get("keys", "null"))
                if keys is None:
                    raise KeyError(f"text cache {self.directory} was built without sample keys")
                by_key.update({k: shard["start"] + j for j, k in enumerate(keys)})
            self._by_key = by_key
        return self._by_key[key]

    def __getitem__(self, index: int) -> dict[str, dict[str, Tensor]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a text cache of {len(self)} items")
        s = max(i for i, shard in enumerate(self.manifest["shards"]) if shard["start"] <= index)
        handle, row = self._open()[s], index - self.manifest["shards"][s]["start"]
        out: dict[str, dict[str, Tensor]] = {}
        available = set(handle.keys())
        for name in self.names:
            entry = {field: handle.get_slice(f"{name}.{field}")[row] for field in ("tokens", "mask")}
            if f"{name}.pooled" in available:
                entry["pooled"] = handle.get_slice(f"{name}.pooled")[row]
            out[name] = entry
        return out


class TextCacheDataset(Dataset):
    """An indexable dataset whose items gain ``text`` from a text cache built over its captions (same order).

    Args:
        dataset: The dataset (item ``i``'s caption is caption ``i`` of the cache).
        cache: The text cache, or its folder.
    """

    def __init__(self, dataset: Dataset, cache: TextCache | str | Path) -> None:
        self.dataset = dataset
        self.cache = cache if isinstance(cache, TextCache) else TextCache(cache)
        if len(self.cache) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"text cache has {len(self.cache)} items, the dataset {len(dataset)}")  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # wants_stream_position, cache_key, ... of the wrapped dataset
        if name in ("dataset", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item: Any) -> dict[str, Any]:
        index = item[0] if isinstance(item, tuple) else item
        return {**self.dataset[item], "text": self.cache[index]}


class TextCacheStream(IterableDataset):
    """A sample stream (webdataset) whose items gain ``text`` looked up by their ``key`` in a keyed text cache.

    Args:
        stream: The stream (items carry ``key``).
        cache: The text cache, built with ``keys``.
    """

    def __init__(self, stream: IterableDataset, cache: TextCache | str | Path) -> None:
        self.stream = stream
        self.cache = cache if isinstance(cache, TextCache) else TextCache(cache)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.stream:
            yield {**item, "text": self.cache[self.cache.index_of(item["key"])]}


def latent_cache_captions(directory: str | Path) -> list[str]:
    """The captions a latent cache stored, in item order (bad items already replaced by their substitutes).

    Build a text cache over these (with the shards' sample keys from `data.webdataset.TarIndexDataset.keys`) so that
    its item ``i`` is the caption of the latent cache's item ``i`` even where a bad sample was substituted.
    """
    from data.latent_cache import LatentCacheDataset

    cached = LatentCacheDataset(directory, flip_p=0.0)
    cached._open()
    assert cached._captions is not None
    return [views[0] for shard in cached._captions for views in shard]
