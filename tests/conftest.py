"""Shared fixtures: a small demo warehouse, a gateway built by the real composition root, and a
real HTTP server (uvicorn on a loopback port) for end-to-end tests."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from gateway.composition import Services, build_services
from gateway.demo import build_demo_warehouse
from gateway.rest import create_app
from gateway.settings import Settings, demo_policy_path

TEST_PATIENTS = 3000


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("warehouse") / "demo.duckdb"
    build_demo_warehouse(path, patients=TEST_PATIENTS, progress=False)
    return path


def write_policy(path: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> Path:
    data = yaml.safe_load(demo_policy_path().read_text())
    if mutate is not None:
        mutate(data)
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Gateway:
    services: Services
    url: str
    keys: dict[str, str]

    def client(self, principal: str = "analyst") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.keys[principal]}"},
            timeout=60,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(
    tmp: Path,
    warehouse: Path,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> Iterator[Gateway]:
    policy = write_policy(tmp / "policy.yaml", mutate)
    settings = Settings(
        data_dir=tmp / "data",
        warehouse_path=warehouse,
        policy_path=policy,
        warehouse_threads=2,
        **overrides,
    )
    services = build_services(settings)
    keys = {name: services.principals.create_key(name)[1] for name in ("analyst", "admin")}
    try:
        with serve_app(services, "127.0.0.1") as port:
            yield Gateway(services, f"http://127.0.0.1:{port}", keys)
    finally:
        services.close()


@contextmanager
def serve_app(services: Services, host: str, *, fast_query: bool = True) -> Iterator[int]:
    """The REST app of ``services`` on a real uvicorn server bound to ``host``; yields its port."""
    port = _free_port()
    app = create_app(services, fast_query=fast_query)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def large_budget(policy: dict[str, Any]) -> None:
    """A policy mutation: a budget large enough that tests do not run dry."""
    policy["datasets"]["clinic"]["budget"] = {
        "per_principal": {"epsilon": 100000, "delta": 0.5},
        "per_query_max": {"epsilon": 10},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    """A gateway on the demo policy with a large budget, so tests do not run dry."""
    yield from start_gateway(tmp_path_factory.mktemp("gw"), demo_warehouse, large_budget)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL), dropped afterwards. Skips when the local server
    is unreachable, except in CI (CI=true), where that fails the test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"privgate_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if in_ci():
            pytest.fail(f"CI needs PostgreSQL at 127.0.0.1:5432: {exc}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
