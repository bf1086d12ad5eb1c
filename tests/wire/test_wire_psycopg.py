"""psycopg 3 against the wire endpoint: login, simple and extended queries, types, errors, cancel."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
import pytest
from psycopg import errors as pgerrors

from gateway.wire import messages as m
from tests.wire import rawclient as rc
from tests.wire.conftest import Wire

GROUPED = "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY department"


def _budget(wire: Wire) -> str:
    with wire.gateway.client() as http:
        return str(http.get("/v1/budget").json()["budgets"][0]["epsilon_spent"])


def test_login_and_a_catalog_query(wire: Wire) -> None:
    with wire.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.parameter_status("server_version")
        assert conn.pgconn.ssl_in_use
        version = conn.execute("SELECT version()").fetchone()
        assert version is not None and "PostgreSQL" in version[0]


def test_a_dp_aggregate_has_postgres_types(wire: Wire) -> None:
    with wire.connect() as conn:
        cur = conn.execute(GROUPED)
        rows = cur.fetchall()
        assert cur.description is not None
        types = {d.name: d.type_code for d in cur.description}
        assert types == {"department": 25, "n": 20, "avg_cost": 701}
        assert len(rows) == 8  # public domain: every department, zero-filled
        assert all(isinstance(r[1], int) and isinstance(r[2], float) for r in rows)


def test_simple_query_protocol(wire: Wire) -> None:
    with wire.connect() as conn:
        res = conn.pgconn.exec_(GROUPED.encode())
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
        assert res.ntuples == 8 and res.nfields == 3
        assert res.ftype(1) == 20
        # Several statements in one simple query run in order; the last result is returned.
        res = conn.pgconn.exec_(b"SET application_name = 'x'; SELECT 2 AS two")
        assert res.get_value(0, 0) == b"2"


def test_parameterised_and_server_side_prepared(wire: Wire) -> None:
    q = "SELECT COUNT(*) AS n FROM visits WHERE department = %s AND cost > %s"
    with wire.connect() as conn:
        first = conn.execute(q, ["cardiology", 100]).fetchall()
        spent = _budget(wire)
        for _ in range(3):
            again = conn.execute(q, ["cardiology", 100], prepare=True).fetchall()
            assert again == first  # the same query replays its stored answer ...
        assert _budget(wire) == spent  # ... at no cost
        other = conn.execute(q, ["oncology", 100], prepare=True).fetchall()
        assert len(other) == 1 and isinstance(other[0][0], int)


def test_binary_results(wire: Wire) -> None:
    with wire.connect() as conn:
        cur = conn.cursor(binary=True)
        rows = cur.execute(GROUPED).fetchall()
        assert len(rows) == 8 and isinstance(rows[0][1], int) and isinstance(rows[0][2], float)
        cur.execute("SELECT relname, relnatts FROM pg_class WHERE relname = 'visits'")
        assert cur.fetchall()[0][0] == "visits"


def test_a_policy_denial_and_a_syntax_error_carry_sqlstates(wire: Wire) -> None:
    with wire.connect() as conn:
        with pytest.raises(pgerrors.InsufficientPrivilege) as denied:
            conn.execute("SELECT * FROM visits")
        assert denied.value.sqlstate == "42501"
        assert "aggregation_required" in (denied.value.diag.message_detail or "")
        assert denied.value.diag.message_hint
        with pytest.raises(pgerrors.SyntaxError) as syntax:
            conn.execute("SELEC department FROM visits")
        assert syntax.value.sqlstate == "42601"
        with pytest.raises(pgerrors.UndefinedColumn):
            conn.execute(
                "SELECT COUNT(*) FROM visits WHERE diagnosis = 'x'"
            )  # blocked looks absent
        # A simple query's statements run one by one, each through its own route: DROP is refused.
        with pytest.raises(pgerrors.FeatureNotSupported, match="only SELECT"):
            conn.execute("SELECT 1; DROP TABLE visits")
        # One prepared statement holds one statement.
        with pytest.raises(pgerrors.SyntaxError):
            conn.execute("SELECT COUNT(*) FROM visits WHERE cost > %s; DROP TABLE visits", [1])
        assert conn.execute("SELECT 1").fetchone() == (1,)  # usable afterwards


def test_cancel_gives_57014_and_the_connection_stays_usable(wire: Wire) -> None:
    with wire.connect() as conn:
        # cancel_safe (libpq 17): over TLS like the connection itself; the legacy cancel() holds
        # the GIL while it waits, which would stall this in-process server.
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(pgerrors.QueryCanceled) as cancelled:
            conn.execute("SELECT pg_sleep(5)")
        assert cancelled.value.sqlstate == "57014"
        assert time.monotonic() - started < 4
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM visits").fetchone() is not None


def test_transactions_pass_through(wire: Wire) -> None:
    with psycopg.connect(wire.dsn()) as conn:  # not autocommit: psycopg sends BEGIN
        conn.execute("SELECT COUNT(*) FROM visits").fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute("SELECT * FROM visits")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        with conn.transaction():
            conn.execute("SELECT 1")
        assert conn.execute("SHOW TRANSACTION ISOLATION LEVEL").fetchone() is not None


def test_privgate_settings_notice_and_last_query(wire: Wire) -> None:
    notices: list[str] = []
    with wire.connect() as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET privgate.epsilon = 0.25")
        assert conn.execute("SHOW privgate.epsilon").fetchone() == ("0.25",)
        conn.execute("SELECT COUNT(*) AS n FROM visits WHERE los_days > 3").fetchall()
        assert any("charged epsilon 0.25" in n for n in notices), notices
        cur = conn.execute("SELECT * FROM privgate_last_query()")
        cols = [d.name for d in cur.description or []]
        row = dict(zip(cols, cur.fetchone() or (), strict=True))
        assert row["epsilon_charged"] == "0.25" and row["column_name"] == "n"
        assert row["mechanism"] == "discrete_laplace" and row["scale"] > 0
        assert row["audit_id"]
        conn.execute("RESET privgate.epsilon")
        assert conn.execute("SHOW privgate.epsilon").fetchone() == ("default",)
        with pytest.raises(pgerrors.InvalidTextRepresentation):
            conn.execute("SET privgate.epsilon = -1")


def test_the_catalog_shows_only_allowed_tables_and_columns(wire: Wire) -> None:
    with wire.connect() as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        assert tables == {"patients", "visits", "departments"}
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'visits' "
                "ORDER BY ordinal_position"
            )
        ]
        assert "diagnosis" not in cols and "department" in cols and "cost" in cols
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attname IN ('ssn', 'diagnosis', 'name')"
            " AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)"
        ).fetchone() == (0,)


def test_describe_plans_without_charging(wire: Wire) -> None:
    # Raw protocol messages: libpq's PQprepare/PQdescribePrepared hold the GIL while they wait,
    # which would stall this in-process server.
    client = rc.RawClient(wire.host, wire.port)
    try:
        assert client.login("analyst", wire.keys["analyst"])[-1].kind == "Z"
        spent = _budget(wire)
        sql = "SELECT department, SUM(cost) AS total FROM visits WHERE los_days > $1 GROUP BY department"
        client.send(rc.parse(sql, "d1") + rc.describe(b"S", "d1") + rc.SYNC)
        got = client.until_ready()
        assert [x.kind for x in got] == ["1", "t", "T", "Z"], got
        (n, oid) = struct.unpack("!hI", got[1].body)
        assert (n, oid) == (1, 20)  # inferred from los_days
        assert b"department\0" in got[2].body and b"total\0" in got[2].body
        # Describe of a bound portal: still nothing runs.
        client.send(rc.bind((b"3",), "", "d1") + rc.describe(b"P") + rc.SYNC)
        assert [x.kind for x in client.until_ready()] == ["2", "T", "Z"]
        assert _budget(wire) == spent
        client.send(
            rc.parse("SELECT visit_id FROM visits", "d2") + rc.describe(b"S", "d2") + rc.SYNC
        )
        denied = client.until_ready()
        assert [x.kind for x in denied] == ["1", "E", "Z"]
        assert denied[1].fields()["C"] == "42501"
    finally:
        client.close()


def test_the_audit_record_names_the_wire_door(wire: Wire) -> None:
    with wire.connect() as conn:
        conn.execute("SELECT COUNT(*) AS n FROM visits WHERE cost > 4321").fetchall()
        cur = conn.execute("SELECT audit_id FROM privgate_last_query()")
        audit_id = (cur.fetchone() or [None])[0]
    stored = wire.gateway.services.audit.get(audit_id)
    assert stored is not None
    record = stored["record"]
    assert record["door"] == "wire" and record["decision"] == "accepted"
    assert record["client"] == "127.0.0.1"


# --- login failures ---------------------------------------------------------------------------


def _raw_error(wire: Wire, params: dict[str, str]) -> dict[str, str]:
    """Send a plain (non-TLS) startup and return the fields of the error the server answers."""
    body = (
        struct.pack("!i", m.PROTOCOL_V3)
        + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
        + b"\0"
    )
    with socket.create_connection((wire.host, wire.port), timeout=10) as s:
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        data = b""
        while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data[:1] == b"E", data
    fields: dict[str, str] = {}
    for part in data[5:].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def test_a_non_tls_login_is_refused_with_28000(wire: Wire) -> None:
    fields = _raw_error(wire, {"user": "analyst", "database": "clinic"})
    assert fields["C"] == "28000" and fields["S"] == "FATAL"
    with pytest.raises(psycopg.OperationalError, match="TLS"):
        psycopg.connect(wire.dsn(sslmode="disable")).close()


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("analyst", "pgk_00000000_" + "A" * 43),
        ("nobody", "whatever-it-is"),
        ("analyst", "admin-key"),
    ],
)
def test_wrong_password_and_unknown_user_are_refused_alike(
    wire: Wire, user: str, password: str
) -> None:
    if password == "admin-key":  # another principal's valid key is no password of this one
        password = wire.keys["admin"]
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(wire.dsn(user, password=password)).close()
    assert f'password authentication failed for user "{user}"' in str(refused.value)


def test_a_revoked_key_stops_working_on_open_connections(wire: Wire) -> None:
    services = wire.gateway.services
    key_id, key = services.principals.create_key("analyst")
    with psycopg.connect(wire.dsn(password=key), autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM visits").fetchone() is not None
        services.principals.revoke_key(key_id)
        with pytest.raises(pgerrors.InvalidPassword):
            conn.execute("SELECT COUNT(*) FROM visits WHERE cost > 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wire.dsn(password=key)).close()


def test_an_admin_set_wire_password_logs_in(wire: Wire) -> None:
    url = "/v1/admin/principals/analyst/wire-password"
    with wire.gateway.client("admin") as http:
        assert http.put(url, json={"password": "short"}).status_code == 422
        done = http.put(url, json={"password": "correct horse battery"})
        assert done.status_code == 200 and done.json()["wire_password"] is True
    with wire.gateway.client("analyst") as http:
        assert http.put(url, json={"password": "x" * 20}).status_code == 403
    with psycopg.connect(wire.dsn(password="correct horse battery"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    stored = wire.gateway.services.audit.page(limit=50).records
    assert not any("correct horse" in str(r) for r in stored)
    with wire.gateway.client("admin") as http:
        assert http.put(url, json={"password": None}).json()["wire_password"] is False
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(wire.dsn(password="correct horse battery")).close()


def test_a_public_table_through_the_extended_protocol(wire: Wire) -> None:
    with wire.connect() as conn:
        cur = conn.execute("SELECT * FROM departments WHERE department = %s", ["oncology"])
        rows = cur.fetchall()
        assert cur.description is not None and [d.name for d in cur.description] == ["department", "building", "floor"]
        assert len(rows) == 1
