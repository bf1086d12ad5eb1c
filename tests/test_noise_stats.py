"""The released noise has the claimed distribution: ≥ 10,000 releases of one count through the
product's release path accept the claimed scale and reject ×0.7 and ×1.3 of it."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy import stats

from gateway.noise import (
    SCALE_BITS,
    _laplace_epsilon,
    calibrate,
    release_measurement,
    release_measurements,
)
from rewriter.plan import Measurement, MeasurementKind
from tests.stats_helpers import chi2_pvalue

N = 12_000
TRUE_COUNT = 1234
ALPHA_ACCEPT = 1e-3  # a correct scale fails with probability 0.001
ALPHA_REJECT = 1e-6


@pytest.fixture(scope="module")
def samples() -> tuple[list[int], float]:
    m = Measurement(column="m0", kind=MeasurementKind.COUNT, sensitivity=5, epsilon=Fraction(1, 2))
    scale = calibrate(m.sensitivity, m.epsilon).scale
    noise = [release_measurement(m, [TRUE_COUNT])[0] - TRUE_COUNT for _ in range(N)]
    return noise, scale


def test_claimed_scale_is_accepted(samples: tuple[list[int], float]) -> None:
    noise, scale = samples
    assert scale == pytest.approx(10.0)
    assert chi2_pvalue(noise, scale) > ALPHA_ACCEPT


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_wrong_scales_are_rejected(samples: tuple[list[int], float], factor: float) -> None:
    noise, scale = samples
    assert chi2_pvalue(noise, scale * factor) < ALPHA_REJECT


def test_noise_is_centred_and_integer(samples: tuple[list[int], float]) -> None:
    noise, scale = samples
    assert all(isinstance(x, int) for x in noise)
    # Mean of N draws: sd = sqrt(2) * scale / sqrt(N) ~ 0.13; 6 sd is far out.
    assert abs(sum(noise) / N) < 6 * (2**0.5) * scale / N**0.5


# --- the helper itself -------------------------------------------------------------------------


def _reference_draws(scale: float, n: int, seed: int) -> list[int]:
    # scipy's dlaplace(a) has P ∝ exp(-a|k|): a = 1/scale. Test-only reference sampler.
    return [int(x) for x in stats.dlaplace(1 / scale).rvs(size=n, random_state=seed)]


def test_helper_accepts_reference_samples() -> None:
    assert chi2_pvalue(_reference_draws(10.0, N, seed=1), 10.0) > ALPHA_ACCEPT


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_helper_rejects_wrong_reference_scale(factor: float) -> None:
    assert chi2_pvalue(_reference_draws(10.0 * factor, N, seed=2), 10.0) < ALPHA_REJECT


def test_helper_rejects_a_shifted_distribution() -> None:
    shifted = [x + 2 for x in _reference_draws(10.0, N, seed=3)]
    assert chi2_pvalue(shifted, 10.0) < ALPHA_REJECT


# -- calibration on the 16-bit scale grid, and one draw per scale -------------------------------


@pytest.mark.parametrize(
    ("sensitivity", "epsilon"),
    [(5, Fraction(1, 2)), (5, Fraction(1, 30)), (25_000_000, Fraction(1, 30)), (7, Fraction(3, 7))]
    + [(1, Fraction(10**9 + k, 10**10)) for k in range(5)],
)
def test_calibrated_scales_sit_on_the_grid_just_above_sensitivity_over_epsilon(
    sensitivity: int, epsilon: Fraction
) -> None:
    scale = calibrate(sensitivity, epsilon).scale
    mantissa, _ = math.frexp(scale)
    assert (mantissa * 2**SCALE_BITS).is_integer()  # at most SCALE_BITS significant bits
    exact = Fraction(sensitivity) / epsilon
    assert Fraction(scale) >= exact  # never less noise than sensitivity / epsilon
    assert Fraction(scale) <= exact * (1 + Fraction(2, 2**SCALE_BITS))  # two grid steps at most
    assert Fraction(_laplace_epsilon(scale, sensitivity)) <= epsilon  # OpenDP's own map


def test_nearby_shares_reuse_one_scale() -> None:
    # Ten shares within 1e-5 of each other (relative; the REST benchmark's fresh epsilon per
    # query is 1e-7 apart) share at most two grid points, 1.5e-5 to 3.1e-5 apart: ten OpenDP
    # calibrations become one or two.
    scales = {calibrate(5, Fraction(10**6 + k, 10**7)).scale for k in range(0, 10)}
    assert len(scales) <= 2


@pytest.fixture(scope="module")
def batched() -> tuple[list[int], list[int], list[int]]:
    """N releases of one batch: two counts at the same scale (one OpenDP call) and a count at
    another scale; the noise of each column."""
    same_a = Measurement(
        column="a", kind=MeasurementKind.COUNT, sensitivity=5, epsilon=Fraction(1, 2)
    )
    same_b = Measurement(
        column="b", kind=MeasurementKind.COUNT, sensitivity=5, epsilon=Fraction(1, 2)
    )
    other = Measurement(
        column="c", kind=MeasurementKind.COUNT, sensitivity=5, epsilon=Fraction(1, 4)
    )
    a: list[int] = []
    b: list[int] = []
    c: list[int] = []
    for _ in range(N // 2):
        out = release_measurements(
            [(same_a, [TRUE_COUNT, TRUE_COUNT]), (same_b, [TRUE_COUNT]), (other, [TRUE_COUNT])]
        )
        assert [len(out["a"]), len(out["b"]), len(out["c"])] == [2, 1, 1]
        a.extend(v - TRUE_COUNT for v in out["a"])
        b.extend(v - TRUE_COUNT for v in out["b"])
        c.extend(v - TRUE_COUNT for v in out["c"])
    return a, b, c


def test_a_batch_gives_every_measurement_its_own_scale(
    batched: tuple[list[int], list[int], list[int]],
) -> None:
    a, b, c = batched
    assert chi2_pvalue(a, 10.0) > ALPHA_ACCEPT
    assert chi2_pvalue(b, 10.0) > ALPHA_ACCEPT
    assert chi2_pvalue(c, 20.0) > ALPHA_ACCEPT
    assert chi2_pvalue(c, 10.0) < ALPHA_REJECT  # the other scale's draw is not shared with it
    assert chi2_pvalue(a, 20.0) < ALPHA_REJECT


def test_values_drawn_in_one_call_are_independent(
    batched: tuple[list[int], list[int], list[int]],
) -> None:
    a, b, _ = batched
    first, second = a[0::2], a[1::2]  # the two groups of measurement "a", drawn in one call
    for x, y in ((first, second), (first, b)):
        r, p = stats.pearsonr(x, y)
        assert p > ALPHA_ACCEPT, f"correlated noise within one draw: r = {r:.3f}"
