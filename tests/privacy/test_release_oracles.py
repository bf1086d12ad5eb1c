"""Error oracles *after* data access: does whether a query fails depend on the data?

The rewriter refuses every construct that can fail on some rows (CAST of data, division, regex…:
``test_attacks_rest``). What remains after execution is the release itself: ``release_measurement``
refuses true aggregates of magnitude ≥ 2⁶² (``NoiseError`` → ``internal``, HTTP 500, budget spent).
That refusal is a deterministic function of the true sum, so it is an oracle that no noise covers:
P[error | D′] = 1 while P[error | D] = 0.

It needs a measure whose bounds let the (fixed-point) sum reach 2⁶² ≈ 4.6·10¹⁸: with bounds
[0, 10¹⁵], one unit's K = 5 rows at the bound already do; with bounds [0, 10⁹] it takes 4.6 million
rows at the bound, which a large warehouse has. The policy schema accepts any finite bounds.

Pass (expected, DP): the outcome — answer or error — is the same for neighbours. Fixes that would
make it pass: saturate true values into the safe range before noise (clamping an aggregate does not
increase its sensitivity), or refuse at plan time a measurement whose values can leave it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.release import release
from tests.conftest import Gateway

from .conftest import HUGE_DAY, big_budget, start_quiet_gateway
from .neighbours import catalog_for, plan, policy_document, rows_sql, true_result

I64_ORACLE = (
    "gateway.noise.release_measurement raises NoiseError when a true aggregate reaches 2^62, after "
    "the warehouse ran: with measure bounds of 1e15 one unit's rows decide whether the query "
    "answers (200) or fails (500 internal) - a deterministic membership oracle."
)


def _outcome(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:  # the product maps any of these to a 5xx
        return type(exc).__name__
    return "answer"


def test_release_outcome_does_not_depend_on_one_unit() -> None:
    """D: no rows. D′: one unit with K rows at the upper bound 10¹⁵ (fixed point: 5·10¹⁸ ≥ 2⁶²).

    Observed: D → an answer, D′ → NoiseError. Expected: both answer (or both refuse)."""
    doc = policy_document(batches=2, epsilon=0.5, delta=1e-7, max_rows=5)
    doc["datasets"]["audit"]["tables"]["visits"]["columns"]["cost"]["bounds"] = [0, 1e15]
    from rewriter.errors import RewriteError

    try:
        p = plan("SELECT SUM(cost) FROM visits", catalog_for(doc))
    except RewriteError:
        return  # refused from the policy alone, before any data: the same for every dataset
    d = true_result(p, [])
    d1 = true_result(p, [rows_sql(batches=1, units=1, rows_per_unit=5, unit_offset=0, cost="1e15")])
    assert _outcome(lambda: release(p, d)) == _outcome(lambda: release(p, d1))


def _huge_bounds(policy: dict[str, Any]) -> None:
    big_budget(policy)
    policy["datasets"]["clinic"]["tables"]["visits"]["columns"]["cost"]["bounds"] = [0, 1e15]


@pytest.fixture(scope="module")
def huge_bounds_gateway(
    tmp_path_factory: pytest.TempPathFactory, attack_warehouse: Path, secrets: Any
) -> Iterator[Gateway]:
    yield from start_quiet_gateway(
        tmp_path_factory.mktemp("huge-bounds"), attack_warehouse, _huge_bounds
    )


def test_rest_outcome_does_not_depend_on_who_is_there(huge_bounds_gateway: Gateway) -> None:
    """Over REST, policy ``cost`` bounds [0, 10¹⁵]: ask SUM(cost) for the day of a patient with
    400 huge rows (bounded to 5 × 10¹⁵) and for a day nobody visited.

    Observed: 500 ``internal`` for the first, 200 for the second — whatever ε, the status says
    whether that patient's rows are there. Expected: the same status for both."""
    with huge_bounds_gateway.client() as c:
        there = c.post(
            "/v1/query",
            json={"sql": f"SELECT SUM(cost) FROM visits WHERE visit_day = '{HUGE_DAY}'"},
        )
        absent = c.post(
            "/v1/query",
            json={"sql": "SELECT SUM(cost) FROM visits WHERE visit_day = '2031-01-01'"},
        )
    assert there.status_code == absent.status_code, (there.text, absent.text)
