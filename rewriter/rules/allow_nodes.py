"""Rule 1: every node in the statement is on an allow-list; anything else is rejected.

The allow-list is what we can argue about: a single-table SELECT with comparisons, boolean logic,
literals, COUNT/SUM/AVG, GROUP BY, ORDER BY and LIMIT. Functions that read files or run SQL strings
(``read_csv``, ``query()``), casts that may fail on data (error oracles), subqueries, joins, window
functions and set operations are rejected here with a reason, before anything else looks at the tree.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.errors import FunctionNotAllowed, TableFunction, Unsupported

ALLOWED_NODES: tuple[type[exp.Expression], ...] = (
    exp.Select,
    exp.From,
    exp.Table,
    exp.TableAlias,
    exp.Identifier,
    exp.Column,
    exp.Alias,
    exp.Where,
    exp.Group,
    exp.Order,
    exp.Ordered,
    exp.Limit,
    exp.Offset,
    exp.Literal,
    exp.Neg,
    exp.Boolean,
    exp.Null,
    exp.Star,
    exp.Paren,
    exp.And,
    exp.Or,
    exp.Not,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.In,
    exp.Between,
    exp.Is,
    exp.Count,
    exp.Sum,
    exp.Avg,
    exp.Cast,
    exp.DataType,
    exp.Having,
    exp.Distinct,
    exp.Case,
    exp.If,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Coalesce,
    exp.Greatest,
    exp.Least,
    exp.Abs,
    exp.Round,
    exp.Floor,
    exp.TimestampTrunc,
    exp.DateTrunc,
    exp.Extract,
    exp.Var,
    exp.WidthBucket,
    exp.Substring,
    exp.Left,
    exp.Variance,
    exp.VariancePop,
    exp.Stddev,
    exp.StddevPop,
    exp.StddevSamp,
    exp.WithinGroup,
    exp.PercentileCont,
    exp.PercentileDisc,
    exp.Median,
    exp.Min,
    exp.Max,
    exp.Join,
    exp.Subquery,
    exp.With,
    exp.CTE,
)

#: Constructs we name in the rejection, so the analyst knows what to remove.
_NAMED: dict[type[exp.Expression], str] = {
    exp.Window: "window functions",
    exp.Union: "UNION",
    exp.Intersect: "INTERSECT",
    exp.Except: "EXCEPT",
    exp.Lateral: "LATERAL",
    exp.Qualify: "QUALIFY",
    exp.Like: "LIKE",
    exp.ILike: "ILIKE",
    exp.Exists: "EXISTS",
    exp.Placeholder: "parameters",
}

_SAFE_CAST_TYPES = {exp.DataType.Type.DATE, exp.DataType.Type.TIMESTAMP}


def allow_nodes(tree: exp.Select) -> None:
    """Raise unless every node of ``tree`` is allowed.

    >>> import sqlglot
    >>> allow_nodes(sqlglot.parse_one("SELECT COUNT(*) FROM t WHERE a = 1"))
    """
    if tree.args.get("distinct") is not None:
        raise Unsupported(
            "SELECT DISTINCT returns rows; on a protected table use GROUP BY with an aggregate",
            hint="e.g. SELECT department, COUNT(*) FROM visits GROUP BY department",
        )
    for node in tree.walk():
        if node.args.get("negate"):
            # parse_select writes every negation as NOT (…); a flag left would be dropped by a
            # rule that rebuilds the node, inverting the condition.
            raise Unsupported(f"{node.key.upper()} with a negate flag is not supported")
        if isinstance(node, exp.Between) and node.args.get("symmetric"):
            # Rebuilt as a plain BETWEEN, swapped bounds would select nothing.
            raise Unsupported(
                "BETWEEN SYMMETRIC is not supported",
                hint="Write BETWEEN low AND high, with the smaller bound first.",
            )
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise TableFunction(f"table functions are not allowed: {_name(node.this)}()")
        if isinstance(node, exp.Select) and node is not tree and not _in_from(node):
            raise Unsupported(
                "subqueries are supported in FROM and WITH only",
                hint="Write the inner query as FROM (SELECT …) AS t or WITH t AS (SELECT …).",
            )
        if isinstance(node, exp.Cast):
            _check_cast(node)
            continue
        if isinstance(node, ALLOWED_NODES):
            continue
        if isinstance(node, exp.Func):
            raise FunctionNotAllowed(f"function {_name(node)}() is not allowed")
        for kind, label in _NAMED.items():
            if isinstance(node, kind):
                raise Unsupported(f"{label} is not supported yet")
        raise Unsupported(f"{node.key.upper()} is not supported")


def _in_from(select: exp.Select) -> bool:
    """A SELECT that is a FROM / JOIN source (``(SELECT …) AS t``) or a CTE body."""
    parent = select.parent
    if isinstance(parent, exp.CTE):
        return True
    return isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.From | exp.Join)


def _name(node: exp.Expression | exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return node.key.lower()


def _check_cast(node: exp.Cast) -> None:
    # Only `DATE '2024-01-31'` / `TIMESTAMP '…'` literals: a cast of a constant can only fail the same
    # way whatever the data holds. A cast of a column could fail on some rows only (an error oracle).
    target = node.to
    if (
        isinstance(node.this, exp.Literal)
        and node.this.is_string
        and isinstance(target, exp.DataType)
        and target.this in _SAFE_CAST_TYPES
    ):
        return
    raise FunctionNotAllowed(
        "CAST is only allowed on literals (DATE '…', TIMESTAMP '…'): a cast of data can fail on "
        "some rows and so reveal them"
    )
