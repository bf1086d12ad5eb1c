"""Bound parameters of data statements: infer their types, then inline them as SQL literals.

The privacy pipeline plans SQL text, so ``$n`` placeholders are replaced by literals before a
data statement reaches ``QueryService`` (the values are typed, never spliced as text: each becomes
one sqlglot literal node). A parameter the client left untyped takes the type of the column it is
compared with, as PostgreSQL would infer it; that is also what Describe reports.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping, Sequence
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from gateway.wire import pgtypes
from rewriter.catalog import Catalog, LogicalType

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)
_NUMERIC = (LogicalType.INTEGER, LogicalType.FLOAT)


class ParameterError(ValueError):
    """A parameter cannot be bound (wrong count, or a value that does not fit its type)."""


def _parse(sql: str) -> exp.Expression | None:
    try:
        trees = sqlglot.parse(sql, read="postgres")
    except ParseError:
        return None
    tree = trees[0] if len(trees) == 1 else None
    return tree if isinstance(tree, exp.Expression) else None


def _index(node: exp.Parameter) -> int | None:
    inner = node.this
    text = inner.name if isinstance(inner, exp.Expression) else str(inner)
    return int(text) if text.isdigit() else None


def analyse(sql: str, catalog: Catalog) -> tuple[int, dict[int, LogicalType]]:
    """Parse once: the highest ``$n`` in ``sql`` (0 when none, or when it does not parse), and
    parameter number → the type of the column it is compared with (where one is).

    >>> analyse("SELECT 1 WHERE a = $2 AND b = $1", Catalog({}, None))  # type: ignore[arg-type]
    (2, {})
    """
    tree = _parse(sql)
    if tree is None:
        return 0, {}
    types: dict[int, LogicalType] = {}
    count = 0
    tables = _tables(tree, catalog)
    for param in tree.find_all(exp.Parameter):
        index = _index(param)
        if index is None:
            continue
        count = max(count, index)
        column = _partner_column(param)
        if column is None:
            continue
        for table in tables:
            col = table.column(column)
            if col is not None:
                types[index] = col.type
                break
    return count, types


def _tables(tree: exp.Expression, catalog: Catalog) -> list[Any]:
    return [t for t in (catalog.table(n.name) for n in tree.find_all(exp.Table)) if t is not None]


def _partner_column(param: exp.Expression) -> str | None:
    node: exp.Expression = param
    parent = node.parent
    while isinstance(parent, exp.Paren | exp.Neg | exp.Cast):
        node, parent = parent, parent.parent
    if isinstance(parent, _COMPARISONS):
        other = parent.expression if parent.this is node else parent.this
        return other.name if isinstance(other, exp.Column) else None
    if isinstance(parent, exp.In | exp.Between):
        return parent.this.name if isinstance(parent.this, exp.Column) else None
    return None


def param_oids(
    count: int, declared: Sequence[int], inferred: Mapping[int, LogicalType]
) -> list[int]:
    """The OIDs Describe reports: the client's where it gave one, else inferred, else text.

    >>> param_oids(3, (23,), {2: LogicalType.FLOAT})
    [23, 701, 25]
    """
    out = []
    for i in range(max(count, len(declared))):
        given = declared[i] if i < len(declared) else 0
        if given not in (0, pgtypes.UNKNOWN):
            out.append(given)
        elif i + 1 in inferred:
            out.append(pgtypes.oid_for(inferred[i + 1]))
        else:
            out.append(pgtypes.TEXT)
    return out


def _literal(value: Any, kind: LogicalType | None) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int | float | decimal.Decimal):
        return exp.Literal.number(str(value))
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), exp.DataType.Type.TIMESTAMP)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.Type.DATE)
    text = str(value)
    if kind in _NUMERIC:
        try:
            decimal.Decimal(text.strip())
        except decimal.InvalidOperation:
            raise ParameterError(f"parameter value {text!r} is not a number") from None
        return exp.Literal.number(text.strip())
    if kind is LogicalType.BOOLEAN:
        return exp.Boolean(this=pgtypes.decode_param(text.encode(), pgtypes.BOOL, 0))
    if kind is LogicalType.DATE:
        return exp.cast(exp.Literal.string(text), exp.DataType.Type.DATE)
    if kind is LogicalType.TIMESTAMP:
        return exp.cast(exp.Literal.string(text), exp.DataType.Type.TIMESTAMP)
    return exp.Literal.string(text)


_INTEGER_TYPES = {exp.DataType.Type.INT, exp.DataType.Type.BIGINT, exp.DataType.Type.SMALLINT}
_NUMBER_TYPES = _INTEGER_TYPES | {
    exp.DataType.Type.DOUBLE,
    exp.DataType.Type.FLOAT,
    exp.DataType.Type.DECIMAL,
}
_TEXT_TYPES = {exp.DataType.Type.TEXT, exp.DataType.Type.VARCHAR, exp.DataType.Type.CHAR}


def _cast_literal(value: Any, to: exp.DataType, kind: LogicalType | None) -> exp.Expression:
    target = to.this
    if value is None:
        return exp.Null()
    if target in _NUMBER_TYPES:
        literal = _literal(
            value, LogicalType.INTEGER if target in _INTEGER_TYPES else LogicalType.FLOAT
        )
        if target in _INTEGER_TYPES and not str(literal.this).lstrip("-").isdigit():
            raise ParameterError(f"parameter value {value!r} is not an integer")
        return literal
    if target in _TEXT_TYPES:
        return exp.Literal.string(str(value))
    if target is exp.DataType.Type.BOOLEAN:
        return _literal(value, LogicalType.BOOLEAN)
    if target is exp.DataType.Type.DATE:
        return _literal(str(value) if not isinstance(value, dt.date) else value, LogicalType.DATE)
    if target in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.DATETIME):
        return _literal(value, LogicalType.TIMESTAMP)
    return exp.Cast(this=_literal(value, kind), to=to)


def inline(sql: str, values: Sequence[Any], types: Mapping[int, LogicalType]) -> str:
    """``sql`` with ``$1…$n`` replaced by literals of ``values`` (1-based ``types``).

    >>> inline("SELECT COUNT(*) FROM t WHERE a = $1 AND b = $2", ["x'; --", 3], {})
    "SELECT COUNT(*) FROM t WHERE a = 'x''; --' AND b = 3"
    """
    if not values:
        return sql
    tree = _parse(sql)
    if tree is None:
        # Not one parseable statement: left as it is, for the pipeline to refuse with its own
        # code (syntax error, several statements) and audit.
        return sql
    used: set[int] = set()

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Cast) and isinstance(node.this, exp.Parameter):
            # `$1::INTEGER` (SQLAlchemy, psycopg): the cast of a bound constant, resolved here so
            # that the pipeline sees a plain literal (it refuses casts of anything else).
            index = _index(node.this)
            if index is not None and 1 <= index <= len(values):
                used.add(index)
                return _cast_literal(values[index - 1], node.to, types.get(index))
        if isinstance(node, exp.Parameter):
            index = _index(node)
            if index is None or not 1 <= index <= len(values):
                raise ParameterError(f"there is no parameter ${index}")
            used.add(index)
            return _literal(values[index - 1], types.get(index))
        return node

    out = tree.transform(replace)
    return str(out.sql(dialect="postgres"))
