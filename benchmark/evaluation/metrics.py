"""The metric interface: every evaluation number is a `torchmetrics.Metric` over per-sample features.

A metric never sees images. An extractor (the Shapes CLIP, Inception, a data-trained evaluator) turns each rank's
images into per-sample features once; each metric gets ``update(features, labels)`` and ``compute()`` returns
``{name: value, name + "_sd": evaluation-noise SD}``. Its state is the list of feature rows (``dist_reduce_fx="cat"``),
so under DDP torchmetrics gathers features, never images, when ``compute`` runs; the SD comes from the shared
bootstrap (`benchmark.evaluation.stats.bootstrap`) over those gathered rows, resampled within each label.

**Adding a metric** is one small class plus its controls:

    class CutObjectRate(FeatureMetric):
        name = "cut_object_rate"
        higher_is_better = False

        def value(self, features, labels):          # numpy rows of the whole gathered set
            return float(features[:, 0].mean())      # e.g. features = (N, 1) "object touches the border"

then compute its per-sample features where the extractor runs (`benchmark.evaluation.evaluate`), and add a test
class with `tests.benchmark.evaluation.metric_controls.MetricControls`: a positive control (real images, or an exact
stand-in) and a negative control (noise, a constant image, a stand-in that ignores the condition) with thresholds.

``labels`` are whatever the metric compares against per sample (the requested class, a caption embedding, the
requested flip), or None. Per-sample means (accuracy, CLIP score, flip obeyed) use `MeanMetric`-like ``value``;
set statistics (FD, precision / recall) use the whole set.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from benchmark.evaluation.stats import bootstrap

__all__ = [
    "CLIPScore",
    "ClassAccuracy",
    "ControlDisentanglement",
    "FeatureMetric",
    "FlipObeyed",
    "FrechetDistance",
    "FrechetDistanceInfinity",
    "InceptionScore",
    "KernelDistance",
    "MetricUnavailable",
    "PrecisionRecall",
    "frechet_distance_infinity",
    "knn_precision_recall",
    "measure_all",
    "polynomial_mmd2",
]


class MetricUnavailable(RuntimeError):
    """A metric or extractor that does not fit the data, or cannot load offline; its message is one line."""


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _empty(state: Any) -> bool:
    # A list state before sync, a tensor after torchmetrics gathered it.
    return (len(state) == 0) if isinstance(state, list) else state.numel() == 0


class FeatureMetric(Metric):
    """Base class: keeps per-sample feature rows (and labels), computes a value and its bootstrap SD.

    Args:
        name: Key of the value in ``compute()`` (default: the class's ``name``).
        bootstrap_reps: Resamples of the bootstrap (0: no SD).
        seed: Seed of the bootstrap.
        stratify: Resample within each label (labels must be integer classes).
    """

    name: ClassVar[str] = "metric"
    higher_is_better: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False
    stratify_default: ClassVar[bool] = False

    def __init__(
        self, name: str | None = None, bootstrap_reps: int = 200, seed: int = 0, stratify: bool | None = None
    ) -> None:
        super().__init__()
        if name is not None:
            self.name = name  # type: ignore[misc]  (an instance may rename the key, e.g. fd_shapes)
        self.bootstrap_reps = int(bootstrap_reps)
        self.seed = int(seed)
        self.stratify = self.stratify_default if stratify is None else stratify
        self.add_state("features", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.replicates: dict[str, np.ndarray] = {}

    def update(self, features: Tensor, labels: Tensor | None = None) -> None:
        """Add per-sample rows: ``features`` (N, ...) and optional ``labels`` (N, ...)."""
        features = torch.as_tensor(features)
        self.features.append(features.detach().float().reshape(features.shape[0], -1))
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape[0] != features.shape[0]:
                raise ValueError(f"{self.name}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
            self.labels.append(labels.detach().reshape(labels.shape[0], -1))

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        """The metric on a whole set of rows (float64 numpy; labels None when the metric takes none)."""
        raise NotImplementedError

    def values(self, features: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        """Every key this metric reports (override when it reports several, like precision / recall)."""
        return {self.name: self.value(features, labels)}

    def compute(self) -> dict[str, float]:
        feats, labels = self.gathered()
        out = self.values(feats, labels)
        if self.bootstrap_reps > 1 and feats.shape[0] > 1:
            keys = list(out)
            strata = labels[:, 0].astype(np.int64) if self.stratify and labels is not None else None

            def statistic(f: np.ndarray, y: np.ndarray | None) -> list[float]:
                got = self.values(f, y)
                return [got[k] for k in keys]

            reps = bootstrap(statistic, feats, labels, strata=strata, reps=self.bootstrap_reps, seed=self.seed)
            reps = reps.reshape(len(reps), -1)
            out.update({f"{k}_sd": float(sd) for k, sd in zip(keys, np.std(reps, axis=0, ddof=1), strict=True)})
            # The replicates themselves: with the same seed, count and labels, replicate r of two entries resamples
            # the same sample indices, i.e. the same noise and labels, so their differences form a paired bootstrap.
            self.replicates = {k: reps[:, i] for i, k in enumerate(keys)}
        return out

    def gathered(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All rows as float64 numpy (every rank's, inside ``compute``)."""
        if _empty(self.features):
            raise ValueError(f"{self.name}: no samples were given")
        feats = _np(dim_zero_cat(self.features))
        labels = None if _empty(self.labels) else _np(dim_zero_cat(self.labels))
        return feats, labels


class FrechetDistance(FeatureMetric):
    """Fréchet distance of the rows' Gaussian fit against fixed reference statistics ``(mu, sigma)``.

    ``tr((Σ Σ_ref)^½)`` is computed as the sum of the square roots of the eigenvalues of ``S Σ S`` with
    ``S = Σ_ref^½`` computed once (or of ``C Σ_ref Cᵀ`` for the centred rows C when there are fewer rows than
    dimensions), so each bootstrap replicate is one symmetric eigen-decomposition.
    """

    name = "fd"
    higher_is_better = False
    stratify_default = True

    def __init__(self, reference: tuple[Any, Any], name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        mu, sigma = (np.asarray(a, np.float64) for a in reference)
        self.ref_mu, self.ref_sigma = mu, sigma
        self._root: np.ndarray | None = None
        self._ref_trace = float(np.trace(sigma))

    @property
    def _ref_root(self) -> np.ndarray:
        # Σ_ref is symmetric PSD: its square root from one eigen-decomposition (far cheaper than sqrtm at 2048-d),
        # computed once, and only when a set has at least as many rows as dimensions.
        if self._root is None:
            lam, vec = np.linalg.eigh((self.ref_sigma + self.ref_sigma.T) / 2)
            self._root = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T
        return self._root

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        if features.shape[0] < 2:
            raise ValueError(f"{self.name}: needs at least 2 samples")
        n, d = features.shape
        mu = features.mean(0)
        centred = (features - mu) / np.sqrt(n - 1)  # Σ = centredᵀ centred
        if n < d:  # few rows of wide features (2048-d Inception): Σ Σ_ref has the eigenvalues of C Σ_ref Cᵀ (n, n)
            inner = centred @ self.ref_sigma @ centred.T
            eig = np.linalg.eigvalsh((inner + inner.T) / 2)
            trace_cross = float(np.sqrt(np.clip(eig, 0, None)).sum())
        else:
            inner = self._ref_root @ (centred.T @ centred) @ self._ref_root
            eig = np.linalg.eigvalsh((inner + inner.T) / 2)
            trace_cross = float(np.sqrt(np.clip(eig, 0, None)).sum())
        diff = mu - self.ref_mu
        return float(diff @ diff + (centred * centred).sum() + self._ref_trace - 2 * trace_cross)


def measure_all(updates: list[tuple[FeatureMetric, Any, Any]], replicates: bool = True) -> dict[str, Any]:
    """Update every metric with its ``(features, labels)``, then compute them all, in the same order on every rank.

    Keys whose value is NaN (e.g. flip obeyed when no sample shows a flip) are left out. With ``replicates``, each
    key also gets ``<key>_boot``: its bootstrap replicates (a list; what the leaderboard pairs across entries).
    """
    for metric, features, labels in updates:
        metric.update(features, labels)
    out: dict[str, Any] = {}
    for metric, _, _ in updates:
        values = {k: v for k, v in metric.compute().items() if np.isfinite(v)}
        out.update(values)
        if replicates:
            for k, reps in metric.replicates.items():
                if k in values and np.isfinite(reps).all():
                    out[f"{k}_boot"] = [float(f"{x:.5g}") for x in reps]  # 5 digits: rows stay small
    return out


def frechet_distance_infinity(
    fd_of: Any, features: np.ndarray, points: int = 8, smallest: float = 0.2, seed: int = 0
) -> float:
    """FD extrapolated to infinitely many samples (FD∞, Chong & Forsyth 2020): a line in 1/n through FD at subsets.

    The bias of FD from n samples is close to c/n, so FD at ``points`` subset sizes from ``smallest`` · N to N
    (random subsets without replacement) is fit by ``a + b/n`` and ``a`` returned.

    Args:
        fd_of: Function rows -> FD (e.g. `FrechetDistance.value` with labels None).
        features: (N, D) rows.
    """
    n = features.shape[0]
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(max(int(smallest * n), min(n, 20)), n, points).astype(int))
    fds = [fd_of(features if m == n else features[rng.choice(n, m, replace=False)]) for m in sizes]
    if len(sizes) < 2:
        return float(fds[-1])
    slope, intercept = np.polyfit(1.0 / sizes, np.asarray(fds), 1)
    return float(intercept)


class FrechetDistanceInfinity(FrechetDistance):
    """`frechet_distance_infinity` against fixed reference statistics: FD with its 1/n bias extrapolated away."""

    name = "fd_inf"

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        return frechet_distance_infinity(lambda f: FrechetDistance.value(self, f, None), features, seed=self.seed)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, yy_mean: float | None = None) -> float:
    """Unbiased MMD² with the cubic kernel (xᵀy / d + 1)³ of KID (Bińkowski et al. 2018); no 1/n bias floor.

    Args:
        x: (n, D) rows.
        y: (m, D) reference rows.
        yy_mean: The mean off-diagonal kernel of ``y`` with itself, when computed once already.
    """
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / d + 1) ** 3

    n, m = x.shape[0], y.shape[0]
    kxx = k(x, x)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    if yy_mean is None:
        kyy = k(y, y)
        yy_mean = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy_mean - 2 * k(x, y).mean())


class KernelDistance(FeatureMetric):
    """Unbiased polynomial-kernel MMD² (KID's estimator) against fixed reference features."""

    name = "kd"
    higher_is_better = False
    stratify_default = True

    def __init__(self, reference_features: Any, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        ref = reference_features.detach().cpu() if hasattr(reference_features, "detach") else reference_features
        self.ref = np.asarray(ref, np.float64)
        d = self.ref.shape[1]
        kyy = (self.ref @ self.ref.T / d + 1) ** 3
        m = self.ref.shape[0]
        self._yy = float((kyy.sum() - np.trace(kyy)) / (m * (m - 1)))

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        return polynomial_mmd2(features, self.ref, self._yy)


class ClassAccuracy(FeatureMetric):
    """Fraction of samples whose predicted class (argmax of the ``features`` logits) is the label asked for."""

    name = "class_accuracy"
    stratify_default = True

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        if labels is None:
            raise ValueError("class_accuracy needs the requested labels")
        predicted = features.argmax(1) if features.shape[1] > 1 else features[:, 0]
        return float((predicted == labels[:, 0]).mean())


class FlipObeyed(FeatureMetric):
    """Fraction of samples facing the way asked, among those whose kind shows a flip (NaN if none does).

    ``features``: direction logits (N, 2; 0 right, 1 left). ``labels`` (N, 2): the requested flip, and 1 where the
    sample's kind is asymmetric (every row is passed, so every rank gathers the same number of states).
    """

    name = "flip_obeyed"

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        if labels is None or labels.shape[1] < 2:
            raise ValueError("flip_obeyed needs labels (requested flip, kind shows a flip)")
        shown = labels[:, 1] > 0.5
        if not shown.any():
            return float("nan")
        return float((features.argmax(1) == np.round(labels[:, 0]))[shown].mean())


class CLIPScore(FeatureMetric):
    """100 × mean(max(cos(image, caption), 0)): ``features`` image embeddings, ``labels`` caption embeddings."""

    name = "clip_score"

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        if labels is None:
            raise ValueError("clip_score needs the caption embeddings as labels")
        a = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        b = labels / np.linalg.norm(labels, axis=1, keepdims=True).clip(1e-12)
        return float(100 * np.clip((a * b).sum(1), 0, None).mean())


def _harmonic(a: float, b: float) -> float:
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


class ControlDisentanglement(FeatureMetric):
    """Harmonic mean of "semantic kept" and "control obeyed", from per-sample rows (no labels).

    ``features`` (N, 3): the fraction of the sample's swept images that kept its kind, whether its flip was obeyed
    (NaN where the sweep had no flip test; every Shapes kind shows its flip through the lighting), and the fraction
    of its crop steps that enlarged the object (NaN if no crop sweep). Control obeyed is the mean of the flip and
    crop parts present (`benchmark.evaluation.disentanglement`).
    """

    name = "control_disentanglement"

    def parts(self, features: np.ndarray) -> tuple[float, float]:
        kept = float(features[:, 0].mean())
        obeyed = [float(np.nanmean(col)) for col in features[:, 1:].T if np.isfinite(col).any()]
        return kept, (sum(obeyed) / len(obeyed) if obeyed else 0.0)

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        return _harmonic(*self.parts(features))


class InceptionScore(FeatureMetric):
    """Inception score of ``features`` = Inception's unbiased logits (torch-fidelity's computation, 10 splits)."""

    name = "inception_score"

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        from torch_fidelity.metric_isc import isc_features_to_metric

        logits = torch.from_numpy(features)
        return float(isc_features_to_metric(logits, splits=min(10, features.shape[0]))["inception_score_mean"])


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019): k-NN balls of each set as its manifold.

    Precision: fraction of ``fake`` rows inside at least one real ball (radius = distance to the k-th nearest other
    real row); recall: fraction of ``real`` rows inside at least one fake ball.
    """
    real_t, fake_t = torch.from_numpy(np.asarray(real, np.float64)), torch.from_numpy(np.asarray(fake, np.float64))

    def radii(x: Tensor) -> Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(min(k + 1, x.shape[0]), dim=1).values  # +1: the row itself is at distance 0

    def covered(points: Tensor, centres: Tensor, r: Tensor) -> float:
        return float((torch.cdist(points, centres) <= r[None, :]).any(1).double().mean())

    return covered(fake_t, real_t, radii(real_t)), covered(real_t, fake_t, radii(fake_t))


class PrecisionRecall(FeatureMetric):
    """Improved precision and recall of the rows against fixed real features (k-NN manifolds, k = 3).

    The bootstrap resamples the generated rows; a duplicated row shrinks the generated k-NN radii a little, so the
    recall SD is approximate.
    """

    name = "precision"
    higher_is_better = True

    def __init__(self, real_features: Any, k: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.real = np.asarray(real_features.detach().cpu() if hasattr(real_features, "detach") else real_features)
        self.real = self.real.astype(np.float64)
        self.k = k

    def values(self, features: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        precision, recall = knn_precision_recall(self.real, features, self.k)
        return {"precision": precision, "recall": recall}

    def value(self, features: np.ndarray, labels: np.ndarray | None) -> float:
        return self.values(features, labels)["precision"]
