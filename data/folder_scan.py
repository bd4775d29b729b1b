"""One look at a class-folder dataset before training: what is there, what cannot be used, what will look bad.

`list_class_folders` lists ``<split>/<class>/<file>`` in torchvision's ``ImageFolder`` order (so listings, latent-cache
keys and hold-out splits are unchanged), but keeps what ``ImageFolder`` drops silently (files that are not images)
and names empty class folders in one error instead of torchvision's traceback.

`scan_images` then reads every image's header (size and format; PNG chunks are verified too), in threads, and
`FolderScan.summary` prints one report: images per class, files skipped, files that cannot be read, images whose
shorter side is below ``min_side`` (replaced as bad input, never upscaled) and images far below the training
resolution (upscaled by more than 2x, kept). Unreadable and too-small files are not dropped from the listing: the
bad-input policy (`data.bad_input`) replaces each by the next readable item and counts it, so that batch shapes, the
resumable stream and the latent cache's listing do not depend on what a scan found. A scan of a large folder is
stored beside the latent caches (``$LDMBENCH_CACHE``), keyed by the listing, and read back by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = ["EmptyClassFolders", "FolderError", "FolderListing", "FolderScan", "list_class_folders", "scan_images"]

_STORE_FROM = 20_000  # listings at least this long keep their scan in the cache folder


class FolderError(ValueError):
    """A class-folder dataset that cannot be trained on as it is; the CLI prints the message as one line."""


class EmptyClassFolders(FolderError):
    """Class folders without a single image file."""


@dataclass
class FolderListing:
    """The image files of one split, in ``ImageFolder`` order, and what was left out.

    Attributes:
        samples: ``(path, class_index)`` pairs.
        classes: Class folder names (sorted), indexed by class label.
        skipped: Files in class folders that are not images by extension (``.txt``, ``.DS_Store``...).
    """

    samples: list[tuple[str, int]]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)


def list_class_folders(directory: str | Path, classes: list[str] | None = None) -> FolderListing:
    """List ``directory/<class>/**/<image>`` as torchvision's ``ImageFolder`` does (same order, same extensions).

    Args:
        directory: The split folder (``root/train``).
        classes: Class folder names to list (default: every sub-folder, sorted).

    Raises:
        EmptyClassFolders: If a class folder holds no image file (naming every such folder).
    """
    directory = Path(directory)
    if classes is None:
        classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise EmptyClassFolders(f"{directory} has no class folders (expected {directory}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    skipped: list[str] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        before = len(samples)
        for folder, _, names in sorted(os.walk(directory / name, followlinks=True)):
            for file in sorted(names):
                path = os.path.join(folder, file)
                (samples.append((path, label)) if file.lower().endswith(IMG_EXTENSIONS) else skipped.append(path))
        if len(samples) == before:
            empty.append(name)
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise EmptyClassFolders(
            f"{len(empty)} class folder(s) of {directory} hold no image ({shown}); every class needs at least one "
            f"image with one of the extensions {', '.join(IMG_EXTENSIONS)}: remove the folder or add its images"
        )
    return FolderListing(samples, list(classes), skipped)


@dataclass
class FolderScan:
    """What a scan found in a listing.

    Attributes:
        counts: Images per class name.
        sizes: ``(width, height)`` of every image (``(0, 0)`` if unreadable), in listing order.
        unreadable: ``path -> error`` of the files whose header cannot be read.
    """

    counts: dict[str, int]
    sizes: list[tuple[int, int]]
    unreadable: dict[str, str]

    def too_small(self, samples: list[tuple[str, int]], min_side: int) -> list[str]:
        """Readable images whose shorter side is below ``min_side``."""
        return [path for (path, _), (w, h) in zip(samples, self.sizes) if 0 < min(w, h) < min_side]

    def far_below(self, samples: list[tuple[str, int]], resolution: int, min_side: int) -> list[str]:
        """Usable images that the centre crop upscales by more than 2x (shorter side below half the resolution)."""
        return [path for (path, _), (w, h) in zip(samples, self.sizes) if min_side <= min(w, h) < resolution / 2]

    def summary(
        self, name: str, listing: FolderListing, resolution: int, min_side: int, max_listed: int = 5
    ) -> list[str]:
        """The report: one line of totals, then one line per kind of problem (first ``max_listed`` files each)."""
        counts = sorted(self.counts.items())
        shown = ", ".join(f"{c}: {n}" for c, n in counts[:20]) + (" ..." if len(counts) > 20 else "")
        low, high = min(n for _, n in counts), max(n for _, n in counts)
        lines = [f"{name}: {len(listing.samples):,} images in {len(counts)} classes ({low}-{high} per class: {shown})"]

        def listed(paths: list[str]) -> str:
            return ", ".join(paths[:max_listed]) + (
                f" and {len(paths) - max_listed} more" if len(paths) > max_listed else ""
            )

        if listing.skipped:
            lines.append(f"  skipped {len(listing.skipped)} file(s) that are not images: {listed(listing.skipped)}")
        if self.unreadable:
            first = next(iter(self.unreadable.items()))
            lines.append(
                f"  {len(self.unreadable)} unreadable file(s), replaced by the next readable image and counted as bad "
                f"input: {listed(list(self.unreadable))} (e.g. {first[1]})"
            )
        small = self.too_small(listing.samples, min_side)
        if small:
            lines.append(
                f"  {len(small)} image(s) with a side below {min_side} px, replaced as bad input (not upscaled to "
                f"{resolution} px; data.init_args.min_image_side sets the limit): {listed(small)}"
            )
        far = self.far_below(listing.samples, resolution, min_side)
        if far:
            lines.append(
                f"  {len(far)} image(s) below {resolution // 2} px on their shorter side, upscaled more than 2x to "
                f"{resolution} px (kept): {listed(far)}"
            )
        return lines


def _header(path: str) -> tuple[int, int] | str:
    try:
        with Image.open(path) as image:
            size = image.size
            if image.format == "PNG":
                image.verify()  # reads every chunk and checks its CRC: finds truncated PNGs without decoding
            return size
    except Exception as error:  # noqa: BLE001 - any failure to read a header means the same: unusable file
        return f"{type(error).__name__}: {error}"


def _stored_path(samples: list[tuple[str, int]], cache_root: Path) -> Path:
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p, _ in samples]
    digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return cache_root / "folder-scans" / f"{digest}.json"


def scan_images(
    listing: FolderListing, cache_root: Path | None = None, threads: int = 16, store_from: int = _STORE_FROM
) -> FolderScan:
    """Read the header of every image of ``listing`` (in ``threads`` threads: the work is waiting on the disk).

    Args:
        listing: What `list_class_folders` found.
        cache_root: Folder where the scan of a listing of at least ``store_from`` files is kept, keyed by the
            files' paths, sizes and modification times (None: never stored).
        threads: Reader threads.
        store_from: Smallest listing whose scan is stored.
    """
    stored = _stored_path(listing.samples, cache_root) if cache_root and len(listing.samples) >= store_from else None
    if stored is not None and stored.is_file():
        data = json.loads(stored.read_text())
        return FolderScan(data["counts"], [tuple(s) for s in data["sizes"]], data["unreadable"])
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        headers = list(pool.map(_header, (path for path, _ in listing.samples), chunksize=64))
    counts = Counter(listing.classes[label] for _, label in listing.samples)
    unreadable = {path: h for (path, _), h in zip(listing.samples, headers) if isinstance(h, str)}
    sizes = [(0, 0) if isinstance(h, str) else h for h in headers]
    scan = FolderScan({c: counts.get(c, 0) for c in listing.classes}, sizes, unreadable)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"counts": scan.counts, "sizes": scan.sizes, "unreadable": scan.unreadable}))
        tmp.replace(stored)
    return scan
