"""The released noise has the claimed distribution: ≥ 10,000 releases of one count through the
product's release path accept the claimed scale and reject ×0.7 and ×1.3 of it."""

from __future__ import annotations

from fractions import Fraction

import pytest
from scipy import stats

from gateway.noise import calibrate, release_measurement
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
