"""The released noise has the claimed distribution — for SUM (fixed point) and for the threshold.

``tests/test_noise_stats.py`` covers a COUNT. Here, through the product's path:

* SUM of a float measure: ``release`` on a real plan, noise recovered as ``round(value · 1000) −
  true`` (the fixed-point integer). Pass: the χ² test (``tests/stats_helpers.py``) accepts the
  claimed scale (p > 10⁻³) and rejects ×0.7 and ×1.3 (p < 10⁻⁶); the envelope's ``scale`` equals the
  calibrated scale / 1000.
* SUM at the demo's bounds (scale 5·10⁷ fixed-point units, too wide for χ² bins): the same with a
  Kolmogorov–Smirnov test against a Laplace of the claimed scale (the discrete and continuous CDFs
  differ by < 10⁻⁸ there).
* The threshold's noisy unit counts: the product's own threshold mechanism
  (``gateway.noise._threshold_measure``, built exactly as ``release_keys`` builds it) on counts far
  above τ, so every key is released with its noisy count. Pass: χ² accepts the claimed scale and
  rejects ×0.7 / ×1.3.
* The threshold through the public ``release_keys``: keys whose true count is τ − scale are
  released with probability P(X ≥ scale). Pass: a binomial test accepts the claimed scale's
  probability and rejects those of ×0.7 and ×1.3.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy import stats

from gateway.noise import (
    SCALE_BITS,
    _threshold_measure,
    calibrate,
    calibrate_threshold,
    release_keys,
)
from gateway.release import release
from tests.stats_helpers import chi2_pvalue

from .neighbours import catalog_for, plan, policy_document, rows_sql, true_result

N = 12_000
ALPHA_ACCEPT = 1e-3
ALPHA_REJECT = 1e-6


def _sum_noise(bounds: list[float]) -> tuple[list[int], float, float]:
    """N fixed-point noise draws of ``SUM(cost)`` (per batch), the integer scale and the envelope's."""
    doc = policy_document(batches=N, epsilon=0.5, delta=1e-7, max_rows=5)
    doc["datasets"]["audit"]["tables"]["visits"]["columns"]["cost"]["bounds"] = bounds
    p = plan("SELECT batch, SUM(cost) AS s FROM visits GROUP BY batch", catalog_for(doc))
    (m,) = p.measurements
    assert m.fixed_point == 1000
    result = true_result(
        p, [rows_sql(batches=N, units=2, rows_per_unit=3, unit_offset=0, cost="0.0015")]
    )
    truth = {row[0]: row[1] for row in result.rows}
    released = release(p, result)
    noise = [round(row[1] * 1000) - truth[row[0]] for row in released.rows]
    return noise, calibrate(m.sensitivity, m.epsilon).scale, float(released.columns[1].scale or 0)


@pytest.fixture(scope="module")
def small_sum() -> tuple[list[int], float, float]:
    # bounds [0, 0.004]: 4 fixed-point units per row, sensitivity 20, scale 40 at ε = 0.5.
    return _sum_noise([0, 0.004])


def test_fixed_point_sum_scale_is_accepted(small_sum: tuple[list[int], float, float]) -> None:
    noise, scale, shown = small_sum
    assert scale == pytest.approx(40.0)
    assert shown == pytest.approx(scale / 1000)
    assert chi2_pvalue(noise, scale) > ALPHA_ACCEPT


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_fixed_point_sum_wrong_scales_rejected(
    small_sum: tuple[list[int], float, float], factor: float
) -> None:
    noise, scale, _ = small_sum
    assert chi2_pvalue(noise, scale * factor) < ALPHA_REJECT


def test_fixed_point_sum_at_demo_bounds() -> None:
    noise, scale, shown = _sum_noise([0, 5000])
    # K · 5000 · 1000 / 0.5, rounded up on the scale grid (at most two steps; never less noise)
    assert 5e7 <= scale <= 5e7 * (1 + 2 / 2**SCALE_BITS)
    assert 5e4 <= shown <= 5e4 * (1 + 2 / 2**SCALE_BITS)
    ks = [stats.kstest(noise, "laplace", args=(0, scale * f)).pvalue for f in (1.0, 0.7, 1.3)]
    assert ks[0] > ALPHA_ACCEPT, ks
    assert ks[1] < ALPHA_REJECT and ks[2] < ALPHA_REJECT, ks


@pytest.fixture(scope="module")
def threshold_spec() -> tuple[int, float]:
    """The demo's thresholded release: K = 5, ε share 1/4, δ = 10⁻⁷ (scale 20, τ = 343)."""
    doc = policy_document(batches=2, epsilon=0.5, delta=1e-7, max_rows=5, min_group_size=10)
    p = plan("SELECT visit_day, COUNT(*) FROM visits GROUP BY visit_day", catalog_for(doc))
    assert p.threshold is not None
    spec = calibrate_threshold(
        p.threshold.max_groups, p.threshold.epsilon, p.threshold.delta, p.threshold.min_group_size
    )
    assert (spec.scale, spec.threshold) == (20.0, 343)
    return spec.threshold, spec.scale


def test_threshold_noisy_counts_have_the_claimed_scale(threshold_spec: tuple[int, float]) -> None:
    tau, scale = threshold_spec
    true = 10**6  # far above τ: every key is kept, with its noisy count
    released = _threshold_measure(scale, tau)({i: true for i in range(N)})
    assert len(released) == N
    noise = [int(v) - true for v in released.values()]
    assert chi2_pvalue(noise, scale) > ALPHA_ACCEPT
    for factor in (0.7, 1.3):
        assert chi2_pvalue(noise, scale * factor) < ALPHA_REJECT


def test_release_keys_rate_matches_the_claimed_scale(threshold_spec: tuple[int, float]) -> None:
    from rewriter.plan import Threshold

    tau, scale = threshold_spec
    threshold = Threshold("u", 5, Fraction(1, 4), Fraction(1, 10**7), 10)
    true = tau - int(scale)
    kept = len(release_keys(threshold, [true] * N))

    def p_release(s: float) -> float:  # P(true + X >= τ) = P(X >= scale), X ~ discrete Laplace(s)
        a = math.exp(-1 / s)
        return a ** (tau - true) / (1 + a)

    pvalue = {f: stats.binomtest(kept, N, p_release(scale * f)).pvalue for f in (1.0, 0.7, 1.3)}
    assert pvalue[1.0] > ALPHA_ACCEPT, pvalue
    assert pvalue[0.7] < ALPHA_REJECT and pvalue[1.3] < ALPHA_REJECT, pvalue


@pytest.fixture(scope="module")
def centred_avg() -> tuple[list[int], float, float]:
    """N draws of the noise on ``AVG(cost)``'s centred sum, its integer scale, and the scale the
    plain (uncentred) sum would have had."""
    doc = policy_document(batches=N, epsilon=0.5, delta=1e-7, max_rows=5)
    doc["datasets"]["audit"]["tables"]["visits"]["columns"]["cost"]["bounds"] = [0, 0.004]
    p = plan(
        "SELECT batch, AVG(cost) AS a, COUNT(cost) AS n FROM visits GROUP BY batch",
        catalog_for(doc),
    )
    s, c = p.measurements
    assert (s.center, s.center_count, c.kind.value) == (2, c.column, "count")
    plain = calibrate(s.sensitivity * 2, s.epsilon).scale  # terms in [0, 4]: |t - 2| <= 2
    # 150 rows per batch at the centre, 0.002: the centred sum is 0 and the count 150, far from
    # the AVG's clamp (|noise| > 300 = 15 scales) and the count's floor at 0.
    result = true_result(
        p, [rows_sql(batches=N, units=50, rows_per_unit=3, unit_offset=0, cost="0.002")]
    )
    assert {(row[1], row[2]) for row in result.rows} == {(300, 150)}  # exact SUM, COUNT
    released = release(p, result)
    assert released.columns[1].mechanism == "discrete_laplace centred sum / discrete_laplace count"
    # a = 0.002 + noisy_centred / 1000 / n, with n the released noisy count (never floored here).
    noise = [round((row[1] - 0.002) * 1000 * row[2]) for row in released.rows]
    return noise, calibrate(s.sensitivity, s.epsilon).scale, plain


def test_avg_adds_noise_of_the_centred_scale(
    centred_avg: tuple[list[int], float, float],
) -> None:
    """Pass: the AVG's numerator carries noise of the centred sum's scale (K · 2 / (ε / 2) = 40),
    and not that of the plain sum (80): the χ² test accepts the first and rejects the second."""
    noise, scale, plain = centred_avg
    assert (scale, plain) == (pytest.approx(40.0), pytest.approx(80.0))
    assert chi2_pvalue(noise, scale) > ALPHA_ACCEPT
    assert chi2_pvalue(noise, plain) < ALPHA_REJECT
    assert chi2_pvalue(noise, scale * 0.7) < ALPHA_REJECT
