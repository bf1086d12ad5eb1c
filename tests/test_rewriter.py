"""The rewriter on its own: a must-reject corpus with expected codes, and the plans it accepts.

Pure tests: no database. The catalog is built from a hand-written column list that mirrors the
demo warehouse (``gateway/demo.py``) and the demo policy (``gateway/demo_policy.yaml``), so a change
to either shows up here as a failing expectation rather than silently moving the goal posts.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import pytest
import sqlglot
import yaml
from sqlglot import exp

from rewriter.catalog import Catalog, build_catalog
from rewriter.errors import RewriteError
from rewriter.parse import parse_select
from rewriter.plan import MeasurementKind, OutputKind, QueryPlan, SortKey
from rewriter.planner import PlanRequest, plan_query
from rewriter.policy import Policy
from rewriter.rules.allow_nodes import allow_nodes
from rewriter.rules.check_where import check_where
from rewriter.rules.order_limit import order_limit
from rewriter.rules.resolve_columns import resolve_columns
from rewriter.rules.resolve_table import resolve_table
from rewriter.rules.shape_aggregates import shape_aggregates

POLICY_PATH = Path(__file__).resolve().parents[1] / "gateway" / "demo_policy.yaml"

#: The demo warehouse's schema, in warehouse column order (see ``_SCHEMA`` in gateway/demo.py).
DEMO_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "departments": [("department", "VARCHAR"), ("building", "VARCHAR"), ("floor", "INTEGER")],
    "patients": [
        ("patient_id", "BIGINT"),
        ("ssn", "VARCHAR"),
        ("name", "VARCHAR"),
        ("email", "VARCHAR"),
        ("sex", "VARCHAR"),
        ("birth_year", "INTEGER"),
        ("zip3", "VARCHAR"),
        ("insurance", "VARCHAR"),
    ],
    "visits": [
        ("visit_id", "BIGINT"),
        ("patient_id", "BIGINT"),
        ("department", "VARCHAR"),
        ("visit_day", "DATE"),
        ("cost", "DOUBLE"),
        ("los_days", "INTEGER"),
        ("diagnosis", "VARCHAR"),
    ],
}

GRANTED = frozenset({"clinic"})
DEFAULT_EPSILON = Fraction(1, 2)  # demo policy defaults.epsilon
DEFAULT_DELTA = Fraction(1, 10**7)  # demo policy defaults.delta
SECRET = "secret-literal-42"


def load_policy() -> Policy:
    return Policy.model_validate(yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(load_policy(), DEMO_COLUMNS)


def plan(
    catalog: Catalog,
    sql: str,
    *,
    epsilon: float | str | None = None,
    granted: frozenset[str] = GRANTED,
) -> QueryPlan:
    return plan_query(PlanRequest(sql=sql, granted=granted, epsilon=epsilon), catalog)


def rejection(
    catalog: Catalog,
    sql: str,
    *,
    epsilon: float | str | None = None,
    granted: frozenset[str] = GRANTED,
) -> RewriteError:
    with pytest.raises(RewriteError) as info:
        plan(catalog, sql, epsilon=epsilon, granted=granted)
    return info.value


# --------------------------------------------------------------------------------------------
# Must-reject corpus: (sql, expected code)
# --------------------------------------------------------------------------------------------

UNKNOWN_COLUMN = "catalog.unknown_column"
UNKNOWN_TABLE = "catalog.unknown_table"
AGG_REQUIRED = "policy.aggregation_required"
IDENTIFIER = "policy.identifier_reference"
MEASURE = "policy.measure_misuse"
MASKED = "policy.masked_column"
TABLE_FN = "policy.table_function"
FN = "policy.function_not_allowed"
TYPE = "sql.type_mismatch"
MULTI = "sql.multiple_statements"
NOT_SELECT = "sql.not_select"
UNSUPPORTED = "sql.unsupported"
SYNTAX = "sql.syntax"

MUST_REJECT: list[tuple[str, str]] = [
    # Blocked columns anywhere look exactly like columns that do not exist.
    ("SELECT diagnosis FROM visits", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM visits WHERE diagnosis = 'x'", UNKNOWN_COLUMN),
    ("SELECT diagnosis, COUNT(*) FROM visits GROUP BY diagnosis", UNKNOWN_COLUMN),
    ("SELECT COUNT(diagnosis) FROM visits", UNKNOWN_COLUMN),
    ("SELECT COUNT(v.diagnosis) FROM visits v", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM visits AS v WHERE v.diagnosis IS NULL", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM visits ORDER BY diagnosis", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM patients WHERE ssn = '123-45-6789'", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM patients WHERE name IS NULL", UNKNOWN_COLUMN),
    ("SELECT nosuch FROM visits", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM visits WHERE nosuch = 1", UNKNOWN_COLUMN),
    ("SELECT COUNT(*) FROM visits WHERE x.department = 'er'", UNKNOWN_COLUMN),
    ("SELECT COUNT(v) FROM visits v", UNKNOWN_COLUMN),  # a row-as-struct reference
    ("SELECT visits.* FROM visits", UNKNOWN_COLUMN),
    # Unknown tables, other schemas and catalogs.
    ("SELECT COUNT(*) FROM nosuch", UNKNOWN_TABLE),
    ("SELECT COUNT(*) FROM other.visits", UNKNOWN_TABLE),
    ("SELECT COUNT(*) FROM db.main.visits", UNKNOWN_TABLE),
    ("SELECT COUNT(*) FROM information_schema.tables", UNKNOWN_TABLE),
    ("SELECT COUNT(*) FROM pg_catalog.pg_tables", UNKNOWN_TABLE),
    ("SELECT * FROM 'file.csv'", UNKNOWN_TABLE),  # DuckDB would read the file
    ('SELECT COUNT(*) FROM "/etc/passwd"', UNKNOWN_TABLE),
    # Row-level access to a protected table.
    ("SELECT * FROM visits", AGG_REQUIRED),
    ("SELECT * FROM patients", AGG_REQUIRED),
    ("SELECT department FROM visits", AGG_REQUIRED),
    ("SELECT department, COUNT(*) FROM visits", AGG_REQUIRED),
    ("SELECT COUNT(*)", AGG_REQUIRED),
    # Identifiers: never selected, grouped, filtered or summed.
    ("SELECT patient_id FROM visits", IDENTIFIER),
    ("SELECT patient_id, COUNT(*) FROM visits GROUP BY patient_id", IDENTIFIER),
    ("SELECT visit_id, COUNT(*) FROM visits GROUP BY visit_id", IDENTIFIER),
    ("SELECT COUNT(*) FROM visits WHERE patient_id = 3", IDENTIFIER),
    ("SELECT COUNT(*) FROM visits WHERE visit_id > 3", IDENTIFIER),
    ("SELECT COUNT(*) FROM visits WHERE patient_id IN (1, 2)", IDENTIFIER),
    ("SELECT COUNT(*) FROM visits WHERE patient_id IS NULL", IDENTIFIER),
    ("SELECT SUM(patient_id) FROM visits", IDENTIFIER),
    ("SELECT department AS patient_id, COUNT(*) FROM visits GROUP BY patient_id", IDENTIFIER),
    # COUNT(identifier) is "not supported yet" (it would be COUNT(DISTINCT unit)), not a policy error.
    ("SELECT COUNT(patient_id) FROM visits", UNSUPPORTED),
    ("SELECT COUNT(visit_id) FROM visits", UNSUPPORTED),
    # Measures only inside aggregates; SUM/AVG only of measures.
    ("SELECT cost FROM visits", MEASURE),
    ("SELECT cost, COUNT(*) FROM visits GROUP BY cost", MEASURE),
    ("SELECT los_days, SUM(cost) FROM visits GROUP BY los_days", MEASURE),
    ("SELECT SUM(department) FROM visits", MEASURE),
    ("SELECT AVG(visit_day) FROM visits", MEASURE),
    ("SELECT SUM(birth_year) FROM patients", MEASURE),
    # Masked columns.
    ("SELECT email, COUNT(*) FROM patients GROUP BY email", MASKED),
    ("SELECT COUNT(*) FROM patients WHERE email = 'a@example.org'", MASKED),
    ("SELECT COUNT(email) FROM patients", MASKED),
    # Surprising: a bare masked column gets aggregation_required, not masked_column.
    ("SELECT email FROM patients", AGG_REQUIRED),
    # Table functions: files, globs, generators.
    ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", TABLE_FN),
    ("SELECT * FROM read_csv('/etc/passwd')", TABLE_FN),
    ("SELECT * FROM read_text('/etc/passwd')", TABLE_FN),
    ("SELECT * FROM read_parquet('x.parquet')", TABLE_FN),
    ("SELECT * FROM generate_series(1, 10)", TABLE_FN),
    ("SELECT * FROM range(10)", TABLE_FN),
    # Surprising: sqlglot reads GLOB as the pattern operator, so glob('*') is a syntax error.
    ("SELECT * FROM glob('*')", SYNTAX),
    # Functions outside the allow-list.
    ("SELECT query('SELECT * FROM visits') FROM visits", FN),
    ("SELECT pg_read_file('/etc/passwd') FROM visits", FN),
    ("SELECT random() FROM visits", FN),
    ("SELECT COUNT(*), random() FROM visits", FN),
    ("SELECT now() FROM visits", FN),
    ("SELECT columns('cost') FROM visits", FN),
    ("SELECT to_json(v) FROM visits v", FN),
    ("SELECT MAX(visit_day) FROM visits", MEASURE),  # DP quantiles need a bounded number
    ("SELECT COUNT(*) FROM visits WHERE department = 'er' COLLATE \"C\"", FN),
    ("SELECT COUNT(*) FROM visits WHERE random() > 0.5", FN),
    # Casts of data are error oracles; so is CASE ... CAST('x' AS INT).
    ("SELECT CAST(cost AS INT), COUNT(*) FROM visits GROUP BY 1", FN),
    ("SELECT COUNT(*) FROM visits WHERE CAST(department AS INT) = 3", FN),
    ("SELECT COUNT(*) FROM visits WHERE cost > 5::int", FN),
    ("SELECT COUNT(*) FROM visits WHERE department = CAST('x' AS INT)", FN),
    # Surprising: CASE is a sqlglot Func, so it is function_not_allowed ("function case()").
    ("SELECT COUNT(CASE WHEN department = 'er' THEN CAST('x' AS INT) END) FROM visits", FN),
    ("SELECT COUNT(*) FROM visits WHERE CASE WHEN cost > 1 THEN TRUE END", UNSUPPORTED),
    # Literals of the wrong type would make the warehouse cast data.
    ("SELECT COUNT(*) FROM visits WHERE department = 3", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE cost = 'abc'", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE visit_day = 'not-a-date'", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE visit_day = '2024-02-30'", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE visit_day = 3", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE los_days IN (1, 'two')", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE cost BETWEEN 'a' AND 5", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE department = visit_day", TYPE),
    ("SELECT COUNT(*) FROM visits WHERE cost = NULL", TYPE),
    ("SELECT COUNT(*) FROM departments WHERE floor = 'x'", TYPE),
    # One statement, and only SELECT.
    ("SELECT 1; DROP TABLE visits", MULTI),
    ("SELECT COUNT(*) FROM visits; SELECT COUNT(*) FROM patients", MULTI),
    ("DROP TABLE visits", NOT_SELECT),
    ("INSERT INTO visits VALUES (1)", NOT_SELECT),
    ("UPDATE visits SET cost = 0", NOT_SELECT),
    ("DELETE FROM visits", NOT_SELECT),
    ("COPY visits TO '/tmp/x.csv'", NOT_SELECT),
    ("PRAGMA table_info('visits')", NOT_SELECT),
    ("SET threads = 1", NOT_SELECT),
    ("LOAD httpfs", NOT_SELECT),
    ("CREATE TABLE x AS SELECT 1", NOT_SELECT),
    # Surprising: these DuckDB statements do not parse as PostgreSQL, so they are syntax errors.
    ("ATTACH 'x.db' AS x", SYNTAX),
    ("INSTALL httpfs", SYNTAX),
    ("EXPORT DATABASE '/tmp/x'", SYNTAX),
    # Outside the supported subset.
    ("SELECT COUNT(*) FROM visits, patients", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE cost > (SELECT 1)", UNSUPPORTED),
    (
        "SELECT COUNT(*) FROM visits WHERE department IN (SELECT department FROM departments)",
        UNSUPPORTED,
    ),
    ("SELECT COUNT(*) FROM visits UNION SELECT COUNT(*) FROM visits", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits EXCEPT SELECT COUNT(*) FROM patients", UNSUPPORTED),
    ("SELECT COUNT(*) OVER () FROM visits", UNSUPPORTED),
    ("SELECT DISTINCT department FROM visits", UNSUPPORTED),
    ("SELECT COUNT(*) FILTER (WHERE cost > 5) FROM visits", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits TABLESAMPLE (10 PERCENT)", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE department LIKE 'o%'", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE department NOT LIKE 'o%'", UNSUPPORTED),
    # Re-built as plain joins, these would join other rows.
    (
        "SELECT COUNT(*) FROM visits v ANTI JOIN patients p ON v.patient_id = p.patient_id",
        UNSUPPORTED,
    ),
    (
        "SELECT COUNT(*) FROM visits v SEMI JOIN patients p ON v.patient_id = p.patient_id",
        UNSUPPORTED,
    ),
    (
        "SELECT COUNT(*) FROM visits v LEFT ANTI JOIN patients p ON v.patient_id = p.patient_id",
        UNSUPPORTED,
    ),
    # Rebuilt as a plain BETWEEN, the swapped bounds would select nothing.
    ("SELECT COUNT(*) FROM visits WHERE cost BETWEEN SYMMETRIC 500 AND 100", UNSUPPORTED),
    ("SELECT department, COUNT(*) FROM visits GROUP BY ROLLUP (department)", UNSUPPORTED),
    ("SELECT department, COUNT(*) FROM visits GROUP BY ALL", UNSUPPORTED),
    ("SELECT department FROM visits GROUP BY department", UNSUPPORTED),  # no aggregate
    ("SELECT COUNT(*) FROM visits ORDER BY cost", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits LIMIT -1", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits LIMIT 1000001", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE department = $1", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE department = ?", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE department", UNSUPPORTED),
    ("SELECT COUNT(*) FROM visits WHERE (cost) > 5", UNSUPPORTED),
    ("(SELECT COUNT(*) FROM visits)", UNSUPPORTED),
    # Not SQL at all.
    ("SELEC COUNT(*) FROM visits", SYNTAX),
    ("SELECT COUNT(* FROM visits", SYNTAX),
    ("SELECT COUNT(*) FROM visits WHERE", SYNTAX),
    ("SELECT 'unterminated FROM visits", SYNTAX),
    ("", SYNTAX),
    ("   ;  ", SYNTAX),
]


@pytest.mark.parametrize(("sql", "code"), MUST_REJECT, ids=[s[:70] for s, _ in MUST_REJECT])
def test_must_reject(catalog: Catalog, sql: str, code: str) -> None:
    error = rejection(catalog, sql)
    assert error.code == code, error.message
    assert type(error).code == code  # the code is a property of the class: stable
    assert error.message
    assert error.hint


def test_corpus_is_large_and_covers_every_code() -> None:
    assert len(MUST_REJECT) >= 40
    assert {code for _, code in MUST_REJECT} >= {
        UNKNOWN_COLUMN,
        UNKNOWN_TABLE,
        AGG_REQUIRED,
        IDENTIFIER,
        MEASURE,
        MASKED,
        TABLE_FN,
        FN,
        TYPE,
        MULTI,
        NOT_SELECT,
        UNSUPPORTED,
        SYNTAX,
    }


def test_every_rejected_statement_parses_or_is_a_syntax_error() -> None:
    """Each corpus entry is rejected for the reason named, not because sqlglot choked on it."""
    for sql, code in MUST_REJECT:
        if code == SYNTAX:
            continue
        try:
            sqlglot.parse(sql, read="postgres")
        except sqlglot.errors.ParseError as exc:  # pragma: no cover - a corpus mistake
            pytest.fail(f"{sql!r} does not parse ({exc}) but is expected to give {code}")


# --------------------------------------------------------------------------------------------
# Blocked columns are indistinguishable from missing ones
# --------------------------------------------------------------------------------------------

BLOCKED_TEMPLATES = [
    ("visits", "SELECT {c} FROM visits"),
    ("visits", "SELECT COUNT(*) FROM visits WHERE {c} = 'x'"),
    ("visits", "SELECT COUNT(*) FROM visits WHERE {c} IS NOT NULL"),
    ("visits", "SELECT {c}, COUNT(*) FROM visits GROUP BY {c}"),
    ("visits", "SELECT COUNT({c}) FROM visits"),
    ("visits", "SELECT SUM({c}) FROM visits"),
    ("visits", "SELECT COUNT(v.{c}) FROM visits v"),
    ("visits", "SELECT COUNT(*) FROM visits AS v WHERE v.{c} = 'x'"),
    ("visits", "SELECT COUNT(*) FROM visits ORDER BY {c}"),
    ("patients", "SELECT COUNT(*) FROM patients WHERE {c} = '123-45-6789'"),
    ("patients", "SELECT {c}, COUNT(*) FROM patients GROUP BY {c}"),
]
BLOCKED = {"visits": ("diagnosis",), "patients": ("ssn", "name")}


@pytest.mark.parametrize(("table", "template"), BLOCKED_TEMPLATES)
def test_blocked_column_looks_like_a_missing_one(
    catalog: Catalog, table: str, template: str
) -> None:
    missing = rejection(catalog, template.format(c="zz_missing_col"))
    for blocked in BLOCKED[table]:
        error = rejection(catalog, template.format(c=blocked))
        assert type(error) is type(missing)
        assert error.code == missing.code == UNKNOWN_COLUMN
        assert error.message.replace(blocked, "<col>") == missing.message.replace(
            "zz_missing_col", "<col>"
        )
        assert error.hint == missing.hint


def test_undeclared_column_of_a_protected_table_is_invisible() -> None:
    """A warehouse column the policy forgot is blocked (fail closed) and looks missing too."""
    columns = {**DEMO_COLUMNS, "visits": [*DEMO_COLUMNS["visits"], ("notes", "VARCHAR")]}
    cat = build_catalog(load_policy(), columns)
    undeclared = rejection(cat, "SELECT COUNT(*) FROM visits WHERE notes = 'x'")
    missing = rejection(cat, "SELECT COUNT(*) FROM visits WHERE zz_missing = 'x'")
    assert undeclared.code == missing.code == UNKNOWN_COLUMN
    assert undeclared.message.replace("notes", "<c>") == missing.message.replace(
        "zz_missing", "<c>"
    )
    # ...but it is still part of the contribution-bounding hash (the unit's whole row).
    sql = plan(cat, "SELECT COUNT(*) FROM visits").warehouse_sql
    assert '"notes"' in sql


# --------------------------------------------------------------------------------------------
# Grants and epsilon
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM visits",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
        "SELECT * FROM departments",
        # Column names are not checked before the grant: an ungranted analyst learns nothing
        # about which columns exist or are blocked.
        "SELECT COUNT(diagnosis) FROM visits",
        "SELECT COUNT(zz_missing) FROM visits",
    ],
)
@pytest.mark.parametrize("granted", [frozenset(), frozenset({"other"})])
def test_ungranted_dataset(catalog: Catalog, sql: str, granted: frozenset[str]) -> None:
    # Tables of ungranted datasets look exactly like tables that do not exist.
    error = rejection(catalog, sql, granted=granted)
    missing = rejection(catalog, "SELECT COUNT(*) FROM zz_no_such_table", granted=granted)
    assert error.code == missing.code == "catalog.unknown_table"
    table = sql.split(" FROM ")[1].split()[0]
    assert error.message.replace(table, "X") == missing.message.replace("zz_no_such_table", "X")
    assert error.hint == missing.hint


def test_ungranted_messages_do_not_depend_on_columns(catalog: Catalog) -> None:
    a = rejection(catalog, "SELECT COUNT(diagnosis) FROM visits", granted=frozenset())
    b = rejection(catalog, "SELECT COUNT(zz_missing) FROM visits", granted=frozenset())
    assert (a.message, a.hint) == (b.message, b.hint)


@pytest.mark.parametrize(
    "epsilon",
    [
        0,
        0.0,
        "0",
        -1,
        -0.5,
        "-0.1",
        "abc",
        "",
        float("nan"),
        float("inf"),
    ],
)
def test_invalid_epsilon(catalog: Catalog, epsilon: float | str) -> None:
    error = rejection(catalog, "SELECT COUNT(*) FROM visits", epsilon=epsilon)
    assert error.code == "request.invalid_epsilon"


@pytest.mark.parametrize("epsilon", [1.0000001, 1.5, "2", 101])
def test_epsilon_above_per_query_max(catalog: Catalog, epsilon: float | str) -> None:
    from budgets.errors import QueryCostTooHigh

    with pytest.raises(QueryCostTooHigh) as info:
        plan(catalog, "SELECT COUNT(*) FROM visits", epsilon=epsilon)
    assert info.value.code == "budget.query_max"
    assert "per-query maximum" in info.value.message


@pytest.mark.parametrize("epsilon", [True, 1e-300, "1e-7"])
def test_epsilon_not_a_number_or_too_small(catalog: Catalog, epsilon: float | str) -> None:
    error = rejection(catalog, "SELECT COUNT(*) FROM visits", epsilon=epsilon)
    assert error.code == "request.invalid_epsilon"


@pytest.mark.parametrize(
    ("epsilon", "expected"),
    [
        (None, DEFAULT_EPSILON),
        (0.1, Fraction(1, 10)),
        ("0.3", Fraction(3, 10)),
        (1, Fraction(1)),  # exactly per_query_max is allowed
        ("1/3", Fraction(1, 3)),
        (0.7, Fraction(7, 10)),
    ],
)
def test_requested_epsilon_is_charged_exactly(
    catalog: Catalog, epsilon: float | str | None, expected: Fraction
) -> None:
    p = plan(catalog, "SELECT COUNT(*), SUM(cost) FROM visits", epsilon=epsilon)
    assert isinstance(p.cost.epsilon, Fraction)
    assert p.cost.epsilon == expected
    assert sum(m.epsilon for m in p.measurements) == expected


# --------------------------------------------------------------------------------------------
# Rejection messages never echo a literal of the query
# --------------------------------------------------------------------------------------------

_LEAK = "leaks a query literal into the rejection message (which the audit log stores)"

NO_LITERAL_ECHO = [
    f"SELECT COUNT(*) FROM visits WHERE visit_day = '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE visit_day > TIMESTAMP '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE cost = '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE cost BETWEEN '{SECRET}' AND 5",
    f"SELECT COUNT(*) FROM visits WHERE los_days IN (1, '{SECRET}')",
    f"SELECT COUNT(*) FROM visits WHERE department = 42 OR department = '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE department IS '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE '{SECRET}' = '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE department LIKE '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}' AND diagnosis = 'x'",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}' AND patient_id = 7",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}' AND random() > 0",
    f"SELECT COUNT(*) FROM visits WHERE department = CAST('{SECRET}' AS INT)",
    f"SELECT COUNT(*) FROM patients WHERE email = '{SECRET}'",
    f"SELECT COUNT(*), '{SECRET}' FROM visits",
    f"SELECT COUNT(*) FROM visits LIMIT '{SECRET}'",
    f"SELECT department, COUNT(*) FROM visits WHERE department = '{SECRET}' GROUP BY diagnosis",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}'; SELECT 1",
    f"SELECT COUNT(*) FROM visits WHERE department IN ('{SECRET}' GROUP BY 1",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}' AND",
    f"DELETE FROM visits WHERE department = '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE NOT '{SECRET}'",
    f"SELECT COUNT(*) FROM visits WHERE department = 'er' AND '{SECRET}'",
    f"SELECT COUNT(*) FROM departments WHERE '{SECRET}'",
    f"SELECT COUNT(*) FROM visits ORDER BY '{SECRET}'",
    f"SELECT COUNT(*), department = '{SECRET}' FROM visits",
    f"SELECT COUNT(*) FROM read_csv('/data/{SECRET}.csv')",
    f"SELECT COUNT(*) FROM visits WHERE department = '{SECRET}",
]


@pytest.mark.parametrize("sql", NO_LITERAL_ECHO)
def test_rejection_message_has_no_literal(catalog: Catalog, sql: str) -> None:
    error = rejection(catalog, sql)
    # "secret-literal" rather than the whole literal: sqlglot's tokenizer errors cut the text short.
    assert "secret-literal" not in error.message, error.message
    assert "secret-literal" not in error.hint


# --------------------------------------------------------------------------------------------
# Accepted shapes
# --------------------------------------------------------------------------------------------


def test_count_star_plan(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT COUNT(*) FROM visits")
    assert p.protected
    assert p.dataset == "clinic"
    assert p.tables == ("visits",)
    assert p.cost.epsilon == DEFAULT_EPSILON
    assert p.cost.delta == 0
    assert p.threshold is None
    assert p.group_keys == ()
    assert not p.zero_fill
    assert p.max_rows_per_unit == 5
    assert [(m.column, m.kind, m.sensitivity, m.fixed_point) for m in p.measurements] == [
        ("m0", MeasurementKind.COUNT, 5, 1)
    ]
    assert [(o.name, o.kind, o.measurement) for o in p.outputs] == [
        ("count", OutputKind.COUNT, "m0")
    ]
    assert p.order_by == () and p.limit is None and p.offset == 0


@pytest.mark.parametrize(
    ("sql", "kind", "sensitivity", "fixed_point"),
    [
        ("SELECT COUNT(*) FROM visits", MeasurementKind.COUNT, 5, 1),
        ("SELECT COUNT(cost) FROM visits", MeasurementKind.COUNT, 5, 1),
        ("SELECT COUNT(department) FROM visits", MeasurementKind.COUNT, 5, 1),
        ("SELECT COUNT(*) FROM patients", MeasurementKind.COUNT, 5, 1),
        # DOUBLE measure: a fixed-point integer sum, 1/1000 units, clamped to [0, 5000].
        ("SELECT SUM(cost) FROM visits", MeasurementKind.SUM, 5 * 5000 * 1000, 1000),
        # INTEGER measure with integer bounds [0, 30]: summed as is.
        ("SELECT SUM(los_days) FROM visits", MeasurementKind.SUM, 5 * 30, 1),
    ],
)
def test_measurement_sensitivity(
    catalog: Catalog, sql: str, kind: MeasurementKind, sensitivity: int, fixed_point: int
) -> None:
    (m,) = plan(catalog, sql).measurements
    assert (m.kind, m.sensitivity, m.fixed_point) == (kind, sensitivity, fixed_point)
    assert isinstance(m.sensitivity, int)


def test_avg_is_a_sum_over_a_count(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT AVG(cost) AS mean_cost FROM visits")
    (out,) = p.outputs
    assert (out.name, out.kind, out.bounds) == ("mean_cost", OutputKind.AVG, (0.0, 5000.0))
    by_name = {m.column: m for m in p.measurements}
    assert out.measurement is not None and out.denominator is not None
    num, den = by_name[out.measurement], by_name[out.denominator]
    # The sum is centred on the interval's midpoint, 2,500 (2,500,000 in fixed point): each of
    # a unit's 5 rows moves it by at most 2,500,000, half of the plain sum's 5,000,000.
    assert (num.kind, num.sensitivity, num.fixed_point) == (MeasurementKind.SUM, 12_500_000, 1000)
    assert (num.center, num.center_count) == (2_500_000, den.column)
    assert (den.kind, den.sensitivity, den.center_count) == (MeasurementKind.COUNT, 5, None)
    # Non-null costs, not all rows: the column itself, NULL exactly when its clamp is.
    assert '__pg_t."cost" AS "a1"' in p.warehouse_sql and 'COUNT("a1")' in p.warehouse_sql
    assert 'END) AS "a0"' in p.warehouse_sql


def test_repeated_aggregates_are_measured_once(catalog: Catalog) -> None:
    p = plan(
        catalog, "SELECT COUNT(*), COUNT(*) AS n, SUM(cost), AVG(cost) FROM visits", epsilon="0.6"
    )
    # COUNT(*), SUM(cost), COUNT(cost): the second COUNT(*) and AVG's SUM are post-processing.
    assert [m.kind for m in p.measurements] == [
        MeasurementKind.COUNT,
        MeasurementKind.SUM,
        MeasurementKind.COUNT,
    ]
    assert all(m.epsilon == Fraction(1, 5) for m in p.measurements)
    assert p.outputs[0].measurement == p.outputs[1].measurement
    assert p.outputs[2].measurement == p.outputs[3].measurement
    # The SUM output needs the plain sum, so the AVG reads it too: nothing is centred.
    assert p.measurements[1].sensitivity == 25_000_000
    assert all((m.center, m.center_count) == (0, None) for m in p.measurements)


@pytest.mark.parametrize(
    ("sql", "centred"),
    [
        ("SELECT AVG(cost) AS a, AVG(cost) AS b FROM visits", True),  # one sum, one count
        ("SELECT AVG(cost) AS a, VARIANCE(cost) AS v FROM visits", False),  # VAR: plain sum
        ("SELECT AVG(cost) * 2 AS a FROM visits", True),  # a hidden AVG in a formula
        ("SELECT AVG(cost) AS a FROM visits HAVING SUM(cost) > 10", False),  # hidden SUM
    ],
)
def test_a_sum_is_centred_only_when_only_an_avg_reads_it(
    catalog: Catalog, sql: str, centred: bool
) -> None:
    p = plan(catalog, sql, epsilon="0.6")
    sums = [m for m in p.measurements if m.kind is MeasurementKind.SUM]
    assert len(sums) == (2 if "VARIANCE" in sql else 1)  # VARIANCE adds SUM(cost * cost)
    assert (sums[0].center_count is not None) is centred
    assert sums[0].sensitivity == (12_500_000 if centred else 25_000_000)


@pytest.mark.parametrize(
    ("sql", "epsilon"),
    [
        ("SELECT COUNT(*) FROM visits", "0.1"),
        ("SELECT COUNT(*), SUM(cost), AVG(los_days) FROM visits", "0.1"),
        ("SELECT visit_day, COUNT(*), SUM(cost) FROM visits GROUP BY visit_day", "0.7"),
        (
            "SELECT department, visit_day, AVG(cost), AVG(los_days) FROM visits "
            "GROUP BY department, visit_day",
            "1",
        ),
        ("SELECT birth_year, COUNT(*) FROM patients GROUP BY birth_year", 0.3),
        ("SELECT sex, COUNT(*) FROM patients GROUP BY sex", None),
    ],
)
def test_budget_shares_sum_to_epsilon_exactly(
    catalog: Catalog, sql: str, epsilon: str | float | None
) -> None:
    p = plan(catalog, sql, epsilon=epsilon)
    shares = [m.epsilon for m in p.measurements]
    if p.threshold is not None:
        shares.append(p.threshold.epsilon)
    assert all(isinstance(s, Fraction) and s > 0 for s in shares)
    assert sum(shares, Fraction(0)) == p.cost.epsilon


@pytest.mark.parametrize(
    ("sql", "zero_fill", "thresholded"),
    [
        ("SELECT COUNT(*) FROM visits", False, False),
        ("SELECT department, COUNT(*) FROM visits GROUP BY department", True, False),
        ("SELECT COUNT(*) FROM visits GROUP BY department", True, False),
        ("SELECT sex, insurance, COUNT(*) FROM patients GROUP BY sex, insurance", True, False),
        ("SELECT visit_day, COUNT(*) FROM visits GROUP BY visit_day", False, True),
        (
            "SELECT department, visit_day, SUM(cost) FROM visits GROUP BY department, visit_day",
            False,
            True,
        ),
        ("SELECT zip3, COUNT(*) FROM patients GROUP BY zip3", False, True),
        ("SELECT sex, birth_year, COUNT(*) FROM patients GROUP BY 1, 2", False, True),
    ],
)
def test_group_key_handling(catalog: Catalog, sql: str, zero_fill: bool, thresholded: bool) -> None:
    p = plan(catalog, sql)
    assert p.zero_fill is zero_fill
    assert (p.threshold is not None) is thresholded
    if thresholded:
        assert p.threshold is not None
        assert p.cost.delta == DEFAULT_DELTA
        assert p.threshold.delta == DEFAULT_DELTA
        assert p.threshold.max_groups == 5
        assert p.threshold.min_group_size == 10
        assert p.threshold.units_column in p.warehouse_sql
        assert any(k.public_domain is None for k in p.group_keys)
    else:
        # delta is only spent when a group key without a public domain must be thresholded.
        assert p.cost.delta == 0
        assert p.threshold is None
        assert "DISTINCT" not in p.warehouse_sql


def test_public_domain_comes_from_the_policy(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT department, COUNT(*) FROM visits GROUP BY department")
    (key,) = p.group_keys
    assert key.source == "department"
    assert key.public_domain is not None
    assert set(key.public_domain) == {
        "cardiology",
        "oncology",
        "er",
        "pediatrics",
        "neurology",
        "orthopedics",
        "radiology",
        "dermatology",
    }


def test_order_by_and_limit_are_post_processing(catalog: Catalog) -> None:
    p = plan(
        catalog,
        "SELECT department AS d, COUNT(*) AS n, SUM(cost) FROM visits GROUP BY d "
        "ORDER BY n DESC, 1 LIMIT 3 OFFSET 2",
    )
    assert p.order_by == (SortKey(1, True), SortKey(0, False))
    assert (p.limit, p.offset) == (3, 2)
    assert [o.name for o in p.outputs] == ["d", "n", "sum"]
    # The warehouse sorts nothing and cuts nothing: only the bounding window has an ORDER BY.
    tree = sqlglot.parse_one(p.warehouse_sql, read="duckdb")
    assert all(select.args.get("order") is None for select in tree.find_all(exp.Select))
    assert all(select.args.get("limit") is None for select in tree.find_all(exp.Select))
    assert "LIMIT" not in p.warehouse_sql.upper()


def test_order_by_aggregate_expression(catalog: Catalog) -> None:
    p = plan(
        catalog, "SELECT department, COUNT(*) FROM visits GROUP BY department ORDER BY COUNT(*)"
    )
    assert p.order_by == (SortKey(1, False),)


def test_salt_is_a_parameter(catalog: Catalog) -> None:
    p = plan(
        catalog,
        "SELECT department, COUNT(*) FROM visits WHERE department IN ('?', 'er') "
        "GROUP BY department",
    )
    assert p.parameters == ("salt",)
    tree = sqlglot.parse_one(p.warehouse_sql, read="duckdb")
    # Exactly one placeholder (the salt), even with a '?' inside a string literal.
    assert len(list(tree.find_all(exp.Placeholder))) == len(p.parameters) == 1
    assert "hash(hash(?," in p.warehouse_sql
    # Bounding: per unit, keyed hash of the unit's whole row, at most max_rows_per_unit rows.
    assert 'PARTITION BY __pg_t."patient_id"' in p.warehouse_sql
    assert "__pg_rank <= 5" in p.warehouse_sql
    assert '__pg_t."patient_id" IS NOT NULL' in p.warehouse_sql
    all_columns = ", ".join(f'__pg_t."{c}"' for c, _ in DEMO_COLUMNS["visits"])
    assert f"hash(hash(?, {all_columns}))" in p.warehouse_sql
    assert "random" not in p.warehouse_sql.lower()


def test_redacted_sql_holds_no_analyst_literal(catalog: Catalog) -> None:
    literals = ["oncology", "cardiology", "2024-03-15", "1234.5", "4321", "it''s"]
    p = plan(
        catalog,
        "SELECT department, SUM(cost) FROM visits WHERE (department IN ('oncology', 'cardiology') "
        "OR department = 'it''s') AND visit_day >= DATE '2024-03-15' AND cost > 1234.5 "
        "AND NOT los_days BETWEEN 4321 AND 4322 GROUP BY department LIMIT 7",
    )
    for lit in literals:
        assert lit in p.warehouse_sql or lit in p.normalized_sql  # sanity: the literal was there
        assert lit not in p.redacted_sql, p.redacted_sql
        assert lit not in p.redacted_warehouse_sql, p.redacted_warehouse_sql
    # The bounds come from the policy, not the analyst: they stay.
    assert "5000" in p.redacted_warehouse_sql


def test_warehouse_sql_clamps_measures(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT SUM(cost), SUM(los_days) FROM visits")
    # Clamped where read (in double precision), and again at the sum to the expression's bounds.
    assert 'LEAST(GREATEST(CAST(__pg_t."cost" AS DOUBLE), 0), 5000)' in p.warehouse_sql
    assert 'LEAST(GREATEST("a0", 0.0), 5000.0) END) * 1000' in p.warehouse_sql
    assert 'LEAST(GREATEST("a1", 0), 30) END) * 1) AS BIGINT)' in p.warehouse_sql


def test_where_is_rebuilt_with_typed_literals(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT COUNT(*) FROM visits WHERE visit_day > '20240101' AND 100 <= cost")
    assert "CAST('2024-01-01' AS DATE)" in p.warehouse_sql  # parsed in Python, ISO out
    assert '__pg_t."cost" >= 100' in p.warehouse_sql  # flipped: column on the left


def test_public_table_plan(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT * FROM departments WHERE floor > 1")
    assert not p.protected
    assert p.cost.epsilon == 0 and p.cost.delta == 0
    assert p.measurements == () and p.threshold is None and p.parameters == ()
    assert [o.name for o in p.outputs] == ["department", "building", "floor"]
    assert p.warehouse_sql.endswith("LIMIT 10000")


# --------------------------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------------------------

PURITY_QUERIES = [
    "SELECT COUNT(*) FROM visits",
    "SELECT department AS d, COUNT(*) AS n, AVG(cost) FROM visits v WHERE v.visit_day "
    "BETWEEN '2024-01-01' AND DATE '2024-06-30' AND NOT (cost < 10 OR los_days IS NULL) "
    "GROUP BY d ORDER BY n DESC LIMIT 5",
    "SELECT visit_day, department, SUM(los_days) FROM visits WHERE 3 < los_days "
    "GROUP BY 1, 2 ORDER BY 3",
    "SELECT sex, COUNT(*) FROM patients WHERE birth_year IN (1950, 1960) GROUP BY sex",
    "SELECT * FROM departments",
]


@pytest.mark.parametrize("sql", PURITY_QUERIES)
def test_planning_twice_gives_equal_plans(catalog: Catalog, sql: str) -> None:
    first, second = plan(catalog, sql, epsilon="0.4"), plan(catalog, sql, epsilon="0.4")
    assert first == second
    assert hash(first.warehouse_sql) == hash(second.warehouse_sql)


@pytest.mark.parametrize("sql", PURITY_QUERIES[:4])
def test_rules_do_not_mutate_the_tree(catalog: Catalog, sql: str) -> None:
    tree = parse_select(sql)
    pristine = tree.copy()
    allow_nodes(tree)
    resolved = resolve_table(tree, catalog, GRANTED)
    resolution = resolve_columns(tree, resolved)
    check_where(tree, resolution)
    shape = shape_aggregates(tree, resolution)
    order_limit(tree, shape.outputs, resolution)
    plan(catalog, sql)
    assert tree == pristine
    assert tree.sql(dialect="postgres") == pristine.sql(dialect="postgres")


def test_plan_is_immutable(catalog: Catalog) -> None:
    p = plan(catalog, "SELECT COUNT(*) FROM visits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.warehouse_sql = "SELECT 1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.measurements[0].sensitivity = 1  # type: ignore[misc]
