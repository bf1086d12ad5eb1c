"""A PostgreSQL copy of a DuckDB warehouse, read through a least-privileged role.

Used by the tests that run the same accepted queries on DuckDB and on PostgreSQL. The local
server (127.0.0.1:5432, trust auth) must be reachable; without it the tests skip, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, in_ci

_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "SMALLINT": "smallint",
    "TINYINT": "smallint",
    "DOUBLE": "double precision",
    "FLOAT": "real",
    "VARCHAR": "text",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "BOOLEAN": "boolean",
}


@dataclass(frozen=True)
class PgWarehouse:
    #: Superuser URL of the database (psycopg form), for the tests' own reference queries.
    admin_dsn: str
    #: The reader role's SQLAlchemy URL, as privgate is configured with it.
    reader_url: str
    reader: str
    database: str


def pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL at 127.0.0.1:5432: {exc}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable: {exc}")


def copy_tables(
    source: duckdb.DuckDBPyConnection, target: psycopg.Connection, tables: Sequence[str]
) -> None:
    """Create each table in ``target`` with the same columns, order and rows as in ``source``."""
    for table in tables:
        columns = source.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = 'main' "
            "AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        ddl = ", ".join(f'"{name}" {_TYPES[str(kind)]}' for name, kind in columns)
        target.execute(f'CREATE TABLE "{table}" ({ddl})')
        names = ", ".join(f'"{name}"' for name, _ in columns)
        rows = source.execute(f'SELECT {names} FROM main."{table}"').fetchall()
        with target.cursor() as cur, cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        target.execute(f'ANALYZE "{table}"')


def in_memory_copy(path: Path, tables: Sequence[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding ``tables`` of the file at ``path``.

    Read through ATTACH, so it works while other connections hold the file with another
    configuration (``duckdb.connect`` refuses that).
    """
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
    for table in tables:
        con.execute(f'CREATE TABLE main."{table}" AS SELECT * FROM src."{table}"')
    con.execute("DETACH src")
    return con


@contextmanager
def pg_warehouse(
    source: duckdb.DuckDBPyConnection,
    tables: Sequence[str],
    copied: Callable[[], None] | None = None,
) -> Iterator[PgWarehouse]:
    """A fresh database holding ``tables`` of ``source``, a reader role with SELECT on them only,
    both dropped afterwards. ``copied`` runs once the rows are copied (to close ``source``)."""
    tag = uuid.uuid4().hex[:10]
    database, reader = f"privgate_wh_{tag}", f"privgate_reader_{tag}"
    admin = pg_admin()
    with admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        admin.execute(f"CREATE ROLE {reader} LOGIN")
        dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
        try:
            with psycopg.connect(dsn, autocommit=True) as con:
                con.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                copy_tables(source, con, tables)
                con.execute(f"GRANT USAGE ON SCHEMA public TO {reader}")
                con.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")
            if copied is not None:
                copied()
            yield PgWarehouse(
                admin_dsn=dsn,
                reader_url=f"postgresql+psycopg://{reader}@127.0.0.1:5432/{database}",
                reader=reader,
                database=database,
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f"DROP ROLE IF EXISTS {reader}")
