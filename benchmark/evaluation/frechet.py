"""Fréchet distance between Gaussian fits of two feature sets, and cached reference statistics.

FD(N(μ1, Σ1), N(μ2, Σ2)) = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) (Dowson & Landau 1982). With Inception pool
features this is FID (Heusel et al. 2017); with the embedded Shapes CLIP's image features it is ``fd_shapes``. The
computation follows the reference implementations (TTUR, pytorch-fid, torch-fidelity): float64 statistics with
``np.cov(rowvar=False)`` (unbiased), ``scipy.linalg.sqrtm`` of the product, its real part, and the same ε-offset
retry when the product is singular.

Reference statistics are computed once per (dataset, split, resolution, preprocessing, extractor, count) and cached
as ``<key>.npz`` (``mu``, ``sigma`` float64) with a ``<key>.json`` sidecar that states that protocol. A cached file
is used only when its sidecar matches the requested protocol exactly, so changing any field recomputes it. ADM
reference batches (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma``, ``arr_0``) load with `load_npz_stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from data.sources import library_versions, source_hash

__all__ = [
    "FeatureStats",
    "cache_dir",
    "cached_features",
    "cached_stats",
    "frechet_distance",
    "frechet_distance_of_features",
    "load_npz_stats",
    "stats_code",
    "stats_from_features",
]

log = logging.getLogger(__name__)

FeatureStats = tuple[np.ndarray, np.ndarray]
"""``(mu (D,), sigma (D, D))``, float64."""


def stats_from_features(features: Any) -> FeatureStats:
    """Mean and unbiased covariance of (N, D) features, in float64 (as torch-fidelity and ADM compute them)."""
    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, sigma1: Mean (D,) and covariance (D, D) of the first set.
        mu2, sigma2: Same for the second set.
        eps: Offset added to both diagonals when the covariance product is singular (pytorch-fid's rule).

    Returns:
        The distance as a Python float (>= 0 up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        log.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_of_features(x: Any, y: Any) -> float:
    """Fréchet distance of the Gaussian fits of two feature sets, exact and fast when there are fewer samples than dims.

    With centred features A (n1, D) and B (n2, D), the non-zero eigenvalues of Σ1 Σ2 are the squared singular
    values of A Bᵀ / sqrt((n1 - 1)(n2 - 1)), so tr((Σ1 Σ2)^½) is the sum of those singular values: an
    (n1, n2) SVD instead of a (D, D) matrix square root. Equal to `frechet_distance` of `stats_from_features` of the
    two sets (up to rounding), without the ε retry; useful for small sets of wide features (2048-d Inception).

    Args:
        x: (n1, D) features.
        y: (n2, D) features.
    """
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    b = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features must be (N >= 2, D) with equal D, got {a.shape} and {b.shape}")
    diff = a.mean(0) - b.mean(0)
    a, b = a - a.mean(0), b - b.mean(0)
    n1, n2 = a.shape[0] - 1, b.shape[0] - 1
    trace_cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    return float(diff.dot(diff) + (a * a).sum() / n1 + (b * b).sum() / n2 - 2 * trace_cross)


def load_npz_stats(path: str | os.PathLike) -> FeatureStats:
    """Read ``mu`` / ``sigma`` from an ``.npz`` (ADM reference batches, or files this module writes)."""
    with np.load(path) as data:
        missing = [k for k in ("mu", "sigma") if k not in data]
        if missing:
            raise KeyError(f"{path} has no {missing} (keys: {sorted(data.files)}); expected ADM-style mu and sigma")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


# Libraries that can move reference statistics: image decoding and resizing, the extractors, the moments.
_STATS_LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "Pillow", "torch-fidelity", "transformers")


def stats_code(*producers: Any) -> dict[str, Any]:
    """The code cached reference statistics or features come from, for their spec: a hash of the modules of
    ``producers`` (the dataset that draws the reference images, the extractor, the image conversion; with the project
    modules they import at module level, `data.sources.source_hash`) and of this module, and library versions.

    Without it a change to, e.g., the Shapes renderer would keep comparing against statistics of the old drawings.
    """
    modules = {getattr(p, "__module__", None) or type(p).__module__ for p in producers} | {__name__}
    return {"source": source_hash(sorted(modules)), "versions": library_versions(_STATS_LIBRARIES)}


def cache_dir() -> Path:
    """Where reference statistics are cached: ``$LDMBENCH_CACHE`` or ``~/.cache/ldmbench``, subfolder ``stats``."""
    root = os.environ.get("LDMBENCH_CACHE") or Path.home() / ".cache" / "ldmbench"
    return Path(root) / "stats"


def stats_key(spec: dict[str, Any]) -> str:
    """File stem of the cached statistics described by ``spec``: readable prefix plus a hash of the whole spec."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    prefix = "-".join(str(spec.get(k, "")) for k in ("dataset", "split", "resolution", "extractor"))
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in prefix)
    return f"{safe}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def cached_stats(
    spec: dict[str, Any], compute: Callable[[], FeatureStats], root: str | os.PathLike | None = None
) -> tuple[FeatureStats, bool]:
    """Reference statistics for ``spec``, computed by ``compute()`` on a miss and cached with a JSON sidecar.

    Args:
        spec: Everything that determines the statistics (dataset, split, resolution, preprocessing, extractor and
            its weights, number of images, ...). JSON-able. Stored verbatim in the sidecar.
        compute: Returns ``(mu, sigma)`` when the cache has no valid entry.
        root: Cache folder (default `cache_dir`).

    Returns:
        ``((mu, sigma), hit)``; ``hit`` is True when the statistics came from the cache.
    """
    stem, valid = _cache_entry(spec, root)
    if valid is not None:
        return load_npz_stats(valid), True
    mu, sigma = compute()
    _store(stem, spec, int(np.asarray(mu).shape[0]), mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    return (np.asarray(mu, np.float64), np.asarray(sigma, np.float64)), False


def cached_features(
    spec: dict[str, Any], compute: Callable[[], np.ndarray], root: str | os.PathLike | None = None
) -> tuple[np.ndarray, bool]:
    """Reference features (N, D) for ``spec`` (precision / recall need the rows, not only their moments).

    Cached like `cached_stats`: ``<key>.npz`` (``features``) with a JSON sidecar that must match ``spec`` exactly.
    """
    stem, valid = _cache_entry(spec, root)
    if valid is not None:
        with np.load(valid) as data:
            if "features" in data:
                return data["features"].astype(np.float64), True
    features = np.asarray(compute(), np.float64)
    _store(stem, spec, int(features.shape[1]), features=features)
    return features, False


def _cache_entry(spec: dict[str, Any], root: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The cache stem of ``spec`` and its ``.npz`` when a JSON sidecar says it was made for exactly this spec."""
    stem = (Path(root) if root is not None else cache_dir()) / stats_key(spec)
    npz, sidecar = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if npz.exists() and sidecar.exists():
        try:
            stored = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            stored = None
        if stored is not None and stored.get("spec") == json.loads(json.dumps(spec)):
            return stem, npz
        log.info("reference statistics %s were made under another protocol; recomputing", npz)
    return stem, None


def _store(stem: Path, spec: dict[str, Any], dim: int, **arrays: np.ndarray) -> None:
    """Write ``<stem>.npz`` atomically, then its sidecar."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: ranks may compute the same statistics
    np.savez(tmp, **arrays)
    os.replace(tmp, stem.with_suffix(".npz"))  # atomic: a concurrent reader sees the old file or the new one
    stem.with_suffix(".json").write_text(json.dumps({"spec": spec, "dim": dim}, indent=2, sort_keys=True))
