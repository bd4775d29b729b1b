"""Tiny on-disk datasets for the real-data tests: an ImageNet-layout folder and webdataset shards with bad items."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(height: int, width: int, seed: int) -> bytes:
    """A small random JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_imagefolder(
    root: Path, classes: int = 3, per_class: int = 4, corrupt: tuple[int, int] | None = (1, 2)
) -> Path:
    """``root/train/c{k}/img{i}.jpg`` and ``root/val/c{k}/img{i}.jpg`` (2 per class); ``corrupt`` = (class, i)."""
    for split, n in (("train", per_class), ("val", 2)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                data = jpeg_bytes(20 + 3 * i, 24 + 2 * k, seed=100 * k + i + (0 if split == "train" else 50))
                if split == "train" and corrupt == (k, i):
                    data = data[: len(data) // 3]  # truncated JPEG
                (folder / f"img{i}.jpg").write_bytes(data)
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(
    folder: Path, shards: int = 4, per_shard: int = 5, bad: dict[tuple[int, int], str] | None = None, prefix: str = ""
) -> list[str]:
    """``folder/{prefix}{s:05d}.tar`` with ``per_shard`` .jpg/.txt samples each; caption ``"caption s-i"``.

    ``bad[(s, i)]`` = ``"corrupt"`` (truncated JPEG) or ``"empty"`` (empty caption).
    """
    folder.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    paths = []
    for s in range(shards):
        path = folder / f"{prefix}{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                data = jpeg_bytes(18 + i, 22 + s, seed=1000 * s + i)
                caption = f"caption {s}-{i}"
                if bad.get((s, i)) == "corrupt":
                    data = data[: len(data) // 3]
                if bad.get((s, i)) == "empty":
                    caption = "  "
                _add(tar, f"{key}.jpg", data)
                _add(tar, f"{key}.txt", caption.encode())
        paths.append(str(path))
    return paths
