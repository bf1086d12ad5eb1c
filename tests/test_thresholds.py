"""Groups of one person never appear: the demo has five days (2025-01-01..05) with exactly one patient
each. Over many runs, even at a large epsilon (least noise), none of them is ever released, while
ordinary days are (so the test is not vacuous)."""

from __future__ import annotations

from collections import Counter

from gateway.demo import RARE_DAYS
from tests.conftest import Gateway

SQL = "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day"
RUNS = 150


def test_single_patient_days_never_released(gateway: Gateway) -> None:
    rare = set(RARE_DAYS)
    seen: Counter[str] = Counter()
    released_total = 0
    with gateway.client() as c:
        for i in range(RUNS):
            # A distinct epsilon per run: identical queries would replay the stored answer.
            epsilon = (9 if i % 3 else 0.4) + i / 1000
            r = c.post("/v1/query", json={"sql": SQL, "epsilon": epsilon})
            assert r.status_code == 200, r.text
            days = {row[0] for row in r.json()["rows"]}
            released_total += len(days)
            seen.update(days & rare)
    assert not seen, f"single-patient days were released: {dict(seen)}"
    assert released_total > RUNS * 100, (
        "ordinary days must be released, else the test proves nothing"
    )


def test_threshold_is_floored_by_min_group_size(gateway: Gateway) -> None:
    with gateway.client() as c:
        body = c.post("/v1/query", json={"sql": SQL, "epsilon": 10}).json()
    assert body["groups"]["threshold"] >= 10


def test_threshold_calibration_from_a_hint_equals_the_full_search() -> None:
    """The search for the smallest threshold may start from the last calibration's result; the
    answer must be the one the full binary search gives, for scales up and down from it."""
    from fractions import Fraction

    from gateway import noise

    cases = [(5, Fraction(1, 10**6)), (1, Fraction(1, 10**7)), (20, Fraction(1, 10**9))]
    epsilons = [Fraction(n, 1000) for n in (100, 101, 150, 37, 900, 2, 500, 499)]
    for max_groups, delta in cases:
        hinted = []
        noise._THRESHOLD_HINTS.clear()
        noise.calibrate_threshold.cache_clear()
        for eps in epsilons:
            hinted.append(noise.calibrate_threshold(max_groups, eps, delta, 1))
        for eps, got in zip(epsilons, hinted, strict=True):
            noise._THRESHOLD_HINTS.clear()
            noise.calibrate_threshold.cache_clear()
            assert noise.calibrate_threshold(max_groups, eps, delta, 1) == got, (max_groups, eps)
