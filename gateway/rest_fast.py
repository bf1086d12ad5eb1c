"""``POST /v1/query`` with less framework per request; every other request goes on to FastAPI.

Profiled under load (bench/README.md), the framework around one query cost about 40 % of the
worker's Python time: dependency solving, a thread-pool hop through anyio's limiter for the
key lookup and another for the endpoint, validating the returned dict against the response
model, and sending through several wrappers. This middleware takes the same steps with less:
it reads the body, parses it with ``json.loads`` and validates it with the route's own model
(:class:`~gateway.rest_shapes.QueryBody`, as FastAPI does), looks the key up and runs
:meth:`QueryService.run` in one hop to a thread of its own pool, and sends the answer serialised
the way FastAPI serialises the route's ``dict`` (pydantic's ``dump_json``).

It only answers requests the route would answer the same way, and it hands every other one over
to the route unchanged (the body it read is replayed): a content type other than JSON, a body
that does not parse or validate (the route answers 422 ``request.invalid``), a missing or unknown
key (the route audits the failure and answers 401). A refusal or an error of the query itself is
answered here with the same :func:`~gateway.rest_shapes.error_response` as the route's handlers.
The FastAPI route stays: it documents the endpoint (OpenAPI) and answers what is handed over.
``tests/test_rest_fast.py`` compares the two paths' answers byte for byte.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from budgets.errors import BudgetError
from gateway.auth import bearer_token
from gateway.composition import Services
from gateway.errors import GatewayError
from gateway.logs import bind, current_request_id
from gateway.rest_shapes import QueryBody, error_response
from gateway.service import CallContext, QueryFailed
from rewriter.errors import RewriteError

log = logging.getLogger("privgate.rest")

PATH = "/v1/query"
#: Bodies larger than this are handed over (QueryBody caps the SQL at 100,000 characters).
MAX_BODY = 1 << 20
#: Threads answering queries (anyio's default limiter, which the route's hop goes through: 40).
THREADS = 40
#: How FastAPI serialises a route's ``dict[str, Any]`` return value.
_ANSWER = TypeAdapter(dict[str, Any])
_JSON = b"application/json"


class _Unknown:
    """No principal has this key: the route answers (and audits) the 401."""


_UNKNOWN = _Unknown()


class QueryFastPath:
    """ASGI middleware answering ``POST /v1/query`` itself (see the module docstring)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self._services = services
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="privgate-query")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        content_type = authorization = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's headers.get
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        received: list[Message] = []
        if (content_type or b"").partition(b";")[0].strip().lower() != _JSON:
            await self._hand_over(scope, receive, send, received)
            return
        body = bytearray()
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                await self._hand_over(scope, receive, send, received)
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await self._hand_over(scope, receive, send, received)
                return
            if not message.get("more_body", False):
                break
        token = bearer_token((authorization or b"").decode("latin-1"))
        try:
            request = QueryBody.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):  # JSON, UTF-8 or shape
            request = None
        if request is None or token is None:
            await self._hand_over(scope, receive, send, received)
            return
        client = scope.get("client")
        host = str(client[0]) if client else ""
        context = contextvars.copy_context()  # the request id and log fields, into the thread
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(
                self._pool, context.run, self._answer, token, request, host
            )
        except QueryFailed as exc:
            await error_response(exc.error, exc.audit_id)(scope, receive, send)
            return
        except (GatewayError, RewriteError, BudgetError) as exc:
            await error_response(exc)(scope, receive, send)
            return
        except Exception as exc:  # a bug: generic message out, detail to the log
            log.exception("internal error answering %s", PATH)
            await error_response(exc)(scope, receive, send)
            return
        if isinstance(answer, _Unknown):
            await self._hand_over(scope, receive, send, received)
            return
        content = _ANSWER.dump_json(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(content)).encode()),
                    (b"content-type", _JSON),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _answer(self, token: str, request: QueryBody, host: str) -> dict[str, Any] | _Unknown:
        found = self._services.principals.authenticate(token)
        if found is None:
            return _UNKNOWN
        bind(principal=found.name)
        ctx = CallContext(
            principal=found, door="rest", client=host, request_id=current_request_id()
        )
        return self._services.queries.run(request.to_request(), ctx)

    async def _hand_over(
        self, scope: Scope, receive: Receive, send: Send, received: list[Message]
    ) -> None:
        """Let the FastAPI route answer, with the messages already read replayed first."""
        pending = list(received)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)
