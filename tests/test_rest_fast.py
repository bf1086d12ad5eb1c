"""The fast path of ``POST /v1/query`` (gateway.rest_fast) answers exactly as the FastAPI route.

Two real uvicorn servers on one set of services: one with the fast path (the default), one with
the route alone. Every request below goes to both and their answers are compared.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.composition import Services, build_services
from gateway.settings import Settings
from tests.conftest import large_budget, serve_app, write_policy

SQL = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"


class _Pair:
    def __init__(self, services: Services, fast: str, route: str, keys: dict[str, str]) -> None:
        self.services = services
        self.fast = fast
        self.route = route
        self.keys = keys


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[_Pair]:
    tmp = tmp_path_factory.mktemp("fast")
    settings = Settings(
        data_dir=tmp / "data",
        warehouse_path=demo_warehouse,
        policy_path=write_policy(tmp / "policy.yaml", large_budget),
        warehouse_threads=2,
    )
    services = build_services(settings)
    keys = {name: services.principals.create_key(name)[1] for name in ("analyst", "admin")}
    try:
        with (
            serve_app(services, "127.0.0.1") as fast,
            serve_app(services, "127.0.0.1", fast_query=False) as route,
        ):
            yield _Pair(services, f"http://127.0.0.1:{fast}", f"http://127.0.0.1:{route}", keys)
    finally:
        services.close()  # after both servers have stopped


def _both(
    pair: _Pair, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    out = []
    for base in (pair.fast, pair.route):
        with httpx.Client(base_url=base, timeout=60) as client:
            out.append(client.post("/v1/query", content=body, headers=headers))
    return out[0], out[1]


def _auth(pair: _Pair, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {pair.keys['analyst']}", "Content-Type": content_type}


def _same(fast: httpx.Response, route: httpx.Response, *varying: str) -> None:
    assert fast.status_code == route.status_code
    assert fast.headers["content-type"] == route.headers["content-type"]
    a, b = fast.json(), route.json()
    inner_a, inner_b = a.get("error", a), b.get("error", b)
    for name in varying:  # per-request values (a new audit record, a new latency)
        inner_a.pop(name, None)
        inner_b.pop(name, None)
    assert a == b
    assert list(a) == list(b)  # the same fields in the same order


def test_a_stored_answer_is_sent_byte_for_byte_as_the_route_sends_it(pair: _Pair) -> None:
    body = json.dumps({"sql": SQL, "epsilon": 0.5, "query_id": "fast-1"}).encode()
    first = httpx.post(f"{pair.fast}/v1/query", content=body, headers=_auth(pair), timeout=60)
    assert first.status_code == 200, first.text
    fast, route = _both(pair, body, _auth(pair))  # both replay the stored answer
    assert fast.json()["cached"] is True and route.json()["cached"] is True
    _same(fast, route, "audit_id", "latency_ms")
    # Byte for byte once the two per-request values are the same: the same serialisation.
    a, b = fast.json(), route.json()
    swapped = fast.content.replace(a["audit_id"].encode(), b["audit_id"].encode()).replace(
        json.dumps(a["latency_ms"]).encode(), json.dumps(b["latency_ms"]).encode()
    )
    assert swapped == route.content


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"sql": "SELECT diagnosis FROM visits"}', "application/json", 400, None),
        (b'{"sql": "SELECT 1", "epsilon": -1}', "application/json", 422, "request.invalid"),
        (b'{"sql": "SELECT 1", "extra": 1}', "application/json", 422, "request.invalid"),
        (b"not json", "application/json", 422, "request.invalid"),
        (b'["a list"]', "application/json", 422, "request.invalid"),
        (json.dumps({"sql": SQL}).encode(), "text/plain", 422, "request.invalid"),
        (json.dumps({"sql": SQL}).encode(), "application/json; charset=utf-8", 200, None),
    ],
)
def test_refusals_and_bad_bodies_are_answered_alike(
    pair: _Pair, body: bytes, content_type: str, status: int, code: str | None
) -> None:
    fast, route = _both(pair, body, _auth(pair, content_type))
    assert fast.status_code == status, fast.text
    if status == 200:
        assert set(fast.json()) == set(route.json())
        return
    _same(fast, route, "audit_id")
    if code is not None:
        assert fast.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Content-Type": "application/json"}, "auth.missing"),
        (
            {"Content-Type": "application/json", "Authorization": "Bearer pgk_nope_x"},
            "auth.invalid_key",
        ),
        ({"Content-Type": "application/json", "Authorization": "Basic abc"}, "auth.missing"),
    ],
)
def test_authentication_failures_are_answered_and_audited_alike(
    pair: _Pair, headers: dict[str, str], code: str
) -> None:
    audit = pair.services.audit

    def failures() -> int:
        return sum(1 for e in audit.export() if e["record"].get("code") == code)

    before = failures()
    fast, route = _both(pair, json.dumps({"sql": SQL}).encode(), headers)
    _same(fast, route)
    assert fast.status_code == 401 and fast.json()["error"]["code"] == code
    assert fast.headers.get("www-authenticate") == route.headers.get("www-authenticate")
    assert failures() == before + 2  # once per request, through either path


def test_a_valid_query_is_answered_by_the_fast_path_and_the_rest_by_the_route(
    pair: _Pair,
) -> None:
    seen: list[str] = []
    run = pair.services.queries.run

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return run(*args, **kwargs)

    pair.services.queries.run = spy  # type: ignore[method-assign]
    try:
        ok = httpx.post(f"{pair.fast}/v1/query", json={"sql": SQL}, headers=_auth(pair), timeout=60)
        plain = httpx.post(
            f"{pair.fast}/v1/query",
            content=json.dumps({"sql": SQL}).encode(),
            headers=_auth(pair, "text/plain"),
            timeout=60,
        )
    finally:
        del pair.services.queries.run
    assert ok.status_code == 200 and plain.status_code == 422
    # Only the valid query reached the service, on one of the fast path's threads.
    assert len(seen) == 1 and seen[0].startswith("privgate-query")
    assert ok.headers["x-request-id"]  # still inside the request context


def test_a_repeated_header_counts_once_as_for_the_route(pair: _Pair) -> None:
    # The first Content-Type wins, as in Starlette's headers.get: text/plain, so a 422 from both.
    headers = [
        ("Authorization", f"Bearer {pair.keys['analyst']}"),
        ("Content-Type", "text/plain"),
        ("Content-Type", "application/json"),
    ]
    body = json.dumps({"sql": SQL}).encode()
    out = []
    for base in (pair.fast, pair.route):
        with httpx.Client(base_url=base, timeout=60) as client:
            out.append(client.post("/v1/query", content=body, headers=headers))
    _same(out[0], out[1], "audit_id")
    assert out[0].status_code == 422
