"""Signed checkpoints, key rotation, verification from an auditor's checkpoint file, retention
(purge), and the adoption of records written before seals existed.

Tampering is done the way an attacker with database access would: raw SQL through ``sqlite3``.
Where the attacker is an insider who holds the audit key, the test uses the key too: only a
checkpoint kept outside the database can catch them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from gateway.audit import (
    CHECKPOINT_FILE,
    GENESIS_HASH,
    AuditFilter,
    AuditIntegrityError,
    AuditLog,
    Checkpoint,
    VerifyResult,
)
from gateway.audit_seal import KeyRing, canonical_json, entry_hash, key_id
from gateway.control_db import make_control_engine, migrate
from tests.test_audit import pg_engine  # noqa: F401  (fixture)

KEY1 = b"first-audit-key-0123456789abcdef"
KEY2 = b"second-audit-key-0123456789abcde"
EVERY = 5


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {"principal": f"p{i % 3}", "dataset": "clinic", "decision": "accepted", "i": i, **extra}


def open_log(path: Path, key: bytes = KEY1, **kwargs: Any) -> AuditLog:
    engine = make_control_engine(f"sqlite:///{path / 'control.db'}")
    migrate(engine)
    kwargs.setdefault("checkpoint_every", EVERY)
    kwargs.setdefault("checkpoint_dir", path / "auditor")
    log = AuditLog(engine, mac_key=key, **kwargs)
    log.create_schema()
    return log


def filed(path: Path) -> list[dict[str, Any]]:
    """The checkpoint file an auditor keeps."""
    text = (path / "auditor" / CHECKPOINT_FILE).read_text()
    return [json.loads(line) for line in text.splitlines()]


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(path / "control.db")) as conn:
        conn.execute(statement, params)
        conn.commit()


def rows(path: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path / "control.db")) as conn:
        return conn.execute(statement, params).fetchall()


def mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def assert_broken(result: VerifyResult, seq: int | None, *fragments: str) -> None:
    assert not result.ok
    assert result.first_bad_seq == seq, result.reason
    for fragment in fragments:
        assert fragment in result.reason


OK = VerifyResult


# --- checkpoints --------------------------------------------------------------------------------


def test_a_checkpoint_every_n_records_in_the_database_and_the_file(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    entries = [log.append(record(i)) for i in range(1, 13)]
    stored = log.read_checkpoints()
    assert [c.seq for c in stored] == [5, 10]
    assert [c.as_json() for c in stored] == filed(tmp_path)
    for cp in stored:
        entry = entries[cp.seq - 1]
        assert (cp.hash, cp.ts, cp.key_id) == (entry.hash, entry.ts, key_id(KEY1))
        assert cp.mac == mac(KEY1, f"checkpoint:{cp.seq}:{cp.hash}:{cp.ts}")
        assert Checkpoint.from_json(json.loads(canonical_json(cp.as_json()))) == cp
    assert log.verify() == OK(ok=True, checked=12, first_bad_seq=None, reason="ok")


def test_a_checkpoint_on_demand(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    empty = log.checkpoint()
    assert (empty.seq, empty.hash) == (0, GENESIS_HASH)
    last = [log.append(record(i)) for i in range(1, 8)][-1]
    made = log.checkpoint()
    assert (made.seq, made.hash) == (7, last.hash)
    assert log.checkpoint() == made  # the same record: the same checkpoint, not a second one
    assert [c["seq"] for c in filed(tmp_path)] == [0, 5, 7]
    assert [c.seq for c in log.read_checkpoints()] == [0, 5, 7]
    assert log.verify().ok
    assert log.verify(empty.as_json()).checked == 7


def test_an_unwritable_checkpoint_file_does_not_fail_the_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = open_log(tmp_path, checkpoint_dir=blocker)
    with caplog.at_level(logging.ERROR, logger="privgate.audit"):
        for i in range(1, 6):
            log.append(record(i))
    assert [c.seq for c in log.read_checkpoints()] == [5]
    assert "could not append the audit checkpoint of seq 5" in caplog.text


def test_a_doctored_stored_checkpoint(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 13):
        log.append(record(i))
    sql(tmp_path, "UPDATE audit_checkpoints SET hash = ? WHERE seq = 5", ("e" * 64,))
    assert_broken(log.verify(), None, "checkpoint stored for seq 5 is not genuine")
    # Re-sealed by someone with the key: then it is the record that no longer matches it.
    cp = log.read_checkpoints()[0]
    sql(
        tmp_path,
        "UPDATE audit_checkpoints SET mac = ? WHERE seq = 5",
        (mac(KEY1, f"checkpoint:5:{'e' * 64}:{cp.ts}"),),
    )
    assert_broken(log.verify(), 5, "does not match the checkpoint stored for it")


# --- key rotation -------------------------------------------------------------------------------


def test_key_rotation_keeps_everything_verifiable(tmp_path: Path) -> None:
    before = open_log(tmp_path, KEY1)
    for i in range(1, 13):
        before.append(record(i))
    before.checkpoint()

    rotated = open_log(tmp_path, KEY2, old_keys=[KEY1])
    assert rotated.verify().ok  # the head, records and checkpoints are all sealed with KEY1
    for i in range(13, 21):
        rotated.append(record(i))
    assert rotated.verify() == OK(ok=True, checked=20, first_bad_seq=None, reason="ok")
    assert rotated.verify_checkpoints(filed(tmp_path)).ok

    ids = dict(rows(tmp_path, "SELECT seq, key_id FROM audit_log"))
    assert {ids[s] for s in range(1, 13)} == {key_id(KEY1)}
    assert {ids[s] for s in range(13, 21)} == {key_id(KEY2)}
    assert rows(tmp_path, "SELECT key_id FROM audit_head") == [(key_id(KEY2),)]
    by_key = {c.seq: c.key_id for c in rotated.read_checkpoints()}
    assert by_key == {
        5: key_id(KEY1),
        10: key_id(KEY1),
        12: key_id(KEY1),
        15: key_id(KEY2),
        20: key_id(KEY2),
    }

    # Without the old key, what it sealed is named, with the way out.
    forgot = AuditLog(make_control_engine(f"sqlite:///{tmp_path / 'control.db'}"), mac_key=KEY2)
    assert_broken(
        forgot.verify(), 1, "MAC does not verify", key_id(KEY1), "PRIVGATE_AUDIT_OLD_KEYS"
    )
    # The old key alone no longer verifies what the new one sealed.
    stale = AuditLog(make_control_engine(f"sqlite:///{tmp_path / 'control.db'}"), mac_key=KEY1)
    assert_broken(stale.verify(), 13, "MAC does not verify", key_id(KEY2))
    with pytest.raises(AuditIntegrityError, match="MAC"):
        stale.append(record(0))


def test_rotating_before_the_first_append_accepts_the_old_head(tmp_path: Path) -> None:
    open_log(tmp_path, KEY1)  # a fresh log: genesis head sealed with KEY1
    rotated = open_log(tmp_path, KEY2, old_keys=[KEY1])
    rotated.append(record(1))
    assert rotated.verify().ok


def test_keys_are_validated() -> None:
    engine = make_control_engine("sqlite://")
    with pytest.raises(ValueError, match="16"):
        AuditLog(engine, mac_key=KEY1, old_keys=[b"short"])
    with pytest.raises(ValueError, match="checkpoint_every"):
        AuditLog(engine, mac_key=KEY1, checkpoint_every=0)
    assert KeyRing(KEY1, [KEY2, KEY1]).ids == (key_id(KEY1), key_id(KEY2))


# --- verification from the auditor's checkpoints --------------------------------------------------


@pytest.fixture
def logged(tmp_path: Path) -> AuditLog:
    """A 23-record log; its checkpoints (5, 10, 15, 20) are in the auditor's file."""
    log = open_log(tmp_path)
    for i in range(1, 24):
        log.append(record(i))
    return log


def test_verify_from_each_filed_checkpoint(logged: AuditLog, tmp_path: Path) -> None:
    for cp in filed(tmp_path):
        assert logged.verify(cp) == OK(
            ok=True, checked=24 - cp["seq"], first_bad_seq=None, reason="ok"
        )
    assert logged.verify_checkpoints(filed(tmp_path)).checked == 19


@pytest.mark.parametrize(
    ("statement", "seq", "fragment"),
    [
        ("UPDATE audit_log SET record = replace(record, 'p1', 'p9') WHERE seq = 13", 13, "content"),
        ("DELETE FROM audit_log WHERE seq = 12", 12, "is missing"),
        ("UPDATE audit_log SET seq = -1 WHERE seq = 17", 17, "is missing"),
        ("DELETE FROM audit_log WHERE seq >= 21", 21, "is missing"),
    ],
)
def test_tampering_after_the_checkpoint_is_named(
    logged: AuditLog, tmp_path: Path, statement: str, seq: int, fragment: str
) -> None:
    sql(tmp_path, statement)
    cp10 = filed(tmp_path)[1]
    assert_broken(logged.verify(cp10), seq, fragment)
    assert_broken(logged.verify_checkpoints(filed(tmp_path)), seq, fragment)


def _reseal_from(path: Path, seq: int, key: bytes) -> None:
    """An insider with the key rewrites record ``seq`` and re-chains and re-seals all that
    follows: the head and the stored checkpoints too. The database alone then looks intact."""
    ring = KeyRing(key)
    stored = rows(path, "SELECT seq, id, ts, record, prev_hash FROM audit_log ORDER BY seq")
    prev = rows(path, "SELECT hash FROM audit_log WHERE seq = ?", (seq - 1,))[0][0]
    hashes: dict[int, str] = {}
    for s, audit_id, ts, stored_text, _ in stored[seq - 1 :]:
        content = json.loads(stored_text)
        if s == seq:
            content["principal"] = "mallory"
        digest = entry_hash(prev, seq=s, audit_id=audit_id, ts=ts, record=content)
        sql(
            path,
            "UPDATE audit_log SET record = ?, prev_hash = ?, hash = ?, mac = ?, principal = ? "
            "WHERE seq = ?",
            (
                canonical_json(content),
                prev,
                digest,
                ring.seal(f"record:{s}:{digest}")[1],
                content["principal"],
                s,
            ),
        )
        hashes[s], prev = digest, digest
    last = max(hashes)
    sql(
        path, "UPDATE audit_head SET last_hash = ?, mac = ?", (prev, ring.seal(f"{last}:{prev}")[1])
    )
    for s, ts in rows(path, "SELECT seq, ts FROM audit_checkpoints WHERE seq >= ?", (seq,)):
        sealed = ring.seal(f"checkpoint:{s}:{hashes[s]}:{ts}")[1]
        sql(
            path,
            "UPDATE audit_checkpoints SET hash = ?, mac = ? WHERE seq = ?",
            (hashes[s], sealed, s),
        )


def test_a_rewrite_with_the_key_is_caught_only_by_the_external_checkpoint(
    logged: AuditLog, tmp_path: Path
) -> None:
    _reseal_from(tmp_path, 8, KEY1)
    assert logged.verify().ok  # what the database says about itself
    # The auditor's checkpoints no longer match: from the one at 5, the first seal after the
    # rewrite (10) names it; starting at 10 the record itself does not match.
    assert_broken(
        logged.verify_checkpoints(filed(tmp_path)), 10, "does not match the given checkpoint"
    )
    assert_broken(logged.verify(filed(tmp_path)[1]), 10, "does not match the given checkpoint")
    # The checkpoint at 5 alone pins only what precedes the rewrite: a key holder's rewrite is
    # visible to a checkpoint taken after the rewritten record, not before.
    assert logged.verify(filed(tmp_path)[0]).ok


def test_a_rolled_back_database_is_caught_by_a_later_checkpoint(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 13):
        log.append(record(i))
    # A supported online backup (docs/operations.md#backups): the SQLite backup API, which
    # includes what is still in the WAL (pooled connections keep it from being checkpointed).
    with closing(sqlite3.connect(tmp_path / "control.db")) as src, closing(
        sqlite3.connect(tmp_path / "backup.db")
    ) as dst:
        src.backup(dst)
    for i in range(13, 24):
        log.append(record(i))
    log.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"control.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", tmp_path / "control.db")  # every seal in it is genuine

    restored = open_log(tmp_path)
    assert restored.verify().ok
    assert_broken(
        restored.verify_checkpoints(filed(tmp_path)),
        13,
        "checkpoint of seq 15 seals seq 15",
        "last record is seq 12",
    )
    assert_broken(restored.verify(filed(tmp_path)[-1]), 13, "seals seq 20", "rolled back")


def test_a_forged_or_foreign_checkpoint(logged: AuditLog, tmp_path: Path) -> None:
    cp = filed(tmp_path)[1]
    forged = {**cp, "hash": "f" * 64}
    assert_broken(logged.verify(forged), None, "not genuine", "MAC does not verify")
    foreign = {
        **cp,
        "key_id": key_id(KEY2),
        "mac": mac(KEY2, f"checkpoint:10:{cp['hash']}:{cp['ts']}"),
    }
    assert_broken(logged.verify(foreign), None, "not genuine", "not configured")
    # The key holder can seal a checkpoint of a different hash: it does not match the chain.
    lie = {**forged, "mac": mac(KEY1, f"checkpoint:10:{'f' * 64}:{cp['ts']}")}
    assert_broken(logged.verify(lie), 10, "does not match the given checkpoint")


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"seq": "10", "hash": "0" * 64, "ts": "", "key_id": "", "mac": ""},
        {"seq": 10, "hash": "xyz", "ts": "", "key_id": "", "mac": ""},
        {"seq": -1, "hash": "0" * 64, "ts": "", "key_id": "", "mac": ""},
        {"seq": 10, "hash": "0" * 64, "ts": 1, "key_id": "", "mac": ""},
    ],
)
def test_a_malformed_checkpoint_is_refused(logged: AuditLog, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        logged.verify(bad)
    with pytest.raises(ValueError):
        logged.verify_checkpoints([])


# --- retention -----------------------------------------------------------------------------------


def test_purge_keeps_the_chain_verifiable(logged: AuditLog, tmp_path: Path) -> None:
    result = logged.purge(datetime.now(UTC), actor="admin", door="rest")
    assert (result.purged, result.up_to_seq) == (20, 20)
    assert result.anchor is not None and result.anchor.as_json() == filed(tmp_path)[3]
    assert rows(tmp_path, "SELECT anchor_seq, anchor_hash FROM audit_head") == [
        (20, result.anchor.hash)
    ]
    exported = list(logged.export())
    assert [e["seq"] for e in exported] == [21, 22, 23, 24]
    purge = exported[-1]
    assert purge["id"] == result.audit_id
    assert purge["record"] == {
        "decision": "admin",
        "action": "audit.purge",
        "actor": "admin",
        "target": "audit_log",
        "door": "rest",
        "code": "ok",
        "before": purge["record"]["before"],
        "up_to_seq": 20,
        "purged": 20,
    }
    assert logged.verify() == OK(ok=True, checked=4, first_bad_seq=None, reason="ok")
    # The auditor's file still checks out: purged checkpoints against what the database kept.
    assert logged.verify_checkpoints(filed(tmp_path)).ok
    for cp in filed(tmp_path):
        assert logged.verify(cp).ok
    # A later purge moves the anchor on; nothing newer than a checkpoint goes.
    for i in range(25, 30):
        logged.append(record(i))
    again = logged.purge(datetime.now(UTC), actor="admin", door="cli")
    assert (again.purged, again.up_to_seq) == (5, 25)
    assert logged.verify().ok


def test_purge_cuts_at_the_newest_checkpoint_before_the_time(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 13):
        log.append(record(i))
    time.sleep(0.01)
    cut = datetime.now(UTC)
    time.sleep(0.01)
    for i in range(13, 24):
        log.append(record(i))
    result = log.purge(cut, actor="admin", door="rest")
    assert (result.purged, result.up_to_seq) == (10, 10)  # 11 and 12 are older, but uncovered
    assert [e["seq"] for e in log.export()][:2] == [11, 12]
    assert log.verify().ok


def test_purge_with_nothing_to_purge_is_still_audited(logged: AuditLog) -> None:
    result = logged.purge(datetime.now(UTC) - timedelta(days=1), actor="admin", door="rest")
    assert (result.purged, result.up_to_seq, result.anchor) == (0, None, None)
    last = list(logged.export())[-1]
    assert last["id"] == result.audit_id and last["record"]["purged"] == 0
    assert logged.verify() == OK(ok=True, checked=24, first_bad_seq=None, reason="ok")


def test_purge_refuses_a_broken_chain_and_odd_times(logged: AuditLog, tmp_path: Path) -> None:
    sql(tmp_path, "UPDATE audit_log SET record = replace(record, 'p1', 'p9') WHERE seq = 4")
    with pytest.raises(AuditIntegrityError, match="refusing to purge"):
        logged.purge(datetime.now(UTC), actor="admin", door="rest")
    assert len(rows(tmp_path, "SELECT seq FROM audit_log")) == 23
    with pytest.raises(ValueError, match="future"):
        logged.purge(datetime.now(UTC) + timedelta(hours=1), actor="admin", door="rest")
    with pytest.raises(ValueError, match="zone"):
        logged.purge(datetime.now(), actor="admin", door="rest")


def test_tampering_after_a_purge(logged: AuditLog, tmp_path: Path) -> None:
    logged.purge(datetime.now(UTC), actor="admin", door="rest")
    saved = rows(tmp_path, "SELECT * FROM audit_head")
    sql(tmp_path, "DELETE FROM audit_log WHERE seq = 21")
    assert_broken(logged.verify(), 21, "record seq 21 is missing")
    sql(tmp_path, "DELETE FROM audit_log")
    assert_broken(logged.verify(), 21, "audit head says the log ends at seq 24")

    # A purge claimed without the key: the anchor is sealed in the head.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    log = open_log(fresh)
    for i in range(1, 13):
        log.append(record(i))
    cp10 = log.read_checkpoints()[1]
    sql(fresh, "DELETE FROM audit_log WHERE seq <= 10")
    sql(fresh, "UPDATE audit_head SET anchor_seq = 10, anchor_hash = ?", (cp10.hash,))
    assert_broken(log.verify(), None, "audit head's MAC does not verify")
    assert saved  # (the purged log's head is what made the first two checks possible)


def test_a_purged_record_put_back_is_found(logged: AuditLog, tmp_path: Path) -> None:
    old = rows(tmp_path, "SELECT * FROM audit_log WHERE seq = 3")[0]
    logged.purge(datetime.now(UTC), actor="admin", door="rest")
    marks = ", ".join("?" for _ in old)
    sql(tmp_path, f"INSERT INTO audit_log VALUES ({marks})", old)
    assert_broken(logged.verify(), 3, "lies at or before the retention anchor (seq 20)")


# --- listing ---------------------------------------------------------------------------------


def test_filters_and_pages(logged: AuditLog) -> None:
    logged.append({"decision": "rejected", "code": "budget.exhausted", "principal": "p1"})
    page = logged.page(AuditFilter(principal="p1"), limit=3)
    assert [e["seq"] for e in page.records] == [24, 22, 19]
    assert page.next_before_seq == 19
    rest = logged.page(AuditFilter(principal="p1"), limit=100, before_seq=19)
    assert [e["seq"] for e in rest.records] == [16, 13, 10, 7, 4, 1]
    assert rest.next_before_seq is None
    assert [e["seq"] for e in logged.export(AuditFilter(code="budget.exhausted"))] == [24]
    assert list(logged.export(AuditFilter(dataset="nope"))) == []
    stamps = [e["ts"] for e in logged.export()]
    window = AuditFilter(
        since=datetime.fromisoformat(stamps[4]), until=datetime.fromisoformat(stamps[8])
    )
    assert [e["seq"] for e in logged.export(window)] == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="zone"):
        AuditFilter(since=datetime(2025, 1, 1))


# --- records from before seals (revision 0001) ---------------------------------------------------


def _legacy_log(path: Path, n: int) -> None:
    """What revision 0001's gateway wrote: records chained and a sealed head, no record seals."""
    engine = make_control_engine(f"sqlite:///{path / 'control.db'}")
    migrate(engine, "0001")
    engine.dispose()
    prev = GENESIS_HASH
    with closing(sqlite3.connect(path / "control.db")) as conn:
        for seq in range(1, n + 1):
            audit_id, ts = f"{seq:032x}", f"2025-01-01T00:00:{seq:02d}.000000+00:00"
            digest = entry_hash(prev, seq=seq, audit_id=audit_id, ts=ts, record=record(seq))
            conn.execute(
                "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
                (seq, audit_id, ts, canonical_json(record(seq)), prev, digest),
            )
            prev = digest
        conn.execute(
            "INSERT INTO audit_head VALUES (1, ?, ?, ?)", (n, prev, mac(KEY1, f"{n}:{prev}"))
        )
        conn.commit()


def test_records_from_before_seals_are_adopted(tmp_path: Path) -> None:
    _legacy_log(tmp_path, 8)
    log = open_log(tmp_path)  # migrates to the newest revision and adopts
    assert rows(tmp_path, "SELECT count(*) FROM audit_log WHERE mac IS NULL") == [(0,)]
    assert rows(tmp_path, "SELECT principal, dataset, decision FROM audit_log WHERE seq = 4") == [
        ("p1", "clinic", "accepted")
    ]
    log.append(record(9))
    assert log.verify() == OK(ok=True, checked=9, first_bad_seq=None, reason="ok")
    assert [e["seq"] for e in log.export(AuditFilter(principal="p1"))] == [1, 4, 7]


def test_a_tampered_log_from_before_seals_is_not_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _legacy_log(tmp_path, 8)
    sql(tmp_path, "UPDATE audit_log SET record = replace(record, 'p1', 'p9') WHERE seq = 4")
    with caplog.at_level(logging.ERROR, logger="privgate.audit"):
        log = open_log(tmp_path)
    assert "8 audit records from before seals are left unsealed" in caplog.text
    assert "record seq 4" in caplog.text
    assert rows(tmp_path, "SELECT count(*) FROM audit_log WHERE mac IS NULL") == [(8,)]
    assert_broken(log.verify(), 1, "is not sealed")


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_checkpoints_rotation_purge_and_filters(pg_engine: Engine) -> None:  # noqa: F811
    migrate(pg_engine)
    first = AuditLog(pg_engine, mac_key=KEY1, checkpoint_every=EVERY)
    first.create_schema()
    for i in range(1, 13):
        first.append(record(i))
    first.checkpoint()
    log = AuditLog(pg_engine, mac_key=KEY2, old_keys=[KEY1], checkpoint_every=EVERY)
    log.create_schema()
    for i in range(13, 21):
        log.append(record(i))
    kept = [c.as_json() for c in log.read_checkpoints()]
    assert [c["seq"] for c in kept] == [5, 10, 12, 15, 20]
    assert log.verify() == OK(ok=True, checked=20, first_bad_seq=None, reason="ok")
    assert log.verify_checkpoints(kept).ok
    assert [e["seq"] for e in log.page(AuditFilter(principal="p2"), limit=3).records] == [
        20,
        17,
        14,
    ]

    result = log.purge(datetime.now(UTC), actor="admin", door="rest")
    assert (result.purged, result.up_to_seq) == (20, 20)
    assert log.verify() == OK(ok=True, checked=1, first_bad_seq=None, reason="ok")
    assert log.verify_checkpoints(kept).ok
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET principal = 'mallory' WHERE seq = 21"))
    assert_broken(log.verify(), 21, "column principal ('mallory') differs")
