"""The audit chain: appends, verification, and every tampering we promise to catch.

Tampering is done the way an attacker with database access would: raw SQL through ``sqlite3`` (or
PostgreSQL), without the MAC key. Concurrent writers are in test_audit_tamper.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from gateway import audit
from gateway.audit import (
    GENESIS_HASH,
    AuditIntegrityError,
    AuditLog,
    VerifyResult,
    canonical_json,
    entry_hash,
)
from gateway.control_db import make_control_engine

MAC_KEY = b"audit-test-key-0123456789abcdef"
N = 30
BATCH = 7  # Small, so the tamper cases also cross batch boundaries at many positions.
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RECORD_FIELDS = ("principal", "rows", "flags", "nested")


def sample_record(i: int) -> dict[str, Any]:
    return {
        "principal": f"analyst{i}",
        "door": "rest",
        "decision": "allowed",
        "reason_code": None,
        "epsilon": "0.1",
        "rows": i,
        "flags": [True, False],
        "nested": {"sql": f"SELECT count(*) FROM t WHERE k = {i}", "mechanisms": ["laplace"]},
        "note": "é ✓",
    }


def open_log(path: Path, **kwargs: Any) -> AuditLog:
    log = AuditLog(make_control_engine(f"sqlite:///{path}"), mac_key=MAC_KEY, **kwargs)
    log.create_schema()
    return log


def verify(path: Path) -> VerifyResult:
    return open_log(path, batch_size=BATCH).verify()


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(statement, params)
        conn.commit()


def column(path: Path, seq: int, name: str) -> Any:
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute(f"SELECT {name} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return row[0]


def assert_broken(result: VerifyResult, seq: int, *fragments: str) -> None:
    assert not result.ok
    assert result.first_bad_seq == seq, result.reason
    assert result.checked == seq - 1
    assert f"seq {seq}" in result.reason
    for fragment in fragments:
        assert fragment in result.reason


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "template.db"
    log = open_log(path)
    for i in range(1, N + 1):
        log.append(sample_record(i))
    return path


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Path:
    """A private copy of the 30-record template log."""
    path = tmp_path / "audit.db"
    with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(path)) as dst:
        src.backup(dst)
    return path


# --- appending and reading -------------------------------------------------------------------


def test_append_verify_get_export(tmp_path: Path) -> None:
    log = open_log(tmp_path / "a.db", batch_size=2)
    assert log.verify() == VerifyResult(ok=True, checked=0, first_bad_seq=None, reason="ok")
    entries = [log.append(sample_record(i)) for i in range(1, 6)]

    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert len({e.id for e in entries}) == 5
    assert all(len(e.id) == 32 and int(e.id, 16) >= 0 for e in entries)
    assert all(datetime.fromisoformat(e.ts).utcoffset() == timedelta(0) for e in entries)
    assert log.verify() == VerifyResult(ok=True, checked=5, first_bad_seq=None, reason="ok")

    exported = list(log.export())
    assert [row["seq"] for row in exported] == [1, 2, 3, 4, 5]
    assert [row["record"] for row in exported] == [sample_record(i) for i in range(1, 6)]
    assert exported[0]["prev_hash"] == GENESIS_HASH
    assert [row["prev_hash"] for row in exported[1:]] == [e.hash for e in entries[:-1]]
    assert log.get(entries[2].id) == exported[2]
    assert log.get(uuid.uuid4().hex) is None


def test_hash_is_the_documented_formula(db: Path) -> None:
    body = canonical_json(
        {
            "seq": 1,
            "id": column(db, 1, "id"),
            "ts": column(db, 1, "ts"),
            "record": sample_record(1),
        }
    )
    expected = hashlib.sha256(f"{'0' * 64}\n{body}".encode()).hexdigest()
    assert column(db, 1, "hash") == expected
    assert column(db, 1, "record") == canonical_json(sample_record(1))
    key_id = hashlib.sha256(MAC_KEY).hexdigest()[:8]
    assert column(db, 1, "key_id") == key_id
    assert column(db, 1, "mac") == _hmac(f"record:1:{expected}")
    assert column(db, 1, "principal") == "analyst1"
    assert column(db, 1, "decision") == "allowed"
    assert column(db, 1, "dataset") is None  # not in the record
    assert column(db, 1, "code") is None
    with closing(sqlite3.connect(db)) as conn:
        last_seq, last_hash, mac, head_key, anchor = conn.execute(
            "SELECT last_seq, last_hash, mac, key_id, anchor_seq FROM audit_head WHERE id = 1"
        ).fetchone()
    assert (last_seq, last_hash, head_key, anchor) == (N, column(db, N, "hash"), key_id, 0)
    assert mac == _hmac(f"{N}:{last_hash}")


def _hmac(message: str) -> str:
    return hmac.new(MAC_KEY, message.encode(), hashlib.sha256).hexdigest()


def test_create_schema_is_idempotent_and_keeps_the_head(db: Path) -> None:
    log = open_log(db)
    log.create_schema()
    assert log.append(sample_record(99)).seq == N + 1
    assert log.verify().ok


@pytest.mark.parametrize(
    "bad",
    [
        {"epsilon": 0.1},
        {"nested": {"scale": [1, 2.5]}},
        {"nan": float("nan")},
        {1: "non-string key"},
        {"decimal": Decimal("0.1")},
        {"set": {"a"}},
        {"bytes": b"x"},
    ],
    ids=["float", "nested-float", "nan", "int-key", "decimal", "set", "bytes"],
)
def test_records_without_a_canonical_form_are_refused(db: Path, bad: dict[Any, Any]) -> None:
    log = open_log(db)
    with pytest.raises(TypeError):
        log.append(bad)
    assert log.verify().checked == N


def test_mac_key_must_be_long_enough(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16"):
        AuditLog(make_control_engine(f"sqlite:///{tmp_path / 'a.db'}"), mac_key=b"short")


# --- tampering with one row, at every position ---------------------------------------------


SEQS = range(1, N + 1)


@pytest.mark.parametrize("seq", SEQS)
def test_modified_record_field(db: Path, seq: int) -> None:
    record = json.loads(column(db, seq, "record"))
    field = RECORD_FIELDS[seq % len(RECORD_FIELDS)]
    record[field] = {"principal": "mallory", "rows": 0, "flags": [True], "nested": {}}[field]
    sql(db, "UPDATE audit_log SET record = ? WHERE seq = ?", (canonical_json(record), seq))
    assert_broken(verify(db), seq, column(db, seq, "id"), "hash does not match its content")


@pytest.mark.parametrize("seq", [1, 8, N])
@pytest.mark.parametrize("name", ["id", "ts"])
def test_modified_id_or_timestamp(db: Path, seq: int, name: str) -> None:
    value = uuid.uuid4().hex if name == "id" else "2000-01-01T00:00:00.000000+00:00"
    sql(db, f"UPDATE audit_log SET {name} = ? WHERE seq = ?", (value, seq))
    assert_broken(verify(db), seq, "hash does not match its content")


@pytest.mark.parametrize("seq", SEQS)
def test_changed_hash(db: Path, seq: int) -> None:
    sql(db, "UPDATE audit_log SET hash = ? WHERE seq = ?", ("f" * 64, seq))
    assert_broken(verify(db), seq, column(db, seq, "id"), "hash does not match its content")


@pytest.mark.parametrize("seq", SEQS)
def test_changed_prev_hash(db: Path, seq: int) -> None:
    sql(db, "UPDATE audit_log SET prev_hash = ? WHERE seq = ?", ("e" * 64, seq))
    assert_broken(verify(db), seq, column(db, seq, "id"), "prev_hash does not match")


@pytest.mark.parametrize("seq", SEQS)
def test_deleted_row(db: Path, seq: int) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq = ?", (seq,))
    result = verify(db)
    assert_broken(result, seq, f"record seq {seq} is missing")
    if seq == N:
        assert "audit head" in result.reason


@pytest.mark.parametrize("seq", range(1, N))
def test_swapped_adjacent_records(db: Path, seq: int) -> None:
    first, second = column(db, seq, "record"), column(db, seq + 1, "record")
    sql(db, "UPDATE audit_log SET record = ? WHERE seq = ?", (second, seq))
    sql(db, "UPDATE audit_log SET record = ? WHERE seq = ?", (first, seq + 1))
    assert_broken(verify(db), seq, column(db, seq, "id"), "hash does not match its content")


@pytest.mark.parametrize("seq", range(1, N))
def test_reordered_adjacent_rows(db: Path, seq: int) -> None:
    # Swap the sequence numbers, i.e. every other column of the two rows.
    sql(db, "UPDATE audit_log SET seq = -1 WHERE seq = ?", (seq,))
    sql(db, "UPDATE audit_log SET seq = ? WHERE seq = ?", (seq, seq + 1))
    sql(db, "UPDATE audit_log SET seq = ? WHERE seq = -1", (seq + 1,))
    assert_broken(verify(db), seq, column(db, seq, "id"), "prev_hash does not match")


def _insert_forged(db: Path, seq: int, *, chained: bool, sealed: bool = True) -> str:
    """Make room at ``seq`` and insert a forged row there; return its id.

    The forger has no key: the best seal they have is the one of the row they displace.
    """
    mac, key_id = (
        (column(db, min(seq, N), "mac"), column(db, 1, "key_id")) if sealed else (None, None)
    )
    sql(db, "UPDATE audit_log SET seq = -seq WHERE seq >= ?", (seq,))
    sql(db, "UPDATE audit_log SET seq = 1 - seq WHERE seq < 0")
    prev = GENESIS_HASH if seq == 1 else column(db, seq - 1, "hash")
    forged_id, ts, record = uuid.uuid4().hex, "2030-01-01T00:00:00.000000+00:00", {"fake": True}
    digest = entry_hash(prev, seq=seq, audit_id=forged_id, ts=ts, record=record)
    sql(
        db,
        "INSERT INTO audit_log (seq, id, ts, record, prev_hash, hash, key_id, mac) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            forged_id,
            ts,
            canonical_json(record),
            prev,
            digest if chained else "a" * 64,
            key_id,
            mac,
        ),
    )
    return forged_id


@pytest.mark.parametrize("seq", range(1, N + 2))
def test_inserted_row_with_correct_hashes(db: Path, seq: int) -> None:
    # The forged row links and hashes correctly; its seal gives it away, at its own seq.
    forged_id = _insert_forged(db, seq, chained=True)
    assert_broken(verify(db), seq, forged_id, "MAC does not verify")


@pytest.mark.parametrize("seq", [1, N // 2, N, N + 1])
def test_inserted_row_without_a_seal(db: Path, seq: int) -> None:
    forged_id = _insert_forged(db, seq, chained=True, sealed=False)
    assert_broken(verify(db), seq, forged_id, "is not sealed")


@pytest.mark.parametrize("seq", range(1, N + 2))
def test_inserted_row_with_a_made_up_hash(db: Path, seq: int) -> None:
    forged_id = _insert_forged(db, seq, chained=False)
    assert_broken(verify(db), seq, forged_id, "hash does not match its content")


@pytest.mark.parametrize("seq", [1, 8, N])
def test_record_seal_moved_or_altered(db: Path, seq: int) -> None:
    other = column(db, seq % N + 1, "mac")
    sql(db, "UPDATE audit_log SET mac = ? WHERE seq = ?", (other, seq))
    assert_broken(verify(db), seq, "MAC does not verify")


@pytest.mark.parametrize("name", ["principal", "decision", "dataset", "code"])
def test_doctored_indexed_column(db: Path, name: str) -> None:
    # What listing filters on is a copy of the record: changing the copy alone is caught too.
    sql(db, f"UPDATE audit_log SET {name} = 'mallory' WHERE seq = 9")
    assert_broken(verify(db), 9, f"column {name} ('mallory') differs from the record's {name}")


def test_rolled_back_head_leaves_genuine_records_beyond_it(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        old_head = conn.execute("SELECT last_seq, last_hash, mac FROM audit_head").fetchone()
    log = open_log(db)
    extra = [log.append(sample_record(i)).id for i in range(3)]
    sql(db, "UPDATE audit_head SET last_seq = ?, last_hash = ?, mac = ?", old_head)
    assert_broken(verify(db), N + 1, extra[0], "beyond the audit head")


@pytest.mark.parametrize("cut", SEQS)
def test_truncated_tail_is_caught_by_the_head(db: Path, cut: int) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq >= ?", (cut,))
    assert_broken(verify(db), cut, f"record seq {cut} is missing", f"ends at seq {N}")


# --- tampering with the head, and subtler edits ------------------------------------------------


def test_truncation_with_a_moved_head_is_caught_by_the_mac(db: Path) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq > 20")
    sql(db, "UPDATE audit_head SET last_seq = 20, last_hash = ?", (column(db, 20, "hash"),))
    result = verify(db)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, None, 20)
    assert "MAC does not verify" in result.reason
    with pytest.raises(AuditIntegrityError, match="MAC"):
        open_log(db).append(sample_record(0))


@pytest.mark.parametrize("mac", ["wrong key", "0" * 64, "é" * 64, ""])
def test_head_with_a_forged_mac(db: Path, mac: str) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq > 20")
    last_hash = column(db, 20, "hash")
    if mac == "wrong key":
        mac = hmac.new(b"guessed-key-0000", f"20:{last_hash}".encode(), "sha256").hexdigest()
    sql(db, "UPDATE audit_head SET last_seq = 20, last_hash = ?, mac = ?", (last_hash, mac))
    result = verify(db)
    assert not result.ok and result.first_bad_seq is None
    assert "MAC does not verify" in result.reason


def test_missing_head(db: Path) -> None:
    sql(db, "DELETE FROM audit_head")
    result = verify(db)
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert "head row is missing" in result.reason
    with pytest.raises(AuditIntegrityError, match="missing"):
        open_log(db).append(sample_record(0))


def test_wiped_log_with_missing_head(db: Path) -> None:
    sql(db, "DELETE FROM audit_log")
    sql(db, "DELETE FROM audit_head")
    assert not AuditLog(make_control_engine(f"sqlite:///{db}"), mac_key=MAC_KEY).verify().ok


def test_rewritten_suffix_with_recomputed_hashes_is_caught_by_the_seals(db: Path) -> None:
    prev = column(db, 9, "hash")
    for seq in range(10, N + 1):
        record = json.loads(column(db, seq, "record"))
        if seq == 10:
            record["principal"] = "mallory"
        audit_id, ts = column(db, seq, "id"), column(db, seq, "ts")
        digest = entry_hash(prev, seq=seq, audit_id=audit_id, ts=ts, record=record)
        sql(
            db,
            "UPDATE audit_log SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (canonical_json(record), prev, digest, seq),
        )
        prev = digest
    # Without the key the rewritten records cannot be re-sealed: the first one gives it away.
    assert_broken(verify(db), 10, "MAC does not verify")
    with pytest.raises(AuditIntegrityError, match=f"seq {N}"):
        open_log(db).append(sample_record(0))


def test_append_refuses_a_forged_row_beyond_the_head(db: Path) -> None:
    _insert_forged(db, N + 1, chained=True)
    with pytest.raises(AuditIntegrityError, match="beyond the audit head"):
        open_log(db).append(sample_record(0))


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (json.dumps(sample_record(5)), "not in canonical form"),
        ('{"principal": ', "not valid JSON"),
        ('{"x":NaN}', "not valid JSON"),
    ],
    ids=["reformatted", "truncated", "nan"],
)
def test_altered_record_text(db: Path, stored: str, reason: str) -> None:
    sql(db, "UPDATE audit_log SET record = ? WHERE seq = 5", (stored,))
    assert_broken(verify(db), 5, reason)


def test_verify_needs_the_right_key(db: Path) -> None:
    log = AuditLog(make_control_engine(f"sqlite:///{db}"), mac_key=b"another-key-0123456789")
    assert "MAC does not verify" in log.verify().reason


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A private schema in the shared test database, dropped afterwards."""
    schema = f"test_audit_{uuid.uuid4().hex[:12]}"
    admin = make_control_engine(f"{PG_URL}?connect_timeout=3")
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    engine = make_control_engine(f"{PG_URL}?connect_timeout=3&options=-csearch_path%3D{schema}")
    audit.metadata.drop_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _pg_fresh_log(engine: Engine, n: int) -> AuditLog:
    audit.metadata.drop_all(engine)
    log = AuditLog(engine, mac_key=MAC_KEY, batch_size=BATCH)
    log.create_schema()
    for i in range(1, n + 1):
        log.append(sample_record(i))
    return log


@pytest.mark.postgres
def test_postgres_tampering(pg_engine: Engine) -> None:
    cases = [
        (7, 'UPDATE audit_log SET record = \'{"principal":"mallory"}\' WHERE seq = 7', "content"),
        (12, "UPDATE audit_log SET prev_hash = repeat('e', 64) WHERE seq = 12", "prev_hash"),
        (15, "DELETE FROM audit_log WHERE seq = 15", "missing"),
        (21, "DELETE FROM audit_log WHERE seq >= 21", "ends at seq 30"),
    ]
    for seq, statement, fragment in cases:
        log = _pg_fresh_log(pg_engine, N)
        assert log.verify().ok
        with pg_engine.begin() as conn:
            conn.execute(text(statement))
        assert_broken(log.verify(), seq, fragment)

    log = _pg_fresh_log(pg_engine, N)
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE audit_head SET last_seq = 20"))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, None)
    with pytest.raises(AuditIntegrityError, match="MAC"):
        log.append(sample_record(0))
