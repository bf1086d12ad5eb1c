"""Which backend answers a wire statement: the privacy pipeline, the shadow catalog, or the session.

The rule, and why it is safe:

* A statement that names a table of the policy (any dataset, granted or not) goes to
  ``QueryService`` — the same policy, budget, cache and audit as REST. So does every statement
  that is neither a read nor a session command (INSERT, COPY, CREATE, …): the rewriter refuses it
  with its usual code.
* A read that names no policy table (``pg_catalog``/``information_schema`` queries, ``SELECT
  version()``, ``SELECT 1``) and the session commands (SET, SHOW, RESET, BEGIN/COMMIT/ROLLBACK,
  SAVEPOINT, RELEASE, DISCARD) go to the shadow PostgreSQL. The shadow holds only the tables and
  columns this principal may see, with no rows, under a read-only role: even a statement routed
  there by mistake, or one that reaches a table in a way the router cannot see (a SQL string
  given to ``query_to_xml``, say), reads empty tables. No data can come from the shadow.
* ``SET/SHOW privgate.*`` and ``privgate_last_query()`` are answered by the session itself.

Names are found with sqlglot's tokenizer (not its parser: BI tools' catalog queries use
PostgreSQL-only syntax such as ``OPERATOR(pg_catalog.~)`` that the parser does not need to
understand). If even the tokenizer fails, the text is searched for table names, literals and
all, which can only send more statements to the privacy pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokenizer_core import Token, TokenType

_SESSION_WORDS = frozenset(
    {
        "SET",
        "SHOW",
        "RESET",
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "DISCARD",
        "DEALLOCATE",
    }
)
_READ_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_NAME_TYPES = frozenset({TokenType.VAR, TokenType.IDENTIFIER})
_TOKENIZER = Postgres.Tokenizer()
_PRIVGATE_SETTING = re.compile(r"\s*(SET|SHOW|RESET)\s+((SESSION|LOCAL)\s+)?privgate\.", re.I)


class Route(StrEnum):
    EMPTY = "empty"
    DATA = "data"
    SHADOW = "shadow"
    LOCAL_SET = "local_set"
    LOCAL_SHOW = "local_show"
    LAST_QUERY = "last_query"


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    route: Route
    #: First keyword, upper-case ("SELECT", "SET", …), for command tags.
    verb: str


def _tokens(sql: str) -> list[Token] | None:
    try:
        return list(_TOKENIZER.tokenize(sql))
    except (TokenError, ValueError):
        return None


def split_statements(sql: str) -> list[str]:
    """Split a simple-query string on top-level semicolons (empty pieces dropped).

    >>> split_statements("SET a = 1; SELECT ';'")
    ['SET a = 1', "SELECT ';'"]
    """
    toks = _tokens(sql)
    if toks is None:
        return [sql] if sql.strip() else []
    pieces: list[str] = []
    start = 0
    for tok in toks:
        if tok.token_type is TokenType.SEMICOLON:
            pieces.append(sql[start : tok.start])
            start = tok.end + 1
    pieces.append(sql[start:])
    return [p.strip() for p in pieces if p.strip()]


def classify(sql: str, table_names: Collection[str]) -> Statement:
    """Route one statement.

    >>> classify("SELECT relname FROM pg_class", {"visits"}).route
    <Route.SHADOW: 'shadow'>
    >>> classify("select count(*) from public.visits", {"visits"}).route
    <Route.DATA: 'data'>
    >>> classify("SET privgate.epsilon = 0.2", {"visits"}).route
    <Route.LOCAL_SET: 'local_set'>
    """
    tables = {t.lower() for t in table_names}
    toks = _tokens(sql)
    if toks is None:
        words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", sql)}
        verb = next(iter(re.findall(r"[A-Za-z]+|\(", sql)), "").upper()
        if not verb:
            return Statement(sql, Route.EMPTY, "")
        if "privgate_last_query" in words:
            return Statement(sql, Route.LAST_QUERY, verb)
        routed = (
            Route.DATA
            if words & tables or verb not in _READ_WORDS | _SESSION_WORDS
            else Route.SHADOW
        )
        return Statement(sql, routed, verb)
    significant = [t for t in toks if t.token_type is not TokenType.SEMICOLON]
    if not significant:
        return Statement(sql, Route.EMPTY, "")
    first = significant[0]
    verb = "(" if first.token_type is TokenType.L_PAREN else first.text.upper()
    names = [t.text.lower() for t in significant if t.token_type in _NAME_TYPES]
    if verb in ("SET", "SHOW", "RESET") and _PRIVGATE_SETTING.match(sql):
        return Statement(sql, Route.LOCAL_SHOW if verb == "SHOW" else Route.LOCAL_SET, verb)
    if "privgate_last_query" in names:
        return Statement(sql, Route.LAST_QUERY, verb)
    if any(n in tables for n in names) or any(
        t.text.lower() in tables
        for t in significant
        if t.token_type not in _NAME_TYPES and t.token_type is not TokenType.STRING
    ):
        return Statement(sql, Route.DATA, verb)
    if verb in _SESSION_WORDS or verb in _READ_WORDS:
        return Statement(sql, Route.SHADOW, verb)
    return Statement(sql, Route.DATA, verb)
