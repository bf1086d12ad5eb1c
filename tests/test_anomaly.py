"""Anomaly rules and containment: each rule on its own (a fake clock), then end to end over HTTP —
a differencing probe and a burst get their principal quarantined, the alert is in the audit log,
every further query is refused with `principal.quarantined`, and an admin (API or CLI) lifts it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.anomaly import AnomalyDetector, AnomalyRules
from tests.conftest import Gateway, start_gateway
from tests.test_cli import _env, privgate

# -- the rules, one at a time ---------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


QUIET = AnomalyRules(
    rate_max_requests=10**6,
    rejections_min=10**6,
    rejections_of_last=10**6,
    differencing_max_repeats=10**6,
    burn_rate_max_epsilon=Fraction(10**6),
)


def _detector(rules: AnomalyRules) -> tuple[AnomalyDetector, Sink, list[str], Clock]:
    sink, quarantined, clock = Sink(), [], Clock()

    def quarantine(name: str, reason: str) -> bool:
        if name in quarantined:
            return False
        quarantined.append(name)
        return True

    return (
        AnomalyDetector(rules, audit=sink, quarantine=quarantine, clock=clock),
        sink,
        quarantined,
        clock,
    )


def _rec(
    principal: str = "p",
    decision: str = "accepted",
    code: str = "ok",
    sql: str | None = "SELECT COUNT(*) FROM t WHERE x = ?",
    epsilon: str | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "principal": principal,
        "decision": decision,
        "code": code,
        "door": "rest",
        "query_id": "q",
        "request_id": "r",
    }
    if sql is not None:
        rec["sql"] = sql
    if epsilon is not None:
        rec["epsilon"] = epsilon
    return rec


def _replace(rules: AnomalyRules, **changes: Any) -> AnomalyRules:
    from dataclasses import replace

    return replace(rules, **changes)


def test_rate_rule_fires_at_n_within_the_window_and_quarantines() -> None:
    det, sink, quarantined, clock = _detector(
        _replace(QUIET, rate_max_requests=5, rate_window_s=10)
    )
    for _ in range(4):
        det(_rec(sql=None))
        clock.now += 3  # 4 requests over 12 s: never 5 within 10 s
    det(_rec(sql=None))
    assert sink.records == [] and quarantined == []
    for _ in range(4):
        det(_rec(sql=None))
    (alert,) = sink.records
    assert alert["decision"] == "alert" and alert["code"] == "anomaly.rate"
    assert alert["rule"] == "rate" and alert["principal"] == "p"
    assert alert["contain"] is True and alert["quarantined"] is True
    assert alert["detail"]["requests"] == 5 and alert["detail"]["threshold"] == 5
    assert quarantined == ["p"]


def test_rejection_rule_counts_the_last_m_requests_and_only_alerts() -> None:
    det, sink, quarantined, _ = _detector(_replace(QUIET, rejections_min=3, rejections_of_last=5))
    pattern = ["rejected", "accepted", "rejected", "accepted", "accepted", "accepted", "rejected"]
    for d in pattern:  # never 3 rejections among any 5 consecutive requests
        det(_rec(decision=d, code="policy.x" if d == "rejected" else "ok", sql=None))
    assert sink.records == []
    det(_rec(decision="rejected", code="policy.x", sql=None))
    det(_rec(decision="rejected", code="policy.x", sql=None))
    (alert,) = sink.records
    assert alert["code"] == "anomaly.rejections" and alert["detail"]["rejections"] == 3
    assert alert["contain"] is False and alert["quarantined"] is False and quarantined == []


def test_differencing_rule_needs_one_shape_repeated_and_ignores_replays() -> None:
    det, sink, _, clock = _detector(
        _replace(QUIET, differencing_max_repeats=4, differencing_window_s=60)
    )
    for i in range(10):  # ten different shapes
        det(_rec(sql=f"SELECT COUNT(*) FROM t WHERE c{i} = ?"))
    for _ in range(10):  # replays of a stored answer release nothing new
        det(_rec(code="replayed"))
    for _ in range(10):  # explains release nothing at all
        det(_rec(decision="explained"))
    det(_rec())
    clock.now += 61
    det(_rec())
    det(_rec(principal="other"))  # per principal
    assert sink.records == []
    det(_rec(decision="rejected", code="policy.identifier_reference"))  # refusals count too
    det(_rec())
    assert sink.records == []
    det(_rec())
    (alert,) = sink.records
    assert alert["code"] == "anomaly.differencing" and alert["quarantined"] is True
    assert alert["detail"]["repeats"] == 4 and alert["detail"]["sql"].endswith("x = ?")


def test_burn_rate_sums_exact_epsilon_in_the_window() -> None:
    det, sink, quarantined, clock = _detector(
        _replace(QUIET, burn_rate_max_epsilon=Fraction(1), burn_rate_window_s=3600)
    )
    for _ in range(10):
        det(_rec(epsilon="0.1"))  # exactly 1: not above the limit
        clock.now += 1
    det(_rec(code="replayed", epsilon="0"))
    assert sink.records == []
    clock.now += 3600  # the first charges leave the window
    det(_rec(epsilon="0.5"))
    assert sink.records == []
    det(_rec(epsilon="0.6"))
    (alert,) = sink.records
    assert alert["code"] == "anomaly.burn_rate" and alert["detail"]["epsilon"] == "1.1"
    assert quarantined == []


def test_quarantined_refusals_and_alerts_are_ignored() -> None:
    det, sink, _, _ = _detector(_replace(QUIET, rate_max_requests=2))
    for _ in range(5):
        det(_rec(decision="rejected", code="principal.quarantined"))
        det({"decision": "alert", "principal": "p", "code": "anomaly.rate"})
        det({"decision": "admin", "principal": "p", "code": "ok"})
    assert sink.records == []


def test_an_alert_fed_back_to_the_detector_does_not_recurse() -> None:
    rules = _replace(QUIET, rate_max_requests=1)
    holder: list[AnomalyDetector] = []

    class Echo(Sink):
        def append(self, record: dict[str, Any]) -> None:
            super().append(record)
            holder[0]({**record, "decision": "accepted"})  # a wiring mistake: fed back

    sink = Echo()
    det = AnomalyDetector(rules, audit=sink, quarantine=lambda n, r: False)
    holder.append(det)
    det(_rec())
    assert len(sink.records) == 1


def test_a_containing_rule_starts_the_principal_afresh() -> None:
    det, sink, _, _ = _detector(
        _replace(QUIET, rate_max_requests=3, differencing_max_repeats=3, rejections_min=3)
    )
    for _ in range(3):
        det(_rec(decision="rejected", code="policy.x"))
    # All three rules fired on the third request: one alert each, one quarantine.
    assert sorted(r["rule"] for r in sink.records) == ["differencing", "rate", "rejections"]
    assert sum(r["quarantined"] for r in sink.records) == 1
    sink.records.clear()
    det(_rec())
    det(_rec())
    assert sink.records == []


def test_disabled_rules_do_nothing() -> None:
    det, sink, _, _ = _detector(_replace(QUIET, enabled=False, rate_max_requests=1))
    det(_rec())
    assert sink.records == []


def test_concurrent_records_fire_exactly_once_per_threshold() -> None:
    det, sink, quarantined, _ = _detector(
        _replace(QUIET, rate_max_requests=100, rate_contain=False, rate_window_s=10**6)
    )

    def burst() -> None:
        for _ in range(250):
            det(_rec(sql=None))

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sink.records) == 2000 // 100 and quarantined == []


# -- end to end -----------------------------------------------------------------------------------

SMALL_RULES = {
    "PRIVGATE_ANOMALY_RATE_MAX_REQUESTS": "15",
    "PRIVGATE_ANOMALY_RATE_WINDOW_S": "120",
    "PRIVGATE_ANOMALY_DIFFERENCING_MAX_REPEATS": "6",
    "PRIVGATE_ANOMALY_DIFFERENCING_WINDOW_S": "120",
    "PRIVGATE_ANOMALY_REJECTIONS_MIN": "50",
    "PRIVGATE_ANOMALY_REJECTIONS_OF_LAST": "50",
}
COUNT_SQL = "SELECT COUNT(*) AS n FROM visits"
PROBE = "SELECT COUNT(*) AS n FROM visits WHERE department = 'er' AND patient_id <> {k}"


@pytest.fixture(scope="module")
def agw(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    """A gateway of its own with small thresholds (the shared `analyst` is never involved)."""

    def big_budget(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.5},
            "per_query_max": {"epsilon": 10},
        }

    with pytest.MonkeyPatch.context() as mp:
        for name, value in SMALL_RULES.items():
            mp.setenv(name, value)
        yield from start_gateway(tmp_path_factory.mktemp("anomaly"), demo_warehouse, big_budget)


def _principal(gw: Gateway, name: str) -> httpx.Client:
    with gw.client("admin") as admin:
        r = admin.post("/v1/admin/principals", json={"name": name, "datasets": ["clinic"]})
        assert r.status_code == 201, r.text
        r = admin.post(f"/v1/admin/principals/{name}/keys", json={})
        assert r.status_code == 201, r.text
    return httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {r.json()['key']}"}, timeout=60
    )


def _records(gw: Gateway, **match: Any) -> list[dict[str, Any]]:
    return [
        e["record"]
        for e in gw.services.audit.export()
        if all(e["record"].get(k) == v for k, v in match.items())
    ]


def _refused(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "principal.quarantined" and error["sqlstate"] == "42501"
    assert error["hint"] and error["audit_id"]


def test_differencing_probe_is_quarantined_until_an_admin_releases_it(agw: Gateway) -> None:
    with _principal(agw, "prober") as c:
        assert c.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
        codes = []
        for k in range(1, 11):
            r = c.post(
                "/v1/query",
                json={"sql": PROBE.format(k=k)},
                headers={"X-Request-ID": f"probe-{k}"},
            )
            codes.append(r.json()["error"]["code"])
        # Identifiers cannot be filtered on, so the rewriter refuses each probe; the pattern
        # (one shape, many literals) is still the signal: the 6th probe trips the rule.
        assert codes == ["policy.identifier_reference"] * 6 + ["principal.quarantined"] * 4
        (alert,) = _records(agw, decision="alert", principal="prober")
        assert alert["code"] == "anomaly.differencing" and alert["rule"] == "differencing"
        assert alert["quarantined"] is True and alert["request_id"] == "probe-6"
        assert "patient_id <> ?" in alert["detail"]["sql"] and "'er'" not in str(alert)
        info = agw.services.principals.info("prober")
        assert info is not None and info.quarantined
        assert info.quarantine_reason == "anomaly.differencing"

        # Everything is refused before planning, explain included, and audited as a rejection.
        _refused(c.post("/v1/query", json={"sql": COUNT_SQL}))
        _refused(c.post("/v1/explain", json={"sql": COUNT_SQL}))
        refusals = _records(agw, principal="prober", code="principal.quarantined")
        assert len(refusals) == 6 and all(r["decision"] == "rejected" for r in refusals)
        assert all("mechanisms" not in r for r in refusals)  # never planned
        # The principal can still read its budget and schema: only queries are contained.
        assert c.get("/v1/budget").status_code == 200

        with agw.client("admin") as admin:
            listed = admin.get("/v1/admin/principals/prober").json()
            assert listed["quarantined"] is True
            assert listed["quarantine_reason"] == "anomaly.differencing"
            r = admin.post("/v1/admin/principals/prober/release")
            assert r.status_code == 200, r.text
            assert r.json()["released"] is True and r.json()["quarantined"] is False
            again = admin.post("/v1/admin/principals/prober/release").json()
            assert again["released"] is False and again["audit_id"] is None
        (release,) = _records(agw, decision="admin", action="principal.release")
        assert release["target"] == "prober" and release["lifted_reason"] == "anomaly.differencing"

        r = c.post("/v1/query", json={"sql": COUNT_SQL, "epsilon": 0.3})
        assert r.status_code == 200, r.text


def test_burst_is_quarantined_and_the_cli_releases_it(agw: Gateway) -> None:
    with _principal(agw, "burster") as c:
        statuses = [c.post("/v1/query", json={"sql": COUNT_SQL}).status_code for _ in range(18)]
    # One fresh answer and replays (free, and not a differencing signal) until the 15th request.
    assert statuses == [200] * 15 + [403] * 3
    (alert,) = _records(agw, decision="alert", principal="burster")
    assert alert["code"] == "anomaly.rate" and alert["detail"]["requests"] == 15
    assert agw.services.principals.is_quarantined("burster")

    result = privgate("principal", "release", "burster", env=_env(agw))
    assert result.returncode == 0, result.stderr
    assert "released burster" in result.stdout
    assert not agw.services.principals.is_quarantined("burster")
    (release,) = _records(agw, decision="admin", action="principal.release", target="burster")
    assert release["actor"] == "cli"
    with httpx.Client(base_url=agw.url, headers=c.headers, timeout=60) as again:
        assert again.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
    unknown = privgate("principal", "release", "nobody", env=_env(agw))
    assert unknown.returncode == 1 and "nobody" in unknown.stderr


def test_an_admin_cannot_release_themselves(agw: Gateway) -> None:
    agw.services.principals.quarantine("admin", reason="manual")
    try:
        with agw.client("admin") as admin:
            r = admin.post("/v1/admin/principals/admin/release")
            assert r.status_code == 400 and r.json()["error"]["code"] == "admin.invalid"
            # Admin routes still work; only queries are refused.
            assert admin.get("/v1/admin/principals").status_code == 200
            _refused(admin.post("/v1/query", json={"sql": COUNT_SQL}))
            with agw.client("analyst") as analyst:
                forbidden = analyst.post("/v1/admin/principals/admin/release")
                assert forbidden.status_code == 403
    finally:
        agw.services.principals.release("admin")


def test_quarantine_is_shared_through_the_control_database(agw: Gateway) -> None:
    """Another replica (another store on the same control DB) sees the flag at once."""
    from gateway.composition import build_control

    _, _, other = build_control(agw.services.settings)
    with _principal(agw, "shared") as c:
        assert other.quarantine("shared", reason="anomaly.rate") is True
        assert other.quarantine("shared", reason="anomaly.rate") is False  # exactly once
        _refused(c.post("/v1/query", json={"sql": COUNT_SQL}))
        assert other.release("shared") is True
        assert c.post("/v1/query", json={"sql": COUNT_SQL}).status_code == 200
