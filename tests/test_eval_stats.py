"""The statistics of `moa eval` against textbook values."""

from __future__ import annotations

import random

import pytest

from moa.eval.stats import bootstrap_mean, mcnemar_exact, paired_bootstrap, percentile, wilson


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score).
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson(11, 10)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (1, 9, 2 * 11 / 1024),  # 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 0.021484375
        (5, 5, 1.0),
        (0, 6, 2 / 64),  # 0.03125
        (3, 12, 2 * (1 + 15 + 105 + 455) / 2**15),  # 0.03515625
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_exact_on_known_tables(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([7], 95) == 7


def test_paired_bootstrap_covers_a_known_difference() -> None:
    rng = random.Random(7)
    baseline = [1.0 if rng.random() < 0.4 else 0.0 for _ in range(400)]
    # The system is right wherever the baseline is, and on 30% of the other items: a true
    # paired difference of 0.3 * 0.6 = 0.18 in expectation.
    system = [1.0 if b or rng.random() < 0.3 else 0.0 for b in baseline]
    diff, (low, high) = paired_bootstrap(system, baseline)
    assert diff == pytest.approx(sum(system) / 400 - sum(baseline) / 400)
    assert low <= 0.18 <= high
    assert low > 0  # the interval excludes 0: the difference is real


def test_paired_bootstrap_of_identical_systems_is_zero() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert paired_bootstrap(values, values) == (0.0, (0.0, 0.0))


def test_bootstrap_mean_of_scores_is_seeded_and_brackets_the_mean() -> None:
    scores = [float(i % 10 + 1) for i in range(100)]
    low, high = bootstrap_mean(scores)
    assert low < 5.5 < high
    assert bootstrap_mean(scores) == (low, high)
