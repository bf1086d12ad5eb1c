"""Rule 2: the FROM clause names exactly one catalog table the principal may query."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from rewriter.catalog import Catalog, CatalogTable
from rewriter.errors import AggregationRequired, UnknownTable, Unsupported


@dataclass(frozen=True, slots=True)
class ResolvedTable:
    table: CatalogTable
    #: The name columns may be qualified with (the alias, or the table name).
    qualifier: str


def resolve_table(tree: exp.Select, catalog: Catalog, granted: frozenset[str]) -> ResolvedTable:
    """Find the single table of ``tree`` in ``catalog``; tables of ungranted datasets look unknown."""
    tables = list(tree.find_all(exp.Table))
    from_ = tree.args.get("from_")
    if from_ is None or not tables:
        raise AggregationRequired(
            "a query needs a FROM clause naming a table", hint="GET /v1/schema lists the tables."
        )
    if len(tables) != 1:
        raise Unsupported("queries over more than one table are not supported yet")
    node = tables[0]
    schema = node.args.get("db")
    catalog_part = node.args.get("catalog")
    if catalog_part is not None or (
        schema is not None and schema.name.lower() not in ("main", "public")
    ):
        raise UnknownTable(f"{_shown_name(node)} does not exist")
    table = catalog.table(node.name)
    if table is None:
        raise UnknownTable(f"{_shown_name(node)} does not exist")
    if table.dataset not in granted:
        # Exactly what a missing table gets: the catalog of an ungranted dataset is not disclosed
        # (GET /v1/schema does not list it either).
        raise UnknownTable(f"{_shown_name(node)} does not exist")
    return ResolvedTable(table=table, qualifier=(node.alias or node.name).lower())


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def _shown_name(node: exp.Table) -> str:
    """Echo a table name only when it was written as a bare name.

    A quoted one could be anything, and sqlglot reads a string literal in FROM (``FROM 'x'``)
    as a quoted identifier, so quoted names are never echoed.
    """
    name = node.name
    ident = node.this
    quoted = isinstance(ident, exp.Identifier) and bool(ident.args.get("quoted"))
    return f'table "{name}"' if not quoted and _PLAIN_NAME.fullmatch(name) else "the table"
