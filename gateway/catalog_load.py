"""Build the catalog for a policy from the warehouse: its schema, and the public domains the
policy takes from public tables (``values_from``).

Reading a public table costs nothing and reveals nothing about people: its distinct values are
a domain fixed by public data, so zero-filling it is as private as a ``values`` list
(docs/privacy-model.md, "Releasing group keys").
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from gateway.warehouse import Warehouse
from rewriter.catalog import Catalog, CatalogMismatch, build_catalog, values_from_refs
from rewriter.policy import Policy, Scalar

#: The largest public domain read from a table (more would be a table of rows, not a domain).
MAX_DOMAIN = 10_000


def load_catalog(policy: Policy, warehouse: Warehouse) -> Catalog:
    """The catalog of ``policy`` over ``warehouse``.

    Raises:
        CatalogMismatch: the policy does not match the warehouse, or a ``values_from`` table
            has more than :data:`MAX_DOMAIN` distinct values.
    """
    columns = warehouse.columns()
    public_values: dict[str, tuple[Scalar, ...]] = {}
    for _dataset, table, column in values_from_refs(policy):
        known = {c.lower() for c, _ in columns.get(table, columns.get(table.lower(), []))}
        if column not in known:
            raise CatalogMismatch(f"values_from {table}.{column} is not in the warehouse")
        public_values[f"{table}.{column}"] = _distinct(warehouse, table, column)
    return build_catalog(policy, columns, public_values)


def _distinct(warehouse: Warehouse, table: str, column: str) -> tuple[Scalar, ...]:
    col = exp.column(exp.to_identifier(column, quoted=True))
    query = (
        exp.select(col)
        .distinct()
        .from_(exp.to_table(exp.to_identifier(table, quoted=True).sql(warehouse.dialect)))
        .where(exp.Not(this=exp.Is(this=col.copy(), expression=exp.Null())))
        .order_by(col.copy())
        .limit(MAX_DOMAIN + 1)
    )
    rows = warehouse.execute(query.sql(dialect=warehouse.dialect), []).rows
    if len(rows) > MAX_DOMAIN:
        raise CatalogMismatch(
            f"values_from {table}.{column} has more than {MAX_DOMAIN} distinct values"
        )
    return tuple(_scalar(r[0]) for r in rows)


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
