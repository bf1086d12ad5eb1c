"""Errors the rewriter raises when it rejects a statement.

Each class has a stable ``code`` and a default hint saying what to change. HTTP statuses and
SQLSTATEs live in one table, ``gateway.errors.ERROR_TABLE``. Messages never contain data values:
they only name what the analyst wrote or what the policy declares.
"""

from __future__ import annotations

from typing import ClassVar

from sqlglot import exp

from budgets.errors import CodedError


def shown(node: exp.Expression, limit: int = 80) -> str:
    """Render a fragment of the analyst's SQL for a message, with every literal replaced by ``?``.

    Messages reach the audit log, so they must not carry literals (an SSN in a WHERE, a file path).

    >>> import sqlglot
    >>> shown(sqlglot.parse_one("SELECT * FROM t WHERE ssn = '123'").args["where"].this)
    'ssn = ?'
    """
    redacted = node.copy().transform(lambda n: exp.var("?") if isinstance(n, exp.Literal) else n)
    return redacted.sql(dialect="postgres")[:limit]


class RewriteError(CodedError):
    """Root of every rejection the rewriter raises."""

    code: ClassVar[str] = "sql.rejected"


class SyntaxError_(RewriteError):
    code = "sql.syntax"
    default_hint = "Check the SQL near the position given; privgate reads PostgreSQL syntax."


class MultipleStatements(RewriteError):
    code = "sql.multiple_statements"
    default_hint = "Send exactly one SELECT statement per request, without ';'-separated extras."


class NotASelect(RewriteError):
    code = "sql.not_select"
    default_hint = "privgate answers read-only SELECT queries; it never changes data."


class Unsupported(RewriteError):
    code = "sql.unsupported"
    default_hint = "Rewrite the query with the supported subset (see docs/sql.md)."


class UnknownTable(RewriteError):
    code = "catalog.unknown_table"
    default_hint = "GET /v1/schema lists the tables you may query."


class UnknownColumn(RewriteError):
    """Also raised for blocked columns: they must look exactly like columns that do not exist."""

    code = "catalog.unknown_column"
    default_hint = "GET /v1/schema lists the columns you may use."


class TableFunction(RewriteError):
    code = "policy.table_function"
    default_hint = (
        "Query the tables listed by GET /v1/schema; files and table functions are not reachable."
    )


class FunctionNotAllowed(RewriteError):
    code = "policy.function_not_allowed"
    default_hint = "Use the functions and operators listed in docs/sql.md."


class IdentifierReference(RewriteError):
    code = "policy.identifier_reference"
    default_hint = (
        "Identifier columns (such as the privacy unit) may not be selected, grouped or filtered on; "
        "group by a dimension instead."
    )


class AggregationRequired(RewriteError):
    code = "policy.aggregation_required"
    default_hint = (
        "Protected tables answer aggregates only: e.g. SELECT dim, COUNT(*) FROM t GROUP BY dim."
    )


class MeasureMisuse(RewriteError):
    code = "policy.measure_misuse"
    default_hint = "Measures may only appear inside SUM/AVG/COUNT or in WHERE comparisons."


class MaskedColumn(RewriteError):
    code = "policy.masked_column"
    default_hint = "Masked columns are not available in aggregate queries yet."


class TypeMismatch(RewriteError):
    code = "sql.type_mismatch"
    default_hint = (
        "Compare a column with a literal of its own type (e.g. dates as '2024-01-31'); "
        "privgate does not cast data, so that no query can fail depending on the data."
    )


class InvalidEpsilon(RewriteError):
    code = "request.invalid_epsilon"
    default_hint = "Use an epsilon > 0 no larger than the dataset's per-query maximum."
