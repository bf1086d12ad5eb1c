"""One wire connection's link to its shadow PostgreSQL session (blocking; run in a thread).

Uses psycopg's libpq wrapper (``pgconn``) rather than cursors: results come back as raw text
bytes with their type OIDs, so they travel to the client exactly as PostgreSQL formatted them,
and multi-statement strings, transaction commands and notices behave as on a real server.
"""

from __future__ import annotations

import select
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq

from gateway.wire import pgtypes
from gateway.wire.messages import Field, Notice

#: Parameters a PostgreSQL server reports to clients (GUC_REPORT), forwarded when they change.
REPORTED = (
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "application_name",
    "is_superuser",
    "session_authorization",
)
_FIXED = {"client_encoding": "UTF8", "is_superuser": "off", "server_encoding": "UTF8"}

_DIAG = (
    ("S", pq.DiagnosticField.SEVERITY_NONLOCALIZED),
    ("C", pq.DiagnosticField.SQLSTATE),
    ("M", pq.DiagnosticField.MESSAGE_PRIMARY),
    ("D", pq.DiagnosticField.MESSAGE_DETAIL),
    ("H", pq.DiagnosticField.MESSAGE_HINT),
    ("P", pq.DiagnosticField.STATEMENT_POSITION),
)


@dataclass
class ShadowResult:
    fields: list[Field] | None = None
    rows: list[list[bytes | None]] = field(default_factory=list)
    tag: str = ""
    error: Notice | None = None


def _notice(res: Any) -> Notice:
    got = {k: res.error_field(f) for k, f in _DIAG}
    text = {k: v.decode("utf-8", "replace") for k, v in got.items() if v is not None}
    extra = (("P", text["P"]),) if "P" in text else ()
    return Notice(
        severity=text.get("S", "ERROR"),
        code=text.get("C", "XX000"),
        message=text.get("M", "error"),
        detail=text.get("D"),
        hint=text.get("H"),
        extra=extra,
    )


def _fields(res: Any, fmt: int = 0) -> list[Field]:
    return [
        Field(
            name=(res.fname(i) or b"").decode("utf-8", "replace"),
            type_oid=res.ftype(i),
            type_size=res.fsize(i),
            type_modifier=res.fmod(i),
            format=fmt,
            table_oid=res.ftable(i),
            column=res.ftablecol(i),
        )
        for i in range(res.nfields)
    ]


def _result(res: Any, fmt: int = 0) -> ShadowResult:
    status = res.status
    if status == pq.ExecStatus.FATAL_ERROR:
        return ShadowResult(error=_notice(res))
    tag = (res.command_status or b"").decode()
    if status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE):
        rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
        return ShadowResult(fields=_fields(res, fmt), rows=rows, tag=tag)
    if status == pq.ExecStatus.EMPTY_QUERY:
        return ShadowResult(tag="")
    if status in (pq.ExecStatus.COMMAND_OK,):
        return ShadowResult(tag=tag)
    return ShadowResult(
        error=Notice("ERROR", "0A000", f"statement not supported over privgate ({status.name})")
    )


class ShadowLink:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self.notices: list[Notice] = []
        self._pg.notice_handler = self._on_notice
        self._reported = self._snapshot()

    def _on_notice(self, res: Any) -> None:
        self.notices.append(_notice(res))

    def _snapshot(self) -> dict[str, str]:
        out = {}
        for name in REPORTED:
            raw = self._pg.parameter_status(name.encode())
            if raw is not None:
                out[name] = raw.decode("utf-8", "replace")
        out.update(_FIXED)
        return out

    def parameters(self) -> dict[str, str]:
        """What to report at startup."""
        return dict(self._reported)

    def changed_parameters(self) -> list[tuple[str, str]]:
        now = self._snapshot()
        changed = [(k, v) for k, v in now.items() if self._reported.get(k) != v]
        self._reported = now
        return changed

    @property
    def transaction_status(self) -> str:
        status = self._pg.transaction_status
        if status == pq.TransactionStatus.INTRANS:
            return "T"
        if status == pq.TransactionStatus.INERROR:
            return "E"
        return "I"

    @property
    def alive(self) -> bool:
        return self._pg.status == pq.ConnStatus.OK

    def _results(self) -> list[Any]:
        """Every result of the command just sent, waiting on the socket with ``select``.

        libpq's blocking calls (``PQgetResult`` on a busy connection) would hold the GIL for as
        long as the shadow takes, stalling every thread of the gateway; ``select`` releases it.
        """
        pg = self._pg
        fd = pg.socket
        out: list[Any] = []
        while True:
            pg.consume_input()
            while pg.is_busy():
                select.select([fd], [], [], 1.0)
                pg.consume_input()
            res = pg.get_result()
            if res is None:
                return out
            out.append(res)

    def _one(self) -> Any:
        results = self._results()
        if not results:
            raise RuntimeError("the shadow sent no result")
        return results[-1]

    def simple(self, sql: str) -> list[ShadowResult]:
        """Run a (possibly multi-statement) simple query; one result per statement."""
        self._pg.send_query(sql.encode("utf-8"))
        return [_result(res) for res in self._results()]

    def describe(
        self, sql: str, oids: list[int]
    ) -> tuple[list[int], list[Field] | None, Notice | None]:
        """Parameter types and result fields of ``sql``, without running it."""
        self._pg.send_prepare(b"", sql.encode("utf-8"), oids or None)
        prep = self._one()
        if prep.status == pq.ExecStatus.FATAL_ERROR:
            return [], None, _notice(prep)
        self._pg.send_describe_prepared(b"")
        desc = self._one()
        if desc.status == pq.ExecStatus.FATAL_ERROR:
            return [], None, _notice(desc)
        params = [desc.param_type(i) for i in range(desc.nparams)]
        return params, (_fields(desc) if desc.nfields else None), None

    def execute(
        self,
        sql: str,
        params: list[bytes | None],
        oids: list[int],
        formats: list[int],
        result_formats: tuple[int, ...],
    ) -> ShadowResult:
        """Run ``sql`` with bound parameters, in the result formats the client asked for."""
        all_binary = bool(result_formats) and all(f == 1 for f in result_formats)
        oid_list: list[int] | None = oids if oids else None
        if len(params) > len(oids):
            oid_list = (oids + [0] * len(params))[: len(params)]
        self._pg.send_query_params(
            sql.encode("utf-8"),
            list(params),
            oid_list,
            formats or None,
            result_format=pq.Format.BINARY if all_binary else pq.Format.TEXT,
        )
        res = self._one()
        out = _result(res, 1 if all_binary else 0)
        if out.error is None and out.fields and not all_binary and any(result_formats):
            _to_binary(out, result_formats)
        return out

    def cancel(self) -> None:
        # cancel_safe: libpq 17's cancel connection, which honours sslmode and does not hold the
        # GIL while it waits (the legacy PQcancel does).
        self._conn.cancel_safe(timeout=5)

    def close(self) -> None:
        self._conn.close()


def _to_binary(out: ShadowResult, formats: tuple[int, ...]) -> None:
    assert out.fields is not None
    n = len(out.fields)
    wanted = [formats[0] if len(formats) == 1 else formats[i] for i in range(n)]
    for i, f in enumerate(out.fields):
        if wanted[i] == 1 and f.type_oid not in pgtypes.binary_supported:
            out.error = Notice(
                "ERROR",
                "0A000",
                f"binary format of column {f.name!r} (type {f.type_oid}) is not supported",
                hint="Ask for text format for this column.",
            )
            return
    out.fields = [
        Field(f.name, f.type_oid, f.type_size, f.type_modifier, wanted[i], f.table_oid, f.column)
        for i, f in enumerate(out.fields)
    ]
    out.rows = [
        [
            pgtypes.text_to_binary(v, out.fields[i].type_oid) if wanted[i] == 1 else v
            for i, v in enumerate(row)
        ]
        for row in out.rows
    ]
