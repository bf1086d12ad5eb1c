"""Rule 6: ORDER BY, LIMIT and OFFSET become post-processing over the *released* rows.

Sorting and cutting noisy rows is post-processing and costs no budget. Doing it in the warehouse
instead would sort by true values and so leak them through which rows survive a LIMIT.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from rewriter.errors import Unsupported, shown
from rewriter.plan import SortKey
from rewriter.rules.resolve_columns import Resolution
from rewriter.rules.shape_aggregates import OutputDraft

MAX_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class OrderLimit:
    order_by: tuple[SortKey, ...]
    limit: int | None
    offset: int


def order_limit(
    tree: exp.Select, outputs: tuple[OutputDraft, ...], resolution: Resolution
) -> OrderLimit:
    """Resolve ORDER BY items to output columns and read LIMIT/OFFSET."""
    keys: list[SortKey] = []
    order = tree.args.get("order")
    if order is not None:
        for ordered in order.expressions:
            keys.append(
                SortKey(_target(ordered.this, outputs, resolution), bool(ordered.args.get("desc")))
            )
    return OrderLimit(tuple(keys), _integer(tree, "limit"), _integer(tree, "offset") or 0)


def _target(node: exp.Expression, outputs: tuple[OutputDraft, ...], res: Resolution) -> int:
    if isinstance(node, exp.Literal) and not node.is_string:
        if not str(node.this).isdigit():
            raise Unsupported("ORDER BY positions are whole numbers (1 = first column)")
        index = int(str(node.this)) - 1
        if 0 <= index < len(outputs):
            return index
        raise Unsupported(f"ORDER BY position {node.this} is not in the select list")
    if isinstance(node, exp.Column):
        col = res.get(id(node))
        if col is None or not node.table:
            for i, out in enumerate(outputs):
                if out.name.lower() == node.name.lower():
                    return i
        if col is not None:
            for i, out in enumerate(outputs):
                if out.source_sql == node.sql(dialect="postgres"):
                    return i
    text = node.sql(dialect="postgres")
    for i, out in enumerate(outputs):
        if out.source_sql == text:
            return i
    raise Unsupported(f"ORDER BY {shown(node, 60)} must name a column of the result")


def _integer(tree: exp.Select, arg: str) -> int | None:
    node = tree.args.get(arg)
    if node is None:
        return None
    value = node.args.get("expression")
    if value is None:
        value = node.this
    if not (isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit()):
        raise Unsupported(f"{arg.upper()} takes a non-negative integer")
    number = int(str(value.this))
    if number > MAX_LIMIT:
        raise Unsupported(f"{arg.upper()} may be at most {MAX_LIMIT}")
    return number
