"""Bounded snapshots on a Spark SQL warehouse: per protected table, a contribution-bounded copy in
a gateway database of the catalog, built once per data version (docs/operations.md#spark-warehouse).

The copy keeps, per unit, the rows the per-query form would keep — the same keyed ranking
(``rewriter.rules.bound_and_emit._rank`` for Spark: ``xxhash64(salt, xxhash64(col)…)``) over the
unit's rows of the whole table — without the policy's blocked columns. A snapshot is one
database, ``privgate_b_<source version>_<spec>``, holding the bounded tables and a manifest table.
Spark has no transactional DDL, so the manifest is written **last**: a database without one (a
crashed build) is never served, and the next build drops and rebuilds it. The salt is bound as a
``?`` parameter (``spark.sql(…, args=[salt])``), never part of the SQL text.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession
from sqlglot import exp

from gateway.snapshots import Progress, SnapshotManifest, snapshot_spec
from rewriter.catalog import Catalog
from rewriter.rules.bound_and_emit import _rank, precomputed_sums
from rewriter.rules.check_where import base_column

if TYPE_CHECKING:
    from gateway.warehouse_spark import SparkWarehouse

PREFIX = "privgate_b_"
#: The manifest table of a snapshot database (no leading underscore: Spark's file listing hides
#: directories whose names start with one).
MANIFEST = "privgate_manifest"
_SAFE = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True, slots=True)
class SparkSnapshotInfo(SnapshotManifest):
    """A built snapshot database, as its manifest table records it."""

    database: str

    @property
    def name(self) -> str:
        return self.database


def database_name(source_version: str, spec: str) -> str:
    """``privgate_b_<end of the source version>_<start of the spec>``, lower-case, [a-z0-9_]."""
    return _SAFE.sub("_", f"{PREFIX}{source_version[-12:]}_{spec[:12]}".lower())[:128]


def _ident(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="spark")


def _qualified(database: str, table: str) -> str:
    return f"{_ident(database)}.{_ident(table)}"


def find_spark_snapshot(
    spark: SparkSession, source_version: str, spec: str
) -> SparkSnapshotInfo | None:
    """The complete snapshot built from exactly this source and spec, if there is one: its
    database holds a manifest table (written last) that names this source and spec."""
    database = database_name(source_version, spec)
    if not spark.catalog.databaseExists(database):
        return None
    if not spark.catalog.tableExists(_qualified(database, MANIFEST)):
        return None  # a build that did not finish
    rows = spark.table(_qualified(database, MANIFEST)).collect()
    if len(rows) != 1:
        return None
    try:
        data = json.loads(rows[0][0])
        info = SparkSnapshotInfo(
            database=database,
            source_version=str(data["source_version"]),
            spec=str(data["spec"]),
            built_at=str(data["built_at"]),
            seconds=float(data["seconds"]),
            tables=data["tables"],
        )
    except (ValueError, KeyError, TypeError):
        return None
    if (info.source_version, info.spec) != (source_version, spec):
        return None  # another build that happens to share the (shortened) name
    return info


def build_spark_snapshot(
    *,
    warehouse: SparkWarehouse,
    catalog: Catalog,
    salt: bytes,
    source_version: str,
    progress: Progress | None = None,
) -> SparkSnapshotInfo:
    """Build the snapshot of ``warehouse``'s database for ``catalog``, or raise.

    A failed build leaves a database without manifest, which is never served and is dropped by
    the next build (or by :func:`remove_other_spark_snapshots`).
    """
    say = progress or (lambda _msg: None)
    spark = warehouse.session
    spec, plan = snapshot_spec(catalog, salt)
    database = database_name(source_version, spec)
    protected = {name: k for name, k in plan.items() if k is not None}
    if any(name.lower() == MANIFEST for name in plan):
        raise ValueError(f"a policy table may not be named {MANIFEST} on Spark")
    started = time.perf_counter()
    tables: dict[str, dict[str, Any]] = {}
    spark.sql(f"DROP DATABASE IF EXISTS {_ident(database)} CASCADE")
    spark.sql(f"CREATE DATABASE {_ident(database)} COMMENT {_comment(warehouse.database)}")
    for i, (name, k) in enumerate(sorted(protected.items()), start=1):
        table = catalog.tables[name.lower()]
        say(f"bounded snapshot: table {i}/{len(protected)} {name} (at most {k} rows per unit)")
        t0 = time.perf_counter()
        unit = table.columns[catalog.datasets[table.dataset].privacy_unit.lower()]
        unit_sql = base_column(unit).sql(dialect="spark")
        every = [base_column(c).sql(dialect="spark") for c in table.columns.values()]
        # Blocked columns served only the ranking: the copy leaves them out.
        kept = ", ".join(_ident(c.name) for c in table.visible_columns())
        sums = precomputed_sums(table, "spark")
        terms = "".join(f", {sql} AS {_ident(name)}" for name, sql in sums.items())
        source = _qualified(warehouse.database, table.name)
        target = _qualified(database, table.name)
        select = (
            f"SELECT {kept}{terms} FROM (SELECT __pg_t.*, {_rank(unit_sql, every, 'spark')} "
            f"AS __pg_rank FROM {source} AS __pg_t WHERE {unit_sql} IS NOT NULL) AS __pg_t "
            f"WHERE __pg_rank <= {int(k)}"
        )
        spark.sql(select, args=[salt.decode()]).write.saveAsTable(target)
        rows = spark.table(target).count()
        tables[table.name] = {
            "max_rows_per_unit": k,
            "rows": int(rows),
            "precomputed": sorted(sums),
        }
        # Row counts go to the manifest (admins only), not to the log.
        say(f"bounded snapshot: {name} done in {time.perf_counter() - t0:.1f} s")
    info = SparkSnapshotInfo(
        database=database,
        source_version=source_version,
        spec=spec,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 3),
        tables=tables,
    )
    manifest = {k: v for k, v in info.as_json().items() if k not in ("name", "data_version")}
    # The manifest last: its presence means "complete".
    spark.createDataFrame([(json.dumps(manifest),)], "manifest string").coalesce(
        1
    ).write.saveAsTable(_qualified(database, MANIFEST))
    say(f"bounded snapshot: {database} built in {info.seconds:.1f} s")
    return info


def remove_other_spark_snapshots(spark: SparkSession, keep: str, *, source: str) -> list[str]:
    """Drop every snapshot database of the ``source`` database but ``keep`` (a query still
    reading one then fails). Snapshots of other source databases — other gateways sharing the
    catalog — are left alone: each snapshot database's comment names its source."""
    mine = _description(source)
    dropped = []
    for db in spark.catalog.listDatabases():
        name = str(db.name)
        if name.startswith(PREFIX) and name != keep and (db.description or "") == mine:
            spark.sql(f"DROP DATABASE IF EXISTS {_ident(name)} CASCADE")
            dropped.append(name)
    return dropped


def _description(source: str) -> str:
    return f"privgate bounded snapshot of {source.lower()}"


def _comment(source: str) -> str:
    return exp.Literal.string(_description(source)).sql(dialect="spark")
