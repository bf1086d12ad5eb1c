"""Monitoring: /metrics parses and agrees with the audit log, /readyz, request ids end to end, and
JSON log lines that never carry a literal, a key or a value."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.composition import build_services
from gateway.control_db import make_control_engine
from gateway.logs import JsonFormatter
from gateway.metrics import QUERY_DECISIONS
from gateway.rest import create_app
from gateway.settings import Settings
from tests.conftest import Gateway, start_gateway, write_policy

TOKEN = "scrape-" + uuid.uuid4().hex
DEMO = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"
DAYS = "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day"
CANARY = "canary-7f3a"


@pytest.fixture(scope="module")
def mgw(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    def big_budget(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 1000, "delta": 0.5},
            "per_query_max": {"epsilon": 10},
        }

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVGATE_METRICS_TOKEN", TOKEN)
        yield from start_gateway(tmp_path_factory.mktemp("metrics"), demo_warehouse, big_budget)


def scrape(gw: Gateway) -> dict[str, list[Any]]:
    r = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = list(family.samples)
    return families


def samples(families: dict[str, list[Any]], name: str) -> list[Any]:
    """The samples called exactly ``name`` (counters expose ``_total`` plus ``_created``)."""
    return [s for ss in families.values() for s in ss if s.name == name]


# -- /metrics -------------------------------------------------------------------------------------


def test_metrics_need_the_token_or_an_admin_key(mgw: Gateway) -> None:
    r = httpx.get(f"{mgw.url}/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.missing"
    r = httpx.get(f"{mgw.url}/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid_key"
    with mgw.client("analyst") as c:
        r = c.get("/metrics")
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
    with mgw.client("admin") as c:
        assert c.get("/metrics").status_code == 200
    assert "auth.missing" in str(samples(scrape(mgw), "privgate_auth_failures_total"))


def test_counters_match_the_audit_log(mgw: Gateway) -> None:
    with mgw.client() as c:
        for i in range(4):  # fresh answers, public domain
            sql = f"SELECT department, COUNT(*) AS n FROM visits WHERE los_days < {10 + i} GROUP BY department"
            assert c.post("/v1/query", json={"sql": sql, "epsilon": 0.25}).status_code == 200
        for _ in range(3):  # one fresh, two replays
            assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 0.5}).status_code == 200
        for eps in (1, 2):  # thresholded (no public domain for visit_day)
            r = c.post("/v1/query", json={"sql": DAYS, "epsilon": eps})
            assert r.status_code == 200 and r.json()["groups"]["handling"] == "threshold"
        rejected = [
            "SELECT patient_id FROM visits",
            "SELEC nonsense",
            "SELECT ssn, COUNT(*) FROM visits GROUP BY ssn",
        ]
        for sql in rejected:
            assert c.post("/v1/query", json={"sql": sql}).status_code == 400
        assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 50}).status_code == 400
        assert c.post("/v1/explain", json={"sql": DEMO}).status_code == 200
        assert (
            c.post("/v1/explain", json={"sql": "SELECT patient_id FROM visits"}).status_code == 400
        )
    with mgw.client("admin") as c:  # another principal, and an admin record (not a query)
        assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 0.75}).status_code == 200
        c.post("/v1/admin/budgets/analyst/clinic/top-up", json={"epsilon": 1})

    families = scrape(mgw)
    records = [e["record"] for e in mgw.services.audit.export()]
    queries = [r for r in records if r["decision"] in QUERY_DECISIONS and "query_id" in r]

    expected = Counter((r["door"], r["decision"], r["code"]) for r in queries)
    got = Counter(
        {
            (s.labels["door"], s.labels["decision"], s.labels["code"]): int(s.value)
            for s in samples(families, "privgate_queries_total")
        }
    )
    assert got == expected
    assert {("rest", "accepted", "replayed"), ("rest", "rejected", "sql.syntax")} <= set(got)
    assert ("rest", "explained", "ok") in got

    accepted = [r for r in queries if r["decision"] == "accepted" and r["code"] == "ok"]
    spent: Counter[tuple[str, str]] = Counter()
    for r in accepted:
        spent[(r["dataset"], r["principal"])] += Fraction(r["epsilon"])
    eps = {
        (s.labels["dataset"], s.labels["principal"]): s.value
        for s in samples(families, "privgate_epsilon_spent_total")
    }
    assert eps.keys() == spent.keys()
    for key, value in spent.items():
        assert eps[key] == pytest.approx(float(value))

    replays = sum(1 for r in queries if r["code"] == "replayed")
    assert replays >= 2
    assert sum(s.value for s in samples(families, "privgate_cache_hits_total")) == replays
    thresholded = sum(1 for r in accepted if "threshold" in r)
    assert thresholded >= 2
    assert (
        sum(s.value for s in samples(families, "privgate_thresholded_releases_total"))
        == thresholded
    )
    (count,) = [
        s.value
        for s in samples(families, "privgate_query_latency_seconds_count")
        if s.labels == {"door": "rest", "decision": "accepted"}
    ]
    assert count == sum(1 for r in queries if r["decision"] == "accepted")

    # Budget gauges are the ledger's accounts, read at scrape time.
    remaining = {
        (s.labels["scope"], s.labels["principal"], s.labels["dataset"]): s.value
        for s in samples(families, "privgate_budget_epsilon_remaining")
    }
    for account in mgw.services.ledger.list_accounts():
        key = (account.scope_kind, account.principal, account.dataset)
        assert remaining[key] == pytest.approx(float(account.remaining.epsilon))
    assert ("principal", "analyst", "clinic") in remaining
    assert samples(families, "privgate_quarantined_principals")[0].value == 0

    # Nothing derived from the data: no suppressed-group or released-group counts.
    assert not [name for name in families if "suppress" in name or "groups" in name]


def test_each_app_has_its_own_registry(mgw: Gateway, tmp_path: Path, demo_warehouse: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        warehouse_path=demo_warehouse,
        policy_path=write_policy(tmp_path / "policy.yaml"),
        warehouse_threads=2,
    )
    other = build_services(settings)
    try:
        assert other.metrics.registry is not mgw.services.metrics.registry
        text = other.metrics.render().decode()
        assert "privgate_queries_total{" not in text  # nothing counted in the fresh one
    finally:
        other.close()


# -- /readyz and /healthz -------------------------------------------------------------------------


def test_readyz_ok(mgw: Gateway) -> None:
    assert httpx.get(f"{mgw.url}/healthz").json() == {"status": "ok"}
    r = httpx.get(f"{mgw.url}/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "checks": {"warehouse": "ok", "control_db": "ok", "policy": "ok"},
    }


def asgi_get(app: FastAPI, path: str) -> httpx.Response:
    """One request straight into the app (no server, no lifespan: no reconciler thread)."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            return await c.get(path)

    return anyio.run(get)


def test_readyz_503_names_what_is_down(tmp_path: Path, demo_warehouse: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        warehouse_path=demo_warehouse,
        policy_path=write_policy(tmp_path / "policy.yaml"),
        warehouse_threads=2,
    )
    services = build_services(settings)
    app = create_app(services)
    try:
        assert asgi_get(app, "/readyz").status_code == 200
        services.warehouse.close()
        r = asgi_get(app, "/readyz")
        assert r.status_code == 503
        assert r.json()["status"] == "unready"
        assert r.json()["checks"] == {
            "warehouse": "warehouse.unavailable",
            "control_db": "ok",
            "policy": "ok",
        }
        services.control = make_control_engine(f"sqlite:///{tmp_path}/no/such/dir/control.db")
        checks = asgi_get(app, "/readyz").json()["checks"]
        assert checks["control_db"] == "unreachable"
        assert asgi_get(app, "/healthz").status_code == 200  # alive, just not ready
    finally:
        services.close()


# -- request ids ------------------------------------------------------------------------------------


def test_request_id_is_propagated_to_the_header_and_the_audit_record(mgw: Gateway) -> None:
    with mgw.client() as c:
        r = c.post("/v1/query", json={"sql": DEMO}, headers={"X-Request-ID": "trace-42.a:b_c"})
        assert r.headers["x-request-id"] == "trace-42.a:b_c"
        record = mgw.services.audit.get(r.json()["audit_id"])
        assert record is not None and record["record"]["request_id"] == "trace-42.a:b_c"

        r = c.post("/v1/query", json={"sql": "SELECT patient_id FROM visits"})
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        rejected = mgw.services.audit.get(r.json()["error"]["audit_id"])
        assert rejected is not None and rejected["record"]["request_id"] == generated

        for bad in ("has space", "x" * 200, "semi;colon", "-leading-dash"):
            r = c.get("/v1/budget", headers={"X-Request-ID": bad})
            assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
        ids = {c.get("/v1/budget").headers["x-request-id"] for _ in range(3)}
        assert len(ids) == 3
    assert "x-request-id" in httpx.get(f"{mgw.url}/healthz").headers


# -- JSON logs ------------------------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # The gateway's side only (the test's own HTTP client logs the URLs it requests).
        if record.name.startswith(("privgate", "uvicorn", "gateway", "fastapi", "starlette")):
            self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    handler, root = Lines(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_json_log_lines_carry_no_literal_key_or_value(mgw: Gateway, log_lines: list[str]) -> None:
    key = mgw.keys["analyst"]
    with mgw.client() as c:
        ok = c.post(
            f"/v1/query?note={CANARY}",
            json={"sql": f"SELECT COUNT(*) AS n FROM visits WHERE department <> '{CANARY}'"},
            headers={"X-Request-ID": "log-test-1"},
        )
        assert ok.status_code == 200, ok.text
        value = ok.json()["rows"][0][0]
        for sql in (
            f"SELECT COUNT(*) FROM visits WHERE ssn = '{CANARY}'",
            f"SELECT COUNT(*) FROM visits WHERE patient_id = '{CANARY}'",
            f"SELECT '{CANARY}",
            f"SELECT COUNT(*) FROM visits WHERE department = {CANARY}",
        ):
            assert c.post("/v1/query", json={"sql": sql}).status_code == 400
        c.post("/v1/explain", json={"sql": f"SELECT COUNT(*) FROM visits WHERE ssn = '{CANARY}'"})
    httpx.get(f"{mgw.url}/v1/budget?token={CANARY}", headers={"Authorization": f"Bearer {CANARY}"})

    assert log_lines, "nothing was logged"
    text = "\n".join(log_lines)
    assert CANARY not in text
    assert key not in text and key.split("_", 2)[2] not in text
    assert TOKEN not in text
    assert "SELECT" not in text.upper().replace("SELECT_", "")

    parsed = [json.loads(line) for line in log_lines]
    for line in parsed:
        assert {"ts", "level", "logger", "request_id", "principal", "code", "latency_ms"} <= set(
            line
        )
        assert isinstance(line["message"], str)
    access = [
        p for p in parsed if p["logger"] == "privgate.access" and p["request_id"] == "log-test-1"
    ]
    (line,) = access
    assert line["message"] == "POST /v1/query 200" and line["status"] == 200
    assert line["principal"] == "analyst" and line["code"] == "ok"
    assert isinstance(line["latency_ms"], float)
    (query,) = [
        p for p in parsed if p["logger"] == "privgate.query" and p["request_id"] == "log-test-1"
    ]
    assert query["code"] == "ok" and query["principal"] == "analyst"
    assert isinstance(query["latency_ms"], float)
    assert query["query_id"] == ok.json()["query_id"]
    # The released value is in the answer, never in a log line (as a field).
    assert all(value not in (p.get("status"), p.get("code")) for p in parsed)
    refused = [p for p in parsed if p["logger"] == "privgate.access" and p["status"] == 400]
    assert {p["code"] for p in refused} >= {"catalog.unknown_column", "sql.syntax"}


def test_exceptions_are_logged_without_their_message() -> None:
    formatter = JsonFormatter()
    try:
        try:
            raise ValueError(f"could not convert {CANARY}")
        except ValueError as inner:
            raise RuntimeError("wrapped " + CANARY) from inner
    except RuntimeError:
        record = logging.LogRecord("privgate.test", logging.ERROR, __file__, 1, "failed", (), None)
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert CANARY not in json.dumps(line)
    assert line["exc_type"] == "builtins.RuntimeError <- builtins.ValueError"
    assert "test_metrics.py" in line["stack"]
