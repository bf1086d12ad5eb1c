"""Sandbox escapes with canaries: no SQL sent to privgate reads or writes files, loads code, changes
settings or reaches the network.

A canary directory under ``tmp_path`` holds files whose content is a fresh random secret. Every
payload below is sent over REST and over the PostgreSQL wire door.

Pass criteria:

* every payload is refused with a 4xx before execution, nothing is charged;
* the secret never appears in any response body, nor in the audit log (``AuditLog.export``);
* no file appears, disappears or changes in the canary directory or in the gateway's data directory
  (SQLite's transient journal files aside);
* no connection reaches a loopback listener that the URL payloads point at (no outbound traffic);
* the warehouse lock-down holds by itself too: the same file/network/settings payloads sent
  straight to ``gateway.warehouse.DuckDBWarehouse.execute`` (no rewriter) fail with the uniform
  ``WarehouseError`` and leave no file behind. ``query()``, ``COLUMNS()`` and whole-row structs are
  *not* stopped by the lock (FIELD-NOTES) — over REST the rewriter refuses them, which the first
  group checks.
"""

from __future__ import annotations

import secrets as pysecrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import WarehouseError
from gateway.warehouse import DuckDBWarehouse
from tests.conftest import Gateway

from .dpaudit import record
from .rest_helpers import query, rejected, spent

READS = [
    "SELECT * FROM read_csv('{f}')",
    "SELECT COUNT(*) FROM read_csv_auto('{f}')",
    "SELECT * FROM read_csv(['{f}', '{f}'])",
    "SELECT * FROM read_text('{f}')",
    "SELECT content FROM read_text('{d}/*')",
    "SELECT * FROM read_blob('{f}')",
    "SELECT * FROM read_json('{j}')",
    "SELECT * FROM read_json_auto('{j}')",
    "SELECT * FROM read_parquet('{f}')",
    "SELECT * FROM parquet_scan('{f}')",
    "SELECT * FROM sniff_csv('{f}')",
    "SELECT * FROM glob('{d}/*')",
    "SELECT * FROM '{f}'",
    "FROM '{f}'",
    'SELECT * FROM "{f}"',
    "SELECT * FROM departments, '{f}'",
    "SELECT * FROM departments, read_csv('{f}')",
    "SELECT * FROM read_csv('{url}/x.csv')",
    "SELECT * FROM read_parquet('{url}/x.parquet')",
    "SELECT pg_read_file('{f}')",
    "SELECT COUNT(*) FROM visits WHERE department = pg_read_file('{f}')",
    "SELECT lo_import('{f}')",
    "SELECT * FROM departments WHERE department IN (SELECT content FROM read_text('{f}'))",
    "SELECT department FROM departments UNION SELECT * FROM read_csv('{f}')",
    "SELECT * FROM query('SELECT * FROM read_text(''{f}'')')",
    "SELECT * FROM query_table('departments')",
    "SELECT COLUMNS('.*') FROM visits",
    "SELECT COLUMNS(*) FROM departments",
    "SELECT to_json(v) FROM visits v",
    "SELECT to_json(d) FROM departments d",
    "SELECT v FROM visits v",
    "SELECT d FROM departments d",
    "SELECT d.* FROM departments d",
    "SELECT struct_pack(department := department) FROM departments",
    "SELECT getenv('HOME')",
    "SELECT current_setting('enable_external_access')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_class",
    "SELECT * FROM demo.main.visits",
    "SELECT * FROM sqlite_master",
]

WRITES = [
    "COPY visits TO '{d}/out.csv'",
    "COPY (SELECT * FROM visits) TO '{d}/out.parquet' (FORMAT parquet)",
    "COPY departments FROM '{f}'",
    "EXPORT DATABASE '{d}/exported'",
    "ATTACH '{d}/new.duckdb' AS x",
    "ATTACH '{f}' AS y",
    "DETACH main",
    "INSTALL httpfs",
    "INSTALL httpfs FROM '{url}'",
    "LOAD httpfs",
    "LOAD '{f}'",
    "ATTACH '{url}/db.duckdb' AS remote",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "SET allowed_directories = ['/']",
    "SET GLOBAL threads = 1",
    "PRAGMA database_list",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CREATE TABLE x AS SELECT 1",
    "CREATE MACRO m(a) AS a",
    "DROP TABLE departments",
    "INSERT INTO departments VALUES ('x', 'y', 1)",
    "UPDATE departments SET floor = 0",
    "DELETE FROM departments",
    "CHECKPOINT",
    "VACUUM",
    "SELECT 1; COPY visits TO '{d}/out2.csv'",
    "SELECT * FROM departments; ATTACH '{d}/z.duckdb'",
]


def _snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.name.endswith(("-journal", "-wal", "-shm")):
                st = p.stat()
                if p.name == "control.db":  # the audit and ledger grow with every request
                    out[str(p)] = (0, 0)
                else:
                    out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    """A loopback TCP socket that payload URLs point at: any connection to it is an escape."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory, listener: socket.socket) -> dict[str, Any]:
    secret = "CANARY-" + pysecrets.token_hex(16)
    d = tmp_path_factory.mktemp("canary")
    (d / "secret.csv").write_text(f"department,building\n{secret},x\n")
    (d / "secret.txt").write_text(secret + "\n")
    (d / "secret.json").write_text(f'{{"department": "{secret}"}}\n')
    host, port = listener.getsockname()
    return {
        "secret": secret,
        "dir": d,
        "f": str(d / "secret.csv"),
        "j": str(d / "secret.json"),
        "url": f"http://{host}:{port}",
    }


def _fill(template: str, canary: dict[str, Any]) -> str:
    return template.format(f=canary["f"], j=canary["j"], d=str(canary["dir"]), url=canary["url"])


def _payloads(canary: dict[str, Any]) -> list[str]:
    return [_fill(p, canary) for p in READS + WRITES]


def test_payloads_are_refused_and_leave_no_trace(
    privacy_gateway: Gateway, canary: dict[str, Any], listener: socket.socket
) -> None:
    data_dir = privacy_gateway.services.settings.data_dir
    before_files = _snapshot(canary["dir"], data_dir)
    secret = canary["secret"]
    refused = 0
    codes: dict[str, int] = {}
    with privacy_gateway.client() as c:
        spent_before = spent(c)
        for sql in _payloads(canary):
            r = query(c, sql)
            assert secret not in r.text, sql
            error = rejected(r)
            assert error["code"].startswith(("sql.", "policy.", "catalog.")), (sql, error)
            refused += 1
            codes[error["code"]] = codes.get(error["code"], 0) + 1
        assert spent(c) == spent_before
    exported = "\n".join(str(rec) for rec in privacy_gateway.services.audit.export())
    assert secret not in exported
    assert _snapshot(canary["dir"], data_dir) == before_files
    assert _connections(listener) == 0, "a payload reached the network"
    record("sandbox", door="rest", payloads=refused, refused=refused, canary_leaks=0, codes=codes)


# Sent straight to the warehouse: what the lock-down alone must stop.
DIRECT = [
    "SELECT * FROM read_csv('{f}')",
    "SELECT * FROM read_text('{f}')",
    "SELECT * FROM read_json('{j}')",
    "SELECT * FROM read_parquet('{f}')",
    "SELECT * FROM glob('{d}/*')",
    "SELECT * FROM '{f}'",
    "SELECT * FROM query('SELECT * FROM read_text(''{f}'')')",
    "SELECT * FROM read_csv('{url}/x.csv')",
    "ATTACH '{url}/db.duckdb' AS remote",
    "INSTALL httpfs FROM '{url}'",
    "COPY visits TO '{d}/out.csv'",
    "EXPORT DATABASE '{d}/exported'",
    "ATTACH '{d}/new.duckdb' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "CREATE TABLE x AS SELECT 1",
    "DROP TABLE departments",
]


def test_warehouse_lockdown_holds_on_its_own(
    tmp_path: Path, demo_warehouse: Path, canary: dict[str, Any], listener: socket.socket
) -> None:
    path = tmp_path / "wh.duckdb"
    shutil.copyfile(demo_warehouse, path)
    before = _snapshot(canary["dir"], tmp_path)
    wh = DuckDBWarehouse(path, timeout_s=10)
    try:
        for template in DIRECT:
            sql = _fill(template, canary)
            with pytest.raises(WarehouseError) as info:
                wh.execute(sql, [])
            assert canary["secret"] not in str(info.value)
            assert str(info.value) == "the warehouse could not complete the query"
        # The database is still usable and unchanged afterwards.
        assert wh.execute("SELECT COUNT(*) FROM departments", []).rows == [(8,)]
    finally:
        wh.close()
    assert _snapshot(canary["dir"], tmp_path) == before
    assert _connections(listener) == 0, "the warehouse reached the network"


def test_listener_sees_a_connection() -> None:
    """The network canary works: a real connection to it is counted."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.setblocking(False)
    try:
        with socket.create_connection(sock.getsockname(), timeout=2):
            time.sleep(0.05)
            assert _connections(sock) == 1
        assert _connections(sock) == 0
    finally:
        sock.close()


def test_payloads_over_the_wire_leak_nothing(
    privacy_gateway: Gateway, canary: dict[str, Any], listener: socket.socket
) -> None:
    """The same payloads over the PostgreSQL wire door. A payload that names a policy table goes
    to the pipeline and is refused as over REST; one that names none goes to the empty shadow
    catalog (a real PostgreSQL on this host), whose reader role may not read files, open large
    objects or reach the network. Pass: the canary appears in no answer, no error and no audit
    record, no file changes, nothing connects to the listener, no budget is spent."""
    import psycopg

    from tests.wire.conftest import require_postgres

    from .wire_client import connect, wire_clients

    require_postgres()
    data_dir = privacy_gateway.services.settings.data_dir
    secret = canary["secret"]
    answered = refused = 0
    for host, port in wire_clients(privacy_gateway):
        before_files = _snapshot(canary["dir"], data_dir)  # after the wire made its TLS pair
        with (
            privacy_gateway.client() as c,
            connect(host, port, privacy_gateway.keys["analyst"]) as conn,
        ):
            spent_before = spent(c)
            for sql in _payloads(canary):
                try:
                    seen = repr(conn.execute(sql).fetchall())
                    answered += 1
                except psycopg.Error as exc:
                    seen = f"{exc} {exc.diag.message_detail} {exc.diag.message_hint}"
                    refused += 1
                assert secret not in seen, sql
            assert spent(c) == spent_before
    exported = "\n".join(str(rec) for rec in privacy_gateway.services.audit.export())
    assert secret not in exported
    assert _snapshot(canary["dir"], data_dir) == before_files
    assert _connections(listener) == 0, "a payload reached the network"
    record("sandbox", door="wire", payloads=answered + refused, refused=refused, canary_leaks=0)
