"""Bounded snapshots on Spark (PySpark in local mode): at most K rows per unit, a unit's kept rows
depend only on its own rows, the same exact aggregates as per-query bounding with the same key,
a database without manifest (a crashed build) never served, and the gateway serving from one.

Reuses the Spark session and the corpus data of tests/test_warehouse_spark.py (and its skip/CI
logic: without pyspark or Java this module skips, except in CI, where it fails).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_warehouse_spark import (  # the module-scoped fixtures: one session here too
    CORPUS,
    KEY_QUERIES,
    Clinic,
    K,
    _plan,
    clinic,  # noqa: F401
    spark,  # noqa: F401
)

# isort: split
from pyspark.sql import SparkSession

from gateway.errors import InternalError
from gateway.snapshots import snapshot_spec
from gateway.snapshots_spark import (
    MANIFEST,
    SparkSnapshotInfo,
    build_spark_snapshot,
    database_name,
    find_spark_snapshot,
    remove_other_spark_snapshots,
)
from gateway.warehouse_spark import SparkWarehouse, _qualify
from rewriter.catalog import build_catalog
from rewriter.policy import Policy
from tests.corpus.exact import exact_rows
from tests.corpus.test_corpus import ACCEPTED, Case, _same
from tests.test_differential import SALT, _policy_document

KEY = SALT.encode()


def _build(warehouse: SparkWarehouse, c: Clinic, version: str | None = None) -> SparkSnapshotInfo:
    return build_spark_snapshot(
        warehouse=warehouse,
        catalog=c.catalog,
        salt=KEY,
        source_version=version or warehouse.source_version(),
    )


@pytest.fixture(scope="module")
def snapshot(clinic: Clinic) -> SparkSnapshotInfo:  # noqa: F811
    return _build(clinic.raw, clinic)


@pytest.fixture(scope="module")
def served(
    spark: SparkSession,  # noqa: F811
    snapshot: SparkSnapshotInfo,
) -> Iterator[SparkWarehouse]:
    """The unbounded source ``clinic_raw`` with the snapshot serving."""
    w = SparkWarehouse(spark, database="clinic_raw", timeout_s=120.0)
    w.use_snapshot(snapshot)
    yield w
    w.close()


def _kept(spark: SparkSession, database: str, units: list[int]) -> dict[int, set[int]]:  # noqa: F811
    out: dict[int, set[int]] = {}
    rows = spark.sql(
        f"SELECT patient_id, visit_id FROM {database}.visits WHERE patient_id IN "
        f"({', '.join(str(u) for u in units)})"
    ).collect()
    for pid, vid in rows:
        out.setdefault(int(pid), set()).add(int(vid))
    return out


# -- (a) what a snapshot keeps -----------------------------------------------------------------


def test_at_most_k_rows_per_unit_and_no_blocked_column(
    spark: SparkSession,  # noqa: F811
    clinic: Clinic,  # noqa: F811
    snapshot: SparkSnapshotInfo,
) -> None:
    assert snapshot.database.startswith("privgate_b_") and snapshot.bounded() == {
        "visits": K,
        "patients": K,
    }
    assert find_spark_snapshot(spark, clinic.raw.source_version(), snapshot.spec) == snapshot
    db = snapshot.database
    kept = dict(spark.sql(f"SELECT patient_id, count(*) FROM {db}.visits GROUP BY 1").collect())
    source = dict(
        spark.sql(
            "SELECT patient_id, count(*) FROM clinic_raw.visits WHERE patient_id IS NOT NULL "
            "GROUP BY 1"
        ).collect()
    )
    assert kept == {u: min(n, K) for u, n in source.items()}  # exactly min(n, K) per unit
    assert sum(1 for n in source.values() if n > K) > 10  # the bound really cuts
    assert snapshot.tables["visits"]["rows"] == sum(kept.values())
    columns = [c.name for c in spark.catalog.listColumns(f"{db}.patients")]
    patients = clinic.catalog.tables["patients"]
    assert columns == [c.name for c in patients.visible_columns()]
    assert not set(columns) & {"ssn", "name"}  # blocked: never copied
    assert {t.name for t in spark.catalog.listTables(db)} == {"visits", "patients", MANIFEST}


def test_the_salt_is_never_in_the_sql_text(clinic: Clinic) -> None:  # noqa: F811
    captured: list[str] = []
    real = clinic.raw.session.sql

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(clinic.raw.session, name)

        def sql(self, text: str, *args: Any, **kwargs: Any) -> Any:
            captured.append(text)
            return real(text, *args, **kwargs)

    class Wrapped:
        database = clinic.raw.database
        session = Spy()

    _build(Wrapped(), clinic, version="spark-salttest00000")  # type: ignore[arg-type]
    assert captured and not any(SALT in text for text in captured)
    assert any("xxhash64(?" in text for text in captured)
    clinic.spark.sql(f"DROP DATABASE {database_name('spark-salttest00000', _spec(clinic))} CASCADE")


def _spec(c: Clinic) -> str:
    return snapshot_spec(c.catalog, KEY)[0]


# -- (b) a unit's kept rows are its own business -------------------------------------------------


def test_kept_rows_depend_only_on_the_units_own_rows(
    spark: SparkSession,  # noqa: F811
    clinic: Clinic,  # noqa: F811
    snapshot: SparkSnapshotInfo,
) -> None:
    heavy = spark.sql(
        f"SELECT patient_id FROM clinic_raw.visits WHERE patient_id IS NOT NULL GROUP BY 1 "
        f"HAVING count(*) > {K} ORDER BY 1 LIMIT 20"
    ).collect()
    watched = [int(r[0]) for r in heavy]
    assert len(watched) == 20
    assert not _kept(spark, "clinic_raw", [987_654_321])  # the new patient is new
    # The watched patients, a third of everyone else, and a new heavy patient: other units come
    # and go, written in another order over more files.
    raw = spark.table("clinic_raw.visits")
    new = [
        (30_000_000 + i, 987_654_321, "er", dt.date(2024, 1, 2), 10.0, 1, "n") for i in range(40)
    ]
    spark.sql("CREATE DATABASE IF NOT EXISTS clinic_sub")
    kept_src = raw.where(
        f"patient_id IN ({', '.join(map(str, watched))}) OR patient_id % 3 = 0"
    ).orderBy(raw.visit_id.desc())
    spark.createDataFrame(new, schema=raw.schema).unionByName(kept_src).repartition(4).write.mode(
        "overwrite"
    ).saveAsTable("clinic_sub.visits")
    spark.table("clinic_raw.patients").write.mode("overwrite").saveAsTable("clinic_sub.patients")
    sub = SparkWarehouse(spark, database="clinic_sub", timeout_s=120.0)
    try:
        other = _build(sub, clinic)
    finally:
        sub.close()
    assert other.database != snapshot.database
    full, part = _kept(spark, snapshot.database, watched), _kept(spark, other.database, watched)
    assert full == part
    assert all(len(v) == K for v in full.values())
    assert len(_kept(spark, other.database, [987_654_321])[987_654_321]) == K


# -- (c) the same exact aggregates as per-query bounding -----------------------------------------


def _without_where() -> list[Case]:
    """Every other query of the Spark corpus that has no WHERE: with one, the snapshot chooses a
    unit's K rows before the filter and per-query bounding after it (docs/privacy-model.md)."""
    return [c for c in CORPUS if " where " not in c.sql.lower()][::2]


SAME = _without_where()


def test_the_compared_queries_are_representative() -> None:
    assert len(SAME) >= 25
    sql = " ".join(c.sql for c in SAME)
    for part in ("JOIN patients", "JOIN departments", "FROM patients", "HAVING", "PERCENTILE_CONT"):
        assert part in sql, part


@pytest.mark.parametrize("case", SAME, ids=[c.id for c in SAME])
def test_snapshot_gives_the_per_query_aggregates(
    clinic: Clinic,  # noqa: F811
    served: SparkWarehouse,
    case: Case,
) -> None:
    per_query = _plan(clinic.catalog, case.sql, "spark", {})
    assert per_query.parameters and set(per_query.parameters) == {"salt"}
    # With parameters: bounded per query on the source, even while the snapshot serves.
    want = exact_rows(
        per_query, served.execute(per_query.warehouse_sql, [SALT] * len(per_query.parameters))
    )
    snap = _plan(clinic.catalog, case.sql, "spark", dict(served.prebounded()), served.precomputed())
    assert snap.parameters == () and "ROW_NUMBER" not in snap.warehouse_sql
    got = exact_rows(snap, served.execute(snap.warehouse_sql, []))
    _same(snap, got, want)
    assert got


def test_the_compared_queries_sum_stored_terms() -> None:
    """Some compared single-table queries sum a snapshot's stored fixed-point terms."""
    assert any(re.search(r"(SUM|AVG)\((cost|los_days)\)", c.sql) for c in SAME)


def test_a_sum_reads_the_stored_term(clinic: Clinic, served: SparkWarehouse) -> None:  # noqa: F811
    sql = "SELECT department, SUM(cost) AS s, AVG(los_days) AS a FROM visits GROUP BY department"
    snap = _plan(clinic.catalog, sql, "spark", dict(served.prebounded()), served.precomputed())
    assert snap.warehouse_sql.count("__pg_sum_") == 2
    per_query = _plan(clinic.catalog, sql, "spark", {})
    want = exact_rows(per_query, served.execute(per_query.warehouse_sql, [SALT]))
    _same(snap, exact_rows(snap, served.execute(snap.warehouse_sql, [])), want)


def test_qualifying_changes_nothing_but_the_table_references(clinic: Clinic) -> None:  # noqa: F811
    """The statement Spark runs on the snapshot is the rewriter's, byte for byte, plus the
    database of each table: for the whole accepted corpus and the generalising keys."""
    document = _policy_document()
    document["datasets"]["clinic"]["tables"]["visits"]["columns"]["cost"] = {"class": "dimension"}
    keyed = build_catalog(Policy.model_validate(document), clinic.raw.columns())
    bounded = {"visits": K, "patients": K}
    cases = [(clinic.catalog, c.sql) for c in ACCEPTED] + [(keyed, q) for q in KEY_QUERIES]
    for catalog, sql in cases:
        plan = _plan(catalog, sql, "spark", bounded)
        assert plan.parameters == (), sql
        out = _qualify(plan.warehouse_sql, "snap_db", bounded, "src_db")
        assert "`snap_db`." in out or "`src_db`." in out
        assert out.replace("`snap_db`.", "").replace("`src_db`.", "") == plan.warehouse_sql


def test_a_cte_named_like_a_bounded_table_is_refused() -> None:
    # Its body's reference to the real table would stay unqualified and read the source.
    sql = "WITH visits AS (SELECT * FROM visits) SELECT COUNT(*) FROM visits"
    with pytest.raises(InternalError):
        _qualify(sql, "snap_db", {"visits": K}, "src_db")


def test_statements_without_parameters_read_the_snapshot(
    clinic: Clinic,  # noqa: F811
    served: SparkWarehouse,
    snapshot: SparkSnapshotInfo,
) -> None:
    count = "SELECT COUNT(*) FROM visits"
    assert served.execute(count, []).rows == [(snapshot.tables["visits"]["rows"],)]
    source = clinic.raw.execute(count, []).rows[0][0]
    assert source > snapshot.tables["visits"]["rows"]
    # Public tables come from the source database (the snapshot has no copy of them).
    assert served.execute("SELECT COUNT(*) FROM departments", []).rows[0][0] > 0
    # A CTE named like a public table is the CTE; one named like a bounded table is refused
    # (a reference to the table in its own body would read the unbounded source).
    cte = "WITH departments AS (SELECT 1 AS a) SELECT COUNT(*) FROM departments"
    assert served.execute(cte, []).rows == [(1,)]
    with pytest.raises(InternalError):
        served.execute("WITH visits AS (SELECT 1 AS a) SELECT COUNT(*) FROM visits", [])
    # Names the rewriter never emits are refused rather than guessed at.
    for sql in ("SELECT COUNT(*) FROM clinic_raw.visits", "SELECT COUNT(*) FROM range(3)"):
        with pytest.raises(InternalError):
            served.execute(sql, [])
    assert served.session.catalog.currentDatabase() == "clinic_raw"
    assert served.data_version() == snapshot.data_version != served.source_version()
    assert clinic.raw.data_version() == served.source_version()


# -- (d) a crashed build --------------------------------------------------------------------------


def test_a_database_without_manifest_is_not_used_and_is_rebuilt(
    spark: SparkSession,  # noqa: F811
    clinic: Clinic,  # noqa: F811
) -> None:
    version = "spark-crashed00000000"
    spec = _spec(clinic)
    name = database_name(version, spec)
    spark.sql(f"CREATE DATABASE {name}")
    spark.range(100).selectExpr("id AS visit_id", "1 AS patient_id").write.saveAsTable(
        f"{name}.visits"
    )
    assert find_spark_snapshot(spark, version, spec) is None
    info = _build(clinic.raw, clinic, version=version)
    assert info.database == name and find_spark_snapshot(spark, version, spec) == info
    most = spark.sql(
        f"SELECT max(n) FROM (SELECT count(*) AS n FROM {name}.visits GROUP BY patient_id)"
    )
    assert most.collect()[0][0] == K
    # A manifest for another source or spec under the same name is not this snapshot either.
    assert find_spark_snapshot(spark, "other-" + version, spec) is None
    spark.sql(f"DROP DATABASE {name} CASCADE")


def test_other_snapshots_of_the_source_are_dropped_and_others_kept(
    spark: SparkSession,  # noqa: F811
    clinic: Clinic,  # noqa: F811
    snapshot: SparkSnapshotInfo,
) -> None:
    spare = _build(clinic.raw, clinic, version="spark-spare000000000")
    # Another gateway's snapshot (another source database), and a database merely named alike.
    spark.sql("CREATE DATABASE privgate_b_foreign COMMENT 'privgate bounded snapshot of elsewhere'")
    spark.sql("CREATE DATABASE privgate_b_lookalike")
    try:
        dropped = remove_other_spark_snapshots(spark, snapshot.database, source="clinic_raw")
        assert spare.database in dropped and snapshot.database not in dropped
        names = {d.name for d in spark.catalog.listDatabases()}
        assert snapshot.database in names and spare.database not in names
        assert {"privgate_b_foreign", "privgate_b_lookalike"} <= names
    finally:
        spark.sql("DROP DATABASE privgate_b_foreign")
        spark.sql("DROP DATABASE privgate_b_lookalike")


# -- (e) the gateway --------------------------------------------------------------------------------


def test_the_gateway_serves_from_the_spark_snapshot(
    spark: SparkSession,  # noqa: F811
    clinic: Clinic,  # noqa: F811
    snapshot: SparkSnapshotInfo,
    tmp_path: Path,
    demo_warehouse: Path,
) -> None:
    """Chosen by settings (PRIVGATE_WAREHOUSE_SPARK_MASTER): the snapshot is built at start.

    Last in the module: closing the gateway stops the shared session (getOrCreate reused it).
    """
    from tests.conftest import large_budget, start_gateway

    for gw in start_gateway(
        tmp_path,
        demo_warehouse,
        large_budget,
        warehouse_spark_master="local[1]",
        warehouse_spark_database="clinic_raw",
        statement_timeout_s=120,
    ):
        services = gw.services
        assert services.snapshots_enabled
        admin = {"Authorization": f"Bearer {gw.keys['admin']}"}
        with gw.client() as c:
            status = c.get("/v1/admin/snapshot", headers=admin).json()
            assert status["enabled"] and status["bounding"] == "snapshot", status
            assert not status["stale"], status
            serving = status["serving"]
            assert serving["name"].startswith("privgate_b_")
            assert services.warehouse.prebounded() == {"visits": K, "patients": K}
            r = c.post(
                "/v1/query",
                json={
                    "sql": "SELECT p.sex, COUNT(*) AS n, AVG(v.cost) FROM visits v "
                    "JOIN patients p ON v.patient_id = p.patient_id GROUP BY p.sex",
                    "epsilon": 1,
                },
            )
            assert r.status_code == 200, r.text
            assert sorted(row[0] for row in r.json()["rows"]) == ["F", "M"]
        assert services.warehouse.data_version() == serving["data_version"]
        # Found, not rebuilt, when asked again; the module's snapshot of clinic_raw (another
        # salt) was dropped when the gateway's was ready.
        again = services.refresh_snapshot()
        assert again.name == serving["name"] and again.built_at == serving["built_at"]
        names = {d.name for d in spark.catalog.listDatabases()}
        assert serving["name"] in names and snapshot.database not in names
