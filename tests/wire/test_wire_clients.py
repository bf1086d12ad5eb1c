"""Real clients against the wire endpoint: pgjdbc (Java), psql and SQLAlchemy.

Skips when a client is missing, except in CI (CI=true), where that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import in_ci
from tests.wire.conftest import Wire
from tests.wire.jdbc_client import compile_wirecheck, java_tools, jdbc_jar, run_wirecheck

ALLOWED_VISITS = ["visit_id", "patient_id", "department", "visit_day", "cost", "los_days"]


def _missing(what: str) -> None:
    if in_ci():
        pytest.fail(f"CI: the wire client tests need {what}")
    pytest.skip(f"the wire client tests need {what}")


@pytest.fixture(scope="module")
def wirecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if jdbc_jar() is None:
        _missing("the pgjdbc jar (apt-get install libpostgresql-jdbc-java, or PRIVGATE_JDBC_JAR)")
    if java_tools() is None:
        _missing("a JDK (javac and java)")
    out = tmp_path_factory.mktemp("wirecheck")
    compile_wirecheck(out)
    return out


def _jdbc(wirecheck: Path, wire: Wire, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "host": wire.host,
        "port": wire.port,
        "database": "clinic",
        "user": "analyst",
        "password": wire.keys["analyst"],
        "ssl": True,
        "sql_with_param": "SELECT COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits "
        "WHERE department = ?",
        "param": "cardiology",
        "bad_sql": "SELECT * FROM visits",
    }
    args.update(kw)
    return run_wirecheck(wirecheck, **args)  # type: ignore[arg-type]


def test_jdbc_over_tls_metadata_prepared_statement_and_errors(wirecheck: Path, wire: Wire) -> None:
    out = _jdbc(wirecheck, wire)
    assert out["connected"] is True, out
    assert out["tables"] == ["departments", "patients", "visits"]
    columns = out["columns"]
    assert isinstance(columns, dict)
    assert [c[0] for c in columns["visits"]] == ALLOWED_VISITS  # diagnosis (blocked) absent
    assert [c[0] for c in columns["patients"]] == [
        "patient_id",
        "email",
        "sex",
        "birth_year",
        "zip3",
        "insurance",
    ]  # ssn and name (blocked) absent
    assert out["column_types"] == [["n", "int8"], ["avg_cost", "float8"]]
    rows = out["rows"]
    assert isinstance(rows, list) and len(rows) == 1 and int(rows[0][0]) > 0
    assert out["rows_last"] == rows  # runs 2-6 (named, then binary) replay the stored answer
    assert out["bad_sqlstate"] == "42501"
    assert out["after_error_ok"] is True


def test_jdbc_refuses_a_wrong_password_and_plain_connections(wirecheck: Path, wire: Wire) -> None:
    wrong = _jdbc(wirecheck, wire, password="pgk_00000000_" + "B" * 43)
    assert wrong["connected"] is False and wrong["sqlstate"] == "28P01", wrong
    unknown = _jdbc(wirecheck, wire, user="mallory")
    assert unknown["connected"] is False and unknown["sqlstate"] == "28P01", unknown
    plain = _jdbc(wirecheck, wire, ssl=False, props={"sslmode": "disable"})
    assert plain["connected"] is False and plain["sqlstate"] == "28000", plain


def _psql(wire: Wire, *args: str) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    if psql is None:
        _missing("psql (apt-get install postgresql-client)")
    env = {
        **os.environ,
        "PGHOST": wire.host,
        "PGPORT": str(wire.port),
        "PGUSER": "analyst",
        "PGPASSWORD": wire.keys["analyst"],
        "PGDATABASE": "clinic",
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "10",
    }
    return subprocess.run(
        [str(psql), "-X", "-v", "ON_ERROR_STOP=0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_psql_lists_describes_queries_and_reports_sqlstates(wire: Wire) -> None:
    dt = _psql(wire, "-c", r"\dt")
    assert dt.returncode == 0, dt.stderr
    for table in ("departments", "patients", "visits"):
        assert table in dt.stdout
    d = _psql(wire, "-c", r"\d visits")
    assert d.returncode == 0, d.stderr
    for col in ALLOWED_VISITS:
        assert col in d.stdout
    assert "diagnosis" not in d.stdout
    q = _psql(wire, "-c", "SELECT department, COUNT(*) AS n FROM visits GROUP BY department")
    assert q.returncode == 0, q.stderr
    assert "(8 rows)" in q.stdout and "cardiology" in q.stdout
    assert "privgate: charged epsilon" in q.stderr  # the cost notice
    err = _psql(wire, "-v", "VERBOSITY=verbose", "-c", "SELECT ssn FROM patients")
    assert "ERROR:  42703" in err.stderr, err.stderr


def test_sqlalchemy_connects_reflects_and_runs_a_dp_query(wire: Wire) -> None:
    url = sa.URL.create(
        "postgresql+psycopg",
        username="analyst",
        password=wire.keys["analyst"],
        host=wire.host,
        port=wire.port,
        database="clinic",
        query={"sslmode": "require"},
    )
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        assert sorted(inspector.get_table_names()) == ["departments", "patients", "visits"]
        assert [c["name"] for c in inspector.get_columns("visits")] == ALLOWED_VISITS
        meta = sa.MetaData()
        visits = sa.Table("visits", meta, autoload_with=engine)
        assert "diagnosis" not in visits.c
        stmt = (
            sa.select(visits.c.department, sa.func.count().label("n"))
            .where(visits.c.cost > 100)
            .group_by(visits.c.department)
        )
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        assert len(rows) == 8 and all(isinstance(r.n, int) for r in rows)
    finally:
        engine.dispose()
