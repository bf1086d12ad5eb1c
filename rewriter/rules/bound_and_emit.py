"""Rule 7: emit the warehouse SQL, with contribution bounding and clamping.

Two forms bound contributions. *Per-query bounding* (the fallback): among the rows that pass
the analyst's WHERE, each unit keeps at most ``max_rows_per_unit`` rows, chosen by ranking the unit's
own rows by a *keyed* hash of their content. The key (salt) is a query parameter, never part of the
SQL text, so it is neither logged nor audited. The choice for one unit depends only on that unit's
rows, so adding or removing a unit leaves every other unit's kept rows unchanged — the property the
sensitivity argument needs (docs/privacy-model.md, "Contribution bounding"). Rows whose unit is NULL
belong to nobody we can bound and are dropped.

*Bounded snapshots* (``prebounded=True``): the gateway has built, once per data version, a copy of
the table in which each unit already keeps at most ``max_rows_per_unit`` rows, chosen by the very
same keyed ranking over the unit's rows of the whole table (:func:`snapshot_select`). The query
then filters and aggregates the copy with no window at all: a WHERE can only drop rows, so each
unit still contributes at most K rows, and the same sensitivity argument holds (docs/
privacy-model.md, "Bounded snapshots").
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.catalog import CatalogColumn, CatalogTable
from rewriter.errors import Unsupported
from rewriter.plan import MeasurementKind
from rewriter.rules.check_where import BASE, base_column
from rewriter.rules.row_expr import RowValue
from rewriter.rules.shape_aggregates import MeasurementDraft

UNITS_COLUMN = "__pg_units"
SALT_PARAMETER = "salt"
SUPPORTED_DIALECTS = ("duckdb", "postgres", "spark")

#: How the emitted SQL refers to its first parameter (the salt), per dialect. DuckDB takes a
#: positional ``?``; on PostgreSQL the adapter sets it as a transaction-local setting
#: (gateway.warehouse_pg.parameter_setting) and the statement goes without placeholders; Spark
#: takes positional ``?`` markers bound by ``spark.sql(query, args=[…])`` (gateway.warehouse_spark).
SALT_REF = {"duckdb": "?", "postgres": "current_setting('privgate.p1')", "spark": "?"}


def _q(name: str, dialect: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect=dialect)


def bound_and_emit(
    *,
    table: CatalogTable,
    unit: CatalogColumn,
    keys: tuple[RowValue, ...],
    measurements: tuple[MeasurementDraft, ...],
    predicate: exp.Expression | None,
    max_rows_per_unit: int,
    with_units: bool,
    dialect: str,
    prebounded: bool = False,
) -> str:
    """Return the warehouse SQL computing one row per group: keys k0.., measurements m0.., units.

    Row expressions (group keys ``g<i>``, aggregate arguments ``a<j>``) are computed in the
    inner query over the base table ``__pg_t``; the outer query aggregates the kept rows.
    ``prebounded``: ``table`` is a bounded snapshot with at most ``max_rows_per_unit`` rows per
    unit; no ranking (and no salt parameter) is emitted.
    """
    if dialect not in SUPPORTED_DIALECTS:
        raise Unsupported(f"warehouse dialect {dialect!r} is not supported yet")
    inner_cols = [f"{k.sql} AS {_q(f'g{i}', dialect)}" for i, k in enumerate(keys)]
    args: dict[str, str] = {}
    for m in measurements:
        if m.arg is not None and m.arg.sql not in args:
            args[m.arg.sql] = f"a{len(args)}"
            inner_cols.append(f"{m.arg.sql} AS {_q(args[m.arg.sql], dialect)}")
    unit_sql = base_column(unit).sql(dialect=dialect)
    all_cols = [base_column(c).sql(dialect=dialect) for c in table.columns.values()]
    where = f"{unit_sql} IS NOT NULL"
    if predicate is not None:
        where += f" AND ({predicate.sql(dialect=dialect)})"
    if prebounded:
        inner = ", ".join([*inner_cols, f"{unit_sql} AS __pg_unit"])
        kept = ""
    else:
        inner = ", ".join(
            [
                *inner_cols,
                f"{unit_sql} AS __pg_unit",
                f"{_rank(unit_sql, all_cols, dialect)} AS __pg_rank",
            ]
        )
        kept = f" WHERE __pg_rank <= {int(max_rows_per_unit)}"
    outer: list[str] = [f"{_q(f'g{i}', dialect)} AS k{i}" for i in range(len(keys))]
    for i, m in enumerate(measurements):
        arg = _q(args[m.arg.sql], dialect) if m.arg is not None else ""
        outer.append(f"{measurement_sql(m, arg, dialect)} AS m{i}")
    if with_units:
        outer.append(f"COUNT(DISTINCT __pg_unit) AS {UNITS_COLUMN}")
    group = group_by(len(keys), dialect)
    return (
        f"WITH __pg_rows AS (SELECT {inner} FROM {_q(table.name, dialect)} AS {BASE} WHERE {where}) "
        f"SELECT {', '.join(outer)} FROM __pg_rows{kept}{group}"
    )


def group_by(n_keys: int, dialect: str) -> str:
    """The outer GROUP BY over the keys ``k0``… (empty without keys).

    Spark groups by the inner columns ``g0``…: grouping by a SELECT alias there depends on
    ``spark.sql.groupByAliases``, which a cluster may have turned off.
    """
    if not n_keys:
        return ""
    if dialect == "spark":
        return f" GROUP BY {', '.join(_q(f'g{i}', dialect) for i in range(n_keys))}"
    return f" GROUP BY {', '.join(f'k{i}' for i in range(n_keys))}"


def row_digest(columns: list[str], dialect: str) -> str:
    """A keyed hash of a row's content: the salt parameter and every column, in table order.

    DuckDB: its 64-bit ``hash`` of (salt, columns). PostgreSQL: ``md5`` of the salt and the row's
    text form (deterministic: floats print shortest-exact since PostgreSQL 12). Spark: 64-bit
    ``xxhash64`` of the salt and each column's own ``xxhash64``: Spark's hash functions skip NULL
    arguments (``xxhash64(1, NULL) = xxhash64(NULL, 1)``), so each column is hashed alone first
    and a NULL still takes its place (as the seed, 42). Each is a deterministic function of the
    row's values and the salt, whatever the engine's partitioning.

    >>> row_digest(["t.a", "t.b"], "spark")
    'xxhash64(?, xxhash64(t.a), xxhash64(t.b))'
    """
    salt = SALT_REF[dialect]
    if dialect == "postgres":
        return f"md5({salt} || CAST(ROW({', '.join(columns)}) AS TEXT))"
    if dialect == "spark":
        return f"xxhash64({salt}, {', '.join(f'xxhash64({c})' for c in columns)})"
    return f"hash(hash({salt}, {', '.join(columns)}))"


def _rank(unit_sql: str, all_cols: list[str], dialect: str) -> str:
    """Each row's rank among its unit's rows, by a keyed hash of the row's content
    (:func:`row_digest`). Rows that tie are identical, so which of them is kept changes no
    aggregate.
    """
    return f"ROW_NUMBER() OVER (PARTITION BY {unit_sql} ORDER BY {row_digest(all_cols, dialect)})"


def snapshot_select(
    *, table: CatalogTable, unit: CatalogColumn, max_rows_per_unit: int, dialect: str
) -> str:
    """The rows of ``table`` a bounded snapshot keeps: at most K per unit, ranked exactly as the
    per-query form ranks them (one salt parameter ``?``), units that are NULL dropped.

    On a query without WHERE the two forms keep the same rows, so they give the same exact
    aggregates; with a WHERE the snapshot's K rows were chosen before the filter (a utility
    bias on heavy units, never a privacy loss).
    """
    if dialect != "duckdb":
        raise Unsupported(f"bounded snapshots are not built on {dialect!r} warehouses")
    unit_sql = base_column(unit).sql(dialect=dialect)
    all_cols = [base_column(c).sql(dialect=dialect) for c in table.columns.values()]
    return (
        f"SELECT * FROM {_q(table.name, dialect)} AS {BASE} WHERE {unit_sql} IS NOT NULL "
        f"QUALIFY {_rank(unit_sql, all_cols, dialect)} <= {int(max_rows_per_unit)}"
    )


def measurement_sql(m: MeasurementDraft, arg: str, dialect: str = "duckdb") -> str:
    if m.kind is MeasurementKind.COUNT:
        return "COUNT(*)" if m.arg is None else f"COUNT({arg})"
    if m.kind is MeasurementKind.COUNT_UNITS:
        return "COUNT(DISTINCT __pg_unit)"
    if m.kind is MeasurementKind.COUNT_DISTINCT:
        return f"COUNT(DISTINCT {arg})"
    assert m.clamp is not None
    low, high = m.clamp
    if m.kind is MeasurementKind.QUANTILE:
        # The group's clamped values, for OpenDP's quantile (NULLs dropped in the release).
        # GREATEST skips NULLs: without the CASE a NULL would be listed as `low`.
        value = (
            f"CASE WHEN {arg} IS NULL THEN NULL ELSE LEAST(GREATEST({arg}, {low!r}), {high!r}) END"
        )
        if dialect == "postgres":
            return f"array_agg(CAST({value} AS DOUBLE PRECISION))"
        if dialect == "spark":
            # collect_list drops NULLs itself (the release would drop them anyway); its order
            # is arbitrary, which a quantile does not depend on.
            return f"collect_list(CAST({value} AS DOUBLE))"
        return f"list(CAST({value} AS DOUBLE))"
    assert m.kind is MeasurementKind.SUM
    # GREATEST/LEAST skip NULLs in DuckDB (and PostgreSQL): without the CASE a NULL would be
    # summed as `low`. NaN and ±inf are clamped into [low, high].
    clamped = (
        f"CASE WHEN {arg} IS NULL THEN NULL ELSE LEAST(GREATEST({arg}, {low!r}), {high!r}) END"
    )
    if dialect == "spark":
        # Spark's SUM of BIGINT stays BIGINT: past 2^63 it raises under ANSI mode (an error that
        # depends on the data) or wraps around without it. A DECIMAL(38, 0) sum holds any sum of
        # terms bounded by MAX_PER_ROW (DuckDB sums BIGINT into HUGEINT, PostgreSQL into NUMERIC).
        # Spark's ROUND of a DOUBLE rounds half away from zero, as DuckDB's does.
        return f"SUM(CAST(ROUND(({clamped}) * {m.fixed_point}) AS DECIMAL(38, 0)))"
    return f"SUM(CAST(ROUND(({clamped}) * {m.fixed_point}) AS BIGINT))"
