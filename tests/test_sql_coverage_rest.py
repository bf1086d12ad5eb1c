"""The SQL shapes of the coverage issue, end to end over REST on the demo data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway

DEPARTMENTS = {
    "cardiology",
    "oncology",
    "er",
    "pediatrics",
    "neurology",
    "orthopedics",
    "radiology",
    "dermatology",
}


def ask(gateway: Gateway, sql: str, epsilon: float = 1.0) -> dict[str, Any]:
    with gateway.client() as client:
        r = client.post("/v1/query", json={"sql": sql, "epsilon": epsilon})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_join_of_two_protected_tables_on_the_unit(gateway: Gateway) -> None:
    sql = (
        "SELECT p.sex, COUNT(*) AS visits, AVG(v.cost) AS mean_cost FROM visits v "
        "JOIN patients p ON v.patient_id = p.patient_id GROUP BY p.sex"
    )
    body = ask(gateway, sql)
    assert sorted(r[0] for r in body["rows"]) == ["F", "M"]
    assert body["groups"]["handling"] == "public_domain"
    with gateway.client() as client:
        plan = client.post("/v1/explain", json={"sql": sql, "epsilon": 1.0}).json()
    # The plan says the bound multiplies: 5 visits × 5 patient rows per patient.
    text = str(plan)
    assert "5 × 5 = 25 rows per unit" in text


def test_join_with_the_public_departments_table(gateway: Gateway) -> None:
    body = ask(
        gateway,
        "SELECT d.building, COUNT(*) AS n FROM visits v "
        "JOIN departments d ON v.department = d.department GROUP BY d.building",
    )
    assert {r[0] for r in body["rows"]} <= {"Main", "North", "East", "West", "South"}
    assert len(body["rows"]) >= 2


def test_per_unit_pre_aggregation(gateway: Gateway) -> None:
    body = ask(
        gateway,
        "SELECT AVG(n) AS visits_per_patient FROM "
        "(SELECT patient_id, COUNT(*) AS n FROM visits GROUP BY patient_id) t",
    )
    ((value,),) = body["rows"]
    assert 0 <= value <= 5  # each patient's count is bounded by K = 5


def test_median_through_percentile_cont(gateway: Gateway) -> None:
    body = ask(gateway, "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY cost) FROM visits")
    ((value,),) = body["rows"]
    assert 0 <= value <= 5000
    assert "quantile" in body["columns"][0]["mechanism"]


def test_conditional_sum(gateway: Gateway) -> None:
    body = ask(gateway, "SELECT SUM(CASE WHEN department = 'er' THEN cost ELSE 0 END) FROM visits")
    ((value,),) = body["rows"]
    assert isinstance(value, float)


def test_group_by_month(gateway: Gateway) -> None:
    body = ask(
        gateway,
        "SELECT date_trunc('month', visit_day) AS month, COUNT(*) AS n FROM visits "
        "GROUP BY 1 ORDER BY month",
    )
    months = [dt.date.fromisoformat(r[0]) for r in body["rows"]]
    assert months and all(m.day == 1 for m in months)
    assert months == sorted(months)
    assert body["groups"]["handling"] == "threshold"


def test_having_order_by_limit(gateway: Gateway) -> None:
    body = ask(
        gateway,
        "SELECT department, COUNT(*) AS n FROM visits GROUP BY department "
        "HAVING COUNT(*) > 10 ORDER BY n DESC LIMIT 3",
    )
    counts = [r[1] for r in body["rows"]]
    assert len(counts) <= 3 and counts == sorted(counts, reverse=True)
    assert all(n > 10 for n in counts)


def test_having_is_not_null_keeps_what_is_null_drops(gateway: Gateway) -> None:
    """sqlglot reads IS NOT NULL as a flag on IS; dropping it would invert the condition."""
    sql = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department HAVING COUNT(*) IS {}"
    kept = {r[0] for r in ask(gateway, sql.format("NOT NULL"))["rows"]}
    assert kept == DEPARTMENTS  # a noisy count is never NULL
    assert ask(gateway, sql.format("NULL"))["rows"] == []


def test_public_domain_group_by_returns_zero_counts(gateway: Gateway) -> None:
    body = ask(
        gateway,
        "SELECT department, COUNT(*) AS n FROM visits WHERE department = 'er' "
        "GROUP BY department",
        epsilon=10.0,
    )
    rows = {r[0]: r[1] for r in body["rows"]}
    assert set(rows) == DEPARTMENTS  # every declared value, with or without visits
    assert 0 in [n for d, n in rows.items() if d != "er"]
    assert body["groups"]["handling"] == "public_domain"


@pytest.mark.parametrize(
    ("sql", "code", "hint"),
    [
        ("SELECT SUM(cost / los_days) FROM visits", "sql.unsupported", "Divide by a non-zero"),
        ("SELECT SUM(birth_year) FROM patients", "policy.measure_misuse", "LEAST(GREATEST"),
        (
            "SELECT COUNT(*) FROM visits v JOIN patients p ON v.department = p.sex",
            "sql.unsupported",
            "Join ON a.patient_id = b.patient_id",
        ),
    ],
)
def test_rejections_teach(gateway: Gateway, sql: str, code: str, hint: str) -> None:
    with gateway.client() as client:
        r: httpx.Response = client.post("/v1/query", json={"sql": sql})
    assert r.status_code in (400, 403, 422), r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert hint in error["hint"]
