"""The audit API and CLI end to end (a real server on a loopback port, real subprocesses), and
acceptance point 2: after a run of queries, no exact (pre-noise) aggregate is anywhere in the audit
table, the export, the checkpoint file or the log output."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.audit import CHECKPOINT_FILE, AuditFilter
from gateway.audit_schema import audit_log
from gateway.control_db import make_control_engine
from gateway.service import QueryRequest
from gateway.settings import load_secrets
from tests.conftest import Gateway, start_gateway
from tests.test_cli import _env, privgate

EVERY = 5
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/admin/audit/export", None),
    ("GET", "/v1/admin/audit/verify", None),
    ("POST", "/v1/admin/audit/verify", {"checkpoints": [{}]}),
    ("GET", "/v1/admin/audit/checkpoints", None),
    ("POST", "/v1/admin/audit/checkpoints", None),
    ("POST", "/v1/admin/audit/purge", {"before": "2020-01-01T00:00:00Z"}),
]
DEMO_SQL = "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY department"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    """A gateway that checkpoints every 5 records into an auditor's directory."""

    def big_budget(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.5},
            "per_query_max": {"epsilon": 10},
        }

    tmp = tmp_path_factory.mktemp("audit_api")
    with pytest.MonkeyPatch.context() as env:
        # Read by Settings() in the gateway and, inherited, by the CLI subprocesses.
        env.setenv("PRIVGATE_AUDIT_CHECKPOINT_EVERY", str(EVERY))
        env.setenv("PRIVGATE_AUDIT_CHECKPOINT_DIR", str(tmp / "auditor"))
        yield from start_gateway(tmp, demo_warehouse, big_budget)


def checkpoint_file(gw: Gateway) -> Path:
    directory = gw.services.settings.audit_checkpoint_dir
    assert directory is not None
    return directory / CHECKPOINT_FILE


def run_queries(gw: Gateway) -> None:
    with gw.client() as analyst:
        for sql in (
            DEMO_SQL,
            "SELECT COUNT(*) AS n, SUM(cost) AS total FROM visits WHERE los_days < 5",
            "SELECT nonsense FROM",
        ):
            analyst.post("/v1/query", json={"sql": sql, "epsilon": 1})
        analyst.post("/v1/explain", json={"sql": DEMO_SQL})


def _error_code(r: httpx.Response) -> str:
    code: str = r.json()["error"]["code"]
    return code


# --- access -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_admin_only(gw: Gateway, method: str, path: str, body: dict[str, Any] | None) -> None:
    with gw.client("analyst") as analyst:
        r = analyst.request(method, path, json=body)
    assert r.status_code == 403 and _error_code(r) == "auth.forbidden"
    r = httpx.request(method, gw.url + path, json=body)
    assert r.status_code == 401 and _error_code(r) == "auth.missing"


# --- listing and export -------------------------------------------------------------------------


def test_list_filters_and_pagination(gw: Gateway) -> None:
    run_queries(gw)
    with gw.client("admin") as admin:
        r = admin.get("/v1/admin/audit", params={"principal": "analyst", "limit": 1000})
        assert r.status_code == 200
        everything = r.json()["records"]
        assert everything and all(e["record"]["principal"] == "analyst" for e in everything)
        seqs = [e["seq"] for e in everything]
        assert seqs == sorted(seqs, reverse=True)  # newest first

        paged: list[int] = []
        params: dict[str, Any] = {"principal": "analyst", "limit": 2}
        while True:
            page = admin.get("/v1/admin/audit", params=params).json()
            assert len(page["records"]) <= 2
            paged += [e["seq"] for e in page["records"]]
            if page["next_before_seq"] is None:
                break
            params["before_seq"] = page["next_before_seq"]
        assert paged == seqs

        for name, value in [
            ("decision", "rejected"),
            ("code", "sql.syntax"),
            ("decision", "explained"),
            ("dataset", "clinic"),
        ]:
            found = admin.get("/v1/admin/audit", params={name: value}).json()["records"]
            assert found and all(e["record"][name] == value for e in found), (name, value)
        both = admin.get(
            "/v1/admin/audit", params={"dataset": "clinic", "decision": "accepted"}
        ).json()["records"]
        assert {(e["record"]["dataset"], e["record"]["decision"]) for e in both} == {
            ("clinic", "accepted")
        }
        assert admin.get("/v1/admin/audit", params={"principal": "nobody"}).json() == {
            "records": [],
            "next_before_seq": None,
        }

        stamps = [e["ts"] for e in everything]
        since, until = stamps[-2], stamps[0]  # second oldest (inclusive) .. newest (exclusive)
        window = admin.get(
            "/v1/admin/audit",
            params={"principal": "analyst", "since": since, "until": until, "limit": 1000},
        ).json()["records"]
        assert [e["seq"] for e in window] == seqs[1:-1]

        bad = admin.get("/v1/admin/audit", params={"since": "yesterday"})
        assert bad.status_code == 400 and _error_code(bad) == "admin.invalid"
        naive = admin.get("/v1/admin/audit", params={"until": "2025-01-01T10:00:00"})
        assert naive.status_code == 400 and "zone" in naive.json()["error"]["message"]
        assert admin.get("/v1/admin/audit", params={"limit": 0}).status_code == 422


def test_export_streams_json_lines(gw: Gateway) -> None:
    run_queries(gw)
    with gw.client("admin") as admin:
        with admin.stream("GET", "/v1/admin/audit/export") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines == list(gw.services.audit.export())[: len(lines)]
        assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))  # oldest first

        r = admin.get("/v1/admin/audit/export", params={"decision": "rejected"})
        rejected = [json.loads(line) for line in r.text.splitlines()]
        expected = list(gw.services.audit.export(AuditFilter(decision="rejected")))
        assert rejected == expected and rejected


# --- checkpoints and verification ---------------------------------------------------------------


def test_checkpoints_and_verification(gw: Gateway) -> None:
    run_queries(gw)
    with gw.client("admin") as admin:
        made = admin.post("/v1/admin/audit/checkpoints")
        assert made.status_code == 201
        cp = made.json()
        assert set(cp) == {"seq", "hash", "ts", "key_id", "mac"}
        assert cp["key_id"] == gw.services.audit.key_id
        listed = admin.get("/v1/admin/audit/checkpoints", params={"limit": 1000}).json()
        assert listed["checkpoints"][0] == cp
        automatic = range(EVERY, cp["seq"] + 1, EVERY)
        assert [c["seq"] for c in listed["checkpoints"]] == sorted(
            {*automatic, cp["seq"]}, reverse=True
        )
        two = admin.get("/v1/admin/audit/checkpoints", params={"limit": 2}).json()
        assert two["checkpoints"] == listed["checkpoints"][:2]
        assert two["next_before_seq"] == listed["checkpoints"][1]["seq"]

        filed = [json.loads(line) for line in checkpoint_file(gw).read_text().splitlines()]
        assert filed[-1] == cp and len(filed) == len(listed["checkpoints"])
        assert admin.get("/v1/admin/audit/verify").json()["ok"] is True
        verdict = admin.post("/v1/admin/audit/verify", json={"checkpoints": filed}).json()
        assert verdict == {
            "ok": True,
            "checked": verdict["checked"],
            "first_bad_seq": None,
            "reason": "ok",
        }
        forged = {**cp, "hash": "0" * 64}
        bad = admin.post("/v1/admin/audit/verify", json={"checkpoints": [forged]}).json()
        assert bad["ok"] is False and "not genuine" in bad["reason"]
        malformed = admin.post("/v1/admin/audit/verify", json={"checkpoints": [{"seq": 1}]})
        assert malformed.status_code == 400 and _error_code(malformed) == "admin.invalid"
        assert admin.post("/v1/admin/audit/verify", json={"checkpoints": []}).status_code == 422


def test_cli_list_export_checkpoint_verify(gw: Gateway, tmp_path: Path) -> None:
    run_queries(gw)
    env = _env(gw)
    listing = privgate("audit", "list", "--decision", "rejected", "--limit", "2", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TS", "PRINCIPAL", "DATASET", "DECISION", "CODE", "ID"]
    assert len(lines) == 3 and all("rejected" in line for line in lines[1:])
    assert listing.stderr.startswith("more: --before-seq ")

    exported = privgate("audit", "export", "--principal", "analyst", env=env)
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert (
        records == list(gw.services.audit.export(AuditFilter(principal="analyst")))[: len(records)]
    )

    made = privgate("audit", "checkpoint", env=env)
    assert made.returncode == 0, made.stderr
    cp = json.loads(made.stdout)
    assert cp == json.loads(checkpoint_file(gw).read_text().splitlines()[-1])

    ok = privgate("audit", "verify", "--from-checkpoint", str(checkpoint_file(gw)), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "records verified against" in ok.stdout
    single = tmp_path / "one.json"
    single.write_text(json.dumps(cp, indent=2))
    assert privgate("audit", "verify", "--from-checkpoint", str(single), env=env).returncode == 0
    single.write_text(json.dumps({**cp, "hash": "0" * 64}))
    broken = privgate("audit", "verify", "--from-checkpoint", str(single), env=env)
    assert broken.returncode == 1 and "not genuine" in broken.stderr
    single.write_text("not json\n")
    junk = privgate("audit", "verify", "--from-checkpoint", str(single), env=env)
    assert junk.returncode == 1 and junk.stderr.startswith("error: ")
    bad = privgate("audit", "list", "--since", "yesterday", env=env)
    assert bad.returncode == 1 and "not an ISO 8601 time" in bad.stderr


# --- never a true value -------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:[+-]\d{2}:\d{2}|Z)?)?")


def true_aggregates(gw: Gateway, sql: str) -> set[Decimal]:
    """The exact values a query's noise is added to (``plan.warehouse_sql`` on the warehouse),
    and the plain SQL's own exact values (no bounding, no clamping)."""
    principal = gw.services.principals.get("analyst")
    assert principal is not None
    plan = gw.services.queries.plan(QueryRequest(sql=sql), principal)
    salt = load_secrets(gw.services.settings)["bounding_salt"].decode()
    found: set[Decimal] = set()
    for query, params in ((plan.warehouse_sql, [salt for _ in plan.parameters]), (sql, [])):
        for row in gw.services.warehouse.execute(query, params).rows:
            for value in row:
                if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                    found.add(Decimal(str(value)))
    return found


def public_numbers(gw: Gateway, sqls: list[str]) -> set[Decimal]:
    """Numbers the plans put in the audit record from the policy and the query alone (fixed
    points, clamp bounds, centres, the analyst's literals): there whatever the data, so a true
    value that happens to equal one (the bounded rows kept depend on the random salt) is a
    coincidence the scan cannot tell from a leak, and no leak."""
    principal = gw.services.principals.get("analyst")
    assert principal is not None
    out: set[Decimal] = set()
    for sql in sqls:
        plan = gw.services.queries.plan(QueryRequest(sql=sql), principal)
        text = " ".join(
            [sql, plan.redacted_sql, plan.redacted_warehouse_sql]
            + [m.description for m in plan.measurements]
        )
        out |= {Decimal(token) for token in _NUMBER.findall(text)}
    return out


def distinctive(truths: set[Decimal]) -> set[Decimal]:
    """Small whole numbers are everywhere (seqs, row counts, thresholds, sensitivities), so a
    small count equal to one proves nothing; sums, averages and large counts are what leak."""
    return {t for t in truths if abs(t) >= 1000 or (t % 1 and abs(t) >= 10)}


def leaks(text: str, truths: set[Decimal]) -> set[str]:
    """Numbers in ``text`` equal to a true value, or to one rounded to the digits shown."""
    out: set[str] = set()
    for token in _NUMBER.findall(_TIME.sub(" ", text)):
        number = Decimal(token)
        places = len(token.split(".")[1]) if "." in token and "e" not in token.lower() else 0
        for truth in truths:
            if number == truth or (places >= 2 and format(truth, f".{places}f") == token):
                out.add(token)
    return out


# Bookkeeping of the logging module itself (times, pids, thread ids, line numbers), not content.
_LOG_BOOKKEEPING = {"created", "msecs", "relativeCreated", "process", "thread", "lineno"}


def log_text(records: list[logging.LogRecord]) -> str:
    """Everything a log handler could write: message, arguments and every extra field."""
    return "\n".join(
        repr({k: v for k, v in vars(r).items() if k not in _LOG_BOOKKEEPING}) + r.getMessage()
        for r in records
    )


def test_no_true_value_anywhere(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    queries = [
        DEMO_SQL,
        "SELECT COUNT(*) AS n, SUM(cost) AS total, AVG(los_days) AS stay FROM visits",
        "SELECT department, SUM(cost) AS total FROM visits WHERE los_days > 2 GROUP BY department",
        "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day",
    ]
    truths: set[Decimal] = set()
    for sql in queries:
        truths |= true_aggregates(gw, sql)
    truths = distinctive(truths) - public_numbers(gw, queries)
    assert len(truths) >= 30

    with caplog.at_level(logging.INFO), gw.client() as analyst:
        for sql in queries:
            r = analyst.post("/v1/query", json={"sql": sql, "epsilon": 1})
            assert r.status_code == 200, r.text
            analyst.post("/v1/explain", json={"sql": sql})
        analyst.post("/v1/query", json={"sql": queries[0] + " HAVING COUNT(*) > 1"})
        with gw.client("admin") as admin:
            admin.post("/v1/admin/audit/checkpoints")
            export = admin.get("/v1/admin/audit/export").text

    exported = [json.loads(line)["record"] for line in export.splitlines()]
    assert len(exported) >= 2 * len(queries)
    engine = make_control_engine(gw.services.settings.resolved_control_db_url)
    with engine.connect() as conn:
        table = conn.execute(select(audit_log)).all()
    engine.dispose()
    sources = {
        "export": json.dumps(exported),
        "audit_log table": "\n".join(repr(tuple(row)) for row in table),
        "log output": log_text(caplog.records),
    }
    assert caplog.records, "the run logged nothing: the scan would prove nothing"
    # The checkpoint file holds seqs, hashes, times and seals, nothing else.
    for line in checkpoint_file(gw).read_text().splitlines():
        assert set(json.loads(line)) == {"seq", "hash", "ts", "key_id", "mac"}
    for name, text in sources.items():
        assert not leaks(text, truths), f"{name} holds exact aggregates: {leaks(text, truths)}"


def test_the_leak_scan_finds_a_planted_value(gw: Gateway) -> None:
    truths = distinctive(true_aggregates(gw, DEMO_SQL)) - public_numbers(gw, [DEMO_SQL])
    some = sorted(truths)[len(truths) // 2]
    planted = json.dumps([e["record"] for e in gw.services.audit.export()] + [{"n": str(some)}])
    assert leaks(planted, truths) == {str(some)}
    rounded = json.dumps({"avg": str(round(max(t for t in truths if t % 1), 2))})
    assert leaks(rounded, truths)


# --- retention (last: it removes records) -------------------------------------------------------


def test_purge_api_and_cli(gw: Gateway) -> None:
    run_queries(gw)
    audit = gw.services.audit
    newest_checkpoint = audit.read_checkpoints()[-1]
    with gw.client("admin") as admin:
        for body, code in [
            ({"before": "soon"}, 400),
            ({"before": "2025-01-01T00:00:00"}, 400),
            ({"before": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, 400),
            ({"before": "2025-01-01T00:00:00Z", "extra": 1}, 422),
        ]:
            assert admin.post("/v1/admin/audit/purge", json=body).status_code == code, body

        r = admin.post("/v1/admin/audit/purge", json={"before": datetime.now(UTC).isoformat()})
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["up_to_seq"] == newest_checkpoint.seq
        assert result["purged"] == newest_checkpoint.seq
        assert result["anchor"] == newest_checkpoint.as_json()
        assert admin.get("/v1/admin/audit/verify").json()["ok"] is True
        purge = admin.get("/v1/admin/audit", params={"decision": "admin", "limit": 1}).json()
        record = purge["records"][0]["record"]
        assert purge["records"][0]["id"] == result["audit_id"]
        assert (record["action"], record["actor"], record["up_to_seq"]) == (
            "audit.purge",
            "admin",
            newest_checkpoint.seq,
        )
        oldest = admin.get("/v1/admin/audit/export").text.splitlines()[0]
        assert json.loads(oldest)["seq"] == newest_checkpoint.seq + 1
        filed = [json.loads(line) for line in checkpoint_file(gw).read_text().splitlines()]
        assert admin.post("/v1/admin/audit/verify", json={"checkpoints": filed}).json()["ok"]

    env = _env(gw)
    unset = privgate("audit", "purge", "--apply-retention", env=env)
    assert unset.returncode == 1 and "PRIVGATE_AUDIT_RETENTION_DAYS" in unset.stderr
    both = privgate("audit", "purge", "--apply-retention", "--before", "2025-01-01", env=env)
    assert both.returncode == 1
    kept = privgate(
        "audit", "purge", "--apply-retention", env={**env, "PRIVGATE_AUDIT_RETENTION_DAYS": "30"}
    )
    assert kept.returncode == 0, kept.stderr
    assert "nothing to purge" in kept.stdout  # every record is younger than 30 days
    run_queries(gw)
    now = datetime.now(UTC).isoformat()
    cut = privgate("audit", "purge", "--before", now, env=env)
    assert cut.returncode == 0, cut.stderr
    assert "purged" in cut.stdout
    cli_purge = list(audit.export(AuditFilter(decision="admin")))[-1]["record"]
    assert (cli_purge["actor"], cli_purge["door"]) == ("cli", "cli")
    verified = privgate("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    from_file = privgate("audit", "verify", "--from-checkpoint", str(checkpoint_file(gw)), env=env)
    assert from_file.returncode == 0, from_file.stderr

    # A chain that does not verify is not purged: nothing is deleted, and the answer says nothing.
    first = next(audit.export())
    with closing(sqlite3.connect(gw.services.settings.data_dir / "control.db")) as conn:
        conn.execute("UPDATE audit_log SET ts = ? WHERE seq = ?", ("2000-01-01", first["seq"]))
        conn.commit()
        with gw.client("admin") as admin:
            r = admin.post("/v1/admin/audit/purge", json={"before": datetime.now(UTC).isoformat()})
        assert r.status_code == 500 and _error_code(r) == "internal"
        assert next(audit.export())["seq"] == first["seq"]
        conn.execute("UPDATE audit_log SET ts = ? WHERE seq = ?", (first["ts"], first["seq"]))
        conn.commit()
    assert audit.verify().ok
