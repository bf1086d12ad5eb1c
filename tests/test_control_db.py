"""The control engine on SQLite: writers of one process take turns in arrival order; reads wait
for nobody; however a write transaction ends, its turn is given back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.control_db import FifoLock, make_control_engine, reader


def test_the_lock_is_handed_over_in_arrival_order() -> None:
    lock = FifoLock()
    assert lock.acquire(1)
    order: list[int] = []
    threads = []

    def take(i: int) -> None:
        assert lock.acquire(5)
        order.append(i)
        lock.release()

    for i in range(5):
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # each waiter queued before the next arrives
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    lock = FifoLock()
    assert lock.acquire(1)
    assert not lock.acquire(0.05)
    lock.release()
    assert lock.acquire(0.05)  # free again: the timed-out waiter was not handed the lock
    lock.release()


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}", busy_timeout_ms=2000)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE n (v INTEGER)"))
        conn.execute(text("INSERT INTO n VALUES (0)"))
    yield eng
    eng.dispose()


def test_concurrent_writers_all_get_their_turn(engine: Engine) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                with engine.begin() as conn:
                    conn.execute(text("UPDATE n SET v = v + 1"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with reader(engine).connect() as conn:
        assert conn.execute(text("SELECT v FROM n")).scalar_one() == 16 * 40


def test_a_failed_write_gives_its_turn_back_and_reads_do_not_wait(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("UPDATE n SET v = 1"))
        raise RuntimeError("rolled back")
    with pytest.raises(Exception, match="no such table"), engine.begin() as conn:
        conn.execute(text("UPDATE missing SET v = 1"))
    holding = threading.Event()
    done = threading.Event()

    def hold_write() -> None:
        with engine.begin() as conn:
            conn.execute(text("UPDATE n SET v = 7"))
            holding.set()
            done.wait(5)

    t = threading.Thread(target=hold_write)
    t.start()
    assert holding.wait(5)
    started = time.perf_counter()
    with reader(engine).connect() as conn:  # a read while a write is open: no wait
        assert conn.execute(text("SELECT v FROM n")).scalar_one() == 0
    assert time.perf_counter() - started < 1
    done.set()
    t.join(5)
    with engine.begin() as conn:  # the turn came back after the writer committed
        assert conn.execute(text("SELECT v FROM n")).scalar_one() == 7


def test_only_a_lazy_write_runs_unflushed_and_the_next_write_flushes_again(
    engine: Engine,
) -> None:
    from budgets.ledger_steps import LAZY_SYNC_OPTION

    def sync_mode(eng: Engine) -> int:
        with eng.begin() as conn:
            return int(conn.execute(text("PRAGMA synchronous")).scalar_one())

    lazy = engine.execution_options(**{LAZY_SYNC_OPTION: True})
    assert sync_mode(engine) == 2  # FULL: every commit flushed
    assert sync_mode(lazy) == 1  # NORMAL: flushed by the next FULL commit
    assert sync_mode(engine) == 2  # the same pooled connection, flushed again
