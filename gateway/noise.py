"""Noise, from OpenDP only.

Every mechanism is built from the plan's :class:`~rewriter.plan.Measurement` or
:class:`~rewriter.plan.Threshold` and its privacy map is checked against the budget share the plan
charged (``map(d_in) <= epsilon``) before anything is released. Nothing here draws randomness from
numpy, ``random`` or the warehouse. Arguments: docs/privacy-model.md, sections "Counts and sums" and
"Releasing group keys".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import opendp.prelude as dp

from rewriter.plan import Measurement, Threshold

dp.enable_features("contrib")

#: Integer values handed to OpenDP must stay well inside i64.
_I64_SAFE = 2**62


class NoiseError(RuntimeError):
    """A mechanism could not be built within its budget share (a bug: fail closed)."""


@dataclass(frozen=True, slots=True)
class Calibrated:
    """A discrete Laplace mechanism calibrated for one measurement."""

    scale: float  # in integer units of the measurement
    ci95_halfwidth: float  # in integer units, noise only

    def output_scale(self, fixed_point: int) -> float:
        return self.scale / fixed_point


def _exact_le(value: float, bound: Fraction) -> bool:
    return Fraction(value) <= bound


#: Built once: constructing the domain and metric took most of a mechanism's construction time.
_I64_VECTORS = dp.vector_domain(dp.atom_domain(T="i64"))
_L1_I64 = dp.l1_distance(T="i64")


@lru_cache(maxsize=4096)
def _vector_laplace(scale: float) -> Any:
    return dp.m.make_laplace(_I64_VECTORS, _L1_I64, scale=scale)


@lru_cache(maxsize=4096)
def _laplace_epsilon(scale: float, sensitivity: int) -> float:
    """OpenDP's privacy map of the vector discrete Laplace at ``scale`` for ``sensitivity``.

    A pure function of its arguments (the map is deterministic), so its value is kept: the
    budget check before every release still compares this map's output with the share.
    """
    return float(_vector_laplace(scale).map(sensitivity))


@lru_cache(maxsize=4096)
def accuracy(scale: float, alpha: float) -> float:
    """Half-width ``a`` with P(|noise| > a) <= alpha for discrete Laplace noise of ``scale``."""
    return float(dp.discrete_laplacian_scale_to_accuracy(scale=scale, alpha=alpha))


#: Significant bits kept in a calibrated scale: scales are rounded *up* to 16 bits (at most
#: 3.1e-5 more noise per grid step), so that nearby budget shares, e.g. ε = 0.1 split three ways
#: as 1/30 by one query and 0.0333… by another, or ε = 0.0100002 and 0.0100003, share one OpenDP
#: mechanism and privacy map (building them, the map and the accuracy through the FFI cost
#: ~0.35 ms per distinct scale, on every query whose ε is new). Rounding up only adds noise;
#: every scale used is still checked by OpenDP's map against the share.
SCALE_BITS = 16


def _grid_up(x: float) -> float:
    """The smallest scale with SCALE_BITS significant bits that is >= ``x`` (exact arithmetic:
    frexp/ldexp and multiplying by a power of two do not round)."""
    mantissa, exponent = math.frexp(x)
    return math.ldexp(math.ceil(mantissa * 2**SCALE_BITS), exponent - SCALE_BITS)


def calibrate(sensitivity: int, epsilon: Fraction) -> Calibrated:
    """Smallest scale with :data:`SCALE_BITS` significant bits whose OpenDP privacy map for
    ``sensitivity`` is at most ``epsilon``.

    >>> calibrate(5, Fraction(1, 2)).scale
    10.0
    """
    # Memoised on integers: hashing a Fraction (a modular inverse) cost more than the lookup,
    # and the release asks for every cell's calibration.
    return _calibrate(sensitivity, epsilon.numerator, epsilon.denominator)


@lru_cache(maxsize=4096)
def _calibrate(sensitivity: int, numerator: int, denominator: int) -> Calibrated:
    epsilon = Fraction(numerator, denominator)
    if sensitivity <= 0 or epsilon <= 0:
        raise NoiseError("sensitivity and epsilon must be positive")
    scale = _grid_up(float(Fraction(sensitivity) / epsilon))
    for _ in range(64):
        if _exact_le(_laplace_epsilon(scale, sensitivity), epsilon):
            return Calibrated(scale=scale, ci95_halfwidth=accuracy(scale, 0.05))
        scale = _grid_up(math.nextafter(scale, math.inf))  # the next grid point up
    raise NoiseError("could not calibrate a scale within the budget share")


def _clamped(true_values: list[int]) -> list[int]:
    # Saturate rather than fail: an error that depends on the data is an oracle no noise covers.
    # Plans keep sensitivities far below this range (rewriter MAX_SENSITIVITY), so clamping only
    # moves values that are already meaningless at this scale.
    return [max(-_I64_SAFE, min(_I64_SAFE, int(v))) for v in true_values]


def release_measurement(measurement: Measurement, true_values: list[int]) -> list[int]:
    """Add discrete Laplace noise to a vector of integer per-group values.

    The L1 sensitivity over the whole vector is ``measurement.sensitivity`` (one unit changes at
    most ``max_rows_per_unit`` rows in total, whichever groups they fall in).
    """
    return release_measurements([(measurement, true_values)])[measurement.column]


def release_measurements(
    batch: list[tuple[Measurement, list[int]]],
) -> dict[str, list[int]]:
    """:func:`release_measurement` for several measurements, one OpenDP draw per distinct scale.

    Each measurement's scale is calibrated and its privacy map checked against its own share,
    exactly as alone. Measurements that come out at the same scale are then noised by one call
    of the vector mechanism on their concatenated values: the vector discrete Laplace adds
    independent noise of that scale to every coordinate, so the joint distribution of the
    released values is the same as that of one call per measurement (docs/privacy-model.md,
    "Counts and sums"). Only the number of calls through OpenDP's FFI changes.
    """
    out: dict[str, list[int]] = {}
    by_scale: dict[float, list[tuple[str, list[int]]]] = {}
    for measurement, true_values in batch:
        if not true_values:
            out[measurement.column] = []
            continue
        cal = calibrate(measurement.sensitivity, measurement.epsilon)
        if not _exact_le(_laplace_epsilon(cal.scale, measurement.sensitivity), measurement.epsilon):
            raise NoiseError("mechanism exceeds its budget share")
        by_scale.setdefault(cal.scale, []).append((measurement.column, _clamped(true_values)))
    for scale, parts in by_scale.items():
        noisy = _vector_laplace(scale)([v for _, values in parts for v in values])
        at = 0
        for column, values in parts:
            out[column] = [int(v) for v in noisy[at : at + len(values)]]
            at += len(values)
    return out


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    scale: float
    threshold: int
    #: The threshold OpenDP needs for the (epsilon, delta) share, before the min_group_size floor.
    dp_threshold: int


_I64_COUNTS_BY_KEY = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
_L01INF_I64 = dp.l01inf_distance(dp.absolute_distance(T="i64"))


@lru_cache(maxsize=1024)
def _threshold_measure(scale: float, threshold: int) -> Any:
    return dp.m.make_laplace_threshold(
        _I64_COUNTS_BY_KEY, _L01INF_I64, scale=scale, threshold=threshold
    )


@lru_cache(maxsize=16384)
def _threshold_map(scale: float, threshold: int, max_groups: int) -> tuple[float, float]:
    """OpenDP's (epsilon, delta) for the threshold mechanism (deterministic, so memoised)."""
    eps_out, delta_out = _threshold_measure(scale, threshold).map((max_groups, max_groups, 1))
    return float(eps_out), float(delta_out)


#: (max_groups, delta) -> (scale, threshold) of the last calibration: where the next search for
#: a nearby scale starts. Only a starting point: every threshold returned is checked by OpenDP.
_THRESHOLD_HINTS: dict[tuple[int, Fraction], tuple[float, int]] = {}


@lru_cache(maxsize=1024)
def calibrate_threshold(
    max_groups: int, epsilon: Fraction, delta: Fraction, min_group_size: int
) -> ThresholdSpec:
    """Scale and smallest threshold such that OpenDP's map gives at most (epsilon, delta).

    One unit changes at most ``max_groups`` groups' distinct-unit counts, each by at most 1:
    d_in = (L0, L1, Linf) = (max_groups, max_groups, 1).
    """
    if delta <= 0:
        raise NoiseError("releasing non-public group keys needs delta > 0")
    scale = float(Fraction(max_groups) / epsilon)

    def fits(s: float, t: int) -> bool:
        eps_out, delta_out = _threshold_map(s, t, max_groups)
        return _exact_le(eps_out, epsilon) and _exact_le(delta_out, delta)

    for _ in range(64):  # the scale: nudge up until epsilon fits at a huge threshold
        if _exact_le(_threshold_map(scale, 2**40, max_groups)[0], epsilon):
            break
        scale = math.nextafter(scale, math.inf)
    else:
        raise NoiseError("could not calibrate the threshold scale")
    high = _smallest_near_hint(scale, fits, _THRESHOLD_HINTS.get((max_groups, delta)))
    if high is None:
        low, high = 1, 1
        while not fits(scale, high):
            low, high = high, high * 2
            if high > 2**40:
                raise NoiseError("no threshold meets delta")
        while low < high:  # smallest threshold that fits (fits is monotone in the threshold)
            mid = (low + high) // 2
            if fits(scale, mid):
                high = mid
            else:
                low = mid + 1
    _THRESHOLD_HINTS[(max_groups, delta)] = (scale, high)
    # OpenDP 0.16's mechanism releases a key when its noisy count is >= the threshold, but its
    # privacy map bounds P[noisy count > threshold] (opendp/opendp#2922): the delta it reports
    # is e^(1/scale) too small. Releasing at >= high + 1, i.e. > high, is what the map bounded.
    return ThresholdSpec(scale=scale, threshold=max(high + 1, min_group_size), dp_threshold=high)


def _smallest_near_hint(
    scale: float, fits: Any, hint: tuple[float, int] | None, steps: int = 8
) -> int | None:
    """The smallest fitting threshold, found by walking from the hint's threshold scaled to
    ``scale`` (thresholds grow in proportion to the scale); None after ``steps`` steps, and
    then the caller searches the whole range. The answer is the same as the full search's: a
    threshold t is returned only if fits(t) and (t == 1 or not fits(t - 1))."""
    if hint is None:
        return None
    t = max(1, round(hint[1] * scale / hint[0]))
    if fits(scale, t):
        for _ in range(steps):
            if t == 1 or not fits(scale, t - 1):
                return t
            t -= 1
        return None
    for _ in range(steps):
        t += 1
        if fits(scale, t):
            return t
    return None


def release_keys(threshold: Threshold, unit_counts: list[int]) -> list[int]:
    """Indices of the groups whose noisy distinct-unit count reaches the threshold."""
    spec = calibrate_threshold(
        threshold.max_groups, threshold.epsilon, threshold.delta, threshold.min_group_size
    )
    mech = _threshold_measure(spec.scale, spec.threshold)
    eps_out, delta_out = _threshold_map(spec.scale, spec.threshold, threshold.max_groups)
    if not (_exact_le(eps_out, threshold.epsilon) and _exact_le(delta_out, threshold.delta)):
        raise NoiseError("threshold mechanism exceeds its budget share")
    counts = {i: int(c) for i, c in enumerate(unit_counts)}
    if not counts:
        return []
    released = mech(counts)
    return sorted(int(k) for k in released)


# -- quantiles (MIN, MAX, MEDIAN, PERCENTILE_CONT) --------------------------------------------


def _quantile_mech(candidates: tuple[float, ...], alpha: float, scale: float) -> Any:
    return dp.m.make_private_quantile(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.symmetric_distance(),
        dp.max_divergence(),
        candidates=list(candidates),
        alpha=alpha,
        scale=scale,
    )


def _worst_per_row(mech: Any, rows: int) -> Fraction:
    """max over d <= rows of map(d) / d, at the points that matter (OpenDP's map is linear)."""
    points = sorted({*range(1, min(rows, 64) + 1), rows})
    worst: Fraction = max(Fraction(mech.map(d)) / d for d in points)
    return worst


@lru_cache(maxsize=1024)
def calibrate_quantile(
    candidates: tuple[float, ...], alpha: float, rows_per_unit: int, epsilon: Fraction
) -> float:
    """Smallest scale at which releasing one quantile per group costs at most ``epsilon``.

    One unit changes at most ``rows_per_unit`` rows over all groups (symmetric distance), split
    among the groups as d_1 + … + d_G <= rows_per_unit; the per-group releases compose to
    Σ map(d_g) <= rows_per_unit · max_d map(d)/d, which this scale keeps within ``epsilon``.
    """
    if rows_per_unit <= 0 or epsilon <= 0:
        raise NoiseError("rows per unit and epsilon must be positive")
    scale = float(Fraction(2 * rows_per_unit) / epsilon)  # map(d) <= 2d / scale for alpha in [0, 1]
    for _ in range(64):
        if (
            rows_per_unit * _worst_per_row(_quantile_mech(candidates, alpha, scale), rows_per_unit)
            <= epsilon
        ):
            break
        scale = scale * 1.01
    else:
        raise NoiseError("could not calibrate the quantile scale")
    low, high = scale / 4, scale
    for _ in range(40):  # tighten: the smallest scale that still fits (to 1 part in 10^12)
        mid = (low + high) / 2
        if (
            rows_per_unit * _worst_per_row(_quantile_mech(candidates, alpha, mid), rows_per_unit)
            <= epsilon
        ):
            high = mid
        else:
            low = mid
    return high


def release_quantile(measurement: Measurement, groups: list[list[float]]) -> list[float]:
    """One DP quantile per group, by OpenDP's exponential-mechanism quantile over the plan's
    candidate grid (values already clamped to the bounds by the warehouse SQL)."""
    assert measurement.alpha is not None
    rows = measurement.sensitivity
    scale = calibrate_quantile(measurement.candidates, measurement.alpha, rows, measurement.epsilon)
    mech = _quantile_mech(measurement.candidates, measurement.alpha, scale)
    if rows * _worst_per_row(mech, rows) > measurement.epsilon:
        raise NoiseError("quantile mechanism exceeds its budget share")
    low, high = measurement.candidates[0], measurement.candidates[-1]
    out = []
    for values in groups:
        clean = [min(max(float(v), low), high) for v in values if v is not None and v == v]
        out.append(float(mech(clean)))
    return out
