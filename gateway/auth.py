"""Authentication for the REST door: Bearer API keys, resolved to a Principal; admin-only guard.

Failed attempts are audited (code, client address, endpoint — never the key that was sent).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.composition import Services
from gateway.errors import AuthInvalid, AuthMissing, Forbidden
from gateway.logs import bind
from gateway.principals import Principal


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def bearer_token(header: str) -> str | None:
    """The API key of an ``Authorization: Bearer <key>`` header, or None.

    >>> bearer_token("Bearer  pg_abc "), bearer_token("Basic pg_abc"), bearer_token("Bearer ")
    ('pg_abc', None, None)
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_principal(request: Request) -> Principal:
    """Every route's authentication (through :data:`Authed` or :data:`Admin`, so that no route
    can skip it), with the principal noted for the request's log lines."""
    token = bearer_token(request.headers.get("authorization", ""))
    services = services_of(request)
    if token is None:
        _audit_auth_failure(services, request, AuthMissing.code)
        raise AuthMissing("missing bearer API key")
    found = services.principals.authenticate(token)
    if found is None:
        _audit_auth_failure(services, request, AuthInvalid.code)
        raise AuthInvalid("invalid API key")
    bind(principal=found.name)
    return found


def _audit_auth_failure(services: Services, request: Request, code: str) -> None:
    # Who tried, from where, on which endpoint: never the key they sent.
    services.audit.append(
        {
            "decision": "rejected",
            "code": code,
            "door": "rest",
            "client": request.client.host if request.client else "",
            "endpoint": request.url.path,
        }
    )


Authed = Annotated[Principal, Depends(current_principal)]


def admin_principal(p: Authed) -> Principal:
    if not p.is_admin:
        raise Forbidden("admin role required")
    return p


Admin = Annotated[Principal, Depends(admin_principal)]
