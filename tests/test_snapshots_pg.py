"""Bounded snapshots on PostgreSQL: at most K rows per unit, a unit's kept rows depend only on
its own rows, the same exact aggregates as per-query bounding, and served by the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.catalog_load import load_catalog
from gateway.policy_loader import load_policy
from gateway.snapshots_pg import build_pg_snapshot, find_pg_snapshot, remove_other_pg_snapshots
from gateway.warehouse_pg import PostgresWarehouse
from rewriter.catalog import Catalog
from rewriter.planner import PlanRequest, plan_query
from tests.conftest import Gateway, large_budget, start_gateway, write_policy
from tests.pg_helpers import PgWarehouse, in_memory_copy, pg_warehouse

SALT = b"pg-snapshot-salt"
K = 5


@pytest.fixture(scope="module")
def pg(demo_warehouse: Path) -> Iterator[PgWarehouse]:
    source = in_memory_copy(demo_warehouse, ("visits", "patients", "departments"))
    # The snapshot builder is the database owner here; in production, a role that may create
    # schemas (docs/operations.md#postgresql-warehouse).
    with pg_warehouse(source, ("visits", "patients", "departments"), lambda: source.close()) as m:
        yield m


@pytest.fixture(scope="module")
def warehouse(pg: PgWarehouse) -> Iterator[PostgresWarehouse]:
    w = PostgresWarehouse(pg.reader_url)
    yield w
    w.close()


@pytest.fixture(scope="module")
def catalog(warehouse: PostgresWarehouse, tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    path = write_policy(tmp_path_factory.mktemp("p") / "policy.yaml")
    return load_catalog(load_policy(path).policy, warehouse)


def writer(pg: PgWarehouse) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg.database}"


def _build(pg: PgWarehouse, warehouse: PostgresWarehouse, catalog: Catalog, schema: str = "public"):
    return build_pg_snapshot(
        writer_url=writer(pg),
        reader_role=warehouse.role,
        source_schema=schema,
        source_version=f"test-{schema}",
        catalog=catalog,
        salt=SALT,
    )


def test_at_most_k_rows_per_unit_and_no_blocked_column(
    pg: PgWarehouse, warehouse: PostgresWarehouse, catalog: Catalog
) -> None:
    info = _build(pg, warehouse, catalog)
    assert find_pg_snapshot(writer(pg), "test-public", info.spec) == info
    with psycopg.connect(pg.admin_dsn) as con:
        most = con.execute(
            f'SELECT max(n) FROM (SELECT patient_id, count(*) AS n FROM "{info.schema}".visits '
            "GROUP BY patient_id) t"
        ).fetchone()
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'patients'",
                (info.schema,),
            )
        ]
        heavy = con.execute(
            "SELECT count(*) FROM (SELECT patient_id FROM visits GROUP BY 1 HAVING count(*) > 5) t"
        ).fetchone()
    assert most == (K,) and heavy is not None and heavy[0] > 10
    assert "ssn" not in columns and "name" not in columns  # blocked: never copied


def test_kept_rows_depend_only_on_the_units_own_rows(
    pg: PgWarehouse, warehouse: PostgresWarehouse, catalog: Catalog
) -> None:
    full = _build(pg, warehouse, catalog)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as con:
        watched = [
            r[0]
            for r in con.execute(
                "SELECT patient_id FROM visits GROUP BY 1 HAVING count(*) > 5 ORDER BY 1 LIMIT 20"
            )
        ]
        con.execute("CREATE SCHEMA subset")
        # The watched patients, plus a third of everyone else: other units come and go.
        con.execute(
            "CREATE TABLE subset.visits AS SELECT * FROM visits WHERE patient_id = ANY(%s) "
            "OR patient_id %% 3 = 0 ORDER BY visit_id DESC",
            (watched,),
        )
        con.execute("CREATE TABLE subset.patients AS SELECT * FROM patients")
        con.execute("CREATE TABLE subset.departments AS SELECT * FROM departments")
        try:
            sub = _build(pg, warehouse, catalog, schema="subset")

            def kept(schema: str) -> dict[int, set[int]]:
                out: dict[int, set[int]] = {}
                for pid, vid in con.execute(
                    f'SELECT patient_id, visit_id FROM "{schema}".visits '
                    "WHERE patient_id = ANY(%s)",
                    (watched,),
                ):
                    out.setdefault(pid, set()).add(vid)
                return out

            assert kept(full.schema) == kept(sub.schema)
            assert all(len(v) == K for v in kept(full.schema).values())
        finally:
            con.execute("DROP SCHEMA subset CASCADE")


def test_snapshot_gives_the_per_query_aggregates(
    pg: PgWarehouse, warehouse: PostgresWarehouse, catalog: Catalog
) -> None:
    info = _build(pg, warehouse, catalog)
    sql = (
        "SELECT department, COUNT(*), SUM(cost), SUM(los_days), COUNT(DISTINCT patient_id) "
        "FROM visits GROUP BY department"
    )
    per_query = plan_query(
        PlanRequest(sql=sql, granted=frozenset({"clinic"}), dialect="postgres"), catalog
    )
    expected = warehouse.execute(per_query.warehouse_sql, [SALT.decode()]).rows
    warehouse.use_snapshot(info)
    try:
        snap = plan_query(
            PlanRequest(
                sql=sql,
                granted=frozenset({"clinic"}),
                dialect="postgres",
                prebounded=warehouse.prebounded(),
                precomputed=warehouse.precomputed(),
            ),
            catalog,
        )
        assert snap.parameters == () and "ROW_NUMBER" not in snap.warehouse_sql
        assert snap.warehouse_sql.count("__pg_sum_") == 2  # the stored terms of both sums
        got = warehouse.execute(snap.warehouse_sql, []).rows
    finally:
        warehouse._serving = (None, {}, frozenset())
    assert sorted(got, key=repr) == sorted(expected, key=repr)


def test_old_snapshots_are_dropped(
    pg: PgWarehouse, warehouse: PostgresWarehouse, catalog: Catalog
) -> None:
    info = _build(pg, warehouse, catalog)
    remove_other_pg_snapshots(writer(pg), info.schema)
    with psycopg.connect(pg.admin_dsn) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'privgate_b%'"
            )
        ]
    assert names == [info.schema]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path, pg: PgWarehouse
) -> Iterator[Gateway]:
    yield from start_gateway(
        tmp_path_factory.mktemp("pgsnap"),
        demo_warehouse,
        large_budget,
        warehouse_url=pg.reader_url,
        warehouse_snapshot_url=writer(pg),
    )


def test_the_gateway_serves_from_the_pg_snapshot(gw: Gateway) -> None:
    admin = {"Authorization": f"Bearer {gw.keys['admin']}"}
    with gw.client() as c:
        status = c.get("/v1/admin/snapshot", headers=admin).json()
        assert status["enabled"] and status["bounding"] == "snapshot", status
        assert status["serving"]["name"].startswith("privgate_b_")
        r = c.post(
            "/v1/query",
            json={
                "sql": "SELECT department, COUNT(*) FROM visits GROUP BY department",
                "epsilon": 1,
            },
        )
        assert r.status_code == 200, r.text
        rebuilt = c.post("/v1/admin/snapshot/rebuild", headers=admin)
        assert rebuilt.status_code == 202, rebuilt.text
    assert gw.services.warehouse.data_version().endswith(status["serving"]["data_version"][-10:])
