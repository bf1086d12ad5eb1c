"""Floating-point attack (Mironov 2012): do the low-order bits of a released SUM reveal the input?

A textbook Laplace mechanism on floats — ``y = f + b·ln(2U)`` with U on a 2⁻⁵³ grid — cannot reach
every float: where the noise's image is sparser than the float grid, *which* floats are reachable
depends on f. An attacker who sees y checks whether y is reachable from f (D) or from f′ (D′); any y
reachable from one only identifies the dataset with certainty, whatever the noise scale.

privgate sums float measures as fixed-point integers (1/1000), adds integer (discrete Laplace)
noise from OpenDP and divides by 1000, so every released SUM is the float nearest k/1000 for some
integer k, and every such value is reachable from every input.

Attacks, each on the product (``release`` of ``SUM(cost)`` on the neighbours of
``test_epsilon_lower_bound``, Δ = 25 000) and on a naive control (numpy's ``Generator.laplace`` of
the same scale added to a float sum — numpy is used for noise *only* in this control):

1. **Grid.** Pass (product): every released value v satisfies ``round(v·1000)/1000 == v``.
2. **Reachability** (exact: the control's noise is inverted bit for bit through its own formula;
   the product's outputs through the grid). Event S = "y cannot be produced from D's true sum".
   Pass: 0 of the outputs of D′ fall in S for the product, and 0 of the outputs of D for either
   mechanism (a self-check of the inversion). Control: it must be flagged — a large share of D′'s
   outputs is impossible under D, so ε̂ = ln(P̲[S | D′] / P̄[S | D]) ≫ ε.
3. **Low-order bits.** Features of y: the mantissa's low byte, its number of trailing zero bits,
   ⌊y·1000⌋ mod 256, and the fractional part of y·1000 in 16 buckets; the audit of ``dpaudit``
   (select an event on one half, 99 % Clopper–Pearson ε̂ on the other). Pass (product): ε̂ ≤ ε.
   For the control ε̂ is recorded (low bits alone do leak, e.g. an all-zero low byte is ~1.7× as
   likely under D′, but less reliably than reachability).

CI: 60k outputs per side; long tier: 2M per side (``-m slow``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import numpy as np
import pytest

from .dpaudit import Features, audit, cp_lower, cp_upper, record
from .neighbours import Scenario, pure_scenario

CI_SAMPLES = 60_000
LONG_SAMPLES = 2_000_000
EPSILON = 0.5
DELTA_SUM = 5 * 5000.0  # the adversary's clamped contribution
SCALE = DELTA_SUM / EPSILON  # what the product uses (in the measure's units)
TWO53 = 9007199254740992.0


# --- the product -------------------------------------------------------------------------------

_PRODUCT: dict[str, Scenario] = {}


def product_outputs(side: int, n: int) -> list[float]:
    if "sc" not in _PRODUCT:
        _PRODUCT["sc"] = pure_scenario("sum", batches=10_000, epsilon=EPSILON)
    return [s[0] for s in _PRODUCT["sc"].sample(side, n)]


def product_true_sums() -> tuple[int, int]:
    sc = _PRODUCT["sc"]
    return sc.results[0].rows[0][1], sc.results[1].rows[0][1]


def on_grid(y: float) -> bool:
    """The product can produce y from any input iff y is the float nearest some k/1000."""
    return round(y * 1000) / 1000 == y


# --- the naive control (numpy noise, only here) -------------------------------------------------

#: Float values of D's rows (clamped); D′ adds the adversary's five rows at the bound.
ROWS = (100.1, 200.2, 300.3, 0.7, 1234.56, 17.05)


def naive_true_sums() -> tuple[float, float]:
    f0 = 0.0
    for v in ROWS:
        f0 += v
    f1 = f0
    for _ in range(5):
        f1 += 5000.0
    return f0, f1


def naive_outputs(side: int, n: int, rng: np.random.Generator) -> list[float]:
    f = naive_true_sums()[side]
    draws: list[float] = (f + rng.laplace(0.0, SCALE, n)).tolist()
    return draws


def _noise_of(k: int) -> float:
    """numpy's Laplace sampler for U = k·2⁻⁵³ (numpy/random/src/distributions: random_laplace)."""
    u = k * (1.0 / TWO53)
    if u >= 0.5:
        return 0.0 - SCALE * math.log(2.0 - u - u)
    return 0.0 + SCALE * math.log(u + u)


def naive_reachable(y: float, f: float) -> bool:
    """Is there a k in [1, 2⁵³) with fl(f + noise(k)) == y? (g(k) is monotone in k.)"""
    top = 2**53 - 1

    def g(k: int) -> float:
        return f + _noise_of(k)

    n = y - f
    guess = (
        math.exp(n / SCALE) * 0.5 * TWO53 if n < 0 else TWO53 - math.exp(-n / SCALE) * 0.5 * TWO53
    )
    k = min(max(int(guess), 1), top)
    # Bracket: g(lo) < y <= g(hi), galloping out from the guess.
    if g(k) >= y:
        hi, step = k, 1
        while True:
            lo = max(hi - step, 1)
            if g(lo) < y:
                break
            if lo == 1:
                return g(1) == y
            hi, step = lo, step * 2
    else:
        lo, step = k, 1
        while True:
            hi = min(lo + step, top)
            if g(hi) >= y:
                break
            if hi == top:
                return False
            lo, step = hi, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if g(mid) >= y:
            hi = mid
        else:
            lo = mid
    return g(hi) == y


def test_naive_model_reproduces_numpy_bit_for_bit() -> None:
    """The control's inversion is exact: our model of numpy's sampler gives numpy's draws."""
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    draws = a.laplace(0.0, SCALE, 20_000).tolist()
    uniforms = b.random(20_000).tolist()
    assert draws == [_noise_of(round(u * TWO53)) for u in uniforms]


# --- shared analysis ---------------------------------------------------------------------------


def low_bit_features(y: float) -> Features:
    bits = struct.unpack("<Q", struct.pack("<d", y))[0]
    mantissa = bits & ((1 << 52) - 1)
    trailing = 52 if mantissa == 0 else (mantissa & -mantissa).bit_length() - 1
    scaled = y * 1000
    frac = scaled - math.floor(scaled)
    return (
        float(bits & 0xFF),
        float(trailing),
        float(math.floor(scaled) % 256),
        float(min(int(frac * 16), 15)),
    )


LOW_BIT_NAMES = (
    "mantissa low byte",
    "mantissa trailing zeros",
    "⌊y·1000⌋ mod 256",
    "frac(y·1000)·16",
)


def reachability(
    outputs: tuple[list[float], list[float]], reachable_from_d: Callable[[float], bool]
) -> dict[str, float]:
    """S = "not reachable from D". Counts in D's and D′'s outputs, and the 99 % ε̂ it implies."""
    k0 = sum(not reachable_from_d(y) for y in outputs[0])
    k1 = sum(not reachable_from_d(y) for y in outputs[1])
    n0, n1 = len(outputs[0]), len(outputs[1])
    p1, p0 = cp_lower(k1, n1), cp_upper(k0, n0)
    eps_hat = math.log(p1 / p0) if p1 > 0 else -math.inf
    return {"k0": k0, "n0": n0, "k1": k1, "n1": n1, "eps_hat": eps_hat}


def low_bit_audit(name: str, outputs: tuple[list[float], list[float]]) -> float:
    half = len(outputs[0]) // 2
    feats = [[low_bit_features(y) for y in side] for side in outputs]

    used = {0: 0, 1: 0}

    def sampler(side: int, n: int) -> list[Features]:  # selection half first, then the fresh half
        start = used[side]
        used[side] = start + n
        return feats[side][start : start + n]

    result = audit(
        name,
        sampler,
        epsilon=EPSILON,
        delta=0.0,
        n_select=half,
        n_final=len(outputs[0]) - half,
        feature_names=LOW_BIT_NAMES,
        confirm=False,
        ops=("eq", "ge", "le"),
    )
    return result.final.eps_hat


def _product_attack(n: int) -> None:
    outputs = (product_outputs(0, n), product_outputs(1, n))
    t0, t1 = product_true_sums()
    assert t1 - t0 == DELTA_SUM * 1000
    off_grid = sum(not on_grid(y) for side in outputs for y in side)
    assert off_grid == 0
    reach = reachability(outputs, on_grid)
    eps_bits = low_bit_audit("float attack: product low bits", outputs)
    record(
        "float_attack",
        mechanism="privgate SUM",
        samples_per_side=n,
        off_grid=off_grid,
        eps_hat_low_bits=eps_bits,
        **reach,
    )
    assert reach["k0"] == 0 and reach["k1"] == 0, reach
    assert eps_bits <= EPSILON


def _control_attack(n: int) -> None:
    rng = np.random.default_rng()
    outputs = (naive_outputs(0, n, rng), naive_outputs(1, n, rng))
    f0, _ = naive_true_sums()
    reach = reachability(outputs, lambda y: naive_reachable(y, f0))
    eps_bits = low_bit_audit("float attack: naive control low bits", outputs)
    record(
        "float_attack",
        mechanism="naive numpy Laplace",
        samples_per_side=n,
        off_grid=sum(not on_grid(y) for side in outputs for y in side),
        eps_hat_low_bits=eps_bits,
        **reach,
    )
    assert reach["k0"] == 0, "self-check: D's own outputs must be reachable from D"
    assert reach["k1"] >= 0.1 * n, reach  # "many": measured ≈ 76 %
    assert reach["eps_hat"] > 5 * EPSILON, reach


def test_product_has_no_precision_leak() -> None:
    _product_attack(CI_SAMPLES)


def test_naive_control_leaks_through_precision() -> None:
    _control_attack(CI_SAMPLES)


@pytest.mark.slow
def test_long_product_has_no_precision_leak() -> None:
    _product_attack(LONG_SAMPLES)


@pytest.mark.slow
def test_long_naive_control_leaks_through_precision() -> None:
    _control_attack(LONG_SAMPLES)
