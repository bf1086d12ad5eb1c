"""A gateway with its PostgreSQL wire endpoint, on a shadow in the local PostgreSQL server.

Tests that need it skip with a message when 127.0.0.1:5432 is unreachable, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.composition import build_wire
from gateway.wire.shadow import Shadow
from tests.conftest import PG_ADMIN_URL, Gateway, in_ci, start_gateway


def require_postgres() -> None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL at 127.0.0.1:5432 for the wire tests: {exc}")
        pytest.skip(f"the wire tests need PostgreSQL at 127.0.0.1:5432 (shadow catalog): {exc}")


@dataclass
class Wire:
    gateway: Gateway
    host: str
    port: int
    cert: Path

    @property
    def keys(self) -> dict[str, str]:
        return self.gateway.keys

    def dsn(self, user: str = "analyst", password: str | None = None, **extra: Any) -> str:
        password = self.keys[user] if password is None else password
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": user,
            "password": password,
            "dbname": "clinic",
            "sslmode": "require",
            "connect_timeout": "10",
            **{k: str(v) for k, v in extra.items()},
        }
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, user: str = "analyst", **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(user), autocommit=True, **kwargs)


def start_wire(tmp: Path, warehouse: Path, **overrides: Any) -> Iterator[Wire]:
    require_postgres()

    def big_budget(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.5},
            "per_query_max": {"epsilon": 10},
        }

    prefix = f"privgate_shadow_t{uuid.uuid4().hex[:6]}"
    shadow = Shadow(admin_dsn=PG_ADMIN_URL, statement_timeout_ms=3000, prefix=prefix)
    for gw in start_gateway(tmp, warehouse, big_budget, **overrides):
        thread = build_wire(gw.services, host="127.0.0.1", port=0, shadow=shadow)
        try:
            yield Wire(gw, "127.0.0.1", thread.server.port, tmp / "data" / "tls-self-signed.crt")
        finally:
            thread.stop()
            shadow.drop_all()
            shadow.close()


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Wire]:
    yield from start_wire(tmp_path_factory.mktemp("wire"), demo_warehouse)
