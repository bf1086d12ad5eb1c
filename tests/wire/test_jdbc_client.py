"""The pgjdbc harness (tests/wire/jdbc_client.py) against the real PostgreSQL on 127.0.0.1:5432, so
that when it drives privgate's wire endpoint, a failure means the endpoint, not the harness.

Skips when the driver jar, a JDK or PostgreSQL is missing, except in CI (CI=true), where that fails.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.wire.jdbc_client import (
    WireCheckError,
    compile_wirecheck,
    java_tools,
    jdbc_jar,
    run_wirecheck,
)

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"

# Exercises the hand-written JSON escaping: quotes, backslash, control characters, non-BMP.
TRICKY = 'O\'Brien "Q" \\ back\nnew\ttab\x01ctl \u2028 é 😀'


@pytest.fixture(scope="module")
def wirecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with WireCheck compiled against the pgjdbc jar."""
    missing = []
    if jdbc_jar() is None:
        missing.append(
            "the pgjdbc jar (apt-get install libpostgresql-jdbc-java, or PRIVGATE_JDBC_JAR)"
        )
    if java_tools() is None:
        missing.append("a JDK (javac and java)")
    if missing:
        message = "JDBC harness needs " + " and ".join(missing)
        if in_ci():
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("wirecheck")
    compile_wirecheck(out)
    compile_wirecheck(out)  # the second call finds the class up to date
    return out


@pytest.fixture
def pg_db(pg_database: str) -> str:
    """A fresh database with two tables in public, plus objects getTables must not list."""
    import psycopg

    name = pg_database.rsplit("/", 1)[1]
    with psycopg.connect(
        f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}", autocommit=True
    ) as c:
        c.execute(
            "CREATE TABLE patients (id integer PRIMARY KEY, name text, zip varchar(5),"
            " born date, score numeric(5,2))"
        )
        c.execute("CREATE TABLE visits (patient_id bigint, at timestamptz, cost double precision)")
        c.execute("CREATE VIEW patient_names AS SELECT name FROM patients")
        c.execute("CREATE SCHEMA other")
        c.execute("CREATE TABLE other.hidden (x int)")
        c.execute(
            "INSERT INTO patients VALUES (1, %s, '12345', '1980-01-02', 1.5),"
            " (2, 'Bob', '12345', '1990-03-04', 2.25), (3, 'Cy', '99999', NULL, NULL),"
            " (4, NULL, '12345', NULL, 7)",
            (TRICKY,),
        )
    return name


def _run(out: Path, database: str, **overrides: object) -> dict:
    kwargs: dict = {
        "host": PG_HOST,
        "port": PG_PORT,
        "database": database,
        "user": PG_USER,
        "password": "unused-with-trust-auth",
        "ssl": False,
        "sql_with_param": "SELECT id, name, score, born FROM patients WHERE zip = ? ORDER BY id",
        "param": "12345",
        "bad_sql": "SELECT * FROM no_such_table",
    }
    kwargs.update(overrides)
    return run_wirecheck(out, **kwargs)


def test_catalog_prepared_statement_and_error(wirecheck: Path, pg_db: str) -> None:
    r = _run(wirecheck, pg_db)

    assert r["connected"] is True
    assert r["driver_version"].startswith("42.")
    assert r["database_product_name"] == "PostgreSQL"
    assert r["database_product_version"].split(".")[0].isdigit()

    # getTables(public, TABLE): base tables of public only, not the view or other schemas
    assert r["tables"] == ["patients", "visits"]
    assert r["columns"] == {
        "patients": [
            ["id", "int4"],
            ["name", "text"],
            ["zip", "varchar"],
            ["born", "date"],
            ["score", "numeric"],
        ],
        "visits": [["patient_id", "int8"], ["at", "timestamptz"], ["cost", "float8"]],
    }

    # the prepared statement, run 6 times; the last runs are named statements in binary format
    assert r["runs"] == 6
    assert r["column_types"] == [
        ["id", "int4"],
        ["name", "text"],
        ["score", "numeric"],
        ["born", "date"],
    ]
    expected = [
        ["1", TRICKY, "1.50", "1980-01-02"],
        ["2", "Bob", "2.25", "1990-03-04"],
        ["4", None, "7.00", None],
    ]
    assert r["rows"] == expected
    assert r["rows_last"] == expected

    assert r["bad_sqlstate"] == "42P01"
    assert "no_such_table" in r["bad_message"]
    assert r["after_error_ok"] is True


def test_parameter_is_sent_as_a_value_not_spliced(wirecheck: Path, pg_db: str) -> None:
    r = _run(
        wirecheck,
        pg_db,
        sql_with_param="SELECT ?::text AS echoed, 42 AS n",
        param="x' OR '1'='1",
        bad_sql="SELECT 1/0",
    )
    assert r["rows"] == r["rows_last"] == [["x' OR '1'='1", "42"]]
    assert r["column_types"] == [["echoed", "text"], ["n", "int4"]]
    assert r["bad_sqlstate"] == "22012"  # division_by_zero
    assert r["after_error_ok"] is True


def test_trace_shows_the_protocol(wirecheck: Path, pg_db: str) -> None:
    r = _run(wirecheck, pg_db, trace=True)
    trace = r["trace"]
    assert "FE=> StartupPacket" in trace
    assert 'Parse(stmt=S_1,query="SELECT id, name' in trace  # named after prepareThreshold
    assert r["rows"] == r["rows_last"]


def test_connect_failure_is_reported_not_raised(wirecheck: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind((PG_HOST, 0))
        port = s.getsockname()[1]
    r = _run(wirecheck, "test", port=port)
    assert r["connected"] is False
    assert r["sqlstate"] == "08001"  # sqlclient_unable_to_establish_sqlconnection
    assert r["message"]


def test_ssl_against_a_server_without_ssl(wirecheck: Path, pg_db: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_db}") as c:
        ssl_on = c.execute("SHOW ssl").fetchone() == ("on",)
    r = _run(wirecheck, pg_db, ssl=True)
    if ssl_on:  # sslmode=require with the non-validating factory accepts any certificate
        assert r["connected"] is True
    else:
        assert r == {
            "connected": False,
            "sqlstate": "08004",
            "message": "The server does not support SSL.",
        }


def test_bad_input_raises_with_stderr(wirecheck: Path) -> None:
    with pytest.raises(WireCheckError, match="port"):
        _run(wirecheck, "test", port="not-a-number")
