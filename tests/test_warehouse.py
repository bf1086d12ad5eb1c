"""The embedded DuckDB warehouse is read-only, locked down, and stops runaway statements."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import QueryTimeout, WarehouseError, WarehouseUnavailable
from gateway.warehouse import DuckDBWarehouse

ESCAPES = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "COPY (SELECT 1) TO '/tmp/privgate-escape.csv'",
    "ATTACH '/tmp/privgate-escape.duckdb' AS x",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
]


@pytest.fixture(scope="module")
def warehouse(demo_warehouse: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(demo_warehouse, timeout_s=1.0)


@pytest.mark.parametrize("sql", ESCAPES)
def test_escapes_are_refused_by_the_engine(warehouse: DuckDBWarehouse, sql: str) -> None:
    # Defence in depth: the rewriter never emits these, and the engine refuses them anyway.
    with pytest.raises(WarehouseError) as info:
        warehouse.execute(sql, [])
    assert info.value.message == "the warehouse could not complete the query"
    assert not Path("/tmp/privgate-escape.csv").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT SUM(i) FROM range(1000000000000) t(i)",
        "SELECT COUNT(*) FROM visits a, visits b, visits c",
    ],
)
def test_watchdog_interrupts_a_runaway_scan(warehouse: DuckDBWarehouse, sql: str) -> None:
    start = time.monotonic()
    with pytest.raises(QueryTimeout):
        warehouse.execute(sql, [])
    assert time.monotonic() - start < 1.0 + 1.0
    assert warehouse.execute("SELECT 1", []).rows == [(1,)]


def test_columns_and_version(warehouse: DuckDBWarehouse) -> None:
    cols = warehouse.columns()
    assert {"patients", "visits", "departments"} <= set(cols)
    assert ("cost", "DOUBLE") in cols["visits"]
    assert len(warehouse.data_version()) == 16


def test_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(WarehouseUnavailable):
        DuckDBWarehouse(tmp_path / "nope.duckdb")
