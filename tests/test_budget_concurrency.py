"""50 concurrent requests over real HTTP against a budget that allows exactly 10: exactly 10 are
answered, 40 get `budget.exhausted`, and the ledger holds exactly 10 × epsilon."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, start_gateway

EPSILON = "0.1"


@pytest.fixture(scope="module")
def tight_gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path
) -> Iterator[Gateway]:
    def ten_queries(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {"per_principal": {"epsilon": 1.0, "delta": 1e-5}}

    yield from start_gateway(tmp_path_factory.mktemp("tight"), demo_warehouse, ten_queries)


def test_fifty_concurrent_requests_exactly_ten_answered(tight_gateway: Gateway) -> None:
    def one(i: int) -> tuple[int, str]:
        # Distinct literals: identical queries would be replayed for free instead of charged.
        sql = f"SELECT department, COUNT(*) FROM visits WHERE los_days < {1000 + i} GROUP BY department"
        with httpx.Client(
            base_url=tight_gateway.url,
            headers={"Authorization": f"Bearer {tight_gateway.keys['analyst']}"},
            timeout=120,
        ) as c:
            r = c.post("/v1/query", json={"sql": sql, "epsilon": float(EPSILON)})
            return r.status_code, r.json().get("error", {}).get("code", "ok")

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = Counter(pool.map(one, range(50)))
    assert outcomes == Counter({(200, "ok"): 10, (429, "budget.exhausted"): 40}), outcomes
    spent = tight_gateway.services.ledger.spent_total(principal="analyst", dataset="clinic")
    assert spent.epsilon == 10 * Fraction(EPSILON)
    assert spent.epsilon == Fraction(1)
    # Every request left one audit record; the refused ones say why.
    codes = Counter(e["record"]["code"] for e in tight_gateway.services.audit.export())
    assert codes["budget.exhausted"] == 40 and codes["ok"] == 10
