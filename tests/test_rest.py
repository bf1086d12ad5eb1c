"""End to end over real HTTP: the spine's acceptance points for answers, rejections and audit."""

from __future__ import annotations

import pytest

from tests.conftest import Gateway

DEMO_QUERY = (
    "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY department"
)


def test_demo_query_envelope(gateway: Gateway) -> None:
    with gateway.client() as c:
        before = c.get("/v1/budget").json()["budgets"][0]
        r = c.post("/v1/query", json={"sql": DEMO_QUERY})
        after = c.get("/v1/budget").json()["budgets"][0]
    assert r.status_code == 200, r.text
    body = r.json()
    names = [col["name"] for col in body["columns"]]
    assert names == ["department", "n", "avg_cost"]
    n_col, avg_col = body["columns"][1], body["columns"][2]
    for col in (n_col, avg_col):
        assert col["noisy"] is True
        assert col["mechanism"].startswith("discrete_laplace")
        assert col["scale"] > 0
    assert n_col["ci95_halfwidth"] > 0
    # Public domain: all eight declared departments, zero-filled, in declared order.
    assert [row[0] for row in body["rows"]] == [
        "cardiology",
        "oncology",
        "er",
        "pediatrics",
        "neurology",
        "orthopedics",
        "radiology",
        "dermatology",
    ]
    assert body["groups"]["handling"] == "public_domain"
    for row, intervals in zip(body["rows"], body["intervals"], strict=True):
        assert intervals[0] is None
        low, high = intervals[1]
        assert low <= row[1] <= high
        low, high = intervals[2]
        assert 0 <= low <= row[2] <= high <= 5000
    assert body["epsilon_charged"] == "0.5"
    assert body["delta_charged"] == "0"
    assert body["audit_id"]
    assert body["budget"]["epsilon_remaining"] == after["epsilon_remaining"]
    from fractions import Fraction

    spent = Fraction(after["epsilon_spent"]) - Fraction(before["epsilon_spent"])
    assert spent == Fraction(1, 2)
    record = gateway.services.audit.get(body["audit_id"])
    assert record is not None
    assert record["record"]["decision"] == "accepted"
    assert record["record"]["epsilon"] == "0.5"


REJECTIONS = [
    ("SELECT ssn FROM patients", "catalog.unknown_column", 400),
    ("SELECT * FROM visits", "policy.aggregation_required", 400),
    (
        "SELECT patient_id, COUNT(*) FROM visits GROUP BY patient_id",
        "policy.identifier_reference",
        400,
    ),
    ("SELECT 1; DROP TABLE visits", "sql.multiple_statements", 400),
    ("SELECT * FROM read_csv('/etc/passwd')", "policy.table_function", 400),
    ("SELECT department, COUNT(* FROM visits", "sql.syntax", 400),
]


@pytest.mark.parametrize(("sql", "code", "status"), REJECTIONS)
def test_rejections_have_codes_hints_and_audit(
    gateway: Gateway, sql: str, code: str, status: int
) -> None:
    with gateway.client() as c:
        r = c.post("/v1/query", json={"sql": sql})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["hint"], "every rejection says what to change"
    assert err["sqlstate"]
    record = gateway.services.audit.get(err["audit_id"])
    assert record is not None
    assert record["record"]["decision"] == "rejected"
    assert record["record"]["code"] == code


def test_rejection_codes_are_distinct() -> None:
    assert len({code for _, code, _ in REJECTIONS}) == len(REJECTIONS)


def test_blocked_column_looks_like_a_missing_one(gateway: Gateway) -> None:
    with gateway.client() as c:
        blocked = c.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM patients WHERE ssn = 'x'"})
        missing = c.post(
            "/v1/query", json={"sql": "SELECT COUNT(*) FROM patients WHERE nosuch = 'x'"}
        )
    assert blocked.json()["error"]["code"] == missing.json()["error"]["code"]
    assert blocked.json()["error"]["message"].replace("ssn", "X") == missing.json()["error"][
        "message"
    ].replace("nosuch", "X")


def test_auth_errors(gateway: Gateway) -> None:
    import httpx

    with httpx.Client(base_url=gateway.url) as c:
        none = c.post("/v1/query", json={"sql": DEMO_QUERY})
        bad = c.post(
            "/v1/query", json={"sql": DEMO_QUERY}, headers={"Authorization": "Bearer pgk_nope_x"}
        )
    assert none.status_code == 401 and none.json()["error"]["code"] == "auth.missing"
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "auth.invalid_key"


def test_bad_body_is_a_canonical_error(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/v1/query", json={"sql": DEMO_QUERY, "epsilon": -1})
        r2 = c.post("/v1/query", json={"query": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "request.invalid"
    assert "epsilon" in r.json()["error"]["message"]
    assert r2.json()["error"]["code"] == "request.invalid"


def test_schema_hides_blocked_columns(gateway: Gateway) -> None:
    with gateway.client() as c:
        schema = c.get("/v1/schema").json()
    tables = schema["datasets"]["clinic"]["tables"]
    visits = {col["name"]: col for col in tables["visits"]["columns"]}
    assert "diagnosis" not in visits
    assert visits["cost"]["bounds"] == [0.0, 5000.0]
    assert visits["department"]["class"] == "dimension"
    assert "ssn" not in {col["name"] for col in tables["patients"]["columns"]}
    assert tables["departments"]["public"] is True


def test_public_table_is_free(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post(
            "/v1/query", json={"sql": "SELECT department, floor FROM departments ORDER BY 1"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["epsilon_charged"] == "0"
    assert len(r.json()["rows"]) == 8


def test_threshold_query_reports_threshold(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post(
            "/v1/query",
            json={
                "sql": "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day ORDER BY n DESC LIMIT 5"
            },
        )
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["groups"]["handling"] == "threshold"
    assert body["groups"]["threshold"] >= 10
    assert float(body["delta_charged"]) > 0
    counts = [row[1] for row in body["rows"]]
    assert counts == sorted(counts, reverse=True) and len(counts) <= 5


def test_audit_verify_endpoint_is_admin_only(gateway: Gateway) -> None:
    with gateway.client("analyst") as c:
        assert c.get("/v1/admin/audit/verify").json()["error"]["code"] == "auth.forbidden"
    with gateway.client("admin") as c:
        result = c.get("/v1/admin/audit/verify").json()
    assert result["ok"] is True and result["checked"] > 0


def test_failed_authentication_is_audited(gateway: Gateway) -> None:
    import httpx

    with httpx.Client(base_url=gateway.url) as c:
        c.get("/v1/budget", headers={"Authorization": "Bearer pgk_deadbeef_wrong-secret"})
    last = list(gateway.services.audit.export())[-1]["record"]
    assert last["code"] == "auth.invalid_key" and last["endpoint"] == "/v1/budget"
    assert "wrong-secret" not in str(last)


def test_thresholded_rows_come_in_key_order(gateway: Gateway) -> None:
    # Without ORDER BY, released groups come sorted by key: the warehouse's GROUP BY order is
    # unspecified and could depend on data, including suppressed groups.
    with gateway.client() as c:
        body = c.post(
            "/v1/query",
            json={"sql": "SELECT visit_day, COUNT(*) FROM visits GROUP BY visit_day", "epsilon": 5},
        ).json()
    days = [row[0] for row in body["rows"]]
    assert len(days) > 10 and days == sorted(days)


def test_non_finite_public_values_are_null(gateway: Gateway) -> None:
    # Found by the fuzzer: -1e309 is -infinity as a DOUBLE, which JSON cannot carry.
    with gateway.client() as c:
        r = c.post("/v1/query", json={"sql": "SELECT department, -1e309 AS x FROM departments"})
        again = c.post("/v1/query", json={"sql": "SELECT department, -1e309 AS x FROM departments"})
    assert r.status_code == 200, r.text
    assert {row[1] for row in r.json()["rows"]} == {None}
    assert again.status_code == 200, again.text
