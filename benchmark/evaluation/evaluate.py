"""`evaluate(module, protocol)`: sample an entry under the protocol and measure it (see the package docstring)."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.frechet import cached_stats, frechet_distance, load_npz_stats, stats_from_features
from benchmark.evaluation.generate import GeneratedSet, generate, to_uint8
from benchmark.evaluation.protocol import EvalProtocol

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from benchmark.module import DiffusionModule

__all__ = ["evaluate", "file_sha256", "git_commit", "reference_stats"]

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parents[2]


def evaluate(
    module: DiffusionModule,
    protocol: EvalProtocol,
    datamodule: pl.LightningDataModule | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    ckpt_path: str | None = None,
    stats_root: str | None = None,
) -> dict[str, Any]:
    """Sample ``module`` under ``protocol`` and return its metrics as one flat dict (same on every rank).

    Args:
        module: The entry. Its own sampler and guidance are replaced by the protocol's while it is evaluated.
        protocol: The suite's protocol.
        datamodule: The entry's data; supplies the Shapes settings or the real split of the reference statistics.
        device: Where to sample (default: where the module is).
        progress: Progress bars.
        ckpt_path: The checkpoint the weights came from, recorded with its step and SHA-256.
        stats_root: Cache folder of reference statistics (default ``~/.cache/ldmbench/stats``).
    """
    start = time.perf_counter()
    if device is not None:
        module.to(device)
    was_training = module.training
    module.eval()
    measure = _measurer(module, protocol, datamodule, stats_root)
    conditional = getattr(module.conditioner, "semantic", "none") != "none"
    metrics: dict[str, Any] = {}
    try:
        for suffix, scale in protocol.guidance_settings(conditional):
            generated = generate(module, protocol, scale, progress=progress)
            if not suffix:
                metrics["sampling_images_per_s"] = generated.images_per_s
            metrics.update({f"{name}{suffix}": value for name, value in measure(generated).items()})
        if protocol.feature_extractor == "shapes-clip" and getattr(module.conditioner, "control_names", ()):
            # Entries conditioned on control metadata: sweep each control at fixed noise and condition.
            from benchmark.evaluation.disentanglement import control_disentanglement
            from benchmark.evaluation.shapes_clip import ShapesCLIP

            metrics.update(control_disentanglement(module, protocol, ShapesCLIP.load()))
    finally:
        module.train(was_training)
    metrics["num_samples"] = protocol.num_samples
    metrics["guidance_scale"] = protocol.guidance_scale if conditional else 1.0
    metrics["eval_seconds"] = time.perf_counter() - start
    metrics.update(provenance(module, ckpt_path))
    metrics["protocol"] = protocol.to_dict()
    metrics["protocol_id"] = protocol.id()
    return metrics


def _measurer(module: DiffusionModule, protocol: EvalProtocol, datamodule: Any, stats_root: str | None):
    """A function GeneratedSet -> metrics, with the reference statistics and extractor loaded once."""
    if protocol.feature_extractor == "shapes-clip":
        from benchmark.evaluation.shapes_clip import ShapesCLIP

        clip = ShapesCLIP.load()
        ref = reference_stats(protocol, module.resolution, datamodule, stats_root=stats_root, extractor=clip)

        def measure(generated: GeneratedSet) -> dict[str, float]:
            return clip.metrics(generated, ref)

        return measure
    from benchmark.evaluation.inception import InceptionMetrics

    inception = InceptionMetrics(weights_path=protocol.inception_weights)
    ref = reference_stats(protocol, module.resolution, datamodule, stats_root=stats_root, extractor=inception)

    def measure(generated: GeneratedSet) -> dict[str, float]:
        return inception.metrics(generated, ref, protocol)

    return measure


def shapes_reference_dataset(reference: str, resolution: int, datamodule: Any, length: int):
    """The Shapes images of the reference: the split named in ``reference`` with the data's own settings."""
    from data.shapes import Shapes

    split = reference.split(":", 1)[1] if ":" in reference else "train"
    source = getattr(datamodule, "train_set", None)
    kwargs: dict[str, Any] = {}
    if isinstance(source, Shapes):
        kwargs = {
            "seed": source.seed,
            "min_scale": source.min_scale,
            "max_canvas_factor": source.max_canvas_factor,
            "augment": source.augment,
        }
    return Shapes(split, resolution=resolution, length=length, **kwargs)


def reference_stats(
    protocol: EvalProtocol,
    resolution: int,
    datamodule: Any = None,
    *,
    extractor: Any,
    stats_root: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of the protocol's reference, from an ``.npz`` or computed once and cached.

    Args:
        protocol: Names the reference (``shapes:<split>``, ``data:<split>`` or an ``.npz`` path) and its size.
        resolution: Image resolution of the entry.
        datamodule: Source of ``data:<split>`` images and of the Shapes settings.
        extractor: Has ``features(uint8 images) -> (N, D)`` and ``spec() -> dict`` (name, weights hash, layer).
        stats_root: Cache folder.
    """
    ref = protocol.reference
    if ref.endswith(".npz"):
        return load_npz_stats(ref)
    n = protocol.reference_samples
    if ref.startswith("shapes:"):
        dataset = shapes_reference_dataset(ref, resolution, datamodule, n)
        spec = {
            "dataset": "shapes",
            "split": dataset.split,
            "resolution": resolution,
            "seed": dataset.seed,
            "min_scale": dataset.min_scale,
            "max_canvas_factor": dataset.max_canvas_factor,
            "augment": dataset.augment,
        }
    elif ref.startswith("data:"):
        split = ref.split(":", 1)[1]
        if datamodule is None:
            raise ValueError(f"reference {ref!r} needs the entry's DataModule")
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            raise ValueError(f"the DataModule {type(datamodule).__name__} has no {split}_set for reference {ref!r}")
        n = min(n, len(dataset))
        spec = {"dataset": type(datamodule).__name__, "split": split, "resolution": resolution}
        spec.update({k: v for k, v in dict(getattr(datamodule, "hparams", {})).items() if _jsonable(v)})
    else:
        raise ValueError(f"unknown reference {ref!r}: use 'shapes:<split>', 'data:<split>' or a path to an .npz")
    spec.update({"count": n, "preprocessing": "uint8 [0,255] RGB", **extractor.spec()})

    def compute() -> tuple[np.ndarray, np.ndarray]:
        log.info("computing reference statistics %s over %d images", ref, n)
        feats = []
        for lo in range(0, n, 256):
            batch = torch.stack([dataset[i]["image"] for i in range(lo, min(lo + 256, n))])
            feats.append(extractor.features(to_uint8(batch)))
        return stats_from_features(torch.cat(feats))

    stats, hit = cached_stats(spec, compute, root=stats_root)
    log.info("reference statistics %s: %s", ref, "cached" if hit else "computed")
    return stats


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def fd(features: Tensor, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance of generated features against reference statistics."""
    mu, sigma = stats_from_features(features)
    return frechet_distance(mu, sigma, *reference)


# ------------------------------------------------------------------------------------------------ provenance
def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(repo: str | Path = _REPO) -> str | None:
    """The checked-out commit of the code that ran (with ``-dirty`` when tracked files changed), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def provenance(module: Any, ckpt_path: str | None) -> dict[str, Any]:
    """``checkpoint_step``, ``checkpoint_sha256`` (when a checkpoint is given) and ``commit``."""
    out: dict[str, Any] = {"commit": git_commit()}
    step = None
    if ckpt_path is not None:
        out["checkpoint"] = str(ckpt_path)
        out["checkpoint_sha256"] = file_sha256(ckpt_path)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        step = ckpt.get("global_step")
    if step is None:
        trainer = getattr(module, "_trainer", None)
        step = trainer.global_step if trainer is not None else None
    out["checkpoint_step"] = step
    return out
