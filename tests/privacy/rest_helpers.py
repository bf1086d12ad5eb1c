"""Small helpers for attacks over REST: fresh-noise queries, budget reads, body comparison."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from typing import Any

import httpx

_counter = itertools.count(1)


def fresh_epsilon(base: float) -> float:
    """A slightly different ε on every call: identical (SQL, ε) would replay the stored answer."""
    return round(base + next(_counter) * 1e-6, 6)


def query(c: httpx.Client, sql: str, epsilon: float | None = None) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql}
    if epsilon is not None:
        body["epsilon"] = epsilon
    return c.post("/v1/query", json=body)


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def rejected(r: httpx.Response) -> dict[str, Any]:
    """The error object of a 4xx rejection (never a 5xx: that would be a failure after data)."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text}"
    error: dict[str, Any] = r.json()["error"]
    return error


def spent(c: httpx.Client) -> Fraction:
    (budget,) = c.get("/v1/budget").json()["budgets"]
    return Fraction(budget["epsilon_spent"])


def scalar(body: dict[str, Any]) -> float:
    (row,) = body["rows"]
    return float(row[0])


def without_ids(error: dict[str, Any]) -> dict[str, Any]:
    """An error object minus what differs per request (the audit id)."""
    return {k: v for k, v in error.items() if k != "audit_id"}


_QUOTED = re.compile(r'"[^"]*"')


def same_shape(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> bool:
    """Equal errors once the two probed column names are replaced by one placeholder."""

    def norm(e: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in without_ids(e).items():
            if isinstance(v, str):
                for name in names:
                    v = re.sub(rf"\b{re.escape(name)}\b", "<col>", v, flags=re.IGNORECASE)
            out[k] = v
        return out

    return norm(a) == norm(b)
