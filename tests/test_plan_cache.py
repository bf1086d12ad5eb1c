"""The plan cache: a re-priced hit is the very plan a fresh planning run would give."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import duckdb
import pytest

from budgets.errors import QueryCostTooHigh
from gateway.demo import build_demo_warehouse
from rewriter.catalog import Catalog
from rewriter.errors import InvalidEpsilon, RewriteError
from rewriter.plan_cache import PlanCache
from rewriter.planner import PlanRequest, plan_query
from tests.corpus.test_corpus import ACCEPTED, REJECTED
from tests.test_differential import _catalog

SQLS = sorted({c.sql for c in ACCEPTED})


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """The demo warehouse's tables, empty: planning reads only their columns."""
    path = tmp_path_factory.mktemp("plan-cache") / "clinic.duckdb"
    build_demo_warehouse(path, patients=20, progress=False)
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{path}' AS demo (READ_ONLY)")
    for table in ("visits", "patients", "departments"):
        con.execute(f"CREATE TABLE main.{table} AS SELECT * FROM demo.{table} LIMIT 0")
    con.execute("DETACH demo")
    yield con
    con.close()


@pytest.fixture(scope="module")
def catalog(demo_tables: duckdb.DuckDBPyConnection) -> Catalog:
    return _catalog(demo_tables)


def _request(sql: str, epsilon: str | None, dialect: str = "duckdb") -> PlanRequest:
    return PlanRequest(
        sql=sql,
        granted=frozenset({"clinic"}),
        epsilon=epsilon,
        dialect=dialect,
        prebounded={"visits": 5},
    )


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_a_cached_plan_repriced_equals_a_fresh_plan_for_the_whole_corpus(
    catalog: Catalog, dialect: str
) -> None:
    cache = PlanCache()
    for sql in SQLS:
        first = cache.plan(_request(sql, "0.5", dialect), catalog)
        assert first == plan_query(_request(sql, "0.5", dialect), catalog)
        for eps in ("0.5", "0.0123", None, "0.9"):
            hit = cache.plan(_request(sql, eps, dialect), catalog)
            assert hit == plan_query(_request(sql, eps, dialect), catalog), (sql, eps)
    assert cache.misses == len(SQLS)
    assert cache.hits == 4 * len(SQLS)


def test_epsilon_is_validated_on_a_hit_as_on_a_miss(catalog: Catalog) -> None:
    cache = PlanCache()
    sql = "SELECT department, COUNT(*) FROM visits GROUP BY department"
    cache.plan(_request(sql, "1"), catalog)
    for bad, error in (
        ("0", InvalidEpsilon),
        ("abc", InvalidEpsilon),
        ("1.5", QueryCostTooHigh),  # the test policy's per-query maximum is 1
    ):
        with pytest.raises(error):
            cache.plan(_request(sql, bad), catalog)
        with pytest.raises(error):
            plan_query(_request(sql, bad), catalog)
    assert cache.hits == 3 and cache.misses == 1


def test_the_per_query_maximum_applies_to_hits(catalog: Catalog) -> None:
    # The test policy's per-query maximum is epsilon 1.
    cache = PlanCache()
    sql = "SELECT COUNT(*) FROM visits"
    plan = cache.plan(_request(sql, "1"), catalog)
    assert plan.cost.epsilon == 1
    with pytest.raises(QueryCostTooHigh):
        cache.plan(_request(sql, "1.5"), catalog)
    lower = cache.plan(_request(sql, "0.125"), catalog)
    assert lower.cost.epsilon == Fraction(1, 8)
    assert all(m.epsilon == Fraction(1, 8) / len(lower.measurements) for m in lower.measurements)
    assert cache.hits == 2


def test_refusals_are_not_cached_and_repeat_their_error(catalog: Catalog) -> None:
    cache = PlanCache()
    for sql, code in REJECTED[:40]:
        for _ in range(2):
            with pytest.raises(RewriteError) as info:
                cache.plan(_request(sql, "1"), catalog)
            assert info.value.code == code
    assert len(cache) == 0 and cache.hits == 0


def test_a_new_catalog_empties_the_cache_and_the_size_is_bounded(
    demo_tables: duckdb.DuckDBPyConnection, catalog: Catalog
) -> None:
    cache = PlanCache(size=3)
    for sql in SQLS[:5]:
        cache.plan(_request(sql, "1"), catalog)
    assert len(cache) == 3
    other = _catalog(demo_tables)
    sql = "SELECT COUNT(*) FROM visits"
    cache.plan(_request(sql, "1"), other)
    assert len(cache) == 1
    # A plan made against the old catalog is never served for the new one.
    cache.plan(_request(sql, "1"), catalog)
    assert cache.misses == 7
