"""Gateway errors and the one table mapping every error code to an HTTP status and a SQLSTATE.

Codes are stable API. Every class of every package (``rewriter.errors``, ``budgets.errors``, this
module) carries ``code``, ``message`` and ``hint``; :func:`describe` turns any exception into the
canonical public shape, and anything that is not one of ours becomes ``internal`` with no detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from budgets.errors import CodedError


class GatewayError(CodedError):
    """Root of the errors the gateway itself raises."""

    code: ClassVar[str] = "internal"


class AuthMissing(GatewayError):
    code = "auth.missing"
    default_hint = "Send 'Authorization: Bearer <API key>'; `privgate key create` makes one."


class AuthInvalid(GatewayError):
    code = "auth.invalid_key"
    default_hint = "The key is unknown, revoked or expired; ask an admin for a new one."


class Forbidden(GatewayError):
    code = "auth.forbidden"
    default_hint = "This endpoint needs the admin role."


class PrincipalQuarantined(GatewayError):
    """An anomaly rule (or an admin) contained the principal: no query runs until it is released."""

    code = "principal.quarantined"
    default_hint = (
        "Your queries matched an anomaly rule and are paused; ask an admin to review and release "
        "the quarantine."
    )


class InvalidRequest(GatewayError):
    code = "request.invalid"
    default_hint = 'Send JSON like {"sql": "SELECT ...", "epsilon": 0.5}.'


class WarehouseUnavailable(GatewayError):
    """The warehouse could not be reached: nothing was read and nothing was charged (the budget
    is reserved only once the warehouse is reachable)."""

    code = "warehouse.unavailable"
    default_hint = "Try again later; no budget was spent."


class WarehouseError(GatewayError):
    """The warehouse failed after touching data: one uniform message, and the budget stays spent."""

    code = "warehouse.error"
    default_hint = "The query failed while reading data. The budget for it stays spent."


class PublicQueryInvalid(GatewayError):
    """The warehouse refused a query that reads public tables only (a type, grouping or name
    error its binder found). Public tables hold no personal data and nothing was charged, so
    this is a user error, not the uniform after-data failure of protected queries."""

    code = "sql.public_query_invalid"
    default_hint = (
        "Check the query against the public table's columns and types (GET /v1/schema): "
        "GROUP BY every non-aggregated column, aggregate only numbers. Nothing was charged."
    )


class QueryTimeout(GatewayError):
    code = "warehouse.timeout"
    default_hint = "Narrow the query (WHERE) or ask an admin to raise the statement timeout."


class InternalError(GatewayError):
    code = "internal"
    default_hint = "This is a bug in privgate; the server log has the details for an admin."


class TlsRequired(GatewayError):
    """A plaintext HTTP request from a peer that is not loopback (``PRIVGATE_REQUIRE_TLS``)."""

    code = "tls.required"
    default_hint = "Use https:// (the gateway serves plaintext to loopback clients only)."


class WireError(GatewayError):
    """Root of the PostgreSQL wire door's own errors."""

    code = "wire.protocol"
    default_hint = "Use a PostgreSQL client (libpq, psycopg, pgjdbc) speaking protocol 3.0."


class WireAuthFailed(WireError):
    code = "wire.auth_failed"
    default_hint = (
        "Log in with the principal's name and one of its API keys (or its wire password); "
        "keys made before the wire door existed need replacing: `privgate key create`."
    )


class WireTlsRequired(WireError):
    code = "wire.tls_required"
    default_hint = "Connect with sslmode=require (libpq) or ssl=true (JDBC)."


class WireUnsupported(WireError):
    code = "wire.unsupported"
    default_hint = (
        "Send SELECT statements and catalog queries; COPY and function calls are not served."
    )


class WireParameter(WireError):
    code = "wire.parameter"
    default_hint = "Bind a value of the parameter's type (see Describe), or send it as text."


class WireCancelled(WireError):
    code = "wire.cancelled"
    default_hint = "The statement was cancelled; the connection is ready for the next one."


class WireTooManyConnections(WireError):
    code = "wire.too_many_connections"
    default_hint = "Close idle connections or ask an admin to raise PRIVGATE_WIRE_MAX_CONNECTIONS."


class ShadowUnavailable(WireError):
    code = "wire.shadow_unavailable"
    default_hint = "Catalog queries need the shadow PostgreSQL; an admin should check its settings."


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    http_status: int
    sqlstate: str
    summary: str


#: The one mapping from code to HTTP status and SQLSTATE (docs/errors.md is checked against it).
ERROR_TABLE: dict[str, ErrorSpec] = {
    "sql.syntax": ErrorSpec(400, "42601", "The SQL does not parse."),
    "sql.multiple_statements": ErrorSpec(400, "42601", "More than one statement was sent."),
    "sql.not_select": ErrorSpec(400, "0A000", "Only SELECT is accepted."),
    "sql.unsupported": ErrorSpec(400, "0A000", "A construct outside the supported subset."),
    "sql.public_query_invalid": ErrorSpec(
        400, "42000", "The warehouse refused a query on public tables (nothing charged)."
    ),
    "sql.type_mismatch": ErrorSpec(400, "42804", "A literal does not match its column's type."),
    "catalog.unknown_table": ErrorSpec(400, "42P01", "No such table (or not visible to you)."),
    "catalog.unknown_column": ErrorSpec(
        400, "42703", "No such column; blocked columns look absent."
    ),
    "policy.table_function": ErrorSpec(400, "42501", "Table functions (files, URLs) are refused."),
    "policy.function_not_allowed": ErrorSpec(400, "42501", "A function outside the allow-list."),
    "policy.identifier_reference": ErrorSpec(400, "42501", "An identifier column was referenced."),
    "policy.aggregation_required": ErrorSpec(
        400, "42501", "Protected tables answer aggregates only."
    ),
    "policy.measure_misuse": ErrorSpec(400, "42501", "A measure used outside an aggregate."),
    "policy.masked_column": ErrorSpec(400, "42501", "Masked columns are not usable here yet."),
    "request.invalid_epsilon": ErrorSpec(400, "22023", "Epsilon is not positive or too large."),
    "request.invalid": ErrorSpec(422, "08P01", "The request body is malformed."),
    "request.duplicate_query_id": ErrorSpec(409, "23505", "A query id was reused."),
    "budget.exhausted": ErrorSpec(429, "53400", "Not enough privacy budget left."),
    "budget.query_max": ErrorSpec(400, "53400", "Above the per-query epsilon maximum."),
    "budget.invalid_cost": ErrorSpec(400, "22023", "A meaningless privacy cost."),
    "auth.missing": ErrorSpec(401, "28000", "No credentials were sent."),
    "auth.invalid_key": ErrorSpec(401, "28P01", "Unknown, revoked or expired key."),
    "auth.forbidden": ErrorSpec(403, "42501", "The principal's role does not allow this."),
    "principal.quarantined": ErrorSpec(
        403, "42501", "The principal is quarantined until an admin releases it."
    ),
    "auth.unknown_principal": ErrorSpec(404, "42704", "No such principal."),
    "admin.invalid": ErrorSpec(400, "22023", "An admin request names something impossible."),
    "admin.not_found": ErrorSpec(404, "42704", "No such principal, key, dataset or account."),
    "admin.conflict": ErrorSpec(409, "42710", "The principal already exists."),
    "policy.invalid_file": ErrorSpec(400, "F0000", "The policy is invalid; the old one serves."),
    "warehouse.unavailable": ErrorSpec(503, "08006", "The warehouse is unreachable."),
    "warehouse.error": ErrorSpec(500, "XX000", "The warehouse failed while reading data."),
    "warehouse.timeout": ErrorSpec(504, "57014", "The statement timeout was reached."),
    "tls.required": ErrorSpec(403, "28000", "Plaintext HTTP from a non-loopback client."),
    "wire.protocol": ErrorSpec(400, "08P01", "A malformed or out-of-order wire message."),
    "wire.auth_failed": ErrorSpec(401, "28P01", "Wire login refused: user or password wrong."),
    "wire.tls_required": ErrorSpec(401, "28000", "This server accepts wire logins over TLS only."),
    "wire.unsupported": ErrorSpec(400, "0A000", "A wire feature privgate does not serve."),
    "wire.parameter": ErrorSpec(400, "22P02", "A bound parameter does not fit its type."),
    "wire.cancelled": ErrorSpec(400, "57014", "The statement was cancelled by the client."),
    "wire.too_many_connections": ErrorSpec(503, "53300", "The wire connection limit is reached."),
    "wire.shadow_unavailable": ErrorSpec(
        503, "08006", "The catalog (shadow) server is unreachable."
    ),
    "internal": ErrorSpec(500, "XX000", "A bug in privgate."),
}


@dataclass(frozen=True, slots=True)
class PublicError:
    code: str
    message: str
    hint: str
    http_status: int
    sqlstate: str


def describe(exc: BaseException) -> PublicError:
    """The safe public view of any exception; unknown exceptions say nothing about themselves."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ERROR_TABLE and code != "internal":
        spec = ERROR_TABLE[code]
        return PublicError(
            code=code,
            message=str(getattr(exc, "message", "")) or spec.summary,
            hint=str(getattr(exc, "hint", "")),
            http_status=spec.http_status,
            sqlstate=spec.sqlstate,
        )
    spec = ERROR_TABLE["internal"]
    return PublicError(
        code="internal",
        message="internal error",
        hint=InternalError.default_hint,
        http_status=spec.http_status,
        sqlstate=spec.sqlstate,
    )
