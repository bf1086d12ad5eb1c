"""Group commit on a real SQLite control database: several callers, one transaction, each caller
still all or nothing (budgets.group_commit)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted
from budgets.group_commit import GroupCommit
from budgets.ledger import SqlLedger
from gateway.control_db import make_control_engine, wal_flusher


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (name TEXT PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE child (parent TEXT REFERENCES t (name) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    yield engine
    engine.dispose()


def _insert(name: str, *, then_raise: bool = False) -> Callable[[Connection], str]:
    def fn(conn: Connection) -> str:
        conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": name})
        if then_raise:
            raise ValueError(f"{name} changed its mind")
        return name

    return fn


def _names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(text("SELECT name FROM t")))


def _queued_batch(
    group: GroupCommit, jobs: dict[str, Callable[[Connection], object]]
) -> dict[str, object]:
    """Run ``jobs`` as one batch: a first caller holds the lead until all of them are queued."""
    release = threading.Event()

    def hold(conn: Connection) -> str:
        release.wait(10)
        conn.execute(text("INSERT INTO t VALUES ('leader')"))
        return "leader"

    outcome: dict[str, object] = {}

    def call(name: str, fn: Callable[[Connection], object]) -> None:
        try:
            outcome[name] = group.run(fn)
        except Exception as exc:  # the test inspects what each caller got
            outcome[name] = exc

    leader = threading.Thread(target=call, args=("leader", hold))
    leader.start()
    while not group._leading:  # the leader's batch (itself alone) is open
        time.sleep(0.001)
    callers = [threading.Thread(target=call, args=item) for item in jobs.items()]
    for t in callers:
        t.start()
    while True:
        with group._mutex:
            if len(group._queue) == len(jobs):
                break
        time.sleep(0.001)
    release.set()
    for t in [leader, *callers]:
        t.join(10)
    return outcome


def test_a_failing_caller_rolls_back_only_its_own_steps(engine: Engine) -> None:
    group = GroupCommit(engine)
    outcome = _queued_batch(
        group,
        {"b": _insert("b"), "c": _insert("c", then_raise=True), "d": _insert("d")},
    )
    assert outcome["leader"] == "leader"
    assert outcome["b"] == "b" and outcome["d"] == "d"
    assert isinstance(outcome["c"], ValueError)
    assert _names(engine) == ["b", "d", "leader"]
    # Two transactions: the leader alone, then b, c and d together.
    assert group.batches == 2 and group.served == 4


def test_a_failed_commit_fails_every_caller_of_the_batch(engine: Engine) -> None:
    group = GroupCommit(engine)

    def orphan(conn: Connection) -> str:
        # Accepted by the statement, refused at COMMIT (the foreign key is deferred).
        conn.execute(text("INSERT INTO child VALUES ('nobody')"))
        return "orphan"

    outcome = _queued_batch(group, {"b": _insert("b"), "orphan": orphan})
    assert isinstance(outcome["b"], IntegrityError)
    assert isinstance(outcome["orphan"], IntegrityError)
    assert _names(engine) == ["leader"]  # b was in the failed transaction: not written


def test_an_error_alone_in_its_batch_rolls_it_back(engine: Engine) -> None:
    group = GroupCommit(engine)
    with pytest.raises(ValueError, match="changed its mind"):
        group.run(_insert("x", then_raise=True))
    assert group.run(_insert("y")) == "y"
    assert _names(engine) == ["y"]


@pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 1)])
def test_a_batch_is_flushed_when_its_caller_asks(engine: Engine, durable: bool, level: int) -> None:
    # PRAGMA synchronous: 2 = FULL (every commit flushed), 1 = NORMAL (flushed by a later one).
    group = GroupCommit(engine)
    seen = group.run(
        lambda conn: conn.exec_driver_sql("PRAGMA synchronous").scalar_one(), durable=durable
    )
    assert seen == level


def test_racing_reservations_in_shared_transactions_never_overspend(engine: Engine) -> None:
    group = GroupCommit(engine)
    ledger = SqlLedger(engine, group=group)
    ledger.create_schema()
    threads = 64
    start = threading.Barrier(threads)

    def attempt(_: int) -> bool:
        start.wait()
        try:
            ledger.reserve(
                query_id=uuid.uuid4().hex,
                principal="racer",
                dataset="sales",
                cost=PrivacyCost.of("0.1"),
                principal_limit=PrivacyCost.of("1.0"),
                durable=False,
            )
        except BudgetExhausted:
            return False
        return True

    with ThreadPoolExecutor(max_workers=threads) as pool:
        won = sum(pool.map(attempt, range(threads)))
    assert won == 10
    balance = ledger.balance(
        principal="racer", dataset="sales", principal_limit=PrivacyCost.of("1.0")
    )
    assert balance.spent.epsilon == PrivacyCost.of("1.0").epsilon
    # The callers did share transactions (otherwise this test proves nothing new).
    assert group.served == threads
    assert group.batches < threads


def test_with_a_flush_a_durable_batch_is_flushed_after_its_commit(
    engine: Engine, tmp_path: Path
) -> None:
    flushes: list[bool] = []

    def flush() -> None:
        # Runs once the transaction has committed and the write turn is free again.
        with engine.connect() as conn:
            flushes.append("z" in [r[0] for r in conn.execute(text("SELECT name FROM t"))])
        wal_flusher(f"sqlite:///{tmp_path / 'control.db'}")()  # the real fsync, too

    group = GroupCommit(engine, flush=flush)
    level = group.run(lambda conn: conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
    assert level == 1  # committed unflushed: the flush does it
    group.run(_insert("z"))
    group.run(_insert("lazy"), durable=False)  # asks for no flush
    assert flushes == [False, True]


def test_a_failed_flush_fails_the_callers_that_needed_it(engine: Engine) -> None:
    def flush() -> None:
        raise OSError(5, "Input/output error")

    group = GroupCommit(engine, flush=flush)
    with pytest.raises(OSError, match="Input/output"):
        group.run(_insert("durable"))
    assert group.run(_insert("lazy"), durable=False) == "lazy"


def test_the_flusher_syncs_the_log_or_else_the_database(tmp_path: Path) -> None:
    assert wal_flusher("sqlite://") is None
    assert wal_flusher("postgresql+psycopg://u@h/db") is None
    db = tmp_path / "c.db"
    flush = wal_flusher(f"sqlite:///{db}")
    assert flush is not None
    db.write_bytes(b"")  # no -wal file yet: the database file is flushed
    flush()
    Path(f"{db}-wal").write_bytes(b"")
    flush()
    db.unlink()
    Path(f"{db}-wal").unlink()
    with pytest.raises(FileNotFoundError):
        flush()
