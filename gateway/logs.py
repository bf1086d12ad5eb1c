"""Structured logs with request ids: a context variable, an ASGI middleware, a JSON formatter.

Every REST request gets a request id: the client's ``X-Request-ID`` when it is well formed, else
a fresh one. It is kept in a context variable for the request's duration (so log lines and the
audit record of the query carry it) and returned in the ``X-Request-ID`` response header.

Log lines are one JSON object each: ``ts``, ``level``, ``logger``, ``request_id``, ``principal``,
``code``, ``latency_ms``, ``message`` (and ``exc_type``/``stack`` for exceptions). What never goes
in: SQL text, literals, keys, passwords, tokens, result values. The access line names the method,
the path without its query string, the status and the latency; bodies are never logged. Exception
*messages* are left out of JSON lines (a warehouse error may quote data); the exception's type and
stack frames are kept.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
#: What a client-chosen request id may look like; anything else is replaced by a fresh one.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

access_log = logging.getLogger("privgate.access")
query_log = logging.getLogger("privgate.query")


@dataclass
class RequestContext:
    """What the log lines of one request share. Mutable: the endpoint fills in the principal and
    the outcome, and the middleware's access line reads them (the threadpool copies the context,
    not this object)."""

    request_id: str
    principal: str | None = None
    code: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("privgate_request", default=None)


def current() -> RequestContext | None:
    """The request being served on this thread or task, if any."""
    return _current.get()


def current_request_id() -> str:
    """The request id in force, or a fresh one outside a request (CLI, tests)."""
    ctx = _current.get()
    return ctx.request_id if ctx is not None else uuid.uuid4().hex


def bind(*, principal: str | None = None, code: str | None = None) -> None:
    """Note who is asking and how it ended, for the request's log lines."""
    ctx = _current.get()
    if ctx is None:
        return
    if principal is not None:
        ctx.principal = principal
    if code is not None:
        ctx.code = code


def valid_request_id(value: str | None) -> str:
    """``value`` if it is an acceptable request id, else a fresh one.

    >>> valid_request_id("abc-123")
    'abc-123'
    >>> valid_request_id("bad id\\n") != "bad id\\n"
    True
    """
    if value is not None and REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Assigns the request id, returns it as ``X-Request-ID`` and writes one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER.encode():
                sent = value.decode("latin-1")
                break
        ctx = RequestContext(valid_request_id(sent))
        token = _current.set(ctx)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), ctx.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            client = scope.get("client")
            # The path only: query strings may carry anything, and bodies are never logged.
            access_log.info(
                "%s %s %d",
                scope.get("method", ""),
                scope.get("path", ""),
                status,
                extra={
                    "latency_ms": latency_ms,
                    "status": status,
                    "client": client[0] if client else "",
                },
            )
            _current.reset(token)


def log_query_record(record: dict[str, Any]) -> None:
    """A :data:`gateway.service.Listener`: one log line per query/explain, from its audit record.

    Names the outcome, never the SQL (not even redacted: the audit log keeps that).
    """
    principal = record.get("principal")
    code = record.get("code")
    bind(
        principal=principal if isinstance(principal, str) else None,
        code=code if isinstance(code, str) else None,
    )
    query_log.info(
        "query %s",
        record.get("decision"),
        extra={
            "principal": principal,
            "code": code,
            "latency_ms": _ms(record.get("latency_ms")),
            "door": record.get("door"),
            "dataset": record.get("dataset"),
            "query_id": record.get("query_id"),
        },
    )


def _ms(value: object) -> float | None:
    """Audit records keep latency as a decimal string (no floats in the chain); logs want a number."""
    try:
        return None if value is None else float(str(value))
    except ValueError:
        return None


#: Extra attributes a log call may pass that the JSON line keeps (besides the fixed fields).
_EXTRA_FIELDS = ("status", "client", "door", "dataset", "query_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the fields."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = _current.get()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or (ctx.request_id if ctx else None),
            "principal": getattr(record, "principal", None) or (ctx.principal if ctx else None),
            "code": getattr(record, "code", None) or (ctx.code if ctx else None),
            "latency_ms": getattr(record, "latency_ms", None),
            "message": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exc_type"] = _chain(exc)
            out["stack"] = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        return json.dumps(out, default=str, ensure_ascii=False)


class _ContextFilter(logging.Filter):
    """Adds ``request_id`` to records for the plain-text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        if not hasattr(record, "request_id"):
            record.request_id = ctx.request_id if ctx else "-"
        return True


def _chain(exc: BaseException) -> str:
    """The exception's type and its causes' types, outermost first: no messages."""
    names: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(names) < 10:
        names.append(f"{type(seen).__module__}.{type(seen).__qualname__}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(names)


def configure_logging(*, fmt: str = "json", level: str = "INFO") -> None:
    """Route privgate's and uvicorn's loggers to one stderr handler in the chosen format.

    uvicorn is then started with ``log_config=None`` and ``access_log=False``: its access line
    would carry the query string; :class:`RequestContextMiddleware` writes ours instead.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_ContextFilter())
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
