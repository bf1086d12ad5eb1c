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

import hashlib

from sqlglot import exp

from rewriter.catalog import CatalogColumn, CatalogTable
from rewriter.errors import MeasureMisuse, Unsupported
from rewriter.plan import MeasurementKind
from rewriter.policy import ColumnClass
from rewriter.rules.check_where import BASE, base_column
from rewriter.rules.row_expr import RowValue, measure_value
from rewriter.rules.shape_aggregates import MeasurementDraft, sum_draft

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
    precomputed: frozenset[str] = frozenset(),
) -> str:
    """Return the warehouse SQL computing one row per group: keys k0.., measurements m0.., units.

    Row expressions (group keys ``g<i>``, aggregate arguments ``a<j>``) are computed in the
    inner query over the base table ``__pg_t``; the outer query aggregates the kept rows.
    ``prebounded``: ``table`` is a bounded snapshot with at most ``max_rows_per_unit`` rows per
    unit; no ranking (and no salt parameter) is emitted. ``precomputed``: the fixed-point terms
    that snapshot holds (``table.column`` names, :func:`precomputed_sums`); a SUM of a bare
    measure column whose term is among them sums the stored term instead of clamping each row.
    """
    if dialect not in SUPPORTED_DIALECTS:
        raise Unsupported(f"warehouse dialect {dialect!r} is not supported yet")
    inner_cols = [f"{k.sql} AS {_q(f'g{i}', dialect)}" for i, k in enumerate(keys)]
    args: dict[str, str] = {}
    #: Per measurement: what the inner query computes for it, and whether that is a snapshot's
    #: precomputed fixed-point term (summed as it is) rather than the row expression itself.
    inputs: list[tuple[str, bool] | None] = []
    for m in measurements:
        source = _input(m, table, dialect, precomputed if prebounded else frozenset())
        inputs.append(source)
        if source is not None and source[0] not in args:
            args[source[0]] = f"a{len(args)}"
            inner_cols.append(f"{source[0]} AS {_q(args[source[0]], dialect)}")
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
    for i, (m, source) in enumerate(zip(measurements, inputs, strict=True)):
        arg = _q(args[source[0]], dialect) if source is not None else ""
        if source is not None and source[1]:
            outer.append(f"SUM({arg}) AS m{i}")
        else:
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


def _input(
    m: MeasurementDraft, table: CatalogTable, dialect: str, precomputed: frozenset[str]
) -> tuple[str, bool] | None:
    """What the inner query computes for ``m`` (None for COUNT(*) and COUNT of units).

    Two shortcuts, each giving exactly the value the plain form gives:
    - ``COUNT(column)`` counts the column itself: a bare column's row value (clamped, cast to
      double, or as it is) is NULL exactly when the column is, so the counts are equal, and the
      engine does not evaluate the clamp only to test it for NULL.
    - ``SUM(measure)`` on a bounded snapshot that stores the measure's fixed-point term (the
      same deterministic function of the same row, computed when the snapshot was built) sums
      the stored term.
    """
    if m.arg is None:
        return None
    col = m.arg.column
    if col is not None and m.kind is MeasurementKind.COUNT:
        return base_column(col).sql(dialect=dialect), False
    if col is not None and m.kind is MeasurementKind.SUM and precomputed:
        term = _sum_term_of(col, dialect)
        if term is not None:
            name, draft = term
            # The very SUM the snapshot stored the term for: the bare clamped column, the same
            # interval and the same fixed point (anything else is computed here, per row).
            same = draft.arg is not None and (draft.arg.sql, draft.fixed_point, draft.clamp) == (
                m.arg.sql,
                m.fixed_point,
                m.clamp,
            )
            if same and f"{table.name.lower()}.{name}" in precomputed:
                return f"{BASE}.{_q(name, dialect)}", True
    return m.arg.sql, False


def _sum_term_of(col: CatalogColumn, dialect: str) -> tuple[str, MeasurementDraft] | None:
    """The name a snapshot gives ``SUM(col)``'s fixed-point term, and that SUM's draft; None
    when the column is not a bounded measure that can be summed."""
    if col.cls is not ColumnClass.MEASURE or col.bounds is None:
        return None
    try:
        draft = sum_draft(measure_value(col, dialect))
    except MeasureMisuse:
        return None
    # Named by a digest of the term's definition (DuckDB form, whatever the engine): a snapshot
    # built under other bounds holds other names, never used for this policy.
    duck = measure_value(col, "duckdb")
    definition = sum_term(sum_draft(duck), duck.sql)
    digest = hashlib.sha256(f"{col.name.lower()}|{definition}".encode()).hexdigest()[:10]
    return f"__pg_sum_{digest}", draft


def precomputed_sums(table: CatalogTable, dialect: str) -> dict[str, str]:
    """The fixed-point terms a bounded snapshot of ``table`` stores: name → the SQL computing it
    from a row of the table aliased ``__pg_t`` (one per summable bounded measure column)."""
    out: dict[str, str] = {}
    for col in table.visible_columns():
        term = _sum_term_of(col, dialect)
        if term is not None and term[0] not in table.columns:  # (a column of that name: none)
            name, draft = term
            assert draft.arg is not None
            out[name] = sum_term(draft, draft.arg.sql, dialect)
    return out


def sum_term(m: MeasurementDraft, arg: str, dialect: str = "duckdb") -> str:
    """One row's fixed-point term of a SUM: the row value clamped again to the SUM's interval,
    times ``fixed_point``, rounded to an integer (a 128-bit DECIMAL on Spark, below)."""
    assert m.clamp is not None
    low, high = m.clamp
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
        return f"CAST(ROUND(({clamped}) * {m.fixed_point}) AS DECIMAL(38, 0))"
    return f"CAST(ROUND(({clamped}) * {m.fixed_point}) AS BIGINT)"


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
    return f"SUM({sum_term(m, arg, dialect)})"
