"""`evaluate(module, protocol)`: sample an entry under the protocol and measure it (see the package docstring)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.frechet import (
    cached_features,
    cached_stats,
    frechet_distance,
    load_npz_stats,
    stats_code,
    stats_from_features,
)
from benchmark.evaluation.generate import GeneratedSet, generate, protocol_controls, to_uint8
from benchmark.evaluation.metrics import MetricUnavailable
from benchmark.evaluation.protocol import EvalProtocol
from benchmark.evaluation.provenance import file_sha256
from benchmark.evaluation.shapes_reference import is_shapes, shapes_reference_dataset
from data.sources import PACKAGES, diff_hash, git_commit

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from benchmark.module import DiffusionModule

__all__ = [
    "evaluate",
    "file_sha256",
    "flips_trained",
    "git_commit",
    "is_shapes",
    "reference_features",
    "reference_stats",
]

log = logging.getLogger(__name__)


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
    control_conditioned = bool(getattr(module.conditioner, "control_names", ()))
    flips = flips_trained(datamodule)
    metrics: dict[str, Any] = {}
    refused: list[str] = []
    if control_conditioned and not flips:
        refused.append(FLIP_REFUSAL)
        log.warning(FLIP_REFUSAL)
    # On Shapes, control-conditioned samples ask for the controls of the reference's own items (`protocol_controls`).
    data_controls = protocol_controls(module, protocol, datamodule, protocol.num_samples)
    try:
        for suffix, scale in protocol.guidance_settings(conditional):
            # Each rank keeps its own slice: the metrics gather features, not images.
            generated = generate(
                module, protocol, scale, progress=progress, gather=False, ask_flips=flips, data_controls=data_controls
            )
            if not suffix:
                metrics["sampling_images_per_s"] = generated.images_per_s
            metrics.update({_suffixed(name, suffix): value for name, value in measure(generated).items()})
        if protocol.feature_extractor == "shapes-clip" and control_conditioned:
            # Entries conditioned on control metadata: sweep each control at fixed noise and condition.
            from benchmark.evaluation.disentanglement import control_disentanglement
            from benchmark.evaluation.shapes_clip import ShapesCLIP

            metrics.update(control_disentanglement(module, protocol, ShapesCLIP.load(), flip=flips))
            if is_shapes(datamodule):
                # Whole objects with the uncropped control, cuts with training crops (issue 24's cut-object rate).
                from benchmark.evaluation.cut_objects import cut_object_rates

                metrics.update(cut_object_rates(module, protocol, datamodule))
    finally:
        module.train(was_training)
    metrics["num_samples"] = protocol.num_samples
    metrics["guidance_scale"] = protocol.guidance_scale if conditional else 1.0
    metrics["eval_seconds"] = time.perf_counter() - start
    if refused:
        metrics["refused"] = refused
    metrics.update(provenance(module, ckpt_path))
    metrics["protocol"] = protocol.to_dict()
    metrics["protocol_id"] = protocol.id()
    return metrics


def _suffixed(name: str, suffix: str) -> str:
    """``fd_shapes`` -> ``fd_shapes_noguidance``; its SD ``fd_shapes_sd`` -> ``fd_shapes_noguidance_sd`` (and _boot)."""
    for tail in ("_sd", "_boot"):
        if suffix and name.endswith(tail):
            return f"{name[: -len(tail)]}{suffix}{tail}"
    return f"{name}{suffix}"


FLIP_REFUSAL = "flip metrics refused: the data was trained without flips (random_flip: false / augment: false)"


def flips_trained(datamodule: Any) -> bool:
    """Whether the entry's data showed flipped images in training (unknown data: assumed yes)."""
    if datamodule is None:
        return True
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    for name in ("random_flip", "augment"):
        value = getattr(datamodule, name, hparams.get(name, True))
        if value is False:
            return False
    return True


def _measurer(module: DiffusionModule, protocol: EvalProtocol, datamodule: Any, stats_root: str | None):
    """A function GeneratedSet -> metrics, with the extractor, reference statistics and real features loaded once.

    An extractor that does not fit the data refuses here, in one line (`MetricUnavailable`).
    """
    reps = protocol.bootstrap_reps
    if protocol.feature_extractor == "shapes-clip":
        if not is_shapes(datamodule):
            raise MetricUnavailable(
                f"the Shapes CLIP judges Shapes images only, and {type(datamodule).__name__} is not Shapes: use "
                "feature_extractor: data-classifier (trained on your data, offline) or inception-v3-compat"
            )
        from benchmark.evaluation.shapes_clip import ShapesCLIP

        clip = ShapesCLIP.load()
        ref = reference_stats(protocol, module.resolution, datamodule, stats_root=stats_root, extractor=clip)
        real = _real_features(protocol, module.resolution, datamodule, clip, stats_root)

        def measure(generated: GeneratedSet) -> dict[str, float]:
            return clip.metrics(generated, ref, real_features=real, bootstrap_reps=reps)

        return measure
    if protocol.feature_extractor == "data-classifier":
        from benchmark.evaluation.data_classifier import DataClassifier

        judge = DataClassifier.for_data(datamodule)
        ref = reference_stats(protocol, module.resolution, datamodule, stats_root=stats_root, extractor=judge)
        real = _real_features(protocol, module.resolution, datamodule, judge, stats_root)

        def measure(generated: GeneratedSet) -> dict[str, float]:
            return judge.metrics(generated, ref, real_features=real, bootstrap_reps=reps)

        return measure
    if protocol.feature_extractor != "inception-v3-compat":
        raise ValueError(
            f"unknown feature_extractor {protocol.feature_extractor!r}: "
            "use shapes-clip, data-classifier or inception-v3-compat"
        )
    from benchmark.evaluation.inception import InceptionMetrics

    inception = InceptionMetrics(weights_path=protocol.inception_weights)
    ref = reference_stats(protocol, module.resolution, datamodule, stats_root=stats_root, extractor=inception)
    real = _real_features(protocol, module.resolution, datamodule, inception, stats_root)

    def measure(generated: GeneratedSet) -> dict[str, float]:
        return inception.metrics(generated, ref, protocol, real_features=real)

    return measure


def _real_features(protocol: EvalProtocol, resolution: int, datamodule: Any, extractor: Any, stats_root: str | None):
    """Real features for precision / recall when the protocol asks for them (None otherwise); raises if impossible."""
    if not protocol.precision_recall:
        return None
    return reference_features(protocol, resolution, datamodule, extractor=extractor, stats_root=stats_root)


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
    if protocol.reference.endswith(".npz"):
        return load_npz_stats(protocol.reference)
    dataset, n, spec = _reference_source(protocol, resolution, datamodule)
    spec.update({"count": n, "preprocessing": "uint8 [0,255] RGB", **extractor.spec()})
    spec["code"] = stats_code(dataset, extractor, to_uint8)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        log.info("computing reference statistics %s over %d images", protocol.reference, n)
        return stats_from_features(_features_of(dataset, n, extractor))

    stats, hit = cached_stats(spec, compute, root=stats_root)
    log.info("reference statistics %s: %s", protocol.reference, "cached" if hit else "computed")
    return stats


def reference_features(
    protocol: EvalProtocol,
    resolution: int,
    datamodule: Any = None,
    *,
    extractor: Any,
    stats_root: str | None = None,
) -> Tensor:
    """(N, D) features of the protocol's real reference images (precision / recall), computed once and cached.

    An ``.npz`` reference must hold its images (``arr_0``, NHWC uint8, as ADM's reference batches do); statistics
    alone cannot give precision / recall, and that is an error, not a silent omission.
    """
    ref = protocol.reference
    if ref.endswith(".npz"):
        with np.load(ref) as data:
            if "arr_0" not in data:
                raise ValueError(f"precision / recall need real images, and {ref} holds statistics only (no arr_0)")
            images = torch.from_numpy(data["arr_0"][: protocol.reference_samples]).permute(0, 3, 1, 2).contiguous()
        return torch.cat([extractor.features(images[i : i + 256]) for i in range(0, images.shape[0], 256)])
    dataset, n, spec = _reference_source(protocol, resolution, datamodule)
    spec.update({"count": n, "preprocessing": "uint8 [0,255] RGB", "kind": "features", **extractor.spec()})
    spec["code"] = stats_code(dataset, extractor, to_uint8)
    features, _ = cached_features(spec, lambda: _features_of(dataset, n, extractor).numpy(), root=stats_root)
    return torch.from_numpy(features)


def _features_of(dataset: Any, n: int, extractor: Any) -> Tensor:
    feats = []
    for lo in range(0, n, 256):
        batch = torch.stack([dataset[i]["image"] for i in range(lo, min(lo + 256, n))])
        feats.append(extractor.features(to_uint8(batch)).double())
    return torch.cat(feats)


def _reference_source(protocol: EvalProtocol, resolution: int, datamodule: Any) -> tuple[Any, int, dict[str, Any]]:
    """The reference dataset, its image count and the spec that keys its cached statistics."""
    ref = protocol.reference
    n = protocol.reference_samples
    if ref.startswith("shapes:"):
        dataset = shapes_reference_dataset(ref, resolution, datamodule, n)
        spec: dict[str, Any] = {"dataset": "shapes", "split": dataset.split, "resolution": resolution}
        # The data's own key (renderer options, length, seed): a change of the Shapes settings is a new reference.
        spec["data"] = dataset.cache_key() if hasattr(dataset, "cache_key") else {"seed": dataset.seed}
    elif ref.startswith("data:"):
        split = ref.split(":", 1)[1]
        if datamodule is None:
            raise ValueError(f"reference {ref!r} needs the entry's DataModule")
        if getattr(datamodule, f"{split}_set", None) is None and hasattr(datamodule, "setup"):
            datamodule.setup("fit")
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            raise ValueError(f"the DataModule {type(datamodule).__name__} has no {split}_set for reference {ref!r}")
        n = min(n, len(dataset))
        spec = {"dataset": type(datamodule).__name__, "split": split, "resolution": resolution}
        spec.update({k: v for k, v in dict(getattr(datamodule, "hparams", {})).items() if _jsonable(v)})
        if hasattr(dataset, "cache_key"):
            spec["data"] = dataset.cache_key()
    else:
        raise ValueError(f"unknown reference {ref!r}: use 'shapes:<split>', 'data:<split>' or a path to an .npz")
    return dataset, n, spec


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def fd(features: Tensor, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance of generated features against reference statistics."""
    mu, sigma = stats_from_features(features)
    return frechet_distance(mu, sigma, *reference)


# ------------------------------------------------------------------------------------------------ provenance
def provenance(module: Any, ckpt_path: str | None) -> dict[str, Any]:
    """``checkpoint_step``, ``checkpoint_sha256`` (when a checkpoint is given), ``commit`` (`data.sources.git_commit`)
    and ``code_diff``, a hash of how the project's packages differ from it (None when they do not)."""
    out: dict[str, Any] = {"commit": git_commit(), "code_diff": diff_hash(PACKAGES)}
    step = None
    if ckpt_path is not None:
        out["checkpoint"] = str(ckpt_path)
        out["checkpoint_sha256"] = file_sha256(ckpt_path)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        step = ckpt.get("global_step")
    if step is None:
        try:
            trainer = getattr(module, "trainer", None)
        except RuntimeError:  # a LightningModule that no Trainer is attached to
            trainer = None
        step = trainer.global_step if trainer is not None else None
    out["checkpoint_step"] = step
    return out
