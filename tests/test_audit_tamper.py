"""Acceptance: every tampering of every record of a 2,000-record log is found, at the right seq;
and the chain stays whole under 8 concurrent writers × 500 records, on PostgreSQL and SQLite.

The log is written once through :meth:`AuditLog.append`. Each mutation (a changed field, a
deletion, an insertion, a reordering, a swap of two records' texts) is made on the rows as
stored, and the rows go through :func:`gateway.audit_verify.verify_chain`, the walk that
:meth:`AuditLog.verify` runs over the database, starting from the auditor's external checkpoint
nearest before the mutation (or from genesis) and checked against every checkpoint in the file.
A sample of the same mutations is also written into copies of the database and found by
:meth:`AuditLog.verify` from genesis.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from gateway.audit import CHECKPOINT_FILE, AuditLog, Checkpoint, VerifyResult
from gateway.audit_schema import GENESIS_HASH
from gateway.audit_seal import KeyRing, canonical_json, entry_hash, indexed_copies
from gateway.audit_verify import StoredRecord, verify_chain
from gateway.control_db import make_control_engine, migrate
from tests.test_audit import pg_engine  # noqa: F401  (fixture)

MAC_KEY = b"tamper-test-key-0123456789abcdef"
N = 2000
EVERY = 50  # checkpoint interval of the test log: each walk is short, so 10,000 walks run fast
FIELDS = ("principal", "dataset", "decision", "code", "epsilon", "rows_released", "sql", "scale")


def query_record(i: int) -> dict[str, Any]:
    """What the service writes for a query (released values only), varied by ``i``."""
    return {
        "query_id": uuid.UUID(int=i).hex,
        "principal": f"analyst{i % 7}",
        "door": "rest" if i % 3 else "wire",
        "client": "127.0.0.1",
        "dataset": "clinic",
        "decision": ("accepted", "rejected", "explained")[i % 3],
        "code": "ok" if i % 3 != 1 else "budget.exhausted",
        "epsilon": "0.1",
        "rows_released": i % 9,
        "sql": f"SELECT department, COUNT(*) AS n FROM visits WHERE los_days < ? -- {i}",
        "mechanisms": [{"column": "n", "scale": "30.000000000000004", "epsilon": "0.1"}],
        "scale": str(i),
    }


@dataclass(frozen=True)
class Log:
    path: Path
    rows: list[StoredRecord]
    head: Any
    stored: list[Checkpoint]
    external: list[Checkpoint]
    keys: KeyRing


@pytest.fixture(scope="module")
def log2000(tmp_path_factory: pytest.TempPathFactory) -> Log:
    tmp = tmp_path_factory.mktemp("tamper")
    # In memory: 2,000 appends without an fsync each. Copied to a file once for the DB checks.
    engine = make_control_engine("sqlite://")
    migrate(engine)
    log = AuditLog(engine, mac_key=MAC_KEY, checkpoint_every=EVERY, checkpoint_dir=tmp)
    log.create_schema()
    for i in range(1, N + 1):
        log.append(query_record(i))
    path = tmp / "template.db"
    raw = engine.raw_connection()
    try:
        with closing(sqlite3.connect(path)) as dst:
            raw.driver_connection.backup(dst)  # type: ignore[union-attr]
    finally:
        raw.close()
    lines = (tmp / CHECKPOINT_FILE).read_text().splitlines()
    external = [Checkpoint.from_json(json.loads(line)) for line in lines]
    assert [c.seq for c in external] == list(range(EVERY, N + 1, EVERY))
    return Log(
        path=path,
        rows=list(log.stored_records()),
        head=log.read_head(),
        stored=log.read_checkpoints(),
        external=external,
        keys=KeyRing(MAC_KEY),
    )


# --- the mutations: the rows as an attacker leaves them, and the seq verification must name -----


@dataclass(frozen=True)
class Tampered:
    """``rows[:cut]``, then ``middle``, then ``rows[resume:]`` renumbered by ``shift``.

    Read lazily, as the database streams rows: a walk stops at the first fault, so a check costs
    what the walk reads, not a copy of the whole log.
    """

    rows: list[StoredRecord]
    cut: int
    middle: list[StoredRecord]
    resume: int
    shift: int = 0

    def read(self, first: int | None) -> Iterator[StoredRecord]:
        # Only walks that start before the mutation are made: seq s sits at index s - 1.
        start = 0 if first is None else first - 1
        assert start <= self.cut
        tail: Iterator[StoredRecord] = itertools.islice(self.rows, self.resume, None)
        if self.shift:
            tail = (r._replace(seq=r.seq + self.shift) for r in tail)
        return itertools.chain(itertools.islice(self.rows, start, self.cut), self.middle, tail)


Mutation = Callable[[list[StoredRecord], int], tuple[Tampered, int]]


def with_text(row: StoredRecord, text: str) -> StoredRecord:
    """``row`` holding record ``text``, its indexed copies in step."""
    copies = indexed_copies(json.loads(text))
    return row._replace(
        record=text,
        principal=copies["principal"],
        dataset=copies["dataset"],
        decision=copies["decision"],
        code=copies["code"],
    )


def change_field(rows: list[StoredRecord], k: int) -> tuple[Tampered, int]:
    row = rows[k - 1]
    record = json.loads(row.record)
    field = FIELDS[k % len(FIELDS)]
    value = record[field]
    record[field] = value + 1 if isinstance(value, int) else f"{value}x"
    # A careful attacker keeps the indexed copies in step with the record: only the hash is left.
    changed = with_text(row, canonical_json(record))
    return Tampered(rows, k - 1, [changed], k), k


def delete(rows: list[StoredRecord], k: int) -> tuple[Tampered, int]:
    return Tampered(rows, k - 1, [], k), k


def insert(rows: list[StoredRecord], k: int) -> tuple[Tampered, int]:
    """A forged record at seq ``k``, chained and hashed correctly, the later ones renumbered.

    Without the key its seal can only be borrowed: it takes the displaced record's.
    """
    prev = GENESIS_HASH if k == 1 else rows[k - 2].hash
    record = query_record(10_000 + k)
    audit_id, ts = uuid.uuid4().hex, rows[k - 1].ts
    digest = entry_hash(prev, seq=k, audit_id=audit_id, ts=ts, record=record)
    forged = StoredRecord(
        k,
        audit_id,
        ts,
        canonical_json(record),
        prev,
        digest,
        rows[k - 1].key_id,
        rows[k - 1].mac,
        **indexed_copies(record),
    )
    return Tampered(rows, k - 1, [forged], k - 1, shift=1), k


def reorder(rows: list[StoredRecord], k: int) -> tuple[Tampered, int]:
    """Swap record ``k`` with its neighbour (the next one; the last swaps with the one before)."""
    a = min(k, N - 1)
    first, second = rows[a - 1], rows[a]
    return Tampered(rows, a - 1, [second._replace(seq=a), first._replace(seq=a + 1)], a + 1), a


def swap_texts(rows: list[StoredRecord], k: int) -> tuple[Tampered, int]:
    """Exchange the record texts (and their indexed copies) of record ``k`` and its neighbour."""
    a = min(k, N - 1)
    first, second = rows[a - 1], rows[a]

    swapped = [with_text(first, second.record), with_text(second, first.record)]
    return Tampered(rows, a - 1, swapped, a + 1), a


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "change_field": (change_field, "hash does not match its content"),
    "delete": (delete, "is missing"),
    "insert": (insert, "MAC does not verify"),
    "reorder": (reorder, "prev_hash does not match"),
    "swap_texts": (swap_texts, "hash does not match its content"),
}


def start_before(log: Log, seq: int) -> Checkpoint | None:
    """The auditor's newest checkpoint strictly before ``seq`` (None: start from genesis)."""
    found = [c for c in log.external if c.seq < seq]
    return found[-1] if found else None


def walk(
    log: Log, read_rows: Callable[[int | None], Iterable[StoredRecord]], start: Checkpoint | None
) -> VerifyResult:
    return verify_chain(
        read_rows,
        keys=log.keys,
        head=log.head,
        checkpoints=log.stored,
        from_checkpoint=start,
        external=log.external,
    )


def assert_names(result: VerifyResult, seq: int, fragment: str, checked: int) -> None:
    assert not result.ok
    assert result.first_bad_seq == seq, result.reason
    assert f"seq {seq}" in result.reason, result.reason
    assert fragment in result.reason, result.reason
    assert result.checked == checked, result.reason


def test_the_untouched_log_verifies_from_every_checkpoint(log2000: Log) -> None:
    for start in [None, *log2000.external]:
        result = walk(log2000, Tampered(log2000.rows, N, [], N).read, start)
        assert result.ok, result.reason
        assert result.checked == N - (start.seq - 1 if start else 0)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_record_every_mutation_is_found(log2000: Log, name: str) -> None:
    mutate, fragment = MUTATIONS[name]
    missed: list[tuple[int, str]] = []
    for k in range(1, N + 1):
        tampered, expected = mutate(log2000.rows, k)
        start = start_before(log2000, expected)
        result = walk(log2000, tampered.read, start)
        try:
            assert_names(result, expected, fragment, expected - (start.seq if start else 1))
        except AssertionError:
            missed.append((k, result.reason))
    assert missed == [], f"{len(missed)} of {N} {name} mutations not named: {missed[:5]}"


SAMPLE = (1, EVERY, EVERY + 1, N // 2, N - 1, N)


def _write_rows(path: Path, rows: list[StoredRecord]) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM audit_log")
        names = ", ".join(StoredRecord._fields)
        marks = ", ".join("?" for _ in StoredRecord._fields)
        conn.executemany(f"INSERT INTO audit_log ({names}) VALUES ({marks})", rows)
        conn.commit()


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_sample_is_found_in_the_database_from_genesis(
    log2000: Log, tmp_path: Path, name: str
) -> None:
    mutate, fragment = MUTATIONS[name]
    for k in SAMPLE:
        path = tmp_path / f"{k}.db"
        shutil.copy(log2000.path, path)
        tampered, expected = mutate(log2000.rows, k)
        _write_rows(path, list(tampered.read(None)))
        log = AuditLog(make_control_engine(f"sqlite:///{path}"), mac_key=MAC_KEY, batch_size=300)
        assert_names(log.verify(), expected, fragment, expected - 1)
        start = start_before(log2000, expected)
        if start is not None:
            from_file = log.verify(start.as_json())
            assert_names(from_file, expected, fragment, expected - start.seq)


# --- concurrent writers ------------------------------------------------------------------------

WRITERS, PER_WRITER = 8, 500


def append_concurrently(log: AuditLog) -> None:
    seqs: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(WRITERS)

    def writer(t: int) -> None:
        try:
            barrier.wait()
            mine = [
                log.append({"writer": t, "i": i, "principal": f"w{t}"}).seq
                for i in range(PER_WRITER)
            ]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            return
        with lock:
            seqs.extend(mine)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = WRITERS * PER_WRITER
    assert sorted(seqs) == list(range(1, total + 1))  # contiguous, each seq handed out once
    assert log.verify() == VerifyResult(ok=True, checked=total, first_bad_seq=None, reason="ok")
    records = [e["record"] for e in log.export()]
    assert sorted((r["writer"], r["i"]) for r in records) == [
        (t, i) for t in range(WRITERS) for i in range(PER_WRITER)
    ]
    assert [c.seq for c in log.read_checkpoints()] == list(range(1000, total + 1, 1000))


@pytest.mark.postgres
def test_postgres_8_writers_x_500(pg_engine: Engine) -> None:  # noqa: F811
    migrate(pg_engine)
    log = AuditLog(pg_engine, mac_key=MAC_KEY, batch_size=700)
    log.create_schema()
    append_concurrently(log)


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one: 4,000 commits without 4,000 disk flushes."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = shm / f"privgate-audit-{uuid.uuid4().hex}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_sqlite_8_writers_x_500(fast_dir: Path) -> None:
    engine = make_control_engine(f"sqlite:///{fast_dir / 'control.db'}")
    migrate(engine)
    log = AuditLog(engine, mac_key=MAC_KEY, batch_size=700)
    log.create_schema()
    append_concurrently(log)
