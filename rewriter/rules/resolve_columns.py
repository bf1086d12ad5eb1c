"""Rule 3: every column reference resolves to a visible column of the table.

Blocked columns (and undeclared columns of protected tables) are invisible: referencing one gives the
same ``catalog.unknown_column`` error as a column that does not exist, so the policy itself leaks
nothing. References to a SELECT alias (in ORDER BY) are left to ``order_limit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sqlglot import exp

from rewriter.catalog import CatalogColumn
from rewriter.errors import UnknownColumn
from rewriter.rules.resolve_table import ResolvedTable

#: Resolution of each Column node (keyed by ``id(node)``) of the tree.
Resolution = Mapping[int, CatalogColumn]


def resolve_columns(tree: exp.Select, resolved: ResolvedTable) -> Resolution:
    """Map every column reference to its catalog column (output aliases in GROUP/ORDER BY aside)."""
    out: dict[int, CatalogColumn] = {}
    order = tree.args.get("order")
    group = tree.args.get("group")
    aliases = {e.alias.lower() for e in tree.expressions if isinstance(e, exp.Alias) and e.alias}
    for node in tree.find_all(exp.Column):
        in_order = (order is not None and _inside(node, order)) or (
            group is not None and _inside(node, group)
        )
        qualifier = node.table.lower() if node.table else None
        if qualifier is not None and qualifier != resolved.qualifier:
            raise UnknownColumn(f'column "{node.sql(dialect="postgres")}" does not exist')
        col = resolved.table.column(node.name)
        if col is None:
            if in_order and qualifier is None and node.name.lower() in aliases:
                continue  # an output alias; shape_aggregates / order_limit resolve it
            raise UnknownColumn(f'column "{node.name}" does not exist')
        out[id(node)] = col
    return MappingProxyType(out)


def _inside(node: exp.Expression, ancestor: exp.Expression) -> bool:
    parent = node.parent
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False
