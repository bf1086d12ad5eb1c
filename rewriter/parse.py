"""Parse exactly one SELECT statement (PostgreSQL dialect)."""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from rewriter.errors import MultipleStatements, NotASelect, SyntaxError_, Unsupported

#: Statement roots that are recognisably statements, just not ones we run.
_STATEMENTS = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Drop,
    exp.Create,
    exp.Alter,
    exp.Command,
    exp.Set,
    exp.Pragma,
    exp.Copy,
    exp.Use,
    exp.Describe,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Merge,
    exp.TruncateTable,
    exp.Show,
    exp.Attach,
    exp.Detach,
    exp.Install,
    exp.Export,
    exp.Grant,
    exp.Revoke,
    exp.Analyze,
    exp.Cache,
    exp.Uncache,
    exp.LoadData,
    exp.Refresh,
)

MAX_SQL_LENGTH = 100_000

_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+.*?>")
#: Token types whose text is data the analyst typed: never echoed (messages reach the audit log).
_LITERAL_TOKENS = {
    "STRING",
    "NUMBER",
    "NATIONAL_STRING",
    "RAW_STRING",
    "BIT_STRING",
    "HEX_STRING",
    "BYTE_STRING",
    "HEREDOC_STRING",
    "UNICODE_STRING",
}


def _token(match: re.Match[str]) -> str:
    kind, text = match.group(1), match.group(2)
    return "a literal" if kind in _LITERAL_TOKENS else f"'{text}'"


def parse_select(sql: str) -> exp.Select:
    """Parse ``sql`` and return its single SELECT, or raise a :class:`RewriteError`.

    >>> parse_select("SELECT 1").sql()
    'SELECT 1'
    """
    if len(sql) > MAX_SQL_LENGTH:
        raise Unsupported(f"the statement is longer than {MAX_SQL_LENGTH} characters")
    try:
        trees = [t for t in sqlglot.parse(sql, read="postgres") if t is not None]
    except TokenError:
        raise SyntaxError_(
            "syntax error: the SQL text cannot be read (an unterminated string or comment?)"
        ) from None
    except ParseError as exc:
        raise SyntaxError_(f"syntax error: {_first_line(exc)}") from None
    if not trees:
        raise SyntaxError_("the request holds no SQL statement")
    if len(trees) > 1:
        raise MultipleStatements(f"expected one statement, got {len(trees)}")
    tree = trees[0]
    if isinstance(tree, exp.Block):  # pragma: no cover - sqlglot.parse splits; parse_one does not
        raise MultipleStatements("expected one statement")
    if isinstance(tree, exp.Select):
        return _canonical_negations(tree)
    if isinstance(tree, exp.SetOperation):
        raise Unsupported("UNION, INTERSECT and EXCEPT are not supported")
    if isinstance(tree, _STATEMENTS) or type(tree).__name__ in {"Command", "Kill"}:
        raise NotASelect(f"only SELECT is accepted; got {tree.key.upper()}")
    if isinstance(tree, exp.Subquery):
        raise Unsupported(
            "a parenthesised query on its own is not supported; remove the parentheses"
        )
    raise SyntaxError_("syntax error: the text does not form a SELECT statement")


#: Nodes sqlglot may negate with a flag instead of a NOT around them.
_NEGATABLE = (exp.Is, exp.Like, exp.ILike)


def _canonical_negations(tree: exp.Select) -> exp.Select:
    """``x IS NOT NULL`` as ``NOT (x IS NULL)``, the one form of a negation the rules read.

    sqlglot's PostgreSQL reader (30.x) marks ``IS NOT`` (and ``NOT LIKE``) with a ``negate``
    flag on the node instead of wrapping it in ``NOT``; a rule that rebuilds the node from its
    operands would drop the flag and invert the condition. Every flagged node becomes an
    explicit ``NOT`` here, and ``allow_nodes`` refuses any flag left (fail closed).

    >>> _canonical_negations(parse_select("SELECT 1 FROM t WHERE a IS NOT NULL")).sql()
    'SELECT 1 FROM t WHERE NOT (a IS NULL)'
    """

    def unflag(node: exp.Expression) -> exp.Expression:
        if isinstance(node, _NEGATABLE) and node.args.get("negate"):
            plain = node.copy()
            plain.set("negate", None)
            return exp.Not(this=exp.Paren(this=plain))
        return node

    out = tree.transform(unflag, copy=False)
    assert isinstance(out, exp.Select)
    return out


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        desc = _TOKEN_REPR.sub(_token, str(first.get("description", "invalid syntax")))
        line, col = first.get("line"), first.get("col")
        return f"{desc} (line {line}, column {col})" if line else desc
    return "invalid syntax"
