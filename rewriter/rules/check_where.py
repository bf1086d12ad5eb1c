"""Rule 4: the WHERE clause compares columns with literals of the column's own type.

The predicate is *re-built* from what we understood, never passed through: comparisons, IN lists,
BETWEEN, IS [NOT] NULL, AND/OR/NOT. Literals must match the column's type, because an implicit cast
of data (``department = 3`` makes some engines cast every department to an integer) can fail on some
rows only, and an error that depends on the data is a side channel no noise covers. Date and
timestamp literals are parsed here, in Python, and emitted as typed literals.
"""

from __future__ import annotations

import datetime as dt

from sqlglot import exp

from rewriter.catalog import CatalogColumn, LogicalType
from rewriter.errors import IdentifierReference, MaskedColumn, TypeMismatch, Unsupported, shown
from rewriter.policy import ColumnClass
from rewriter.rules.resolve_columns import Resolution

#: Table alias used for the base table in emitted SQL.
BASE = "__pg_t"

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_NUMERIC = {LogicalType.INTEGER, LogicalType.FLOAT}


def base_column(col: CatalogColumn) -> exp.Column:
    """The emitted reference to a base-table column."""
    return exp.column(exp.to_identifier(col.name, quoted=True), table=exp.to_identifier(col.source))


def check_where(tree: exp.Select, resolution: Resolution) -> exp.Expression | None:
    """Return a sanitized copy of the WHERE predicate (or None), or raise."""
    where = tree.args.get("where")
    if where is None:
        return None
    return _predicate(where.this, resolution)


def _predicate(node: exp.Expression, res: Resolution) -> exp.Expression:
    if isinstance(node, exp.Paren):
        return exp.Paren(this=_predicate(node.this, res))
    if isinstance(node, exp.And):
        return exp.And(
            this=exp.Paren(this=_predicate(node.this, res)),
            expression=exp.Paren(this=_predicate(node.expression, res)),
        )
    if isinstance(node, exp.Or):
        return exp.Or(
            this=exp.Paren(this=_predicate(node.this, res)),
            expression=exp.Paren(this=_predicate(node.expression, res)),
        )
    if isinstance(node, exp.Not):
        return exp.not_(_predicate(node.this, res))
    if isinstance(node, _COMPARISONS):
        left, right = node.this, node.expression
        if _is_column(left) and _is_column(right):
            lcol, rcol = _column(left, res), _column(right, res)
            if not _same_family(lcol.type, rcol.type):
                raise TypeMismatch(
                    f"cannot compare {lcol.name} ({lcol.type}) with {rcol.name} ({rcol.type})"
                )
            return type(node)(this=base_column(lcol), expression=base_column(rcol))
        if _is_column(right) and not _is_column(left):
            left, right = right, left
            node = _flip(node)
        if not _is_column(left):
            raise Unsupported("each comparison in WHERE needs a column on one side")
        col = _column(left, res)
        return type(node)(this=base_column(col), expression=_literal(right, col))
    if isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            raise Unsupported("IN (subquery) is not supported")
        col = _column(node.this, res)
        values = [_literal(v, col) for v in node.expressions]
        if not values:
            raise Unsupported("IN needs at least one value")
        return exp.In(this=base_column(col), expressions=values)
    if isinstance(node, exp.Between):
        col = _column(node.this, res)
        return exp.Between(
            this=base_column(col),
            low=_literal(node.args["low"], col),
            high=_literal(node.args["high"], col),
        )
    if isinstance(node, exp.Is):
        col = _column(node.this, res)
        if isinstance(node.expression, exp.Null):
            return exp.Is(this=base_column(col), expression=exp.Null())
        raise Unsupported("only IS NULL / IS NOT NULL are supported")
    if _is_column(node):
        col = _column(node, res)
        if col.type is LogicalType.BOOLEAN:
            return base_column(col)
    raise Unsupported(f"this WHERE condition is not supported: {shown(node)}")


def predicate(node: exp.Expression, res: Resolution) -> exp.Expression:
    """A sanitized copy of one boolean condition (CASE WHEN conditions use the same rules)."""
    return _predicate(node, res)


def _flip(node: exp.Expression) -> exp.Expression:
    flipped: dict[type[exp.Expression], type[exp.Expression]] = {
        exp.GT: exp.LT,
        exp.LT: exp.GT,
        exp.GTE: exp.LTE,
        exp.LTE: exp.GTE,
    }
    kind = flipped.get(type(node), type(node))
    return kind(this=node.expression, expression=node.this)


def _is_column(node: exp.Expression) -> bool:
    return isinstance(node, exp.Column)


def _column(node: exp.Expression, res: Resolution) -> CatalogColumn:
    while isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.Column):
        raise Unsupported("expected a column here")
    col = res[id(node)]
    if col.cls is ColumnClass.IDENTIFIER:
        raise IdentifierReference(f"identifier column {col.name} cannot be used in WHERE")
    if col.cls is ColumnClass.MASKED:
        raise MaskedColumn(f"masked column {col.name} cannot be used in WHERE")
    if col.type is LogicalType.OTHER:
        raise Unsupported(f"column {col.name} has a type that cannot be filtered on")
    return col


def _same_family(a: LogicalType, b: LogicalType) -> bool:
    return a == b or (a in _NUMERIC and b in _NUMERIC)


def _literal(node: exp.Expression, col: CatalogColumn) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    kind = col.type
    if isinstance(node, exp.Null):
        raise TypeMismatch("compare with NULL using IS NULL / IS NOT NULL")
    if kind in _NUMERIC:
        negative = False
        if isinstance(node, exp.Neg):
            negative, node = True, node.this
        if isinstance(node, exp.Literal) and not node.is_string:
            text = str(node.this)
            try:
                float(text)
            except ValueError:
                raise TypeMismatch(f"a literal compared with {col.name} is not a number") from None
            return exp.Literal.number(("-" if negative else "") + text)
        raise TypeMismatch(f"column {col.name} is numeric: compare it with a number")
    if kind is LogicalType.STRING:
        if isinstance(node, exp.Literal) and node.is_string:
            return exp.Literal.string(str(node.this))
        raise TypeMismatch(f"column {col.name} is text: compare it with a quoted string")
    if kind is LogicalType.BOOLEAN:
        if isinstance(node, exp.Boolean):
            return exp.Boolean(this=bool(node.this))
        raise TypeMismatch(f"column {col.name} is boolean: compare it with TRUE or FALSE")
    if kind in (LogicalType.DATE, LogicalType.TIMESTAMP):
        text = _temporal_text(node, col)
        try:
            if kind is LogicalType.DATE:
                value = dt.date.fromisoformat(text).isoformat()
                return exp.cast(exp.Literal.string(value), exp.DataType.Type.DATE)
            stamp = dt.datetime.fromisoformat(text).isoformat(sep=" ")
            return exp.cast(exp.Literal.string(stamp), exp.DataType.Type.TIMESTAMP)
        except ValueError:
            raise TypeMismatch(
                f"a literal compared with {col.name} is not a valid {kind.value} (use ISO form)"
            ) from None
    raise TypeMismatch(f"column {col.name} cannot be compared")


def _temporal_text(node: exp.Expression, col: CatalogColumn) -> str:
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal):
        return str(node.this.this)
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    raise TypeMismatch(f"column {col.name} is a {col.type.value}: compare it with '2024-01-31'")
