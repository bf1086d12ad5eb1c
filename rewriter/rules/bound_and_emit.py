"""Rule 7: emit the warehouse SQL, with contribution bounding and clamping.

Per-query bounding (the bounded-snapshot optimisation is a later step): among the rows that pass
the analyst's WHERE, each unit keeps at most ``max_rows_per_unit`` rows, chosen by ranking the unit's
own rows by a *keyed* hash of their content. The key (salt) is a query parameter, never part of the
SQL text, so it is neither logged nor audited. The choice for one unit depends only on that unit's
rows, so adding or removing a unit leaves every other unit's kept rows unchanged — the property the
sensitivity argument needs (docs/privacy-model.md, "Contribution bounding"). Rows whose unit is NULL
belong to nobody we can bound and are dropped.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.catalog import CatalogColumn, CatalogTable
from rewriter.errors import Unsupported
from rewriter.plan import MeasurementKind
from rewriter.rules.check_where import BASE, base_column
from rewriter.rules.shape_aggregates import MeasurementDraft

UNITS_COLUMN = "__pg_units"
SALT_PARAMETER = "salt"
SUPPORTED_DIALECTS = ("duckdb",)


def _q(name: str, dialect: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect=dialect)


def bound_and_emit(
    *,
    table: CatalogTable,
    unit: CatalogColumn,
    keys: tuple[CatalogColumn, ...],
    measurements: tuple[MeasurementDraft, ...],
    predicate: exp.Expression | None,
    max_rows_per_unit: int,
    with_units: bool,
    dialect: str,
) -> str:
    """Return the warehouse SQL computing one row per group: keys k0.., measurements m0.., units."""
    if dialect not in SUPPORTED_DIALECTS:
        raise Unsupported(f"warehouse dialect {dialect!r} is not supported yet")
    needed: dict[str, CatalogColumn] = {k.name: k for k in keys}
    for m in measurements:
        if m.column is not None:
            needed[m.column.name] = m.column
    inner_cols = [
        f"{base_column(c).sql(dialect=dialect)} AS {_q('c_' + c.name, dialect)}"
        for c in needed.values()
    ]
    unit_sql = base_column(unit).sql(dialect=dialect)
    all_cols = ", ".join(base_column(c).sql(dialect=dialect) for c in table.columns.values())
    where = f"{unit_sql} IS NOT NULL"
    if predicate is not None:
        where += f" AND ({predicate.sql(dialect=dialect)})"
    inner = ", ".join(
        [
            *inner_cols,
            f"{unit_sql} AS __pg_unit",
            f"ROW_NUMBER() OVER (PARTITION BY {unit_sql} ORDER BY hash(hash(?, {all_cols}))) AS __pg_rank",
        ]
    )
    outer: list[str] = [f"{_q('c_' + k.name, dialect)} AS k{i}" for i, k in enumerate(keys)]
    for i, m in enumerate(measurements):
        outer.append(f"{_measurement_sql(m, dialect)} AS m{i}")
    if with_units:
        outer.append(f"COUNT(DISTINCT __pg_unit) AS {UNITS_COLUMN}")
    group = f" GROUP BY {', '.join(f'k{i}' for i in range(len(keys)))}" if keys else ""
    return (
        f"WITH __pg_rows AS (SELECT {inner} FROM {_q(table.name, dialect)} AS {BASE} WHERE {where}) "
        f"SELECT {', '.join(outer)} FROM __pg_rows WHERE __pg_rank <= {int(max_rows_per_unit)}{group}"
    )


def _measurement_sql(m: MeasurementDraft, dialect: str) -> str:
    if m.kind is MeasurementKind.COUNT:
        return "COUNT(*)" if m.column is None else f"COUNT({_q('c_' + m.column.name, dialect)})"
    assert m.column is not None and m.clamp is not None
    low, high = m.clamp
    col = _q("c_" + m.column.name, dialect)
    # GREATEST/LEAST skip NULLs in DuckDB (and PostgreSQL): without the CASE a NULL would be
    # summed as `low`. NaN and ±inf are clamped into [low, high].
    clamped = (
        f"CASE WHEN {col} IS NULL THEN NULL ELSE LEAST(GREATEST({col}, {low!r}), {high!r}) END"
    )
    if m.fixed_point == 1:
        return f"SUM(CAST({clamped} AS BIGINT))"
    return f"SUM(CAST(ROUND({clamped} * {m.fixed_point}) AS BIGINT))"
