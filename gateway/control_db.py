"""The control database engine: ledger, principals, keys and audit live here.

SQLite (the default, a file next to the demo warehouse) and PostgreSQL (several gateway replicas) are
supported. On SQLite every transaction starts with ``BEGIN IMMEDIATE`` so that a read-then-write
transaction (the ledger's conditional update, the audit chain's append) takes the write lock up front
instead of failing with "database is locked" half-way; writers queue on ``busy_timeout``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, make_url
from sqlalchemy.pool import QueuePool

from budgets.ledger_steps import LAZY_SYNC_OPTION
from gateway.file_lock import FileLock

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_control_engine(url: str, *, busy_timeout_ms: int = 30_000) -> Engine:
    """Create the control-plane engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://``).

    >>> make_control_engine("sqlite://").dialect.name
    'sqlite'
    """
    if url.startswith("sqlite"):
        writers, between = _write_turns(url)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": busy_timeout_ms / 1000,
                "factory": _fair_connection_class(writers, between),
            },
            # A pool of reused connections: a checkout is exclusive to one thread until it is
            # returned (rolled back if still open), so transactions of different threads stay
            # apart. Opening a connection per checkout (with its PRAGMAs) cost about 0.5 ms,
            # ten times per query.
            **(
                {"poolclass": QueuePool, "pool_size": 8, "max_overflow": 24}
                if url not in ("sqlite://", "sqlite:///:memory:")
                else {}
            ),
        )
        _sqlite_immediate_transactions(engine, busy_timeout_ms, writers, between)
        return engine
    return create_engine(url, pool_pre_ping=True)


class FifoLock:
    """A lock handed to its waiters in arrival order, with a timeout.

    The threads of one gateway queue here for the control database's write lock instead of in
    SQLite's busy handler, which polls with sleeps of up to 100 ms and serves no one in order:
    under 16 concurrent clients that gave some requests multi-second waits.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locked = False
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._locked:
                self._locked = True
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._mutex:
            if turn.is_set():  # handed over just as the wait ran out
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # ownership passes on; the lock stays taken
            else:
                self._locked = False


#: One write turn per control-database file and process, shared by every engine on that file.
_TURNS: dict[str, tuple[FifoLock, FileLock]] = {}
_TURNS_MUTEX = threading.Lock()


def _write_turns(url: str) -> tuple[FifoLock, FileLock | None]:
    """The FIFO turn of this process's threads and the lock between processes for ``url``.

    An in-memory database has no other process (and no file): a FIFO of its own. For a file,
    ``<file>-writer.lock`` beside it: the processes sharing the file (several ``privgate serve``
    workers, the CLI) wait for each other in the kernel, not in SQLite's polling busy handler.
    """
    database = make_url(url).database
    if not database or database == ":memory:":
        return FifoLock(), None
    path = str(Path(database).resolve())
    with _TURNS_MUTEX:
        if path not in _TURNS:
            _TURNS[path] = (FifoLock(), FileLock(Path(f"{path}-writer.lock")))
        return _TURNS[path]


def _fair_connection_class(writers: FifoLock, between: FileLock | None) -> type[sqlite3.Connection]:
    class FairConnection(sqlite3.Connection):
        """Releases this process's write turn once its transaction has ended, however it ends."""

        holds_write_turn = False
        #: Whether the connection's commits are currently unflushed (PRAGMA synchronous=NORMAL).
        lazy_sync = False

        def _release_turn(self) -> None:
            if self.holds_write_turn:
                self.holds_write_turn = False
                if between is not None:
                    between.release()
                writers.release()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self._release_turn()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self._release_turn()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._release_turn()

    return FairConnection


def _sqlite_immediate_transactions(
    engine: Engine, busy_timeout_ms: int, writers: FifoLock, between: FileLock | None
) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")  # every commit flushed (see LAZY_SYNC_OPTION)
        cursor.close()
        dbapi_connection.lazy_sync = False

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Reads (through reader(engine)) take no write lock: under WAL they see a consistent
        # snapshot and neither wait for writers nor make writers wait.
        # BEGIN and PRAGMA go straight to the driver (SQLAlchemy's exec_driver_sql cost ~15 µs
        # each, on every transaction of every query); SQLAlchemy tracks no statement of its own.
        dbapi = conn.connection.dbapi_connection
        options = conn.get_execution_options()
        if options.get(READ_ONLY_OPTION, False):
            dbapi.execute("BEGIN")
            return
        # A write: first this process's turn (FIFO), then the turn between processes (the
        # file lock), then SQLite's lock (a process without the file lock, e.g. an older CLI,
        # still queues on busy_timeout).
        if not dbapi.holds_write_turn:
            deadline = time.monotonic() + busy_timeout_ms / 1000
            if not writers.acquire(busy_timeout_ms / 1000):
                raise sqlite3.OperationalError(
                    f"database is locked: no write turn within {busy_timeout_ms} ms"
                )
            try:
                took = between is None or between.acquire(max(0.0, deadline - time.monotonic()))
            except OSError as exc:
                writers.release()
                raise sqlite3.OperationalError(f"cannot open the write lock: {exc}") from exc
            if not took:
                writers.release()
                raise sqlite3.OperationalError(
                    "database is locked: another process kept the write turn for "
                    f"{busy_timeout_ms} ms"
                )
            dbapi.holds_write_turn = True
        try:
            # A write whose commit may stay unflushed until the next flushed one (the ledger's
            # reservation; see budgets.ledger_steps.LAZY_SYNC_OPTION): WAL appends in order, so
            # the next FULL commit makes it durable too.
            lazy = bool(options.get(LAZY_SYNC_OPTION, False))
            if dbapi.lazy_sync != lazy:
                dbapi.execute(f"PRAGMA synchronous = {'NORMAL' if lazy else 'FULL'}")
                dbapi.lazy_sync = lazy
            dbapi.execute("BEGIN IMMEDIATE")
        except BaseException:
            dbapi._release_turn()
            raise


def wal_flusher(url: str) -> Callable[[], None] | None:
    """For a SQLite file: a function that makes every commit so far durable (fsync of its log).

    In WAL mode a commit appends its frames to ``<file>-wal``; with ``synchronous = NORMAL`` it
    does not wait for the disk, and one ``fsync`` of that file afterwards makes it, and every
    commit appended before it, durable (the same writes and flush as ``synchronous = FULL``,
    outside the write lock; budgets.group_commit). The file is opened by name each time: SQLite
    may delete it (after checkpointing everything into the database file, which it flushes)
    and create a new one, and a kept descriptor would flush the old one. No log file: the
    database file is flushed instead. None for an in-memory database and for PostgreSQL, whose
    commits are flushed by the server.
    """
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    main = Path(database).resolve()
    log = Path(f"{main}-wal")

    def flush() -> None:
        try:
            fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(main, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return flush


#: Execution option marking a connection that only reads (see :func:`reader`).
READ_ONLY_OPTION = "privgate_read_only"


def reader(engine: Engine) -> Engine:
    """``engine`` for read-only work: the same pool, but on SQLite a deferred ``BEGIN``.

    Every transaction on the control engine otherwise begins ``IMMEDIATE`` (the write lock up
    front), which would make each read, e.g. the quarantine check of every request, queue behind
    every write. Only statements that read may run on a reader's connections: a write there would
    have to upgrade its lock mid-transaction, which SQLite may refuse. On PostgreSQL the option
    changes nothing.
    """
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def all_metadata() -> list[MetaData]:
    """The table definitions of every control-plane store (the migrations' target)."""
    from budgets.ledger_schema import metadata as ledger
    from gateway.audit import metadata as audit
    from gateway.principals import metadata as principals
    from gateway.results import metadata as results

    return [ledger, audit, principals, results]


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the control database's schema to ``revision`` (Alembic), creating it when empty.

    A database created before migrations existed (tables present, no ``alembic_version``) is
    completed to the first revision's shape, stamped at it, and then upgraded.
    """
    from alembic import command

    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        config = _alembic_config(connection)
        if tables and "alembic_version" not in tables and "budget_accounts" in tables:
            # Made by the stores' create_schema() before migrations: bring it to revision 0001's
            # shape (missing tables, columns and indexes are only ever added), then stamp it.
            from budgets.ledger_schema import install

            install(connection)
            for md in all_metadata():
                md.create_all(connection)
            connection.commit()
            command.stamp(config, "0001")
        command.upgrade(config, revision)
        connection.commit()


def downgrade(engine: Engine, revision: str) -> None:
    """Take the control database's schema back to ``revision`` ("base" drops every table)."""
    from alembic import command

    with engine.connect() as connection:
        command.downgrade(_alembic_config(connection), revision)
        connection.commit()
