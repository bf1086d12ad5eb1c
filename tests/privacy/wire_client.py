"""Run the REST attack corpus through the PostgreSQL wire door.

:class:`WireClient` answers ``post("/v1/query", json=…)`` the way the REST door does, but sends
the SQL over the wire (psycopg, TLS, SCRAM) and reads the noise metadata back from
``privgate_last_query()``; everything else (budget, schema) goes to REST. The attacks then run
unchanged against both doors.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg

from gateway.errors import ERROR_TABLE
from gateway.wire.shadow import Shadow
from tests.conftest import PG_ADMIN_URL, Gateway

_DETAIL = re.compile(r"privgate code: ([\w.]+)(?:; audit_id: (\w+))?")


class WireResponse:
    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code = status_code
        self._body = body
        self.text = repr(body)

    def json(self) -> dict[str, Any]:
        return self._body


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return v


class WireClient:
    def __init__(self, conn: psycopg.Connection[Any], rest: httpx.Client) -> None:
        self._conn = conn
        self._rest = rest
        #: privgate_last_query() describes the last *data* statement: after a statement the
        #: shadow answered it still shows the one before, whose own text it may echo.
        self._last_query_id: Any = None

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._rest.get(path, **kw)

    def post(self, path: str, json: dict[str, Any] | None = None, **kw: Any) -> Any:
        if path != "/v1/query" or json is None or set(json) - {"sql", "epsilon"}:
            return self._rest.post(path, json=json, **kw)
        conn = self._conn
        if json.get("epsilon") is None:
            conn.execute("RESET privgate.epsilon")
        else:
            conn.execute(f"SET privgate.epsilon = {float(json['epsilon'])!r}")
        try:
            cur = conn.execute(json["sql"])
            rows = [[_jsonable(v) for v in r] for r in cur.fetchall()]
        except psycopg.Error as exc:
            return _error(exc)
        meta = conn.execute("SELECT * FROM privgate_last_query()")
        names = [d.name for d in meta.description or []]
        cols = [dict(zip(names, r, strict=True)) for r in meta.fetchall()]
        if cols and cols[0].get("query_id") == self._last_query_id:
            cols = []  # metadata of an earlier statement: this one was not a data statement
        elif cols:
            self._last_query_id = cols[0].get("query_id")
        first = cols[0] if cols else {}
        body = {
            "rows": rows,
            "columns": [
                {
                    "name": c["column_name"],
                    "noisy": c["noisy"],
                    "mechanism": c["mechanism"],
                    "scale": c["scale"],
                    "ci95_halfwidth": c["ci95_halfwidth"],
                }
                for c in cols
            ],
            "cached": first.get("cached", False),
            "epsilon_charged": first.get("epsilon_charged"),
            "delta_charged": first.get("delta_charged"),
            "query_id": first.get("query_id"),
            "audit_id": first.get("audit_id"),
            "dataset": first.get("dataset"),
        }
        return WireResponse(200, body)


def _error(exc: psycopg.Error) -> WireResponse:
    diag = exc.diag
    found = _DETAIL.search(diag.message_detail or "")
    code = found.group(1) if found else "postgres"
    status = ERROR_TABLE[code].http_status if code in ERROR_TABLE else 400
    error: dict[str, Any] = {
        "code": code,
        "message": diag.message_primary or "",
        "hint": diag.message_hint or "",
        "sqlstate": exc.sqlstate,
    }
    if found and found.group(2):
        error["audit_id"] = found.group(2)
    return WireResponse(status, {"error": error})


def wire_clients(gw: Gateway) -> Iterator[tuple[str, int]]:
    """Start the wire door beside ``gw`` (shadow on the local PostgreSQL); yield (host, port)."""
    from gateway.composition import build_wire

    prefix = f"privgate_shadow_p{uuid.uuid4().hex[:6]}"
    shadow = Shadow(admin_dsn=PG_ADMIN_URL, statement_timeout_ms=3000, prefix=prefix)
    thread = build_wire(gw.services, host="127.0.0.1", port=0, shadow=shadow)
    try:
        yield "127.0.0.1", thread.server.port
    finally:
        thread.stop()
        shadow.drop_all()
        shadow.close()


def connect(host: str, port: int, key: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f"host={host} port={port} user=analyst password={key} dbname=clinic sslmode=require",
        autocommit=True,
    )
