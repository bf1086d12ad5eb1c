"""The REST door: decode, authenticate, call ``QueryService``, encode. No privacy logic here."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from budgets.errors import BudgetError
from gateway.admin_api import router as admin_router
from gateway.audit_api import router as audit_router
from gateway.auth import Authed, current_principal
from gateway.composition import Services
from gateway.console import router as console_router
from gateway.errors import (
    AuthInvalid,
    AuthMissing,
    Forbidden,
    GatewayError,
    InvalidRequest,
    TlsRequired,
)
from gateway.health import check_readiness
from gateway.logs import RequestContextMiddleware, current_request_id
from gateway.principals import Principal
from gateway.rest_fast import QueryFastPath
from gateway.rest_shapes import QueryBody, error_response
from gateway.service import CallContext, QueryFailed
from gateway.tls import is_loopback
from rewriter.errors import RewriteError
from rewriter.policy import ColumnClass


class PlaintextGuard:
    """ASGI middleware: a plaintext request whose peer is not loopback gets 403 ``tls.required``.

    ``privgate serve`` already refuses plaintext binds to non-loopback addresses
    (:func:`gateway.tls.rest_tls`); this guard holds for apps served some other way (uvicorn by
    hand, a test server). A request that came over TLS has ``scope["scheme"] == "https"``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("scheme") == "http":
            client = scope.get("client")
            if client is None or not is_loopback(str(client[0])):
                response = error_response(
                    TlsRequired("this gateway serves plaintext to loopback only")
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(services: Services, *, fast_query: bool = True) -> FastAPI:
    """The REST app. ``fast_query=False`` leaves ``POST /v1/query`` to its FastAPI route alone
    (the fast path answers it the same way with less work; tests compare the two)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Settle reservations a crashed predecessor left behind, then keep doing so.
        services.start_reconciler()
        services.start_snapshot_watch()  # rebuilds the bounded snapshot when the source changes
        yield
        services.stop_doors()  # the wire endpoint and its embedded shadow server, if any

    app = FastAPI(
        lifespan=lifespan,
        title="privgate",
        version="0.1.0",
        description="Differentially private SQL over REST. Every answer carries its noise and cost.",
    )
    app.state.services = services
    if fast_query:
        # Innermost of ours: inside the request context (request id, access log) and the guard.
        app.add_middleware(QueryFastPath, services=services)
    app.add_middleware(RequestContextMiddleware)
    if services.settings.require_tls:
        app.add_middleware(PlaintextGuard)  # outermost: refused before any other work

    # No dependency_overrides: with any override set, FastAPI re-inspects every dependency's
    # signature on every request (get_dependant, seen in a py-spy profile of bench_rest).

    @app.exception_handler(QueryFailed)
    async def _query_failed(_: Request, exc: QueryFailed) -> JSONResponse:
        return error_response(exc.error, exc.audit_id)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return error_response(InvalidRequest(f"invalid request: {problems}"))

    async def _coded(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, AuthMissing | AuthInvalid):
            services.metrics.auth_failure(exc.code)
        return error_response(exc)

    for root in (GatewayError, RewriteError, BudgetError):
        app.add_exception_handler(root, _coded)
    # Anything else is a bug: Starlette's server-error middleware logs it; the client gets the
    # canonical `internal` shape with no detail.
    app.add_exception_handler(Exception, _coded)

    @app.post("/v1/query", summary="Run one differentially private query")
    def query(body: QueryBody, p: Authed, request: Request) -> dict[str, Any]:
        return services.queries.run(body.to_request(), _call(p, request))

    @app.post("/v1/explain", summary="What a query would release and cost, without running it")
    def explain(body: QueryBody, p: Authed, request: Request) -> dict[str, Any]:
        return services.queries.explain(body.to_request(), _call(p, request))

    @app.get("/v1/budget", summary="Your privacy budget per granted dataset")
    def budget(p: Authed) -> dict[str, Any]:
        return {"principal": p.name, "budgets": [b.as_json() for b in services.queries.budget(p)]}

    @app.get("/v1/schema", summary="What you may query: tables, columns, classes and bounds")
    def schema(p: Authed) -> dict[str, Any]:
        catalog = services.queries.catalog
        datasets: dict[str, Any] = {}
        for table in catalog.tables.values():
            if table.dataset not in p.datasets:
                continue
            ds_policy = catalog.datasets[table.dataset]
            ds = datasets.setdefault(
                table.dataset,
                {
                    "privacy_unit": ds_policy.privacy_unit,
                    "defaults": ds_policy.defaults.model_dump(),
                    "tables": {},
                },
            )
            ds["tables"][table.name] = {
                "public": table.public,
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type.value,
                        "class": c.cls.value,
                        **({"bounds": list(c.bounds)} if c.bounds else {}),
                        **({"values": list(c.values)} if c.values else {}),
                        **(
                            {"usable": False}
                            if c.cls in (ColumnClass.IDENTIFIER, ColumnClass.MASKED)
                            else {}
                        ),
                    }
                    for c in table.visible_columns()
                ],
            }
        return {"datasets": datasets}

    app.include_router(admin_router)
    app.include_router(audit_router)
    app.include_router(console_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        result = check_readiness(
            warehouse=services.warehouse,
            control=services.control,
            policy_datasets=len(services.queries.catalog.datasets),
        )
        return JSONResponse(result.as_json(), status_code=200 if result.ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        _authorize_scrape(services, request)
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _call(p: Principal, request: Request) -> CallContext:
    client = request.client.host if request.client else ""
    return CallContext(principal=p, door="rest", client=client, request_id=current_request_id())


def _authorize_scrape(services: Services, request: Request) -> None:
    """``/metrics`` takes the metrics token (when set) or an admin key."""
    token = services.settings.metrics_token
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(sent.strip().encode(), token.get_secret_value().encode())
    ):
        return
    found = current_principal(request)  # audits a missing or bad key, like every route
    if not found.is_admin:
        raise Forbidden("the metrics need the metrics token or an admin key")
