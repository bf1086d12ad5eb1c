"""The PostgreSQL warehouse: least privilege checked, read-only sessions, runaway statements
stopped, and the gateway answering DP queries on it end to end over REST."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.errors import QueryTimeout, WarehouseError, WarehouseUnavailable
from gateway.warehouse_pg import PostgresWarehouse
from rewriter.catalog import LogicalType, build_catalog
from rewriter.planner import PlanRequest, plan_query
from tests.conftest import Gateway, large_budget, start_gateway, write_policy
from tests.pg_helpers import PgWarehouse, in_memory_copy, pg_warehouse

TABLES = ("visits", "patients", "departments")


@pytest.fixture(scope="module")
def pg(demo_warehouse: Path) -> Iterator[PgWarehouse]:
    source = in_memory_copy(demo_warehouse, TABLES)
    with pg_warehouse(source, TABLES, copied=source.close) as made:
        yield made


@pytest.fixture(scope="module")
def warehouse(pg: PgWarehouse) -> Iterator[PostgresWarehouse]:
    w = PostgresWarehouse(pg.reader_url, timeout_s=1.0)
    yield w
    w.close()


def test_columns_map_to_the_catalog_types(warehouse: PostgresWarehouse, tmp_path: Path) -> None:
    from gateway.policy_loader import load_policy

    cols = warehouse.columns()
    assert set(TABLES) <= set(cols)
    assert ("cost", "double precision") in cols["visits"]
    catalog = build_catalog(load_policy(write_policy(tmp_path / "p.yaml")).policy, cols)
    visits = catalog.table("visits")
    assert visits is not None
    assert visits.columns["cost"].type is LogicalType.FLOAT
    assert visits.columns["department"].type is LogicalType.STRING
    assert visits.columns["visit_day"].type is LogicalType.DATE
    assert visits.columns["patient_id"].type is LogicalType.INTEGER


def test_a_superuser_is_refused(pg: PgWarehouse) -> None:
    with pytest.raises(WarehouseUnavailable, match="superuser") as info:
        PostgresWarehouse(f"postgresql://postgres@127.0.0.1:5432/{pg.database}")
    assert "GRANT SELECT" in info.value.message  # says how to make a read-only role


@pytest.mark.parametrize(
    ("grant", "problem"),
    [
        ("GRANT INSERT ON visits TO {role}", "may modify visits"),
        ("GRANT CREATE ON SCHEMA public TO {role}", "may create objects"),
        ("GRANT pg_read_server_files TO {role}", "pg_read_server_files"),
    ],
)
def test_a_role_that_could_write_is_refused(pg: PgWarehouse, grant: str, problem: str) -> None:
    role = f"{pg.reader}_w"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        try:
            admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            admin.execute(grant.format(role=role))
            url = f"postgresql+psycopg://{role}@127.0.0.1:5432/{pg.database}"
            with pytest.raises(WarehouseUnavailable, match=problem):
                PostgresWarehouse(url)
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"REVOKE pg_read_server_files FROM {role}")
            admin.execute(f"DROP ROLE {role}")


def test_unreachable_server_is_unavailable() -> None:
    with pytest.raises(WarehouseUnavailable, match="cannot connect"):
        PostgresWarehouse("postgresql://nobody@127.0.0.1:1/nowhere")


def test_sessions_are_read_only(warehouse: PostgresWarehouse) -> None:
    with pytest.raises(WarehouseError):
        warehouse.execute("CREATE TEMP TABLE t AS SELECT 1", [])
    result = warehouse.execute("SELECT current_setting('transaction_read_only')", [])
    assert result.rows == [("on",)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM generate_series(1, 1000000000000::bigint)",
        "SELECT count(*) FROM visits a, visits b, visits c",
        "SELECT pg_sleep(30)",
    ],
)
def test_runaway_statements_stop_within_the_timeout(warehouse: PostgresWarehouse, sql: str) -> None:
    start = time.monotonic()
    with pytest.raises(QueryTimeout):
        warehouse.execute(sql, [])
    assert time.monotonic() - start < 1.0 + 1.0
    assert warehouse.execute("SELECT 1", []).rows == [(1,)]  # the pool is usable afterwards


def test_parameters_are_transaction_local_settings(warehouse: PostgresWarehouse) -> None:
    got = warehouse.execute("SELECT current_setting('privgate.p1'), '50%s%'", ["sa'lt%s"])
    assert got.rows == [("sa'lt%s", "50%s%")]
    # Gone with the transaction: the next statement on a pooled connection does not see it.
    after = warehouse.execute("SELECT current_setting('privgate.p1', true)", [])
    assert after.rows[0][0] in (None, "")


def test_data_version_changes_when_a_table_is_written(
    pg: PgWarehouse, warehouse: PostgresWarehouse
) -> None:
    before = warehouse.data_version()
    assert before.startswith("pg-")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
        admin.execute("INSERT INTO departments SELECT * FROM departments LIMIT 1")
        admin.execute("DELETE FROM departments WHERE ctid IN (SELECT max(ctid) FROM departments)")
    deadline = time.monotonic() + 10
    while warehouse.data_version() == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert warehouse.data_version() != before


def test_a_planned_query_runs_with_the_salt_as_a_setting(
    warehouse: PostgresWarehouse, tmp_path: Path
) -> None:
    from gateway.policy_loader import load_policy

    catalog = build_catalog(
        load_policy(write_policy(tmp_path / "p.yaml")).policy, warehouse.columns()
    )
    plan = plan_query(
        PlanRequest(
            sql="SELECT COUNT(*), SUM(cost) FROM visits WHERE department <> '50%s'",
            granted=frozenset({"clinic"}),
            dialect="postgres",
        ),
        catalog,
    )
    assert "current_setting('privgate.p1')" in plan.warehouse_sql
    assert "?" not in plan.warehouse_sql
    a = warehouse.execute(plan.warehouse_sql, ["salt-a"]).rows
    b = warehouse.execute(plan.warehouse_sql, ["salt-b"]).rows
    assert a[0][0] == b[0][0]  # how many rows each patient keeps does not depend on the salt
    assert a[0][1] != b[0][1]  # which rows it keeps does


# -- the gateway end to end on PostgreSQL ----------------------------------------------------


@pytest.fixture(scope="module")
def pg_gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path, pg: PgWarehouse
) -> Iterator[Gateway]:
    yield from start_gateway(
        tmp_path_factory.mktemp("pggw"), demo_warehouse, large_budget, warehouse_url=pg.reader_url
    )


def test_rest_answers_on_postgresql(pg_gateway: Gateway) -> None:
    assert pg_gateway.services.warehouse.dialect == "postgres"
    with pg_gateway.client() as client:
        r = client.post(
            "/v1/query",
            json={
                "sql": "SELECT department, COUNT(*) AS n, AVG(cost) FROM visits "
                "WHERE visit_day >= '2024-01-01' GROUP BY department ORDER BY n DESC",
                "epsilon": 1.0,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["columns"][0]["name"] == "department"
        assert len(body["rows"]) >= 3
        snap = client.get(
            "/v1/admin/snapshot",
            headers={"Authorization": f"Bearer {pg_gateway.keys['admin']}"},
        ).json()
        assert snap["enabled"] is False and snap["bounding"] == "per-query"
