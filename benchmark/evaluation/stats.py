"""The statistics behind every interval and rank: one bootstrap helper, the row interval, pairwise ranks.

**Evaluation noise.** `bootstrap` resamples the rows of a metric's gathered per-sample features (with replacement,
within each class when labels are given, as the balanced protocol draws them) and recomputes the metric; the SD of
the replicates is the metric's evaluation-noise SD. Intervals are normal: value ± z · SD. (A percentile interval of
a Fréchet distance is shifted: a resampled set holds duplicates, which bias FD upwards; its SD is still right, which
`docs/evaluation.md` checks against 20 evaluation seeds.)

**A row's interval** (`combine`): the mean over its training seeds, with the standard error

    SE² = (evaluation variance of the mean over seeds) + (training-seed variance) / number of seeds

Every seed of an entry is evaluated on the same noise and labels (one protocol seed), so the evaluation errors of
its seeds are correlated: their mean's evaluation variance comes from the bootstrap replicates averaged over seeds
(replicate r of every row resamples the same sample indices), or is the one-seed variance when no replicates were
recorded. The training-seed variance is pooled over every multi-seed entry of the table (sample variance across
seeds minus what evaluation noise alone would give, floored at 0): two seeds alone say little about a variance, a
pooled estimate with more degrees of freedom says more, and a one-seed row gets the same training-seed term.

**Ranks** (`pairwise_ranks`): every pair of entries with at least two seeds is compared with a two-sided z-test on
the difference of their means. The protocol pairs noise and labels across entries, and so do the bootstrap
replicates: where both rows recorded them, the evaluation part of the difference's variance is the variance of the
replicate differences (a paired bootstrap; measured at 0.5-0.85 of the unpaired SD on Shapes); otherwise the two
evaluation variances add (conservative). The p-values are Holm-corrected over all pairs, and an entry's rank is 1 +
the number of entries that are significantly better than it. So two clearly separated entries get different ranks,
overlapping ones share one (``=k``), and a chain a ≈ b ≈ c with a clearly better than c does not merge: c ranks
below a. One-seed rows are shown unranked: their training-seed variance is not measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "METHOD",
    "Interval",
    "RowStat",
    "bootstrap",
    "combine",
    "difference_se",
    "holm",
    "pairwise_ranks",
    "pooled_seed_variance",
    "z_of",
]

METHOD = (
    "Intervals are 95 % confidence intervals of the mean over training seeds: evaluation noise (a bootstrap over the "
    "samples, {reps} resamples) plus the training-seed variance pooled over the multi-seed entries. Ranks: two-sided "
    "z-tests on every pair of entries, paired through the bootstrap replicates where both rows recorded them (every "
    "entry is sampled on the same noise and labels), Holm-corrected at α = 0.05; an entry's rank is 1 + the number "
    "of entries significantly better than it (`=k`: not significantly different from another entry of rank k); a "
    "paired difference can be significant while the two intervals overlap. "
    "One-seed rows are unranked (`-`). See docs/evaluation.md."
)


def z_of(level: float) -> float:
    """Two-sided normal quantile of a confidence level (0.95 -> 1.96)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Interval:
    """A value with its evaluation-noise SD and normal confidence interval."""

    value: float
    sd: float
    level: float = 0.95

    @property
    def lo(self) -> float:
        return self.value - z_of(self.level) * self.sd

    @property
    def hi(self) -> float:
        return self.value + z_of(self.level) * self.sd

    def covers(self, x: float) -> bool:
        return self.lo <= x <= self.hi


def bootstrap(
    statistic: Callable[..., Any],
    *arrays: np.ndarray,
    strata: np.ndarray | None = None,
    reps: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """``reps`` values of ``statistic(*resampled arrays)``, the rows of every array resampled together.

    Returns an array of shape ``(reps,)`` or ``(reps, k)`` when the statistic returns k numbers.

    Args:
        statistic: Function of the arrays (same row count) returning a float or a sequence of floats.
        arrays: Per-sample rows (features, labels, ...); None entries are passed through unchanged.
        strata: (N,) integer groups (e.g. the requested class): rows are resampled within each group, so a
            class-balanced set stays balanced.
        reps: Number of bootstrap resamples.
        seed: Seed of the resampling (the same on every rank, so every rank gets the same interval).
    """
    present = [a for a in arrays if a is not None]
    if not present:
        raise ValueError("bootstrap needs at least one array")
    n = len(present[0])
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == g) for g in np.unique(strata)]
    out = []
    for _ in range(reps):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        out.append(np.asarray(statistic(*(None if a is None else a[idx] for a in arrays)), np.float64))
    return np.stack(out)


@dataclass(frozen=True)
class RowStat:
    """One entry's per-seed values of a metric, their evaluation-noise SDs and bootstrap replicates (None where not
    recorded)."""

    name: str
    values: Sequence[float]
    eval_sds: Sequence[float | None]
    boots: Sequence[Sequence[float] | None] | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def eval_var(self) -> float:
        """Mean evaluation-noise variance of one seed's value."""
        sds = [s for s in self.eval_sds if s is not None and math.isfinite(s)]
        return float(np.mean(np.square(sds))) if sds else 0.0

    def mean_boot(self) -> np.ndarray | None:
        """Replicates of the mean over seeds (replicate r of every seed resamples the same sample indices), or None."""
        if not self.boots or any(b is None for b in self.boots):
            return None
        lengths = {len(b) for b in self.boots}  # type: ignore[arg-type]
        if len(lengths) != 1 or lengths == {0}:
            return None
        return np.mean(np.asarray(self.boots, dtype=np.float64), axis=0)

    def eval_var_of_mean(self) -> float:
        """Evaluation variance of the mean over seeds. Every seed is evaluated on the same noise and labels (one
        protocol seed), so their evaluation errors are correlated: from the replicates when recorded, else the
        one-seed variance (the fully correlated bound)."""
        boot = self.mean_boot()
        if boot is not None and len(boot) > 1:
            return float(np.var(boot, ddof=1))
        return self.eval_var()


def pooled_seed_variance(rows: Sequence[RowStat]) -> float | None:
    """Training-seed variance pooled over the entries with >= 2 seeds, floored at 0.

    The seeds of an entry are evaluated on the same noise and labels, so the part of the evaluation noise that does
    not cancel between them is what the replicates say (var of a seed's replicate minus another's); without
    replicates none is subtracted (the sample variance is used whole: the larger, cautious estimate).
    Returns None when no entry has two seeds.
    """
    num = den = 0.0
    for row in rows:
        if row.n >= 2:
            sample_var = float(np.var(row.values, ddof=1))
            noise = 0.0
            if row.mean_boot() is not None:
                # The sample variance across seeds that evaluation noise alone would give: per replicate, the spread
                # of the seeds' perturbations (replicate minus the seed's mean replicate), averaged over replicates.
                boots = np.asarray(row.boots, dtype=np.float64)
                noise = float(np.mean(np.var(boots - boots.mean(1, keepdims=True), axis=0, ddof=1)))
            num += (row.n - 1) * max(sample_var - noise, 0.0)
            den += row.n - 1
    return num / den if den else None


def combine(row: RowStat, seed_var: float | None, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, SE, half-width)`` of a row: eval noise and training-seed variance over its seeds (module doc)."""
    if not row.n:
        return float("nan"), float("nan"), float("nan")
    se = math.sqrt(row.eval_var_of_mean() + (seed_var or 0.0) / row.n)
    return row.mean, se, z_of(level) * se


def difference_se(a: RowStat, b: RowStat, seed_var: float | None) -> tuple[float, bool]:
    """SE of ``mean(a) - mean(b)`` and whether it is paired (both rows recorded replicates of the same length)."""
    seed_part = (seed_var or 0.0) * (1 / a.n + 1 / b.n)
    ba, bb = a.mean_boot(), b.mean_boot()
    if ba is not None and bb is not None and len(ba) == len(bb) and len(ba) > 1:
        return math.sqrt(float(np.var(ba - bb, ddof=1)) + seed_part), True
    return math.sqrt(a.eval_var_of_mean() + b.eval_var_of_mean() + seed_part), False


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for position, i in enumerate(order):
        running = max(running, min(1.0, (m - position) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def pairwise_ranks(
    rows: Sequence[RowStat], higher_is_better: bool = False, alpha: float = 0.05, min_seeds: int = 2
) -> dict[str, str]:
    """Ranks from Holm-corrected pairwise z-tests (module doc): ``"1"``, ``"=2"``, ...; ``"-"`` for one-seed rows.

    Args:
        rows: One `RowStat` per entry.
        higher_is_better: Direction of the metric.
        alpha: Family-wise error rate of the Holm procedure.
        min_seeds: Rows with fewer seeds are not ranked (their training-seed variance is unmeasured).
    """
    seed_var = pooled_seed_variance(rows)
    ranked = [r for r in rows if r.n >= min_seeds]
    pairs, pvalues = [], []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1 :]:
            se, _ = difference_se(a, b, seed_var)
            diff = a.mean - b.mean
            p = 0.0 if se == 0 and diff != 0 else (1.0 if se == 0 else _two_sided_p(diff / se))
            pairs.append((a.name, b.name, diff))
            pvalues.append(p)
    better_than: dict[str, int] = {r.name: 0 for r in ranked}
    for (a, b, diff), p in zip(pairs, holm(pvalues), strict=True):
        if p < alpha:
            a_better = diff > 0 if higher_is_better else diff < 0
            better_than[b if a_better else a] += 1
    ranks: dict[str, str] = {}
    numbers = {name: 1 + k for name, k in better_than.items()}
    for name, number in numbers.items():
        shared = sum(1 for other in numbers.values() if other == number) > 1
        ranks[name] = f"={number}" if shared else str(number)
    for r in rows:
        ranks.setdefault(r.name, "-")
    return ranks
