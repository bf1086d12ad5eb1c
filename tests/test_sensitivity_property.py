"""Property: on neighbouring datasets the exact (pre-noise) answers differ by at most the
sensitivity the plan claims — for every query of the accepted corpus.

Hypothesis draws a small clinic (a few patients, each with 0–8 visits of adversarial values:
NULLs, NaN, ±inf, values far outside the bounds, departments outside the public domain) and one
more patient whose rows — visits *and* patient record — make the neighbour. Both datasets go
through the gateway's own path: the planner's warehouse SQL with per-query bounding (the salt as
a parameter) on DuckDB. Per measurement, over the union of groups of the two answers:

* COUNT, SUM, COUNT(DISTINCT …): the L1 distance of the integer vectors ≤ ``sensitivity``;
* quantiles: the symmetric distance of the value multisets ≤ ``sensitivity`` (rows);
* the threshold's distinct-unit counts: at most ``max_groups`` groups change, each by at most 1.

An example is one (query, dataset, neighbour) triple; each drawn dataset pair is checked against
``QUERIES_PER_DATASET`` queries to share the cost of loading it. ``PRIVGATE_PROPERTY_EXAMPLES``
sets the number of examples (default 10,000), ``PRIVGATE_PROPERTY_QUERIES_PER_DATASET`` the
sharing (default 10; 1 draws a fresh dataset pair for every example).
"""

from __future__ import annotations

import os
from collections import Counter
from functools import cache
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.release import exact_value
from rewriter.plan import MeasurementKind, QueryPlan
from rewriter.planner import PlanRequest, plan_query
from tests.corpus.test_corpus import ACCEPTED
from tests.test_differential import _catalog

EXAMPLES = int(os.environ.get("PRIVGATE_PROPERTY_EXAMPLES", "10000"))
QUERIES_PER_DATASET = int(os.environ.get("PRIVGATE_PROPERTY_QUERIES_PER_DATASET", "10"))
SALT = "property-salt"
INF = float("inf")

SCHEMA = """
CREATE TABLE departments (department TEXT, building TEXT, floor INTEGER);
INSERT INTO departments VALUES ('cardiology', 'Main', 1), ('oncology', 'North', 2),
    ('er', 'Main', 0), ('pediatrics', 'East', 1), ('neurology', 'North', 3),
    ('orthopedics', 'West', 2), ('radiology', 'Main', -1), ('dermatology', 'East', 2);
CREATE TABLE patients (patient_id BIGINT, ssn TEXT, name TEXT, email TEXT, sex TEXT,
    birth_year INTEGER, zip3 TEXT, insurance TEXT);
CREATE TABLE visits (visit_id BIGINT, patient_id BIGINT, department TEXT, visit_day DATE,
    cost DOUBLE, los_days INTEGER, diagnosis TEXT);
"""

costs = st.one_of(
    st.sampled_from([None, 0.0, 5000.0, -1e9, 1e12, float("nan"), float("inf"), float("-inf")]),
    st.floats(-100, 6000, allow_nan=False, width=32),
)
los = st.one_of(st.sampled_from([None, 0, 30, -5, 10**6]), st.integers(-3, 40))
departments = st.sampled_from(["er", "oncology", "cardiology", "radiology", None, "nowhere"])
days = st.sampled_from(["2024-01-05", "2024-01-20", "2024-03-01", "2024-06-15", "2025-02-01", None])
visit = st.tuples(departments, days, costs, los)
patient = st.tuples(
    st.sampled_from(["F", "M", None, "X"]),
    st.sampled_from([1930, 1955, 1969, 1971, 2001, None]),
    st.sampled_from(["100", "101", "230", None]),
    st.sampled_from(["public", "private", "none", None]),
    st.lists(visit, max_size=8),
)
clinics = st.lists(patient, min_size=0, max_size=6)


@cache
def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"threads": 1})
    con.execute(SCHEMA)
    return con


@cache
def _plans() -> tuple[QueryPlan, ...]:
    catalog = _catalog(_connection())
    return tuple(
        plan_query(
            PlanRequest(sql=c.sql, granted=frozenset({"clinic"}), check_query_max=False), catalog
        )
        for c in ACCEPTED
    )


def _load(con: duckdb.DuckDBPyConnection, people: list[Any], extra: Any | None) -> None:
    con.execute("DELETE FROM visits")
    con.execute("DELETE FROM patients")
    visit_rows, patient_rows = [], []
    vid = 0
    everyone = [*people, *([extra] if extra is not None else [])]
    for pid, (sex, year, zip3, insurance, visits) in enumerate(everyone, start=1):
        patient_rows.append((pid, "ssn", "name", "e@x", sex, year, zip3, insurance))
        for department, day, cost, los_days in visits:
            vid += 1
            visit_rows.append((vid, pid, department, day, cost, los_days, "dx"))
    if patient_rows:
        con.execute(f"INSERT INTO patients VALUES {_values(patient_rows)}")
    if visit_rows:
        con.execute(f"INSERT INTO visits VALUES {_values(visit_rows)}")


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"'{value!r}'::DOUBLE" if value != value or value in (INF, -INF) else repr(value)
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _values(rows: list[tuple[Any, ...]]) -> str:
    return ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)


def _answers(con: duckdb.DuckDBPyConnection, plan: QueryPlan) -> dict[tuple[Any, ...], tuple]:
    cur = con.execute(plan.warehouse_sql, [SALT] * len(plan.parameters))
    names = [d[0] for d in cur.description]
    n = len(plan.group_keys)
    return {
        tuple(_key(v) for v in row[:n]): dict(zip(names, row, strict=True))
        for row in cur.fetchall()
    }


def _key(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def _check(plan: QueryPlan, a: dict[tuple[Any, ...], Any], b: dict[tuple[Any, ...], Any]) -> None:
    groups = set(a) | set(b)
    for m in plan.measurements:
        if m.kind is MeasurementKind.QUANTILE:
            moved = 0
            for g in groups:
                x = Counter(v for v in (a.get(g, {}).get(m.column) or []) if v is not None)
                y = Counter(v for v in (b.get(g, {}).get(m.column) or []) if v is not None)
                moved += sum(((x - y) + (y - x)).values())
            assert moved <= m.sensitivity, (plan.normalized_sql, m.column, moved, m.sensitivity)
            continue
        # The exact value the noise is added to (an AVG's centred sum: SUM - center * COUNT).
        l1 = sum(abs(exact_value(m, a.get(g, {})) - exact_value(m, b.get(g, {}))) for g in groups)
        assert l1 <= m.sensitivity, (plan.normalized_sql, m.description, l1, m.sensitivity)
    if plan.threshold is not None:
        col = plan.threshold.units_column
        diffs = [
            abs(int(a.get(g, {}).get(col) or 0) - int(b.get(g, {}).get(col) or 0)) for g in groups
        ]
        assert max(diffs, default=0) <= 1, (plan.normalized_sql, diffs)
        assert sum(1 for d in diffs if d) <= plan.threshold.max_groups, plan.normalized_sql


@settings(
    max_examples=max(EXAMPLES // QUERIES_PER_DATASET, 1),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(
    clinic=clinics,
    extra=patient,
    which=st.lists(
        st.integers(0, len(ACCEPTED) - 1),
        min_size=QUERIES_PER_DATASET,
        max_size=QUERIES_PER_DATASET,
    ),
)
def test_neighbouring_answers_differ_by_at_most_the_claimed_sensitivity(
    clinic: list[Any], extra: Any, which: list[int]
) -> None:
    con = _connection()
    plans = [_plans()[i] for i in which]
    _load(con, clinic, None)
    without = [_answers(con, plan) for plan in plans]
    _load(con, clinic, extra)
    with_extra = [_answers(con, plan) for plan in plans]
    for plan, a, b in zip(plans, without, with_extra, strict=True):
        _check(plan, a, b)


def test_the_property_can_fail() -> None:
    """The check flags a plan whose claimed sensitivity is too small (the test is not vacuous)."""
    con = _connection()
    plan = next(p for p in _plans() if p.normalized_sql == "SELECT COUNT(*) AS x FROM visits")
    heavy = ("F", 1955, "100", "public", [("er", "2024-01-05", 1.0, 1)] * 8)
    _load(con, [], None)
    a = _answers(con, plan)
    _load(con, [], heavy)
    b = _answers(con, plan)
    _check(plan, a, b)  # 5 rows kept of 8: within K = 5
    import dataclasses

    understated = dataclasses.replace(
        plan, measurements=tuple(dataclasses.replace(m, sensitivity=4) for m in plan.measurements)
    )
    with pytest.raises(AssertionError):
        _check(understated, a, b)
