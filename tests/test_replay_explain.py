"""Free replay, idempotent query ids, explain and accuracy-targeted queries, over real HTTP."""

from __future__ import annotations

import uuid
from fractions import Fraction

from gateway.settings import load_secrets
from tests.conftest import Gateway

SQL = "SELECT department, COUNT(*) AS n, SUM(cost) AS total FROM visits WHERE los_days >= {} GROUP BY department"


def _spent(c: object) -> Fraction:
    budgets = c.get("/v1/budget").json()["budgets"]  # type: ignore[attr-defined]
    return Fraction(budgets[0]["epsilon_spent"])


def test_repeated_query_is_free_and_identical(gateway: Gateway) -> None:
    sql = SQL.format(1)
    with gateway.client() as c:
        first = c.post("/v1/query", json={"sql": sql}).json()
        before = _spent(c)
        # Same statement, other spelling: normalisation makes it the same query.
        respelled = "select department, count(*) as n, sum(cost) as total from visits"
        again = c.post(
            "/v1/query", json={"sql": respelled + " where los_days >= 1 group by department"}
        ).json()
        after = _spent(c)
        changed = c.post("/v1/query", json={"sql": SQL.format(2)}).json()
        after_changed = _spent(c)
    assert first["cached"] is False and again["cached"] is True
    assert again["rows"] == first["rows"] and again["intervals"] == first["intervals"]
    assert again["epsilon_charged"] == "0" and after == before
    assert again["replayed_query_id"] == first["query_id"]
    assert changed["cached"] is False
    assert after_changed - after == Fraction(1, 2), "a changed literal costs again"
    record = gateway.services.audit.get(again["audit_id"])
    assert record is not None and record["record"]["code"] == "replayed"


def test_different_epsilon_is_a_new_release(gateway: Gateway) -> None:
    sql = SQL.format(3)
    with gateway.client() as c:
        a = c.post("/v1/query", json={"sql": sql, "epsilon": 0.3}).json()
        b = c.post("/v1/query", json={"sql": sql, "epsilon": 0.4}).json()
    assert a["cached"] is False and b["cached"] is False


def test_client_query_id_is_idempotent(gateway: Gateway) -> None:
    qid = f"test-{uuid.uuid4().hex[:12]}"
    sql = SQL.format(4)
    with gateway.client() as c:
        first = c.post("/v1/query", json={"sql": sql, "query_id": qid}).json()
        before = _spent(c)
        retry = c.post("/v1/query", json={"sql": sql, "query_id": qid}).json()
        other = c.post("/v1/query", json={"sql": SQL.format(5), "query_id": qid})
        after = _spent(c)
    assert first["query_id"] == qid and retry["cached"] is True
    assert retry["rows"] == first["rows"] and after == before
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "request.duplicate_query_id"


def test_query_id_of_another_principal_is_not_disclosed(gateway: Gateway) -> None:
    qid = f"test-{uuid.uuid4().hex[:12]}"
    with gateway.client("analyst") as c:
        assert c.post("/v1/query", json={"sql": SQL.format(6), "query_id": qid}).status_code == 200
    with gateway.client("admin") as c:
        r = c.post("/v1/query", json={"sql": SQL.format(6), "query_id": qid})
    assert r.status_code == 409
    assert "rows" not in r.json()


def test_explain_costs_nothing_and_matches_the_run(gateway: Gateway) -> None:
    sql = "SELECT visit_day, COUNT(*) AS n, AVG(cost) AS c FROM visits WHERE los_days < 77 GROUP BY visit_day"
    with gateway.client() as c:
        before = _spent(c)
        explained = c.post("/v1/explain", json={"sql": sql, "epsilon": 0.8})
        after = _spent(c)
        ran = c.post("/v1/query", json={"sql": sql, "epsilon": 0.8}).json()
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert after == before
    assert body["cost"] == {"epsilon": "0.8", "delta": ran["delta_charged"]}
    assert body["groups"]["handling"] == "threshold"
    assert body["groups"]["threshold"] == ran["groups"]["threshold"]
    assert "visit_day" in body["groups"]["why"]
    n = next(col for col in body["columns"] if col["name"] == "n")
    n_ran = next(col for col in ran["columns"] if col["name"] == "n")
    assert n["scale"] == n_ran["scale"]
    assert n["expected_ci95_halfwidth"] == n_ran["ci95_halfwidth"]
    # The bounding salt never appears: it is a bound parameter of the per-query ranking, and a
    # bounded snapshot (the default) needs none at query time.
    salt = load_secrets(gateway.services.settings)["bounding_salt"].decode()
    assert salt not in body["rewritten_sql"] and "los_days" in body["rewritten_sql"]
    assert body["affordable"] is True


def test_explain_rejects_like_the_query(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/v1/explain", json={"sql": "SELECT ssn FROM patients"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "catalog.unknown_column"


def test_accuracy_target_solves_for_the_smallest_epsilon(gateway: Gateway) -> None:
    sql = "SELECT department, COUNT(*) AS n FROM visits WHERE los_days < 88 GROUP BY department"
    with gateway.client() as c:
        explained = c.post(
            "/v1/explain", json={"sql": sql, "accuracy": {"n": 50, "confidence": 0.95}}
        ).json()
        before = _spent(c)
        ran = c.post(
            "/v1/query", json={"sql": sql, "accuracy": {"n": 50, "confidence": 0.95}}
        ).json()
        after = _spent(c)
    epsilon = Fraction(explained["cost"]["epsilon"])
    assert explained["columns"][1]["expected_ci95_halfwidth"] <= 50
    # Smallest: 1 % less epsilon misses the target.
    from gateway.explain import halfwidths
    from rewriter.planner import PlanRequest, plan_query

    cheaper = plan_query(
        PlanRequest(sql=sql, granted=frozenset({"clinic"}), epsilon=str(float(epsilon) * 0.99)),
        gateway.services.queries.catalog,
    )
    assert max(h for _, h in halfwidths(cheaper, 0.05)) > 50
    assert ran["epsilon_charged"] == explained["cost"]["epsilon"]
    assert after - before == epsilon
    assert ran["columns"][1]["ci95_halfwidth"] <= 50


def test_unreachable_accuracy_is_refused_with_its_price(gateway: Gateway) -> None:
    sql = "SELECT SUM(cost) FROM visits WHERE los_days < 99"
    with gateway.client() as c:
        r = c.post("/v1/explain", json={"sql": sql, "accuracy": {"n": 0.01}})
        both = c.post("/v1/query", json={"sql": sql, "epsilon": 1, "accuracy": {"n": 5}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "budget.query_max"
    assert "needs epsilon" in r.json()["error"]["message"]
    assert both.json()["error"]["code"] == "request.invalid"
