"""The statistics of `moa eval`: intervals for one system, paired tests between two.

- `wilson()`: the Wilson score interval of a proportion (no continuity correction).
- `bootstrap_mean()`: percentile-bootstrap interval of a mean score.
- `paired_bootstrap()`: difference of means of two systems scored on the same items, with a
  percentile interval from resampling items (the pairing is kept).
- `mcnemar_exact()`: the exact two-sided McNemar p-value from the discordant pairs.
- `percentile()`: linear interpolation between order statistics (numpy's default).

Pure Python, seeded, no numpy: eval tables are small.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = [
    "Z95",
    "bootstrap_mean",
    "mcnemar_exact",
    "paired_bootstrap",
    "percentile",
    "wilson",
]

Z95 = 1.959963984540054
"""The 97.5th percentile of the standard normal distribution."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n` (Newcombe 1998, method 3)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denominator = 1 + z2 / n
    low = (centre - spread) / denominator
    high = (centre + spread) / denominator
    # Exactly 0 and 1 at the edges (the formula gives them only up to rounding).
    return (0.0 if successes == 0 else low, 1.0 if successes == n else high)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values`, interpolating linearly; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _resampled_means(values: Sequence[float], rounds: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds)]


def bootstrap_mean(
    values: Sequence[float], *, rounds: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (nan, nan when empty)."""
    if not values:
        return (math.nan, math.nan)
    means = _resampled_means(values, rounds, seed)
    return (percentile(means, 2.5), percentile(means, 97.5))


def paired_bootstrap(
    system: Sequence[float], baseline: Sequence[float], *, rounds: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of `system - baseline` over paired items and its 95% paired-bootstrap interval."""
    if len(system) != len(baseline):
        raise ValueError(f"paired samples differ in length: {len(system)} vs {len(baseline)}")
    diffs = [s - b for s, b in zip(system, baseline, strict=True)]
    if not diffs:
        return (math.nan, (math.nan, math.nan))
    return (sum(diffs) / len(diffs), bootstrap_mean(diffs, rounds=rounds, seed=seed))


def mcnemar_exact(only_system: int, only_baseline: int) -> float:
    """Exact two-sided McNemar p-value: `only_system` items right only for the system,
    `only_baseline` items right only for the baseline (the discordant pairs). Under the null
    each discordant pair goes either way with probability 1/2."""
    if only_system < 0 or only_baseline < 0:
        raise ValueError("discordant counts cannot be negative")
    n = only_system + only_baseline
    if n == 0:
        return 1.0
    k = min(only_system, only_baseline)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
