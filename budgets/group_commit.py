"""Group commit: the write transactions of concurrent callers made durable by one commit.

On SQLite the control database has one write turn per file (gateway.control_db): every
reservation and every query's final commit waits for it, and under 16 concurrent clients the
turn, not the processors, limits the rate (the holder also waits for the interpreter lock
between its statements, and each hand-over wakes a thread). :class:`GroupCommit` lets the callers
that arrive while a transaction is open queue behind it; the next caller to lead runs all of
them, each in its own savepoint, in *one* transaction with one write turn and one flush.

What each caller gets is what a transaction of its own would give:

- **All or nothing per caller.** A caller's steps run between ``SAVEPOINT`` and ``RELEASE``; if
  they raise, ``ROLLBACK TO`` undoes exactly them and the caller gets its exception, while the
  other callers' steps go on. If the commit itself fails (or the savepoint cannot be rolled back,
  e.g. SQLite aborted the whole transaction), every caller whose steps had succeeded gets that
  error: nothing of theirs was written.
- **Serial order.** The callers' steps run one after another in one transaction, so each sees the
  writes of those before it (a conditional budget update sees the earlier reservations of the
  same batch), exactly as if their transactions had committed in that order.
- **Durability before return.** :meth:`GroupCommit.run` returns only after the commit that holds
  the caller's writes has returned; a batch holding any caller that asked for a flushed commit is
  flushed (``durable``), else it may stay unflushed (``LAZY_SYNC_OPTION``). With ``flush`` (on
  SQLite: fsync the write-ahead log, ``gateway.control_db.wal_flusher``) every batch commits
  unflushed and, for a durable one, ``flush`` runs *after* the write turn is released and
  before its callers return: the next batch writes while this one waits for the disk. The log
  is appended in order, so that fsync makes this commit (and every earlier one) durable; a
  checkpoint in between flushes the log first and the database file after.

Only for SQLite, whose write turn serialises every writer anyway. On PostgreSQL, row locks do the
serialising and a batch holding the locks of several callers' account rows could deadlock with
another replica's batch, so the ledger there opens a transaction per caller (no group).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

from budgets.ledger_steps import LAZY_SYNC_OPTION

T = TypeVar("T")

#: The most callers one transaction holds (bounds how long the write turn is kept).
MAX_BATCH = 32


class _Job(Generic[T]):
    __slots__ = ("done", "durable", "error", "fn", "lead", "value")

    def __init__(self, fn: Callable[[Connection], T], durable: bool) -> None:
        self.fn = fn
        self.durable = durable
        self.done = threading.Event()
        self.lead = False  # set (with done) when this job's thread is to run the next batch
        self.value: T | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs ``fn(conn)`` of concurrent callers in shared transactions on ``engine``.

    >>> from sqlalchemy import create_engine, text
    >>> group = GroupCommit(create_engine("sqlite://"))
    >>> group.run(lambda conn: conn.execute(text("SELECT 41 + 1")).scalar_one())
    42
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = MAX_BATCH,
        flush: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._durable = engine
        self._lazy = engine.execution_options(**{LAZY_SYNC_OPTION: True})
        self._flush = flush
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: deque[_Job[object]] = deque()
        self._leading = False
        #: Transactions opened and callers run in them (for tests and benchmarks).
        self.batches = 0
        self.served = 0

    def run(self, fn: Callable[[Connection], T], *, durable: bool = True) -> T:
        """``fn(conn)`` inside a transaction, committed (flushed if ``durable``) before return.

        ``fn`` may be run by another thread (the batch's leader), so it must not rely on
        thread-local state, and it must not call :meth:`run` itself (its leader would wait for
        itself); it may raise, which rolls back only its own steps.
        """
        job: _Job[T] = _Job(fn, durable)
        with self._mutex:
            self._queue.append(job)  # type: ignore[arg-type]
            lead = not self._leading
            self._leading = True
        if not lead:
            job.done.wait()
            lead = job.lead
        if lead:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[return-value]

    def _lead(self) -> None:
        """Run one batch from the head of the queue (this thread's job is its first), then hand
        the lead to the oldest waiting job, if any."""
        with self._mutex:
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        committed = False
        try:
            committed = self._commit(batch)
        finally:
            with self._mutex:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._leading = False
            try:
                if committed:
                    self._make_durable(batch)
            finally:
                for job in batch:
                    job.done.set()

    def _make_durable(self, batch: list[_Job[object]]) -> None:
        if self._flush is None or not any(job.durable for job in batch):
            return  # flushed by the commit itself, or not asked for
        try:
            self._flush()
        except OSError as exc:
            # Committed but perhaps not on disk: a caller that needed it on disk gets the error
            # (and releases nothing); a lazy one needed only the commit.
            for job in batch:
                if job.durable and job.error is None:
                    job.error = exc
                    job.value = None

    def _commit(self, batch: list[_Job[object]]) -> bool:
        """Run ``batch`` in one transaction; True if it committed (some callers may have failed)."""
        durable = self._flush is None and any(job.durable for job in batch)
        engine = self._durable if durable else self._lazy
        alone = len(batch) == 1
        self.batches += 1
        self.served += len(batch)
        try:
            with engine.begin() as conn:
                for job in batch:
                    if alone:  # no savepoint needed: its error rolls back the transaction
                        job.value = job.fn(conn)
                        continue
                    conn.exec_driver_sql("SAVEPOINT privgate_job")
                    try:
                        job.value = job.fn(conn)
                    except Exception as exc:
                        conn.exec_driver_sql("ROLLBACK TO privgate_job")
                        conn.exec_driver_sql("RELEASE privgate_job")
                        job.error = exc
                        job.value = None
                    else:
                        conn.exec_driver_sql("RELEASE privgate_job")
        except BaseException as exc:
            # Nothing of this transaction was written: whoever had succeeded gets the error.
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.value = None
            if not isinstance(exc, Exception):
                raise
            return False
        return True
