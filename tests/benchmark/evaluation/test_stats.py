"""The statistics behind the intervals and ranks of every table."""

import numpy as np
import pytest

from benchmark.evaluation.stats import (
    RowStat,
    bootstrap,
    combine,
    difference_se,
    holm,
    pairwise_ranks,
    pooled_seed_variance,
)


def row(name, values, sd=0.1):
    return RowStat(name, values, [sd] * len(values))


def test_two_clearly_separated_entries_get_different_ranks():
    ranks = pairwise_ranks([row("a", [10.0, 10.2]), row("b", [20.0, 20.3])])
    assert ranks == {"a": "1", "b": "2"}
    assert pairwise_ranks([row("a", [10.0, 10.2]), row("b", [20.0, 20.3])], higher_is_better=True) == {
        "a": "2",
        "b": "1",
    }


def test_overlapping_entries_tie():
    ranks = pairwise_ranks([row("a", [10.0, 12.0], sd=1.0), row("b", [11.0, 12.5], sd=1.0)])
    assert ranks == {"a": "=1", "b": "=1"}


def test_a_non_transitive_chain_does_not_merge():
    # a ~ b and b ~ c, but a is clearly better than c: c ranks below a (rank_with_ties chained all three to "=1").
    rows = [row("a", [10.0, 10.0], 0.3), row("b", [10.6, 10.6], 0.3), row("c", [11.2, 11.2], 0.3)]
    ranks = pairwise_ranks(rows)
    assert ranks["a"] == "=1" and ranks["b"] == "=1" and ranks["c"] == "2"


def test_a_one_seed_row_is_unranked_but_gets_an_interval():
    rows = [row("a", [10.0, 10.4]), row("b", [20.0, 20.2]), row("one", [5.0])]
    ranks = pairwise_ranks(rows)
    assert ranks["one"] == "-" and ranks["a"] == "1"
    mean, se, half = combine(rows[2], pooled_seed_variance(rows))
    assert mean == 5.0 and half > 0 and half == pytest.approx(1.96 * se, rel=1e-3)


def test_the_interval_combines_evaluation_noise_and_training_seeds():
    # Seed spread far above the evaluation noise: the pooled training-seed variance dominates the interval.
    rows = [row("a", [10.0, 12.0], sd=0.01), row("b", [20.0, 22.0], sd=0.01)]
    seed_var = pooled_seed_variance(rows)
    assert seed_var == pytest.approx(2.0, rel=1e-3)
    _, se, _ = combine(rows[0], seed_var)
    assert se == pytest.approx(np.sqrt(0.01**2 + 2.0 / 2), rel=1e-3)
    # Identical seeds: only the evaluation noise is left, and without replicates it does not shrink with seeds
    # (every seed is evaluated on the same noise, so their evaluation errors may be fully correlated).
    quiet = [row("a", [10.0, 10.0], sd=0.5)]
    assert pooled_seed_variance(quiet) == 0.0 and combine(quiet[0], 0.0)[1] == pytest.approx(0.5)


def test_replicates_pair_entries_evaluated_on_the_same_noise():
    """Two entries whose bootstrap replicates move together (same resampled samples): the paired SE of their
    difference is far below the unpaired one, so a difference the unpaired test cannot resolve is resolved."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, 200)  # what the resampled noise does to both entries
    a = RowStat("a", [10.0, 10.0], [1.0, 1.0], [10 + shared, 10 + shared])
    b = RowStat("b", [11.0, 11.0], [1.0, 1.0], [11 + shared + rng.normal(0, 0.1, 200)] * 2)
    se, paired = difference_se(a, b, 0.0)
    assert paired and se < 0.2
    unpaired_a, unpaired_b = RowStat("a", [10.0, 10.0], [1.0, 1.0]), RowStat("b", [11.0, 11.0], [1.0, 1.0])
    assert difference_se(unpaired_a, unpaired_b, 0.0) == (pytest.approx(np.sqrt(2.0)), False)
    assert pairwise_ranks([a, b]) == {"a": "1", "b": "2"}
    assert pairwise_ranks([unpaired_a, unpaired_b]) == {"a": "=1", "b": "=1"}


def test_holm_adjusts_step_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_the_bootstrap_resamples_rows_together_and_within_strata():
    x = np.arange(10.0)
    labels = np.array([0] * 5 + [1] * 5)
    reps = bootstrap(lambda a, y: float(((y == 0) * a).sum() > 0) + len(a), x, labels, strata=labels, reps=20)
    assert set(reps.tolist()) == {11.0}  # every resample keeps 5 rows of each stratum
    sd = bootstrap(lambda a: a.mean(), np.random.default_rng(0).normal(size=400), reps=300).std()
    assert sd == pytest.approx(1 / 20, rel=0.2)
