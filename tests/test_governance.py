"""The governance report (API and CLI): access, refusals, alerts, budgets, retention, policy history
and quarantined principals, checked against a known sequence of requests on a gateway of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, start_gateway, write_policy
from tests.test_cli import _env, privgate

DEMO = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"
PROBE = "SELECT COUNT(*) AS n FROM visits WHERE department = 'er' AND patient_id <> {k}"


def _budget(policy: dict[str, Any]) -> None:
    policy["datasets"]["clinic"]["budget"] = {
        "per_principal": {"epsilon": 1000, "delta": 0.5},
        "per_query_max": {"epsilon": 10},
    }


@pytest.fixture(scope="module")
def ggw(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVGATE_ANOMALY_DIFFERENCING_MAX_REPEATS", "3")
        yield from start_gateway(tmp_path_factory.mktemp("governance"), demo_warehouse, _budget)


@pytest.fixture(scope="module")
def report(ggw: Gateway) -> dict[str, Any]:
    """Drive a known mix of traffic, then fetch the report once."""
    with ggw.client() as c:
        assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 0.5}).status_code == 200
        assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 0.5}).json()["cached"] is True
        sql = "SELECT COUNT(*) AS n FROM visits WHERE los_days > 2"
        assert c.post("/v1/query", json={"sql": sql, "epsilon": 0.25}).status_code == 200
        assert c.post("/v1/query", json={"sql": "SELECT patient_id FROM visits"}).status_code == 400
        assert c.post("/v1/query", json={"sql": "SELEC 1"}).status_code == 400
        assert c.post("/v1/explain", json={"sql": DEMO}).status_code == 200
    httpx.get(f"{ggw.url}/v1/budget", headers={"Authorization": "Bearer pgk_00000000_nope"})

    # A second principal who probes (three of one shape: the differencing rule, threshold 3).
    with ggw.client("admin") as admin:
        admin.post("/v1/admin/principals", json={"name": "gov2", "datasets": ["clinic"]})
        key = admin.post("/v1/admin/principals/gov2/keys", json={}).json()["key"]
    with httpx.Client(base_url=ggw.url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.post("/v1/query", json={"sql": DEMO, "epsilon": 1}).status_code == 200
        for k in range(3):
            r = c.post("/v1/query", json={"sql": PROBE.format(k=k)})
            assert r.json()["error"]["code"] == "policy.identifier_reference"
        assert c.post("/v1/query", json={"sql": DEMO}).json()["error"]["code"] == (
            "principal.quarantined"
        )

    # A second policy version: the reload is audited, and a query runs under it.
    def cheaper(policy: dict[str, Any]) -> None:
        _budget(policy)
        policy["datasets"]["clinic"]["defaults"]["epsilon"] = 0.4

    write_policy(ggw.services.settings.resolved_policy_path, cheaper)
    with ggw.client("admin") as admin:
        assert admin.post("/v1/admin/policy/reload").json()["changed"] is True
    with ggw.client() as c:
        assert c.post("/v1/query", json={"sql": DEMO}).json()["epsilon_charged"] == "0.4"

    with ggw.client("admin") as admin:
        r = admin.get("/v1/admin/governance")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _access(report: dict[str, Any], principal: str, dataset: str | None) -> dict[str, Any]:
    (row,) = [a for a in report["access"] if (a["principal"], a["dataset"]) == (principal, dataset)]
    return row


def test_access_by_principal_and_dataset(report: dict[str, Any]) -> None:
    analyst = _access(report, "analyst", "clinic")
    assert analyst["accepted"] == 3 and analyst["replayed"] == 1
    assert analyst["explained"] == 1 and analyst["rejected"] == 0
    assert Fraction(analyst["epsilon_charged"]) == Fraction("0.5") + Fraction("0.25") + Fraction(
        "0.4"
    )
    assert analyst["delta_charged"] == "0"
    # Refused before a dataset was resolved: counted without one.
    assert _access(report, "analyst", None)["rejected"] == 2
    gov2 = _access(report, "gov2", "clinic")
    assert gov2["accepted"] == 1 and gov2["epsilon_charged"] == "1"
    assert _access(report, "gov2", None)["rejected"] == 4


def test_violations_by_code(report: dict[str, Any]) -> None:
    by_code = {v["code"]: v for v in report["violations"]}
    assert by_code["policy.identifier_reference"]["count"] == 4
    assert by_code["policy.identifier_reference"]["principals"] == {"analyst": 1, "gov2": 3}
    assert by_code["sql.syntax"]["principals"] == {"analyst": 1}
    assert by_code["principal.quarantined"]["principals"] == {"gov2": 1}
    assert by_code["auth.invalid_key"]["principals"] == {"(unauthenticated)": 1}
    counts = [v["count"] for v in report["violations"]]
    assert counts == sorted(counts, reverse=True)


def test_alerts_quarantine_and_admin_actions(report: dict[str, Any]) -> None:
    assert report["alerts"] == [{"rule": "differencing", "principal": "gov2", "count": 1}]
    (q,) = report["quarantined"]
    assert q["principal"] == "gov2" and q["reason"] == "anomaly.differencing" and q["since"]
    assert report["admin_actions"]["principal.create"] == 1
    assert report["admin_actions"]["policy.reload"] == 1


def test_budgets_use_and_remaining(report: dict[str, Any], ggw: Gateway) -> None:
    rows = {(b["scope"], b["principal"], b["dataset"]): b for b in report["budgets"]}
    analyst = rows[("principal", "analyst", "clinic")]
    assert Fraction(analyst["epsilon_spent"]) == Fraction("1.15")
    assert Fraction(analyst["epsilon_remaining"]) == 1000 - Fraction("1.15")
    assert analyst["stored"] is True
    assert rows[("principal", "admin", "clinic")]["stored"] is False  # granted, never charged


def test_retention_and_policy_history(report: dict[str, Any], ggw: Gateway) -> None:
    records = list(ggw.services.audit.export())
    retention = report["retention"]
    # The report reads the log at one moment; nothing was appended by reading it.
    assert retention["records"] == len(records)
    assert retention["oldest_seq"] == 1 and retention["newest_seq"] == records[-1]["seq"]
    assert retention["oldest_ts"] == records[0]["ts"]
    assert retention["newest_ts"] == records[-1]["ts"]
    assert isinstance(retention["settings"], dict)

    versions = report["policy_versions"]
    assert len(versions) == 2
    old, new = versions
    assert new["version"] == report["policy_version"] == ggw.services.queries.policy_version
    assert old["first_seen"] <= old["last_seen"] <= new["first_seen"] <= new["last_seen"]
    assert new["records"] == 1 and old["records"] > 10


def test_report_holds_no_literal_or_value(report: dict[str, Any]) -> None:
    text = json.dumps(report)
    assert "'er'" not in text and "patient_id" not in text and "SELECT" not in text


def test_governance_needs_an_admin(ggw: Gateway) -> None:
    with ggw.client() as c:
        r = c.get("/v1/admin/governance")
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
        r = c.post("/v1/admin/principals/gov2/release")
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
    assert httpx.get(f"{ggw.url}/v1/admin/governance").status_code == 401


def test_cli_report(ggw: Gateway, report: dict[str, Any]) -> None:
    result = privgate("governance", "--json", env=_env(ggw))
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout)
    for key in ("access", "alerts", "quarantined", "policy_versions"):
        assert cli[key] == report[key], key
    # Other tests in this module may have added refusals since (an unauthenticated request).
    assert [v for v in cli["violations"] if v["code"] != "auth.missing"] == report["violations"]
    assert cli["policy_version"] == report["policy_version"]

    text = privgate("governance", env=_env(ggw))
    assert text.returncode == 0, text.stderr
    for heading in (
        "ACCESS",
        "REFUSALS",
        "ALERTS",
        "QUARANTINED",
        "BUDGETS",
        "RETENTION",
        "POLICY VERSIONS",
    ):
        assert heading in text.stdout
    assert "gov2" in text.stdout and "anomaly.differencing" in text.stdout
