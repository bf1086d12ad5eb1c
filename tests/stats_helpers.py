"""A χ² goodness-of-fit test against a discrete Laplace distribution (test helper)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from scipy import stats


def discrete_laplace_pmf(k: int, scale: float) -> float:
    """P(X = k) for the discrete Laplace with P ∝ exp(-|k| / scale) (OpenDP's parametrisation)."""
    a = math.exp(-1.0 / scale)
    return (1 - a) / (1 + a) * a ** abs(k)


def chi2_pvalue(noise: Sequence[int], scale: float, min_expected: float = 20.0) -> float:
    """p-value of the samples ``noise`` coming from the discrete Laplace with ``scale``.

    Integers are pooled into contiguous bins of at least ``min_expected`` expected samples; both tails
    are pooled into the outermost bins.
    """
    n = len(noise)
    counts = Counter(noise)
    # Central range with enough mass; tails pooled.
    limit = 1
    while n * discrete_laplace_pmf(limit, scale) >= min_expected:
        limit += 1
    bins: list[tuple[float, int]] = []
    expected_acc, observed_acc = 0.0, 0
    for k in range(-limit + 1, limit):
        expected_acc += n * discrete_laplace_pmf(k, scale)
        observed_acc += counts.get(k, 0)
        if expected_acc >= min_expected:
            bins.append((expected_acc, observed_acc))
            expected_acc, observed_acc = 0.0, 0
    tail_mass = sum(discrete_laplace_pmf(k, scale) for k in range(-limit + 1, limit))
    tail_expected = n * (1 - tail_mass) + expected_acc
    tail_observed = sum(c for k, c in counts.items() if abs(k) >= limit) + observed_acc
    bins.append((tail_expected, tail_observed))
    expected = [e for e, _ in bins]
    observed = [o for _, o in bins]
    # Renormalise for floating-point drift so sums agree exactly as scipy requires.
    factor = sum(observed) / sum(expected)
    return float(stats.chisquare(observed, [e * factor for e in expected]).pvalue)
