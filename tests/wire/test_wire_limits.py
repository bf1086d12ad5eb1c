"""Connection limit and idle timeout of the wire endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.wire import rawclient as rc
from tests.wire.conftest import Wire, start_wire


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Wire]:
    yield from start_wire(
        tmp_path_factory.mktemp("tight"),
        demo_warehouse,
        wire_max_connections=2,
        wire_idle_timeout_s=1.0,
    )


def test_the_connection_limit_refuses_with_53300(tight: Wire) -> None:
    first, second = tight.connect(), tight.connect()
    try:
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            tight.connect().close()
    finally:
        first.close()
        second.close()
    time.sleep(0.2)
    with tight.connect() as again:  # a freed slot is usable
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_an_idle_connection_is_closed_with_57p05(tight: Wire) -> None:
    client = rc.RawClient(tight.host, tight.port)
    try:
        assert client.login("analyst", tight.keys["analyst"])[-1].kind == "Z"
        time.sleep(1.5)
        closing = client.read()
        assert closing.kind == "E" and closing.fields()["C"] == "57P05"
        with pytest.raises(ConnectionError):
            client.read()
    finally:
        client.close()


def test_named_statements_per_connection_are_capped(tight: Wire) -> None:
    client = rc.RawClient(tight.host, tight.port)
    try:
        assert client.login("analyst", tight.keys["analyst"])[-1].kind == "Z"
        client.send(b"".join(rc.parse("SELECT 1", f"s{i}") for i in range(1000)) + rc.SYNC)
        kinds = [x.kind for x in client.until_ready()]
        assert kinds.count("1") == 1000 and kinds[-1] == "Z"
        client.send(rc.parse("SELECT 1", "one_too_many") + rc.SYNC)
        over = client.until_ready()
        assert over[0].kind == "E" and over[0].fields()["C"] == "54000"
        client.send(rc.parse("SELECT 1", "s0") + rc.SYNC)  # replacing an existing one is fine
        assert [x.kind for x in client.until_ready()] == ["1", "Z"]
    finally:
        client.close()
