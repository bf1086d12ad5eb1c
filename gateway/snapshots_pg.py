"""Bounded snapshots on a PostgreSQL warehouse: per protected table, a contribution-bounded copy
in a gateway schema, built once per data version (docs/operations.md#postgresql-warehouse).

The copy keeps, per unit, the rows the per-query form would keep — the same keyed ranking
(``rewriter.rules.bound_and_emit._rank`` for PostgreSQL: ``md5(salt || ROW(…)::text)``) over the
unit's rows of the whole table — without the policy's blocked columns. A snapshot is one schema,
``privgate_b_<source version>_<spec>``, created in **one transaction** with its tables, the
reader role's SELECT grants and a manifest table: DDL is transactional in PostgreSQL, so a crash
leaves either a complete snapshot or none. The builder connects with its own role
(``PRIVGATE_WAREHOUSE_SNAPSHOT_URL``), which may create schemas; the query role only reads them.
The salt is a transaction-local setting, never part of the SQL text.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from gateway.snapshots import Progress, SnapshotManifest, snapshot_spec
from rewriter.catalog import Catalog
from rewriter.rules.bound_and_emit import _rank, precomputed_sums
from rewriter.rules.check_where import base_column

PREFIX = "privgate_b_"
_MANIFEST = "__privgate_manifest"
_SAFE = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True, slots=True)
class PgSnapshotInfo(SnapshotManifest):
    """A built snapshot schema, as its manifest table records it."""

    schema: str

    @property
    def name(self) -> str:
        return self.schema


def _dsn(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` → ``postgresql://``)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def schema_name(source_version: str, spec: str) -> str:
    return _SAFE.sub("_", f"{PREFIX}{source_version[-12:]}_{spec[:12]}".lower())[:63]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def find_pg_snapshot(writer_url: str, source_version: str, spec: str) -> PgSnapshotInfo | None:
    schema = schema_name(source_version, spec)
    with psycopg.connect(_dsn(writer_url), autocommit=True) as con:
        row = con.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, _MANIFEST),
        ).fetchone()
        if row is None:
            return None
        (text,) = con.execute(f"SELECT manifest FROM {_ident(schema)}.{_MANIFEST}").fetchone() or (
            None,
        )
    if text is None:
        return None
    data = json.loads(text)
    return PgSnapshotInfo(schema=schema, **data)


def build_pg_snapshot(
    *,
    writer_url: str,
    reader_role: str,
    source_schema: str,
    source_version: str,
    catalog: Catalog,
    salt: bytes,
    progress: Progress | None = None,
) -> PgSnapshotInfo:
    """Build the snapshot of ``source_schema`` for ``catalog``, or raise (nothing is left)."""
    say = progress or (lambda _msg: None)
    spec, plan = snapshot_spec(catalog, salt)
    schema = schema_name(source_version, spec)
    started = time.perf_counter()
    tables: dict[str, dict[str, Any]] = {}
    protected = {name: k for name, k in plan.items() if k is not None}
    with psycopg.connect(_dsn(writer_url)) as con:  # one transaction: all or nothing
        con.execute("SELECT set_config('privgate.p1', %s, true)", (salt.decode(),))
        con.execute(f"DROP SCHEMA IF EXISTS {_ident(schema)} CASCADE")
        con.execute(f"CREATE SCHEMA {_ident(schema)}")
        for i, (name, k) in enumerate(sorted(protected.items()), start=1):
            table = catalog.tables[name.lower()]
            say(f"bounded snapshot: table {i}/{len(protected)} {name} (at most {k} rows per unit)")
            unit = table.columns[catalog.datasets[table.dataset].privacy_unit.lower()]
            unit_sql = base_column(unit).sql(dialect="postgres")
            every = [base_column(c).sql(dialect="postgres") for c in table.columns.values()]
            kept = ", ".join(_ident(c.name) for c in table.visible_columns())
            sums = precomputed_sums(table, "postgres")
            terms = "".join(f", {sql} AS {_ident(name)}" for name, sql in sums.items())
            source = f"{_ident(source_schema)}.{_ident(table.name)}"
            con.execute(
                f"CREATE TABLE {_ident(schema)}.{_ident(table.name)} AS SELECT {kept}{terms} "
                f"FROM (SELECT __pg_t.*, {_rank(unit_sql, every, 'postgres')} AS __pg_rank "
                f"FROM {source} AS __pg_t WHERE {unit_sql} IS NOT NULL) AS __pg_t "
                f"WHERE __pg_rank <= {int(k)}"
            )
            con.execute(f"ANALYZE {_ident(schema)}.{_ident(table.name)}")
            rows = con.execute(f"SELECT count(*) FROM {_ident(schema)}.{_ident(table.name)}")
            tables[table.name] = {
                "max_rows_per_unit": k,
                "rows": int(rows.fetchone()[0]),  # type: ignore[index]
                "precomputed": sorted(sums),
            }
        info = PgSnapshotInfo(
            schema=schema,
            source_version=source_version,
            spec=spec,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - started, 3),
            tables=tables,
        )
        manifest = {k: v for k, v in info.as_json().items() if k not in ("name", "data_version")}
        con.execute(f"CREATE TABLE {_ident(schema)}.{_MANIFEST} (manifest text NOT NULL)")
        con.execute(
            f"INSERT INTO {_ident(schema)}.{_MANIFEST} VALUES (%s)", (json.dumps(manifest),)
        )
        con.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(reader_role)}")
        con.execute(
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {_ident(schema)} TO {_ident(reader_role)}"
        )
    say(f"bounded snapshot: {schema} built in {info.seconds:.1f} s")
    return info


def remove_other_pg_snapshots(writer_url: str, keep: str) -> list[str]:
    """Drop every snapshot schema but ``keep`` (waits for queries still reading one)."""
    with psycopg.connect(_dsn(writer_url), autocommit=True) as con:
        names = [
            str(r[0])
            for r in con.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (PREFIX,)
            )
        ]
        dropped = []
        for name in names:
            if name != keep:
                con.execute(f"DROP SCHEMA {_ident(name)} CASCADE")
                dropped.append(name)
    return dropped
