"""Rule 5b: masked row-level access — rows of a protected table, through the policy's masks.

Only for tables whose policy says ``row_access: masked``, and only queries without aggregates.
Each output is a ``masked`` column through its mask, or a ``public``-class column; identifiers,
measures and dimensions are never shown per row (a dimension next to a pseudonym re-identifies).
WHERE may only read ``public`` columns: a filter on a hidden attribute would attach that
attribute to each returned pseudonym. ORDER BY sorts the *masked* values (by output position),
so the order of the raw values is not revealed. This is not differential privacy: it is a
pseudonymised extract the policy opts into, charged nothing and audited
(docs/privacy-model.md, "Masked rows").

Masks, emitted so they cannot raise on data:

* ``hash``      — keyed hash ``md5(key || text)``, hex: equal values give equal pseudonyms in
  every query (joinable), and without the key a pseudonym cannot be recomputed from a guess.
* ``redact``    — ``'***'`` (NULL stays NULL).
* ``truncate``  — text: the first 3 characters; date: the first day of its month; timestamp: its
  day; number: ``floor(x / 10) * 10``.
* ``generalize``— text: the first character; date/timestamp: its year; number:
  ``floor(x / 100) * 100``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from rewriter.catalog import CatalogColumn, CatalogTable, LogicalType
from rewriter.errors import (
    AggregationRequired,
    IdentifierReference,
    MeasureMisuse,
    Unsupported,
    shown,
)
from rewriter.policy import ColumnClass
from rewriter.rules.bound_and_emit import SALT_REF  # how a statement's parameter is read
from rewriter.rules.check_where import base_column
from rewriter.rules.resolve_columns import Resolution

MASK_KEY_PARAMETER = "mask_key"


@dataclass(frozen=True, slots=True)
class MaskedColumnOut:
    name: str
    type: LogicalType
    sql: str
    keyed: bool


def is_row_query(tree: exp.Select) -> bool:
    """No aggregate and no GROUP BY: the query asks for rows."""
    return tree.args.get("group") is None and not any(
        e.find(exp.AggFunc) is not None for e in tree.expressions
    )


def masked_outputs(
    tree: exp.Select, table: CatalogTable, res: Resolution, dialect: str
) -> list[MaskedColumnOut]:
    """The output columns of a masked row query, or raise."""
    if tree.args.get("having") is not None:
        raise Unsupported("HAVING needs aggregates")
    where = tree.args.get("where")
    if where is not None:
        for node in where.find_all(exp.Column):
            col = res[id(node)]
            if col.cls is not ColumnClass.PUBLIC:
                raise Unsupported(
                    f"row-level queries filter on public columns only; {col.name} is a "
                    f"{col.cls.value}",
                    hint="A filter on a hidden attribute would attach it to each returned row.",
                )
    out: list[MaskedColumnOut] = []
    for item in tree.expressions:
        if isinstance(item, exp.Star):
            out += [
                _masked(c, c.name, dialect)
                for c in table.visible_columns()
                if c.cls in (ColumnClass.MASKED, ColumnClass.PUBLIC)
            ]
            continue
        alias = item.alias if isinstance(item, exp.Alias) else ""
        expr = item.this if isinstance(item, exp.Alias) else item
        if not isinstance(expr, exp.Column) or id(expr) not in res:
            raise Unsupported(
                f"row-level output takes columns only: {shown(expr, 60)}",
                hint="Masks are applied by the gateway; select the masked column itself.",
            )
        col = res[id(expr)]
        if col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(f"identifier column {col.name} cannot be selected")
        if col.cls is ColumnClass.MEASURE:
            raise MeasureMisuse(
                f"measure {col.name} is released only inside aggregates",
                hint=f"Use SUM({col.name}) or AVG({col.name}) with GROUP BY.",
            )
        if col.cls is not ColumnClass.MASKED and col.cls is not ColumnClass.PUBLIC:
            raise AggregationRequired(
                f"row-level output shows masked and public columns only; {col.name} is a "
                f"{col.cls.value}",
                hint="Aggregate over dimensions: SELECT dim, COUNT(*) … GROUP BY dim.",
            )
        out.append(_masked(col, alias or col.name, dialect))
    if not out:
        raise AggregationRequired("this table has no masked or public columns to show")
    return out


def _masked(col: CatalogColumn, name: str, dialect: str) -> MaskedColumnOut:
    ref = base_column(col).sql(dialect=dialect)
    text = "TEXT" if dialect == "postgres" else "VARCHAR"
    if col.cls is ColumnClass.PUBLIC:
        return MaskedColumnOut(name, col.type, ref, False)
    mask = col.mask or "redact"
    kind = col.type
    if mask == "hash":
        return MaskedColumnOut(
            name, LogicalType.STRING, f"md5({SALT_REF[dialect]} || CAST({ref} AS {text}))", True
        )
    if mask == "redact":
        return MaskedColumnOut(
            name, LogicalType.STRING, f"CASE WHEN {ref} IS NULL THEN NULL ELSE '***' END", False
        )
    numeric = kind in (LogicalType.INTEGER, LogicalType.FLOAT)
    double = "DOUBLE PRECISION" if dialect == "postgres" else "DOUBLE"
    if mask == "truncate":
        if kind is LogicalType.DATE:
            sql = f"CAST(date_trunc('month', CAST({ref} AS TIMESTAMP)) AS DATE)"
        elif kind is LogicalType.TIMESTAMP:
            sql = f"date_trunc('day', {ref})"
        elif numeric:
            sql, kind = f"floor(CAST({ref} AS {double}) / 10) * 10", LogicalType.FLOAT
        else:
            sql, kind = f"substr(CAST({ref} AS {text}), 1, 3)", LogicalType.STRING
        return MaskedColumnOut(name, kind, sql, False)
    # generalize
    if kind in (LogicalType.DATE, LogicalType.TIMESTAMP):
        sql = f"CASE WHEN isfinite({ref}) THEN CAST(EXTRACT(year FROM {ref}) AS INTEGER) END"
        return MaskedColumnOut(name, LogicalType.INTEGER, sql, False)
    if numeric:
        sql = f"floor(CAST({ref} AS {double}) / 100) * 100"
        return MaskedColumnOut(name, LogicalType.FLOAT, sql, False)
    return MaskedColumnOut(name, LogicalType.STRING, f"substr(CAST({ref} AS {text}), 1, 1)", False)
