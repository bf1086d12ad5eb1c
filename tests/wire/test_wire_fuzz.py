"""Feed the wire endpoint thousands of random and mutated protocol messages.

The server must never crash, never send a row of protected data (no value of an identifier or
blocked column ever appears in what it sends), and keep serving a healthy connection opened
before the storm.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys

import pytest

from gateway.wire import messages as m
from tests.wire import rawclient as rc
from tests.wire.conftest import Wire

MESSAGES = 5200
PER_CONNECTION = 40

SEEDS = [
    rc.query("SELECT department, COUNT(*) AS n FROM visits GROUP BY department"),
    rc.query("SELECT * FROM visits"),
    rc.query("SELECT ssn FROM patients"),
    rc.query("SELECT relname FROM pg_class LIMIT 3"),
    rc.parse("SELECT COUNT(*) FROM visits WHERE department = $1", oids=(25,)),
    rc.bind((b"cardiology",)),
    rc.bind((b"\xff\xfe",)),
    rc.describe(b"P"),
    rc.describe(b"S"),
    rc.execute(),
    rc.execute(max_rows=1),
    rc.SYNC,
    rc.msg(b"H"),
    rc.msg(b"C", b"S\0"),
    rc.query("SET privgate.epsilon = 0.1"),
    rc.query("SELECT * FROM privgate_last_query()"),
    rc.query("BEGIN; SELECT 1; COMMIT"),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(9)
    if op == 0 and b:  # flip bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and len(b) > 5:  # truncate the body but keep the declared length
        b = b[: rng.randrange(5, len(b))]
    elif op == 2 and len(b) >= 5:  # corrupt the length field
        struct.pack_into(
            "!i", b, 1, rng.choice([-1, 0, 3, 4, 5, len(b) + 1, 2**31 - 1, rng.randrange(2**31)])
        )
    elif op == 3:  # random type byte
        b[0:1] = bytes([rng.randrange(256)])
    elif op == 4:  # random bytes in the body
        for _ in range(rng.randint(1, 8)):
            if len(b) > 5:
                b[rng.randrange(5, len(b))] = rng.randrange(256)
    elif op == 5:  # pure noise
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 6:  # a valid message whose fields are garbage of the right length
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        return (
            rng.choice([b"P", b"B", b"D", b"E", b"C", b"Q", b"p", b"F", b"d"])
            + struct.pack("!i", len(body) + 4)
            + body
        )
    elif op == 7:  # splice two seeds
        other = rng.choice(SEEDS)
        cut = rng.randrange(len(b) + 1)
        return bytes(b[:cut]) + other[rng.randrange(len(other) + 1) :]
    # op 8: unchanged (valid messages in odd orders)
    return bytes(b)


_SECRET_SQL = (
    "SELECT ssn FROM patients LIMIT 300",
    "SELECT name FROM patients LIMIT 300",
    "SELECT diagnosis FROM visits LIMIT 300",
    "SELECT CAST(visit_id AS VARCHAR) FROM visits WHERE visit_id > 100000 LIMIT 300",
)


def _secrets(demo_path: str) -> list[bytes]:
    """Values that must never leave the gateway: identifiers and blocked columns.

    Read in another process: this one's gateway holds the file open with its locked-down
    configuration, and DuckDB allows one configuration per file per process.
    """
    script = (
        "import duckdb, json, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "out = set()\n"
        f"for q in {list(_SECRET_SQL)!r}:\n"
        "    out |= {str(r[0]) for r in con.execute(q).fetchall() if r[0] is not None and len(str(r[0])) >= 6}\n"
        "print(json.dumps(sorted(out)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, demo_path], capture_output=True, text=True, check=True
    )
    return [v.encode() for v in json.loads(done.stdout)]


def _drain(client: rc.RawClient, limit: int = 200) -> bytes:
    """Everything the server sends until it goes quiet (or closes)."""
    client.sock.settimeout(0.3)
    got = b""
    try:
        for _ in range(limit):
            chunk = client.sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (TimeoutError, OSError):
        pass
    return got


def test_the_parser_raises_only_protocol_violations() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        p = m.FrontendParser()
        if rng.random() < 0.5:
            p.startup_done()
        p.feed(_mutate(rng, rng.choice([*SEEDS, rc.startup({"user": "u"})])))
        try:
            while p.next() is not None:
                pass
        except m.ProtocolViolation:
            pass


def test_a_storm_of_mutated_messages(wire: Wire, demo_warehouse: object) -> None:
    rng = random.Random(20261206)
    secrets = _secrets(str(demo_warehouse))
    assert len(secrets) > 100
    healthy = rc.RawClient(wire.host, wire.port)
    assert healthy.login("analyst", wire.keys["analyst"])[-1].kind == "Z"
    sent = 0
    received = b""
    try:
        while sent < MESSAGES:
            client = rc.RawClient(wire.host, wire.port, timeout=5)
            try:
                pre_login = rng.random() < 0.15
                if pre_login:  # mutate the startup itself
                    client.send(_mutate(rng, rc.startup({"user": "analyst", "database": "clinic"})))
                    sent += 1
                    received += _drain(client, 5)
                    continue
                login = client.login("analyst", wire.keys["analyst"])
                assert login[-1].kind == "Z", login
                for _ in range(PER_CONNECTION):
                    client.send(_mutate(rng, rng.choice(SEEDS)))
                    sent += 1
                    if rng.random() < 0.3:
                        client.send(rc.SYNC)
                received += _drain(client)
            except (ConnectionError, OSError):
                pass  # the server may close a connection that broke the protocol
            finally:
                client.close()
            # The healthy connection is served all along.
            healthy.send(rc.query("SELECT 1"))
            msgs = healthy.until_ready()
            assert [x.kind for x in msgs][-1] == "Z" and any(x.kind == "D" for x in msgs)
    finally:
        healthy.close()
    leaked = [s for s in secrets if s in received]
    assert not leaked, f"protected values reached a client: {leaked[:3]}"
    assert sent >= 5000
    # And the server still logs new clients in and answers DP queries.
    fresh = rc.RawClient(wire.host, wire.port)
    try:
        assert fresh.login("analyst", wire.keys["analyst"])[-1].kind == "Z"
        fresh.send(rc.query("SELECT COUNT(*) AS n FROM visits"))
        kinds = [x.kind for x in fresh.until_ready()]
        assert kinds[:2] == ["T", "D"], kinds
    finally:
        fresh.close()


@pytest.mark.parametrize("size", [m.MAX_MESSAGE_BYTES + 1, 2**31 - 1])
def test_a_huge_length_is_refused_without_allocating(wire: Wire, size: int) -> None:
    client = rc.RawClient(wire.host, wire.port)
    try:
        client.login("analyst", wire.keys["analyst"])
        client.send(b"Q" + struct.pack("!i", size) + b"SELECT 1")
        reply = client.read()
        assert reply.kind == "E" and reply.fields()["C"] == "08P01"
    finally:
        client.close()
