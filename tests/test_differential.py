"""Differential execution: the rewritten SQL equals a hand-written reference, on DuckDB and on
PostgreSQL (the same rows copied there, read through a least-privileged role).

Noise is never involved: ``plan.warehouse_sql`` computes the true, pre-noise integer aggregates,
and each reference query below computes the same numbers from the privacy model's definition,
written independently in plain SQL:

1. keep the rows that pass the WHERE clause and have a non-null ``patient_id``;
2. per patient, keep the ``max_rows_per_unit`` (5) rows with the smallest
   ``hash(hash(salt, <all columns of the table, in table order>))`` (``ROW_NUMBER``);
3. aggregate, with measures clamped to their declared bounds and float measures summed as
   integers of 1/1000 (``CAST(ROUND(x * 1000) AS BIGINT)``).

The warehouse is the demo generator's, built small, copied into an in-memory database and
extended with a few hand-made edge rows (NULL unit, NULL measure and key, values outside the
bounds, NaN/±inf, awkward string literals), so the comparison also covers those cases.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.demo import DEMO_POLICY_PATH, build_demo_warehouse
from gateway.warehouse_pg import PostgresWarehouse, _plain
from rewriter.catalog import Catalog, build_catalog
from rewriter.plan import OutputKind, QueryPlan
from rewriter.planner import PlanRequest, plan_query
from rewriter.policy import Policy
from tests.pg_helpers import pg_warehouse
from tests.sql_strategies import boolean_combinations

SALT = "differential-test-salt"
OTHER_SALT = "another-salt"
K = 5  # max_rows_per_unit of the demo policy

# Hand-written: the column order of each table, which the bounding hash covers.
HASHED = {
    "visits": "visit_id, patient_id, department, visit_day, cost, los_days, diagnosis",
    "patients": "patient_id, ssn, name, email, sex, birth_year, zip3, insurance",
}

# Clamping written with CASE (not the rewriter's LEAST/GREATEST), to be independent of it.
COST = "(CASE WHEN cost < 0 THEN 0.0 WHEN cost > 5000 THEN 5000.0 ELSE cost END)"
LOS = "(CASE WHEN los_days < 0 THEN 0 WHEN los_days > 30 THEN 30 ELSE los_days END)"
SUM_COST = f"SUM(CAST(ROUND({COST} * 1000) AS BIGINT))"
SUM_LOS = f"SUM(CAST({LOS} AS BIGINT))"

EDGE_PATIENT = 999_001

# Extra rows: (visit_id, patient_id, department, visit_day, cost, los_days, diagnosis).
EDGE_ROWS = [
    (10_000_001, EDGE_PATIENT, "'er'", "2024-03-01", "-50", "45", "'x'"),
    (10_000_002, EDGE_PATIENT, "'er'", "2024-03-01", "'nan'::DOUBLE", "-3", "NULL"),
    (10_000_003, EDGE_PATIENT, "NULL", "2024-03-02", "'inf'::DOUBLE", "NULL", "NULL"),
    (10_000_004, EDGE_PATIENT, "'it''s'", "NULL", "'-inf'::DOUBLE", "2", "'y'"),
    (10_000_005, EDGE_PATIENT, "'a\\'", "2024-03-03", "12.3456", "31", "'z'"),
    (10_000_006, EDGE_PATIENT, "'?'", "2024-03-04", "7000", "0", "'z'"),
    (10_000_007, EDGE_PATIENT, "'oncology'", "2024-03-05", "100.0005", "1", "'z'"),
    (10_000_008, EDGE_PATIENT, "'oncology'", "2024-03-05", "NULL", "1", "'z'"),
    (10_000_009, "NULL", "'oncology'", "2024-03-05", "100", "1", "'orphan'"),
    (10_000_010, "NULL", "'er'", "2024-03-06", "200", "2", "'orphan'"),
    (10_000_011, "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"),
    (10_000_012, 1, "'it''s'", "2024-12-31", "0", "0", "'edge'"),
]


@dataclass(frozen=True)
class Warehouse:
    con: duckdb.DuckDBPyConnection
    catalog: Catalog
    path: Path


def _policy_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DEMO_POLICY_PATH.read_text(encoding="utf-8"))
    return document


def _catalog(con: duckdb.DuckDBPyConnection, document: dict[str, Any] | None = None) -> Catalog:
    policy = Policy.model_validate(document or _policy_document())
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall():
        columns.setdefault(table, []).append((column, dtype))
    return build_catalog(policy, columns)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    path = tmp_path_factory.mktemp("differential") / "clinic.duckdb"
    build_demo_warehouse(path, patients=2000, progress=False)
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{path}' AS demo (READ_ONLY)")
    for table, order in (("visits", "visit_id"), ("patients", "patient_id"), ("departments", "1")):
        con.execute(f"CREATE TABLE main.{table} AS SELECT * FROM demo.{table} ORDER BY {order}")
    con.execute("DETACH demo")
    values = ", ".join(
        f"({vid}, {pid}, {dep}, {'NULL' if day == 'NULL' else repr(day)}, {cost}, {los}, {diag})"
        for vid, pid, dep, day, cost, los, diag in EDGE_ROWS
    )
    con.execute(f"INSERT INTO visits VALUES {values}")
    yield Warehouse(con, _catalog(con), path)
    con.close()


def _plan(w: Warehouse, sql: str, catalog: Catalog | None = None) -> QueryPlan:
    return plan_query(PlanRequest(sql=sql, granted=frozenset({"clinic"})), catalog or w.catalog)


def _run(
    con: duckdb.DuckDBPyConnection, plan: QueryPlan, salt: str = SALT
) -> tuple[list[str], list[tuple[Any, ...]]]:
    assert plan.parameters == ("salt",)
    cur = con.execute(plan.warehouse_sql, [salt])
    names = [d[0] for d in cur.description]
    return names, cur.fetchall()


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    row = con.execute(sql, params or []).fetchone()
    assert row is not None and len(row) == 1
    return row[0]


def _bounded(table: str, where: str, dialect: str = "duckdb") -> str:
    """The privacy model's bounded rows, written out by hand (salt is the only parameter).

    On PostgreSQL the keyed hash is md5 of the salt and the row's text form, and the salt is
    spliced in as a literal (``%(salt)s``, filled by :func:`_pg_reference`).
    """
    if dialect == "postgres":
        digest = f"md5(%(salt)s || CAST(ROW({HASHED[table]}) AS TEXT))"
        return f"""
        WITH passing AS (
            SELECT * FROM {table} WHERE patient_id IS NOT NULL AND ({where})
        ), ranked AS (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY patient_id ORDER BY {digest}) AS rank_in_unit
            FROM passing
        )
        SELECT * FROM ranked WHERE rank_in_unit <= {K}
    """
    return f"""
        WITH passing AS (
            SELECT * FROM {table} WHERE patient_id IS NOT NULL AND ({where})
        ), ranked AS (
            SELECT *, ROW_NUMBER() OVER (
                PARTITION BY patient_id ORDER BY hash(hash(?, {HASHED[table]}))
            ) AS rank_in_unit
            FROM passing
        )
        SELECT * FROM ranked WHERE rank_in_unit <= {K}
    """


@dataclass(frozen=True)
class Case:
    sql: str
    table: str
    where: str
    group: Sequence[str]
    #: One entry per SELECT item: a key column, an aggregate, or (sum, count) for AVG.
    items: Sequence[str | tuple[str, str]]


CASES = [
    Case("SELECT COUNT(*) FROM visits", "visits", "TRUE", (), ["COUNT(*)"]),
    Case(
        "SELECT department, COUNT(*), COUNT(cost) AS priced FROM visits GROUP BY department",
        "visits",
        "TRUE",
        ["department"],
        ["department", "COUNT(*)", "COUNT(cost)"],
    ),
    Case(
        "SELECT SUM(cost) FROM visits WHERE department = 'oncology'",
        "visits",
        "department = 'oncology'",
        (),
        [SUM_COST],
    ),
    Case(
        "SELECT department, SUM(los_days) FROM visits "
        "WHERE visit_day BETWEEN '2024-02-01' AND '2024-02-29' GROUP BY department",
        "visits",
        "visit_day BETWEEN DATE '2024-02-01' AND DATE '2024-02-29'",
        ["department"],
        ["department", SUM_LOS],
    ),
    Case(
        "SELECT AVG(cost) AS mean_cost, AVG(los_days) FROM visits "
        "WHERE department IN ('er', 'cardiology') OR cost > 2500",
        "visits",
        "department IN ('er', 'cardiology') OR cost > 2500",
        (),
        [(SUM_COST, "COUNT(cost)"), (SUM_LOS, "COUNT(los_days)")],
    ),
    Case(
        "SELECT visit_day, COUNT(*) FROM visits WHERE visit_day >= DATE '2024-12-01' "
        "GROUP BY visit_day",
        "visits",
        "visit_day >= DATE '2024-12-01'",
        ["visit_day"],
        ["visit_day", "COUNT(*)"],
    ),
    Case(
        "SELECT department, visit_day, COUNT(*), SUM(cost) FROM visits "
        "WHERE NOT (department = 'er') AND los_days > 0 GROUP BY department, visit_day",
        "visits",
        "department <> 'er' AND los_days > 0",
        ["department", "visit_day"],
        ["department", "visit_day", "COUNT(*)", SUM_COST],
    ),
    Case(
        "SELECT COUNT(*), SUM(cost), SUM(los_days) FROM visits "
        "WHERE cost IS NULL OR department IS NULL OR visit_day IS NULL OR cost > 5000 OR cost < 0",
        "visits",
        "cost IS NULL OR department IS NULL OR visit_day IS NULL OR cost > 5000 OR cost < 0",
        (),
        ["COUNT(*)", SUM_COST, SUM_LOS],
    ),
    Case(
        "SELECT COUNT(*), SUM(cost) FROM visits WHERE department NOT IN ('er', 'radiology') "
        "AND cost <> 450 AND 100 <= cost AND visit_day < '2024-07-01' AND los_days != 3",
        "visits",
        "NOT department IN ('er', 'radiology') AND cost != 450 AND cost >= 100 "
        "AND visit_day < DATE '2024-07-01' AND los_days <> 3",
        (),
        ["COUNT(*)", SUM_COST],
    ),
    Case(
        "SELECT department, COUNT(*), SUM(cost) FROM visits "
        "WHERE department IN ('?', 'it''s', 'a\\') OR department IS NULL GROUP BY department",
        "visits",
        "department IN ('?', 'it''s', 'a\\') OR department IS NULL",
        ["department"],
        ["department", "COUNT(*)", SUM_COST],
    ),
    # IS NOT NULL, which sqlglot reads as a flag on IS (rewriter.parse._canonical_negations).
    Case(
        "SELECT department, COUNT(*), SUM(cost) FROM visits "
        "WHERE cost IS NOT NULL AND department IS NOT NULL GROUP BY department",
        "visits",
        "cost IS NOT NULL AND department IS NOT NULL",
        ["department"],
        ["department", "COUNT(*)", SUM_COST],
    ),
    Case(
        "SELECT COUNT(*), SUM(los_days) FROM visits "
        "WHERE NOT (cost IS NOT NULL) OR (los_days IS NOT NULL AND department IS NULL)",
        "visits",
        "cost IS NULL OR (los_days IS NOT NULL AND department IS NULL)",
        (),
        ["COUNT(*)", SUM_LOS],
    ),
    Case(
        "SELECT COUNT(*), SUM(cost) FROM visits WHERE department = 'nowhere'",
        "visits",
        "department = 'nowhere'",
        (),
        ["COUNT(*)", SUM_COST],
    ),
    Case(
        "SELECT COUNT(*) AS n FROM visits WHERE visit_day > '2024-06-30' GROUP BY department",
        "visits",
        "visit_day > DATE '2024-06-30'",
        ["department"],
        ["COUNT(*)"],
    ),
    Case(
        "SELECT sex, insurance, COUNT(*) FROM patients GROUP BY sex, insurance",
        "patients",
        "TRUE",
        ["sex", "insurance"],
        ["sex", "insurance", "COUNT(*)"],
    ),
    Case(
        "SELECT birth_year, COUNT(*) FROM patients "
        "WHERE birth_year BETWEEN 1950 AND 1960 AND (sex = 'F' OR NOT insurance = 'none') "
        "GROUP BY birth_year",
        "patients",
        "birth_year >= 1950 AND birth_year <= 1960 AND (sex = 'F' OR insurance <> 'none')",
        ["birth_year"],
        ["birth_year", "COUNT(*)"],
    ),
]


def _reference_sql(plan: QueryPlan, case: Case, names: list[str], dialect: str = "duckdb") -> str:
    assert [k.source for k in plan.group_keys] == list(case.group)
    assert len(plan.outputs) == len(case.items)
    by_column: dict[str, str] = {f"k{i}": col for i, col in enumerate(case.group)}
    for out, item in zip(plan.outputs, case.items, strict=True):
        if out.kind is OutputKind.KEY:
            assert out.key_index is not None
            assert item == case.group[out.key_index]
            continue
        assert out.measurement is not None
        if out.kind is OutputKind.AVG:
            assert isinstance(item, tuple) and out.denominator is not None
            by_column[out.measurement], by_column[out.denominator] = item
        else:
            assert isinstance(item, str)
            by_column[out.measurement] = item
    if plan.threshold is not None:
        by_column[plan.threshold.units_column] = "COUNT(DISTINCT patient_id)"
    assert set(names) == set(by_column), (names, by_column)
    select = ", ".join(f'{by_column[n]} AS "{n}"' for n in names)
    group = f" GROUP BY {', '.join(case.group)}" if case.group else ""
    return f"SELECT {select} FROM ({_bounded(case.table, case.where, dialect)}) AS b{group}"


def _reference(
    w: Warehouse, plan: QueryPlan, case: Case, names: list[str]
) -> list[tuple[Any, ...]]:
    return w.con.execute(_reference_sql(plan, case, names), [SALT]).fetchall()


@pytest.mark.parametrize("case", CASES, ids=[c.sql[:60] for c in CASES])
def test_rewritten_sql_equals_reference(warehouse: Warehouse, case: Case) -> None:
    plan = _plan(warehouse, case.sql)
    names, rows = _run(warehouse.con, plan)
    expected = _reference(warehouse, plan, case, names)
    assert sorted(rows, key=repr) == sorted(expected, key=repr)


@pytest.fixture(scope="module")
def pg(warehouse: Warehouse) -> Iterator[tuple[PostgresWarehouse, str]]:
    """The same rows (edge rows included) in PostgreSQL, read through a least-privileged role."""
    with pg_warehouse(warehouse.con, ("visits", "patients", "departments")) as made:
        adapter = PostgresWarehouse(made.reader_url)
        try:
            yield adapter, made.admin_dsn
        finally:
            adapter.close()


@pytest.mark.parametrize("case", CASES, ids=[c.sql[:60] for c in CASES])
def test_rewritten_sql_equals_reference_on_postgresql(
    warehouse: Warehouse, pg: tuple[PostgresWarehouse, str], case: Case
) -> None:
    adapter, admin_dsn = pg
    plan = plan_query(
        PlanRequest(sql=case.sql, granted=frozenset({"clinic"}), dialect="postgres"),
        warehouse.catalog,
    )
    got = adapter.execute(plan.warehouse_sql, [SALT])
    reference = _reference_sql(plan, case, list(got.columns), "postgres")
    with psycopg.connect(admin_dsn) as con:
        expected = [tuple(_plain(v) for v in row) for row in con.execute(reference, {"salt": SALT})]
    assert sorted(got.rows, key=repr) == sorted(expected, key=repr)
    assert got.rows  # every case sees data on PostgreSQL too (or an empty-group row)


def test_cases_are_not_trivial(warehouse: Warehouse) -> None:
    """Most cases must see data, and the edge rows must be in the table."""
    nonempty = 0
    for case in CASES:
        _, rows = _run(warehouse.con, _plan(warehouse, case.sql))
        nonempty += any(v not in (0, None) for row in rows for v in row)
    assert nonempty >= len(CASES) - 1
    edge = _scalar(warehouse.con, "SELECT COUNT(*) FROM visits WHERE visit_id > 10000000")
    assert edge == len(EDGE_ROWS)
    assert len(CASES) >= 8


# --------------------------------------------------------------------------------------------
# Bounding really bounds, and only on the unit's own rows
# --------------------------------------------------------------------------------------------


def test_demo_has_patients_above_the_bound(warehouse: Warehouse) -> None:
    heavy = _scalar(
        warehouse.con,
        f"SELECT COUNT(*) FROM (SELECT patient_id FROM visits WHERE patient_id IS NOT NULL "
        f"GROUP BY patient_id HAVING COUNT(*) > {K})",
    )
    assert heavy > 10


def test_bounded_count_is_the_capped_count(warehouse: Warehouse) -> None:
    """COUNT(*) after bounding = sum over patients of min(rows, 5): no hash needed to know it."""
    con = warehouse.con
    _, [(bounded,)] = _run(con, _plan(warehouse, "SELECT COUNT(*) FROM visits"))
    capped = _scalar(
        con,
        f"SELECT SUM(LEAST(n, {K})) FROM (SELECT COUNT(*) AS n FROM visits "
        "WHERE patient_id IS NOT NULL GROUP BY patient_id)",
    )
    raw = _scalar(con, "SELECT COUNT(*) FROM visits")
    assert bounded == capped
    assert bounded < raw
    # The same holds per group of a filtered query: the WHERE applies before the bounding.
    sql = "SELECT department, COUNT(*) FROM visits WHERE los_days = 0 GROUP BY department"
    _, rows = _run(con, _plan(warehouse, sql))
    total = sum(n for _, n in rows)
    capped_filtered = _scalar(
        con,
        f"SELECT SUM(LEAST(n, {K})) FROM (SELECT COUNT(*) AS n FROM visits "
        "WHERE patient_id IS NOT NULL AND los_days = 0 GROUP BY patient_id)",
    )
    assert total == capped_filtered


def test_no_patient_keeps_more_than_the_bound(warehouse: Warehouse) -> None:
    most = _scalar(
        warehouse.con,
        f"SELECT MAX(n) FROM (SELECT patient_id, COUNT(*) AS n FROM ({_bounded('visits', 'TRUE')}) "
        "GROUP BY patient_id)",
        [SALT],
    )
    assert most == K


def test_salt_changes_which_rows_are_kept(warehouse: Warehouse) -> None:
    plan = _plan(warehouse, "SELECT COUNT(*), SUM(cost) FROM visits")
    _, [(count_a, sum_a)] = _run(warehouse.con, plan, SALT)
    _, [(count_b, sum_b)] = _run(warehouse.con, plan, OTHER_SALT)
    assert count_a == count_b  # how many rows each patient keeps does not depend on the salt
    assert sum_a != sum_b  # which rows it keeps does


def _kept_ids(con: duckdb.DuckDBPyConnection, patients: Sequence[int]) -> dict[int, set[int]]:
    rows = con.execute(
        f"SELECT patient_id, visit_id FROM ({_bounded('visits', 'TRUE')}) "
        "WHERE list_contains(?, patient_id)",
        [SALT, list(patients)],
    ).fetchall()
    kept: dict[int, set[int]] = {}
    for pid, vid in rows:
        kept.setdefault(pid, set()).add(vid)
    return kept


def test_kept_rows_do_not_depend_on_other_patients(warehouse: Warehouse) -> None:
    con = warehouse.con
    heavy = [
        pid
        for (pid,) in con.execute(
            f"SELECT patient_id FROM visits WHERE patient_id IS NOT NULL GROUP BY patient_id "
            f"HAVING COUNT(*) > {K} ORDER BY COUNT(*) DESC, patient_id LIMIT 40"
        ).fetchall()
    ]
    assert len(heavy) == 40
    keep = heavy[::2]  # the patients we watch; the other heavy ones and many more are removed
    full = _kept_ids(con, keep)

    con.execute("CREATE SCHEMA subset")
    try:
        con.execute(
            "CREATE TABLE subset.visits AS SELECT * FROM main.visits "
            "WHERE list_contains(?, patient_id) OR (patient_id % 3 = 0 "
            "AND NOT list_contains(?, patient_id)) ORDER BY visit_id DESC",
            [keep, heavy],
        )
        sub = con.cursor()
        try:
            sub.execute("SET search_path = 'subset'")
            assert _kept_ids(sub, keep) == full
            assert all(len(ids) == K for ids in full.values())

            # The rewriter's own SQL on the smaller table agrees with the full table's bounding,
            # restricted to the remaining patients.
            sql = "SELECT department, COUNT(*), SUM(cost), SUM(los_days) FROM visits GROUP BY department"
            _, on_subset = _run(sub, _plan(warehouse, sql))
            expected = con.execute(
                f"SELECT department, COUNT(*), {SUM_COST}, {SUM_LOS} "
                f"FROM ({_bounded('visits', 'TRUE')}) AS b WHERE patient_id IN "
                "(SELECT DISTINCT patient_id FROM subset.visits) GROUP BY department",
                [SALT],
            ).fetchall()
            assert sorted(on_subset, key=repr) == sorted(expected, key=repr)
        finally:
            sub.close()
    finally:
        con.execute("DROP SCHEMA subset CASCADE")


# --------------------------------------------------------------------------------------------
# NULL measures and a lower bound above zero
# --------------------------------------------------------------------------------------------

SHIFTED_COST = "(CASE WHEN cost < 100 THEN 100.0 WHEN cost > 5000 THEN 5000.0 ELSE cost END)"
SHIFTED_LOS = "(CASE WHEN los_days < 1 THEN 1 WHEN los_days > 30 THEN 30 ELSE los_days END)"


def test_null_measures_are_not_summed_as_the_lower_bound(warehouse: Warehouse) -> None:
    document = _policy_document()
    columns = document["datasets"]["clinic"]["tables"]["visits"]["columns"]
    columns["cost"]["bounds"] = [100, 5000]
    columns["los_days"]["bounds"] = [1, 30]
    catalog = _catalog(warehouse.con, document)
    case = Case(
        "SELECT department, SUM(cost), AVG(cost), SUM(los_days), AVG(los_days) FROM visits "
        "WHERE department = 'oncology' OR department IS NULL OR cost IS NULL GROUP BY department",
        "visits",
        "department = 'oncology' OR department IS NULL OR cost IS NULL",
        ["department"],
        [
            "department",
            f"SUM(CAST(ROUND({SHIFTED_COST} * 1000) AS BIGINT))",
            (f"SUM(CAST(ROUND({SHIFTED_COST} * 1000) AS BIGINT))", "COUNT(cost)"),
            f"SUM(CAST({SHIFTED_LOS} AS BIGINT))",
            (f"SUM(CAST({SHIFTED_LOS} AS BIGINT))", "COUNT(los_days)"),
        ],
    )
    plan = _plan(warehouse, case.sql, catalog)
    names, rows = _run(warehouse.con, plan)
    expected = _reference(warehouse, plan, case, names)
    assert sorted(rows, key=repr) == sorted(expected, key=repr)


# --------------------------------------------------------------------------------------------
# Random WHERE clauses: the re-built predicate selects exactly the rows the analyst's selects.
# --------------------------------------------------------------------------------------------

_TEXT = st.sampled_from(["'er'", "'oncology'", "'it''s'", "'a\\'", "'?'", "'zz'", "'a'", "''"])
_COST = st.sampled_from(["-1", "0", "100", "100.0005", "450", "2500.5", "5000", "7000"])
_LOS = st.sampled_from(["0", "1", "3", "30", "31", "-3"])
_DAY = st.sampled_from(["'2024-03-01'", "'2024-07-01'", "DATE '2024-12-31'", "'2023-01-01'"])
_OPS = st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="])


def _atoms(column: str, literal: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def listed(values: list[str]) -> str:
        return ", ".join(values)

    return st.one_of(
        st.builds(lambda op, v: f"{column} {op} {v}", _OPS, literal),
        st.builds(lambda op, v: f"{v} {op} {column}", _OPS, literal),
        st.builds(
            lambda vs: f"{column} IN ({listed(vs)})", st.lists(literal, min_size=1, max_size=3)
        ),
        st.builds(
            lambda vs: f"{column} NOT IN ({listed(vs)})", st.lists(literal, min_size=1, max_size=3)
        ),
        st.builds(lambda a, b: f"{column} BETWEEN {a} AND {b}", literal, literal),
        st.builds(lambda a, b: f"{column} NOT BETWEEN {a} AND {b}", literal, literal),
        st.sampled_from([f"{column} IS NULL", f"{column} IS NOT NULL"]),
    )


_ATOM = st.one_of(
    _atoms("department", _TEXT),
    _atoms("cost", _COST),
    _atoms("los_days", _LOS),
    _atoms("visit_day", _DAY),
    st.just("cost > los_days"),
)
_PREDICATE = boolean_combinations(_ATOM, max_leaves=5)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=_PREDICATE)
def test_a_random_where_selects_the_rows_it_says(warehouse: Warehouse, where: str) -> None:
    """sqlglot's reading of a predicate (a NOT flag on IS, say) must not change which rows it
    selects: the re-built WHERE is compared with the analyst's text, run as written by DuckDB."""
    case = Case(
        f"SELECT COUNT(*), SUM(los_days) FROM visits WHERE {where}",
        "visits",
        where,
        (),
        ["COUNT(*)", SUM_LOS],
    )
    plan = _plan(warehouse, case.sql)
    names, rows = _run(warehouse.con, plan)
    assert rows == _reference(warehouse, plan, case, names), plan.warehouse_sql


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(condition=_PREDICATE)
def test_a_random_case_condition_counts_the_rows_it_says(
    warehouse: Warehouse, condition: str
) -> None:
    """The same for a condition inside an aggregate (CASE WHEN, re-built by the same rules)."""
    counted = f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"
    case = Case(f"SELECT {counted} FROM visits", "visits", "TRUE", (), [counted])
    plan = _plan(warehouse, case.sql)
    names, rows = _run(warehouse.con, plan)
    assert rows == _reference(warehouse, plan, case, names), plan.warehouse_sql
