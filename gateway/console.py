"""The admin console (``/console``): three static files that drive the JSON admin API.

The page holds no data, so it is served without a key; everything it shows comes from
``/v1/admin/*``, called by ``console.js`` with the admin key the user typed in (kept in
``sessionStorage``, sent as ``Authorization: Bearer``; no cookie, hence no CSRF surface). A request
for a console file that does carry a key must carry an admin's: an analyst's gets 403
``auth.forbidden`` and a bad key 401, exactly like the admin API. Every console file goes out with
a strict Content-Security-Policy (own origin only, no inline script or style) and
``X-Frame-Options: DENY``. See docs/console.md.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.auth import current_principal
from gateway.errors import Forbidden
from gateway.logs import bind

router = APIRouter(include_in_schema=False)

# The browser may load and call our own origin only: no inline script or style, no plugins, no
# framing, no form posts, no <base> tricks.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# The only files served: a fixed table, so no path from the request ever reaches the disk.
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}


@cache
def _read(name: str) -> bytes:
    return (files("gateway") / "console_static" / name).read_bytes()


def _refuse_non_admins(request: Request) -> None:
    """A request without a key passes (the page is public); one with a key needs an admin's."""
    if "authorization" not in request.headers:
        return
    found = current_principal(request)  # 401 (audited) for a missing, bad or revoked key
    bind(principal=found.name)
    if not found.is_admin:
        raise Forbidden("the admin console is for admins only")


def _serve(request: Request, name: str) -> Response:
    _refuse_non_admins(request)
    return Response(_read(name), media_type=_FILES[name], headers=SECURITY_HEADERS)


@router.get("/console")
def console_page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/console/console.js")
def console_script(request: Request) -> Response:
    return _serve(request, "console.js")


@router.get("/console/console.css")
def console_style(request: Request) -> Response:
    return _serve(request, "console.css")
