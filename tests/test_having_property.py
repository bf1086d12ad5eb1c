"""HAVING, evaluated in Python on released cells (``gateway.release.holds``), keeps exactly the
rows SQL would keep: random conditions over the outputs, checked against DuckDB evaluating the
analyst's own text on the same cells (three-valued logic, NULL cells, IS [NOT] NULL)."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.demo import DEMO_POLICY_PATH
from gateway.policy_loader import load_policy
from gateway.release import holds
from rewriter.catalog import Catalog, build_catalog
from rewriter.planner import PlanRequest, plan_query
from tests.sql_strategies import boolean_combinations
from tests.test_rewriter import DEMO_COLUMNS

BASE = "SELECT department, COUNT(*) AS n, SUM(cost) AS s FROM visits GROUP BY department"

_OPS = st.sampled_from(["=", "<>", "<", "<=", ">", ">="])
_NUMBER = st.sampled_from(["0", "5", "10", "10.5", "-3.5", "100"])
_TEXT = st.sampled_from(["'er'", "'oncology'", "'zz'", "''"])


def _compare(column: str, literal: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda op, v: f"{column} {op} {v}", _OPS, literal),
        st.builds(lambda op, v: f"{v} {op} {column}", _OPS, literal),
        st.sampled_from([f"{column} IS NULL", f"{column} IS NOT NULL"]),
    )


# HAVING names aggregates (as PostgreSQL does, not output aliases); the reference reads the
# same condition over the cells' columns n and s.
_AGGREGATES = {"COUNT(*)": "n", "SUM(cost)": "s"}
_ATOM = st.one_of(
    _compare("COUNT(*)", _NUMBER),
    _compare("SUM(cost)", _NUMBER),
    _compare("department", _TEXT),
    st.builds(lambda op: f"COUNT(*) {op} SUM(cost)", _OPS),
)
_CONDITION = boolean_combinations(_ATOM, max_leaves=4)
_ROW = st.tuples(
    st.sampled_from(["er", "oncology", "zz", "", None]),
    st.sampled_from([0, 5, 10, 11]),
    st.sampled_from([-3.5, 0.0, 10.0, 10.5, 250.25, None]),
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(load_policy(DEMO_POLICY_PATH).policy, DEMO_COLUMNS)


@pytest.fixture(scope="module")
def con() -> Any:
    connection = duckdb.connect()
    yield connection
    connection.close()


@settings(max_examples=200, deadline=None)
@given(condition=_CONDITION, rows=st.lists(_ROW, min_size=1, max_size=6))
def test_having_keeps_the_rows_sql_keeps(
    catalog: Catalog, con: Any, condition: str, rows: list[tuple[Any, ...]]
) -> None:
    plan = plan_query(
        PlanRequest(sql=f"{BASE} HAVING {condition}", granted=frozenset({"clinic"})), catalog
    )
    assert plan.having is not None and not plan.hidden  # the condition reads outputs only
    kept = [i for i, row in enumerate(rows) if holds(plan.having, list(row))]
    values = ", ".join(f"({i}, ?::VARCHAR, ?::BIGINT, ?::DOUBLE)" for i in range(len(rows)))
    params = [v for row in rows for v in row]
    over_cells = condition
    for aggregate, column in _AGGREGATES.items():
        over_cells = over_cells.replace(aggregate, column)
    expected = [
        r[0]
        for r in con.execute(
            f"SELECT i FROM (VALUES {values}) AS t(i, department, n, s) WHERE {over_cells} "
            "ORDER BY i",
            params,
        ).fetchall()
    ]
    assert kept == expected
