"""One logged-in wire connection: the simple and extended query protocols, message by message.

The session turns client messages into calls on two backends and back into server messages:
data statements go to :class:`DataDoor` (``QueryService``: policy, budget, cache, audit), catalog
and session statements to the principal's shadow (:class:`~gateway.wire.shadow_link.ShadowLink`),
``privgate.*`` settings and ``privgate_last_query()`` are answered here (see ``gateway.wire.router``
for the routing argument). It does no socket I/O: ``handle`` returns the bytes to send.

Extended protocol: Parse stores the statement, Bind decodes the parameters, Describe plans
without executing or charging, and the first Execute of a portal runs it once. After an error
every message up to the next Sync is skipped, as PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import sqlglot
import sqlglot.errors
from sqlglot import exp

from gateway.errors import (
    WireCancelled,
    WireError,
    WireParameter,
    WireUnsupported,
    describe,
)
from gateway.principals import Principal
from gateway.service import QueryFailed
from gateway.wire import messages as m
from gateway.wire import params as wparams
from gateway.wire import pgtypes
from gateway.wire.router import Route, Statement, classify, split_statements
from gateway.wire.shadow_link import ShadowLink, ShadowResult
from rewriter.catalog import Catalog, LogicalType
from rewriter.plan import QueryPlan

log = logging.getLogger("privgate.wire")

_SETTINGS = {"epsilon", "notices"}
_SET_RE = re.compile(
    r"\s*SET\s+(?:SESSION\s+|LOCAL\s+)?privgate\.(\w+)\s*(?:=|\s+TO\s+)\s*'?([^';\s]*)'?\s*;?\s*$",
    re.I,
)
_RESET_RE = re.compile(r"\s*RESET\s+privgate\.(\w+)\s*;?\s*$", re.I)
_SHOW_RE = re.compile(r"\s*SHOW\s+privgate\.(\w+)\s*;?\s*$", re.I)
#: Shadow session settings a client may not change: the role's defaults bound what a catalog
#: statement may cost (timeouts, memory) and keep it read-only. PostgreSQL cannot pin a
#: user-settable parameter per role, so the session refuses to forward these.
_PINNED = (
    "statement_timeout|lock_timeout|idle_in_transaction_session_timeout|idle_session_timeout|"
    "default_transaction_read_only|transaction_read_only|work_mem|maintenance_work_mem|"
    "temp_buffers|hash_mem_multiplier|max_parallel_workers_per_gather|"
    "role|session_authorization|session_replication_role|default_transaction_isolation"
)
_PINNED_SET = re.compile(
    rf"\s*(SET|RESET)\s+(SESSION\s+|LOCAL\s+)?(\"?({_PINNED})\"?\b|ROLE\b|SESSION\s+AUTHORIZATION\b|SESSION\s+CHARACTERISTICS\b)",
    re.I,
)
_SET_CONFIG = re.compile(r"\bset_config\b", re.I)
_TX_END = re.compile(r"\s*(ROLLBACK|ABORT|COMMIT|END)\b", re.I)


class DataDoor(Protocol):
    """What the session needs of the privacy pipeline (``gateway.wire.door.ServiceDoor``)."""

    @property
    def catalog(self) -> Catalog: ...

    def table_names(self) -> frozenset[str]: ...

    def principal(self) -> Principal | None:
        """The session's principal as stored now (``None``: disabled or key revoked)."""

    def describe(self, sql: str, epsilon: str | None) -> QueryPlan: ...

    def run(self, sql: str, epsilon: str | None) -> dict[str, Any]: ...

    def reject(self, sql: str, exc: BaseException) -> QueryFailed: ...


@dataclass
class _Prepared:
    sql: str
    stmt: Statement
    declared: tuple[int, ...]
    #: For data statements: parameter number → inferred logical type.
    types: dict[int, LogicalType] = field(default_factory=dict)
    #: For data statements: the parameter OIDs Describe reports (worked out once, at Parse).
    oids: list[int] = field(default_factory=list)


@dataclass
class _Portal:
    prepared: _Prepared
    params: tuple[bytes | None, ...]
    param_formats: tuple[int, ...]
    result_formats: tuple[int, ...]
    fields: list[m.Field] | None = None
    rows: list[list[bytes | None]] | None = None
    tag: str = ""
    pos: int = 0


def _format_of(formats: tuple[int, ...], i: int) -> int:
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[i]


def _error(exc: BaseException, audit_id: str | None = None) -> bytes:
    public = describe(exc)
    detail = f"privgate code: {public.code}" + (f"; audit_id: {audit_id}" if audit_id else "")
    return m.error_response(
        m.Notice("ERROR", public.sqlstate, public.message, detail=detail, hint=public.hint or None)
    )


class WireSession:
    def __init__(
        self,
        *,
        door: DataDoor,
        shadow: ShadowLink,
        run_blocking: Callable[..., Any] | None = None,
    ) -> None:
        self._door = door
        self._shadow = shadow
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._skip_to_sync = False
        self._data_failed_in_tx = False
        self._epsilon: str | None = None
        self._notices = True
        self.last_query: dict[str, Any] | None = None
        #: Answers of public-table queries run by a Describe, for the Execute that follows.
        self._public_answers: dict[str, dict[str, Any]] = {}
        self._to_thread = run_blocking or asyncio.to_thread
        self._cancelled = False
        self.busy_with_shadow = False

    # --- status ---------------------------------------------------------------------------------

    @property
    def transaction_status(self) -> str:
        status = self._shadow.transaction_status
        return "E" if self._data_failed_in_tx and status != "I" else status

    def ready(self) -> bytes:
        return m.ready_for_query(self.transaction_status)

    def cancel(self) -> None:
        """A CancelRequest for this session arrived (from another connection)."""
        self._cancelled = True
        if self.busy_with_shadow:
            try:
                self._shadow.cancel()
            except Exception:
                log.exception("could not forward a cancel to the shadow")

    # --- dispatch -------------------------------------------------------------------------------

    async def handle(self, msg: m.Frontend) -> list[bytes]:
        if isinstance(msg, m.Sync):
            self._skip_to_sync = False
            self._portals.pop("", None)
            return [self.ready()]
        if isinstance(msg, m.Query):
            self._skip_to_sync = False
            return await self._simple(msg.sql)
        if self._skip_to_sync:
            return []
        try:
            if isinstance(msg, m.Parse):
                return self._parse(msg)
            if isinstance(msg, m.Bind):
                return self._bind(msg)
            if isinstance(msg, m.Describe):
                return await self._describe(msg)
            if isinstance(msg, m.Execute):
                return await self._execute(msg)
            if isinstance(msg, m.Close):
                (self._statements if msg.kind == "S" else self._portals).pop(msg.name, None)
                return [m.close_complete()]
            if isinstance(msg, m.Flush):
                return []
            if isinstance(msg, m.Unsupported):
                raise WireUnsupported(
                    f"message type {msg.type!r} (COPY, function call) is not served"
                )
            raise m.ProtocolViolation(f"unexpected {type(msg).__name__} message")
        except _Failed as failed:
            self._skip_to_sync = True
            return [*failed.before, failed.error]
        except QueryFailed as exc:
            self._skip_to_sync = True
            self._note_data_failure()
            return [_error(exc.error, exc.audit_id)]
        except (WireError, wparams.ParameterError, pgtypes.EncodingError) as exc:
            self._skip_to_sync = True
            if not isinstance(exc, WireError):
                exc = WireParameter(str(exc))
            return [_error(exc)]

    # --- simple query ---------------------------------------------------------------------------

    async def _simple(self, sql: str) -> list[bytes]:
        out: list[bytes] = []
        pieces = split_statements(sql)
        if not pieces:
            return [m.empty_query_response(), self.ready()]
        for piece in pieces:
            stmt = classify(piece, self._door.table_names())
            try:
                out += await self._run_simple(stmt)
            except _Failed as failed:
                out += [*failed.before, failed.error]
                break
            except QueryFailed as exc:
                self._note_data_failure()
                out.append(_error(exc.error, exc.audit_id))
                break
            except WireError as exc:
                out.append(_error(exc))
                break
        out.append(self.ready())
        return out

    async def _run_simple(self, stmt: Statement) -> list[bytes]:
        self._check_tx(stmt)
        if stmt.route is Route.SHADOW:
            self._guard_shadow(stmt.sql)
            results = await self._shadow_call(self._shadow.simple, stmt.sql)
            out: list[bytes] = []
            for res in results:
                out += self._shadow_messages(res, describe_rows=True)
            out += self._shadow_side_messages()
            if self._data_failed_in_tx and _TX_END.match(stmt.sql):
                self._data_failed_in_tx = False
            return out
        if stmt.route is Route.EMPTY:
            return [m.empty_query_response()]
        fields, rows, tag, notices = await self._answer(stmt, (), {}, ())
        return [
            *([m.row_description(fields)] if fields else []),
            *map(m.data_row, rows),
            *notices,
            m.command_complete(tag),
        ]

    # --- extended query -------------------------------------------------------------------------

    def _parse(self, msg: m.Parse) -> list[bytes]:
        if msg.name and msg.name not in self._statements and len(self._statements) >= _MAX_NAMED:
            raise _Failed(_limit_error("prepared statements"))
        stmt = classify(msg.sql, self._door.table_names())
        prepared = _Prepared(msg.sql, stmt, msg.param_oids)
        if stmt.route is Route.DATA:
            count, prepared.types = wparams.analyse(msg.sql, self._door.catalog)
            prepared.oids = wparams.param_oids(count, msg.param_oids, prepared.types)
        self._statements[msg.name] = prepared
        return [m.parse_complete()]

    def _bind(self, msg: m.Bind) -> list[bytes]:
        prepared = self._statements.get(msg.statement)
        if prepared is None:
            raise _Failed(_error(WireError(f"prepared statement {msg.statement!r} does not exist")))
        if msg.portal and msg.portal not in self._portals and len(self._portals) >= _MAX_NAMED:
            raise _Failed(_limit_error("portals"))
        if len(msg.param_formats) not in (0, 1, len(msg.params)):
            raise m.ProtocolViolation("parameter format count does not match the parameters")
        self._portals[msg.portal] = _Portal(
            prepared, msg.params, msg.param_formats, msg.result_formats
        )
        return [m.bind_complete()]

    async def _describe(self, msg: m.Describe) -> list[bytes]:
        if msg.kind == "S":
            prepared = self._statements.get(msg.name)
            if prepared is None:
                raise _Failed(_error(WireError(f"prepared statement {msg.name!r} does not exist")))
            return await self._describe_statement(prepared)
        portal = self._portals.get(msg.name)
        if portal is None:
            raise _Failed(_error(WireError(f"portal {msg.name!r} does not exist")))
        fields = await self._portal_fields(portal)
        return [m.row_description(fields) if fields else m.no_data()]

    async def _describe_statement(self, prepared: _Prepared) -> list[bytes]:
        route = prepared.stmt.route
        if route is Route.SHADOW:
            oids, fields, error = await self._shadow_call(
                self._shadow.describe, prepared.sql, list(prepared.declared)
            )
            if error is not None:
                raise _Failed(m.error_response(error))
            return [
                m.parameter_description(oids),
                m.row_description(fields) if fields else m.no_data(),
            ]
        if route is Route.DATA:
            oids = prepared.oids
            dummy = [_dummy(o) for o in oids]
            fields = await self._plan_fields(prepared, dummy, ())
            return [
                m.parameter_description(oids),
                m.row_description(fields) if fields else m.no_data(),
            ]
        fields = self._local_fields(prepared.stmt)
        return [m.parameter_description([]), m.row_description(fields) if fields else m.no_data()]

    async def _portal_fields(self, portal: _Portal) -> list[m.Field] | None:
        if portal.fields is not None:
            return portal.fields
        prepared = portal.prepared
        if prepared.stmt.route is Route.SHADOW:
            _, fields, error = await self._shadow_call(
                self._shadow.describe, prepared.sql, list(prepared.declared)
            )
            if error is not None:
                raise _Failed(m.error_response(error))
            if fields is None:
                return None
            return [
                m.Field(
                    f.name,
                    f.type_oid,
                    f.type_size,
                    f.type_modifier,
                    _format_of(portal.result_formats, i),
                    f.table_oid,
                    f.column,
                )
                for i, f in enumerate(fields)
            ]
        if prepared.stmt.route is Route.DATA:
            values = await self._data_params(portal)
            return await self._plan_fields(prepared, values, portal.result_formats)
        fields = self._local_fields(prepared.stmt)
        return (
            None
            if fields is None
            else [
                m.Field(
                    f.name,
                    f.type_oid,
                    f.type_size,
                    f.type_modifier,
                    _format_of(portal.result_formats, i),
                )
                for i, f in enumerate(fields)
            ]
        )

    async def _execute(self, msg: m.Execute) -> list[bytes]:
        portal = self._portals.get(msg.portal)
        if portal is None:
            raise _Failed(_error(WireError(f"portal {msg.portal!r} does not exist")))
        out: list[bytes] = []
        if portal.rows is None:
            out += await self._run_portal(portal)
        rows = portal.rows or []
        end = len(rows) if msg.max_rows <= 0 else min(len(rows), portal.pos + msg.max_rows)
        out += [m.data_row(r) for r in rows[portal.pos : end]]
        portal.pos = end
        if msg.max_rows > 0 and end < len(rows):
            out.append(m.portal_suspended())
        elif portal.tag == "":
            out.append(m.empty_query_response())
        else:
            out.append(m.command_complete(portal.tag))
        return out

    async def _run_portal(self, portal: _Portal) -> list[bytes]:
        prepared = portal.prepared
        self._check_tx(prepared.stmt)
        if prepared.stmt.route is Route.SHADOW:
            self._guard_shadow(prepared.sql)
            oids = list(prepared.declared)
            res = await self._shadow_call(
                self._shadow.execute,
                prepared.sql,
                list(portal.params),
                oids,
                list(portal.param_formats),
                portal.result_formats,
            )
            side = self._shadow_side_messages()
            if res.error is not None:
                raise _Failed(m.error_response(res.error), side)
            portal.fields, portal.rows, portal.tag = res.fields, res.rows, res.tag
            if self._data_failed_in_tx and _TX_END.match(prepared.sql):
                self._data_failed_in_tx = False
            return side
        if prepared.stmt.route is Route.EMPTY:
            portal.rows, portal.tag = [], ""
            return []
        values = await self._data_params(portal) if prepared.stmt.route is Route.DATA else []
        fields, rows, tag, notices = await self._answer(
            prepared.stmt, values, prepared.types, portal.result_formats
        )
        portal.fields, portal.rows, portal.tag = fields, rows, tag
        return notices

    # --- answering ------------------------------------------------------------------------------

    async def _answer(
        self,
        stmt: Statement,
        values: tuple[Any, ...] | list[Any],
        types: dict[int, LogicalType],
        formats: tuple[int, ...],
    ) -> tuple[list[m.Field] | None, list[list[bytes | None]], str, list[bytes]]:
        """Run a data or local statement: (fields, encoded rows, command tag, notices)."""
        if stmt.route is Route.LOCAL_SET:
            return None, [], self._set(stmt.sql), []
        if stmt.route is Route.LOCAL_SHOW:
            name = _setting_name(_SHOW_RE, stmt.sql)
            value = {
                "epsilon": self._epsilon or "default",
                "notices": "on" if self._notices else "off",
            }[name]
            fields = [m.Field(f"privgate.{name}", pgtypes.TEXT, format=_format_of(formats, 0))]
            return fields, [_encode_row([value], fields)], "SHOW", []
        if stmt.route is Route.LAST_QUERY:
            return self._last_query(stmt.sql, formats)
        sql = await self._bound_sql(stmt.sql, values, types)
        self._cancelled = False
        envelope = self._public_answers.pop(sql, None)
        if envelope is None:
            envelope = await self._to_thread(self._door.run, sql, self._epsilon)
        self._public_answers.clear()
        if self._cancelled:
            self._cancelled = False
            self.last_query = envelope
            raise QueryFailed(
                WireCancelled(
                    "canceling statement due to user request (the answer is kept: repeat the "
                    "query to get it at no cost)"
                ),
                envelope.get("audit_id"),
            )
        self.last_query = envelope
        fields = _envelope_fields(envelope, formats)
        rows = [_encode_row(r, fields) for r in envelope["rows"]]
        notices = [m.notice_response(_cost_notice(envelope))] if self._notices else []
        return fields, rows, f"SELECT {len(rows)}", notices

    async def _bound_sql(
        self, sql: str, values: list[Any] | tuple[Any, ...], types: dict[int, LogicalType]
    ) -> str:
        try:
            return wparams.inline(sql, list(values), types) if values else sql
        except wparams.ParameterError as exc:
            raise await self._to_thread(self._door.reject, sql, WireParameter(str(exc))) from exc

    async def _plan_fields(
        self, prepared: _Prepared, values: list[Any] | tuple[Any, ...], formats: tuple[int, ...]
    ) -> list[m.Field] | None:
        sql = await self._bound_sql(prepared.sql, values, prepared.types)
        plan = await self._to_thread(self._door.describe, sql, self._epsilon)
        if not plan.outputs:
            if plan.protected:  # every protected plan names its outputs: this is a bug
                raise QueryFailed(WireUnsupported("this query cannot be described"), None)
            # A query of public tables only: its columns are the warehouse's, known once it
            # runs. Running it releases nothing protected and costs nothing; the answer is kept
            # for the Execute that follows, so it runs once.
            envelope = await self._to_thread(self._door.run, sql, self._epsilon)
            self._public_answers[sql] = envelope
            return _envelope_fields(envelope, formats)
        return [
            _field(o.name, pgtypes.oid_for(o.type), _format_of(formats, i))
            for i, o in enumerate(plan.outputs)
        ]

    async def _data_params(self, portal: _Portal) -> list[Any]:
        """The portal's parameters as values; a refusal is audited like any other."""
        try:
            return self._decode_params(portal)
        except (WireParameter, pgtypes.EncodingError) as exc:
            public = exc if isinstance(exc, WireParameter) else WireParameter(str(exc))
            raise await self._to_thread(self._door.reject, portal.prepared.sql, public) from exc

    def _decode_params(self, portal: _Portal) -> list[Any]:
        prepared = portal.prepared
        oids = prepared.oids
        if len(portal.params) != len(oids):
            raise WireParameter(
                f"the statement takes {len(oids)} parameters and {len(portal.params)} were bound"
            )
        declared = prepared.declared
        return [
            pgtypes.decode_param(
                raw,
                declared[i] if i < len(declared) else 0,
                _format_of(portal.param_formats, i),
            )
            if _format_of(portal.param_formats, i) == 0
            else pgtypes.decode_param(raw, oids[i], 1)
            for i, raw in enumerate(portal.params)
        ]

    def _local_fields(self, stmt: Statement) -> list[m.Field] | None:
        if stmt.route is Route.LOCAL_SHOW:
            return [m.Field(f"privgate.{_setting_name(_SHOW_RE, stmt.sql)}", pgtypes.TEXT)]
        if stmt.route is Route.LAST_QUERY:
            return [m.Field(n, o) for n, o in _last_query_columns(stmt.sql)]
        return None

    def _set(self, sql: str) -> str:
        reset = _RESET_RE.match(sql)
        if reset:
            name = _setting_name(_RESET_RE, sql)
            if name == "epsilon":
                self._epsilon = None
            else:
                self._notices = True
            return "RESET"
        match = _SET_RE.match(sql)
        if match is None or match.group(1).lower() not in _SETTINGS:
            raise WireUnsupported(
                "privgate settings are privgate.epsilon (a positive number or DEFAULT) and "
                "privgate.notices (on/off)"
            )
        name, value = match.group(1).lower(), match.group(2)
        if name == "notices":
            if value.lower() not in ("on", "off", "true", "false"):
                raise WireParameter("privgate.notices is on or off")
            self._notices = value.lower() in ("on", "true")
            return "SET"
        if value.lower() == "default":
            self._epsilon = None
            return "SET"
        try:
            eps = Decimal(value)
        except InvalidOperation:
            raise WireParameter(
                f"privgate.epsilon must be a positive number, not {value!r}"
            ) from None
        if not eps.is_finite() or eps <= 0:
            raise WireParameter("privgate.epsilon must be a positive number")
        self._epsilon = str(eps)
        return "SET"

    def _last_query(
        self, sql: str, formats: tuple[int, ...]
    ) -> tuple[list[m.Field] | None, list[list[bytes | None]], str, list[bytes]]:
        wanted = _last_query_columns(sql)
        fields = [_field(n, o, _format_of(formats, i)) for i, (n, o) in enumerate(wanted)]
        positions = [[n for n, _ in _LAST_QUERY_COLUMNS].index(n) for n, _ in wanted]
        env = self.last_query
        rows: list[list[bytes | None]] = []
        if env is not None:
            budget = env.get("budget") or {}
            groups = env.get("groups") or {}
            for col in env.get("columns", []):
                rows.append(
                    _encode_row(
                        [
                            env.get("query_id"),
                            env.get("audit_id"),
                            env.get("dataset"),
                            bool(env.get("cached")),
                            env.get("epsilon_charged"),
                            env.get("delta_charged"),
                            budget.get("epsilon_remaining"),
                            budget.get("delta_remaining"),
                            col.get("name"),
                            bool(col.get("noisy")),
                            col.get("mechanism"),
                            col.get("scale"),
                            col.get("ci95_halfwidth"),
                            groups.get("handling"),
                            groups.get("threshold"),
                        ],
                        [m.Field(n, o) for n, o in _LAST_QUERY_COLUMNS],
                    )
                )
        rows = [[row[i] for i in positions] for row in rows]
        if any(f.format == 1 for f in fields):
            rows = [
                [
                    None if v is None else pgtypes.text_to_binary(v, f.type_oid) if f.format else v
                    for v, f in zip(row, fields, strict=True)
                ]
                for row in rows
            ]
        return fields, rows, f"SELECT {len(rows)}", []

    # --- shadow helpers -------------------------------------------------------------------------

    async def _shadow_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.busy_with_shadow = True
        try:
            return await self._to_thread(fn, *args)
        finally:
            self.busy_with_shadow = False

    def _shadow_messages(self, res: ShadowResult, *, describe_rows: bool) -> list[bytes]:
        if res.error is not None:
            raise _Failed(m.error_response(res.error), self._shadow_side_messages())
        out: list[bytes] = []
        if res.fields is not None and describe_rows:
            out.append(m.row_description(res.fields))
        out += [m.data_row(r) for r in res.rows]
        out.append(m.command_complete(res.tag) if res.tag else m.empty_query_response())
        return out

    def _shadow_side_messages(self) -> list[bytes]:
        out = [m.notice_response(n) for n in self._shadow.notices]
        self._shadow.notices.clear()
        out += [m.parameter_status(k, v) for k, v in self._shadow.changed_parameters()]
        return out

    @staticmethod
    def _guard_shadow(sql: str) -> None:
        if _PINNED_SET.match(sql) or _SET_CONFIG.search(sql):
            raise _Failed(
                m.error_response(
                    m.Notice(
                        "ERROR",
                        "42501",
                        "privgate keeps this setting fixed for catalog statements",
                        detail="privgate code: wire.unsupported",
                        hint="Timeouts, memory limits, roles and read-only mode of the catalog "
                        "session are set by privgate; leave them out of SET.",
                    )
                )
            )

    def _check_tx(self, stmt: Statement) -> None:
        if not self._data_failed_in_tx or self._shadow.transaction_status == "I":
            self._data_failed_in_tx = False
            return
        if stmt.route is Route.SHADOW and (
            _TX_END.match(stmt.sql) or re.match(r"\s*ROLLBACK\s+TO\b", stmt.sql, re.I)
        ):
            return
        raise _Failed(
            m.error_response(
                m.Notice(
                    "ERROR",
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                )
            )
        )

    def _note_data_failure(self) -> None:
        if self._shadow.transaction_status == "T":
            self._data_failed_in_tx = True


#: Named prepared statements (and portals) one connection may hold: each costs memory.
_MAX_NAMED = 1000


def _limit_error(what: str) -> bytes:
    return m.error_response(
        m.Notice(
            "ERROR",
            "54000",
            f"this connection holds {_MAX_NAMED} {what}, the most privgate keeps",
            hint="Close unused ones (Close message, DEALLOCATE) or use unnamed ones.",
        )
    )


class _Failed(Exception):
    """An error already encoded as an ErrorResponse (plus what must precede it)."""

    def __init__(self, error: bytes, before: list[bytes] | None = None) -> None:
        super().__init__("wire error")
        self.error = error
        self.before = before or []


_LAST_QUERY_COLUMNS = (
    ("query_id", pgtypes.TEXT),
    ("audit_id", pgtypes.TEXT),
    ("dataset", pgtypes.TEXT),
    ("cached", pgtypes.BOOL),
    ("epsilon_charged", pgtypes.TEXT),
    ("delta_charged", pgtypes.TEXT),
    ("epsilon_remaining", pgtypes.TEXT),
    ("delta_remaining", pgtypes.TEXT),
    ("column_name", pgtypes.TEXT),
    ("noisy", pgtypes.BOOL),
    ("mechanism", pgtypes.TEXT),
    ("scale", pgtypes.FLOAT8),
    ("ci95_halfwidth", pgtypes.FLOAT8),
    ("groups", pgtypes.TEXT),
    ("threshold", pgtypes.INT8),
)


def _last_query_columns(sql: str) -> list[tuple[str, int]]:
    """The columns ``SELECT a, b | * FROM privgate_last_query()`` asks for (nothing else is served)."""
    unsupported = WireUnsupported(
        "privgate_last_query() answers SELECT * or SELECT <its columns> FROM privgate_last_query()"
    )
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError:
        raise unsupported from None
    if not isinstance(tree, exp.Select) or any(
        tree.args.get(k) for k in ("where", "group", "having", "order", "limit", "joins", "with_")
    ):
        raise unsupported
    known = dict(_LAST_QUERY_COLUMNS)
    out: list[tuple[str, int]] = []
    for e in tree.expressions:
        if isinstance(e, exp.Star):
            out += list(_LAST_QUERY_COLUMNS)
        elif isinstance(e, exp.Column) and e.name.lower() in known and not e.table:
            out.append((e.name.lower(), known[e.name.lower()]))
        else:
            raise unsupported
    return out


def _setting_name(pattern: re.Pattern[str], sql: str) -> str:
    match = pattern.match(sql)
    name = match.group(1).lower() if match else ""
    if name not in _SETTINGS:
        raise WireUnsupported(
            f"unknown privgate setting {name!r}: use privgate.epsilon or privgate.notices"
        )
    return name


def _field(name: str, oid: int, fmt: int) -> m.Field:
    return m.Field(name, oid, pgtypes.TYPE_SIZES.get(oid, -1), format=fmt)


def _envelope_fields(envelope: dict[str, Any], formats: tuple[int, ...]) -> list[m.Field]:
    """The RowDescription of a released answer (the same for its Describe and its Execute)."""
    return [
        _field(c["name"], pgtypes.oid_for(c["type"]), _format_of(formats, i))
        for i, c in enumerate(envelope["columns"])
    ]


def _encode_row(values: list[Any], fields: list[m.Field]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for v, f in zip(values, fields, strict=True):
        if f.format == 1:
            out.append(pgtypes.encode_binary(v, f.type_oid))
        else:
            out.append(pgtypes.encode_text(v, f.type_oid))
    return out


def _dummy(oid: int) -> Any:
    """A stand-in value of type ``oid`` for planning a statement whose parameters are not bound."""
    if oid in (pgtypes.INT2, pgtypes.INT4, pgtypes.INT8, pgtypes.OID):
        return 0
    if oid in (pgtypes.FLOAT4, pgtypes.FLOAT8, pgtypes.NUMERIC):
        return 0.0
    if oid == pgtypes.BOOL:
        return False
    if oid == pgtypes.DATE:
        return pgtypes._EPOCH
    if oid == pgtypes.TIMESTAMP:
        return pgtypes._EPOCH_TS
    return ""


def _cost_notice(env: dict[str, Any]) -> m.Notice:
    budget = env.get("budget") or {}
    if env.get("cached"):
        what = "replayed a stored answer at no cost"
    else:
        what = f"charged epsilon {env.get('epsilon_charged')}, delta {env.get('delta_charged')}"
    left = (
        f"; epsilon left {budget.get('epsilon_remaining')} of {budget.get('epsilon_limit')}"
        if budget
        else ""
    )
    return m.Notice(
        "NOTICE",
        "00000",
        f"privgate: {what}{left}; audit_id {env.get('audit_id')}",
        hint="Noise scales and intervals: SELECT * FROM privgate_last_query()",
    )
