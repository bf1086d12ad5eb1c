"""Sans-IO pieces of the wire endpoint, tested with byte strings (no sockets, no servers)."""

from __future__ import annotations

import base64
import datetime as dt
import doctest
import struct

import pytest

from gateway.wire import messages as m
from gateway.wire import params, pgtypes, router, scram
from tests.wire import rawclient as rc


@pytest.mark.parametrize("module", [m, params, pgtypes, router, scram])
def test_doctests(module: object) -> None:
    failures, _ = doctest.testmod(module)  # type: ignore[arg-type]
    assert failures == 0


def test_messages_split_across_reads_and_glued_together() -> None:
    stream = (
        rc.parse("SELECT $1", "s1", (23,))
        + rc.bind((b"7",), "", "s1")
        + rc.describe()
        + rc.execute()
        + rc.SYNC
    )
    p = m.FrontendParser()
    p.startup_done()
    got = []
    for i in range(len(stream)):  # one byte at a time
        p.feed(stream[i : i + 1])
        while (msg := p.next()) is not None:
            got.append(msg)
    assert got == [
        m.Parse("s1", "SELECT $1", (23,)),
        m.Bind("", "s1", (), (b"7",), ()),
        m.Describe("P", ""),
        m.Execute("", 0),
        m.Sync(),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        b"Q\x00\x00\x00\x02",  # length below 4
        b"Q" + struct.pack("!i", m.MAX_MESSAGE_BYTES + 1),
        b"Z\x00\x00\x00\x04",  # not a frontend message
        b"Q\x00\x00\x00\x08abc\x01",  # unterminated string
        b"D\x00\x00\x00\x06X\x00",  # Describe of neither S nor P
        rc.msg(b"B", b"\0\0" + struct.pack("!h", 1) + struct.pack("!h", 7)),  # format code 7
        rc.msg(b"B", b"\0\0\0\0" + struct.pack("!h", 1) + struct.pack("!i", 100)),  # value past end
        rc.msg(b"S", b"x"),  # trailing bytes
    ],
)
def test_malformed_messages_are_protocol_violations(bad: bytes) -> None:
    p = m.FrontendParser()
    p.startup_done()
    p.feed(bad)
    with pytest.raises(m.ProtocolViolation):
        p.next()


def test_startup_packets() -> None:
    p = m.FrontendParser()
    p.feed(rc.startup({"user": "alice", "database": "clinic"}))
    assert p.next() == m.StartupMessage(m.PROTOCOL_V3, {"user": "alice", "database": "clinic"})
    p = m.FrontendParser()
    p.feed(struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, 42, 99))
    assert p.next() == m.CancelRequest(42, 99)
    p = m.FrontendParser()
    p.feed(struct.pack("!ii", 8, 2 << 16))
    with pytest.raises(m.ProtocolViolation, match="version"):
        p.next()


def test_error_response_fields() -> None:
    raw = m.error_response(m.Notice("ERROR", "42501", "no", detail="d", hint="h"))
    fields = rc.Message("E", raw[5:]).fields()
    assert fields == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "no", "D": "d", "H": "h"}


def _client_exchange(password: str, verifiers: list[scram.Verifier], salt: bytes) -> bytes | None:
    client = scram._client_proof_for_test(password, salt, "", "clientnonce")
    ex = scram.ScramExchange(salt=salt, verifiers=verifiers)
    return ex.client_final(client.final(ex.client_first(client.first)))


def test_scram_accepts_any_of_a_principals_verifiers_and_nothing_else() -> None:
    salt = scram.principal_salt(b"p" * 32, "alice")
    keys = [scram.make_verifier(k, salt=salt, label=k) for k in ("key-one", "key-two")]
    assert _client_exchange("key-two", keys, salt) is not None
    assert _client_exchange("key-one", keys, salt) is not None
    assert _client_exchange("key-three", keys, salt) is None
    assert _client_exchange("key-one", [], salt) is None


def test_scram_refuses_a_replayed_or_tampered_final_message() -> None:
    salt = b"s" * 16
    v = scram.make_verifier("pw", salt=salt)
    client = scram._client_proof_for_test("pw", salt, "", "n1")
    ex = scram.ScramExchange(salt=salt, verifiers=[v])
    final = client.final(ex.client_first(client.first))
    other = scram.ScramExchange(salt=salt, verifiers=[v])  # a new server nonce
    other.client_first(client.first)
    with pytest.raises(scram.ScramFailed, match="nonce"):
        other.client_final(final)
    without, _, proof = final.decode().rpartition(",p=")
    flipped = bytearray(base64.b64decode(proof))
    flipped[0] ^= 1
    tampered = f"{without},p={base64.b64encode(bytes(flipped)).decode()}".encode()
    assert ex.client_final(tampered) is None


def test_salts_differ_per_principal_and_pepper() -> None:
    assert scram.principal_salt(b"a" * 32, "x") != scram.principal_salt(b"a" * 32, "y")
    assert scram.principal_salt(b"a" * 32, "x") != scram.principal_salt(b"b" * 32, "x")


@pytest.mark.parametrize(
    ("sql", "route"),
    [
        ("SELECT 1", router.Route.SHADOW),
        ("  -- comment\n SELECT current_schema()", router.Route.SHADOW),
        ("SAVEPOINT a", router.Route.SHADOW),
        ("DISCARD ALL", router.Route.SHADOW),
        ("SELECT COUNT(*) FROM visits", router.Route.DATA),
        ("select count(*) from VISITS", router.Route.DATA),
        ('SELECT * FROM "visits"', router.Route.DATA),
        ("WITH v AS (SELECT * FROM visits) SELECT COUNT(*) FROM v", router.Route.DATA),
        ("SELECT * FROM pg_class c JOIN visits v ON true", router.Route.DATA),
        ("INSERT INTO pg_class VALUES (1)", router.Route.DATA),  # refused by the pipeline
        ("COPY visits TO STDOUT", router.Route.DATA),
        ("CREATE TABLE x (a int)", router.Route.DATA),
        ("SELECT 'visits'", router.Route.SHADOW),  # a literal is not a table
        ("", router.Route.EMPTY),
        (";;", router.Route.EMPTY),
        ("SET privgate.epsilon = 1", router.Route.LOCAL_SET),
        ("SHOW privgate.notices", router.Route.LOCAL_SHOW),
        ("SELECT * FROM privgate_last_query()", router.Route.LAST_QUERY),
    ],
)
def test_routing(sql: str, route: router.Route) -> None:
    assert router.classify(sql, {"visits", "patients"}).route is route


def test_split_statements_respects_quotes_and_comments() -> None:
    assert router.split_statements("SELECT ';'; SELECT $$a;b$$ -- x;\n; ") == [
        "SELECT ';'",
        "SELECT $$a;b$$ -- x;",
    ]


@pytest.mark.parametrize(
    ("raw", "oid", "fmt", "value"),
    [
        (b"12", pgtypes.INT4, 0, 12),
        (struct.pack("!q", -5), pgtypes.INT8, 1, -5),
        (struct.pack("!d", 1.5), pgtypes.FLOAT8, 1, 1.5),
        (b"t", pgtypes.BOOL, 0, True),
        (b"2024-02-29", pgtypes.DATE, 0, dt.date(2024, 2, 29)),
        (struct.pack("!i", 1), pgtypes.DATE, 1, dt.date(2000, 1, 2)),
        (b"abc", 0, 0, "abc"),
        (None, pgtypes.INT4, 0, None),
    ],
)
def test_decode_params(raw: bytes | None, oid: int, fmt: int, value: object) -> None:
    assert pgtypes.decode_param(raw, oid, fmt) == value


@pytest.mark.parametrize(
    ("raw", "oid", "fmt"), [(b"x", pgtypes.INT4, 0), (b"\x00", pgtypes.INT4, 1), (b"\xff", 0, 0)]
)
def test_bad_params_raise_encoding_errors(raw: bytes, oid: int, fmt: int) -> None:
    with pytest.raises(pgtypes.EncodingError):
        pgtypes.decode_param(raw, oid, fmt)


def test_binary_round_trips() -> None:
    for value, oid in [
        (7, pgtypes.INT8),
        (2.25, pgtypes.FLOAT8),
        (dt.date(1999, 12, 31), pgtypes.DATE),
        (dt.datetime(2001, 2, 3, 4, 5, 6, 7), pgtypes.TIMESTAMP),
        (True, pgtypes.BOOL),
    ]:
        assert pgtypes.decode_param(pgtypes.encode_binary(value, oid), oid, 1) == value
    assert pgtypes.text_to_binary(b"Infinity", pgtypes.FLOAT8) == struct.pack("!d", float("inf"))


def test_inline_types_parameters_from_their_columns() -> None:
    sql = "SELECT COUNT(*) FROM visits WHERE cost > $1 AND department = $2 AND visit_day = $3"
    kinds = {
        1: pgtypes.LogicalType.FLOAT,
        2: pgtypes.LogicalType.STRING,
        3: pgtypes.LogicalType.DATE,
    }
    out = params.inline(sql, ["12.5", "o'neil", "2024-01-01"], kinds)
    assert out == (
        "SELECT COUNT(*) FROM visits WHERE cost > 12.5 AND department = 'o''neil' "
        "AND visit_day = CAST('2024-01-01' AS DATE)"
    )
    with pytest.raises(params.ParameterError, match="not a number"):
        params.inline(sql, ["1; DROP TABLE x", "a", "2024-01-01"], kinds)
    with pytest.raises(params.ParameterError, match=r"no parameter \$3"):
        params.inline(sql, ["1", "a"], kinds)
