"""Warehouse adapters. The embedded default is DuckDB, opened read-only and locked down.

Lock-down (FIELD-NOTES, "DuckDB 2.0"): external access off (no files, no URLs), extension autoload
and autoinstall off, configuration locked so a query cannot turn any of it back on. What the lock
cannot stop (``query('…')``, ``COLUMNS()``, whole-row structs, endless ``range()``) the rewriter's
allow-list refuses; a watchdog interrupts any statement past the timeout.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb

from gateway.errors import QueryTimeout, WarehouseError, WarehouseUnavailable
from gateway.watchdog import WATCHDOG

if TYPE_CHECKING:
    from gateway.snapshots import SnapshotInfo


@dataclass(frozen=True, slots=True)
class ResultSet:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class Warehouse(Protocol):
    dialect: str

    def columns(self) -> dict[str, list[tuple[str, str]]]: ...

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any],
        *,
        before_execute: Callable[[], None] | None = None,
    ) -> ResultSet: ...

    def data_version(self) -> str: ...

    def prebounded(self) -> Mapping[str, int]:
        """Tables served from a bounded snapshot, and their K (lower-case names)."""
        ...

    def precomputed(self) -> frozenset[str]:
        """The fixed-point terms that snapshot stores (``table.column``, lower-case tables)."""
        ...


LOCKDOWN = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


class DuckDBWarehouse:
    """A read-only, locked-down DuckDB database file. One cursor per call: thread-safe.

    Queries run on the source file, or, once :meth:`use_snapshot` was called, on a bounded
    snapshot of it (gateway.snapshots), opened with the same lock-down. Swapping is atomic: a
    query that has its cursor keeps it; the previous connection stays open until :meth:`close`.
    """

    dialect = "duckdb"

    def __init__(self, path: Path, *, timeout_s: float = 30.0, threads: int | None = None) -> None:
        if not path.exists():
            raise WarehouseUnavailable(f"warehouse file {path} does not exist")
        config: dict[str, Any] = dict(LOCKDOWN)
        if threads is not None:
            config["threads"] = threads
        self._path = path
        self._timeout_s = timeout_s
        self._config = config
        try:
            self._con = duckdb.connect(str(path), read_only=True, config=config)
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"cannot open warehouse {path}: {exc}") from exc
        self._version = file_version(path)
        #: (connection queries run on, the snapshot it holds or None for the source, the tables
        #: that snapshot bounds and their K): swapped as one reference.
        #: Also the fixed-point terms it stores.
        self._serving: tuple[
            duckdb.DuckDBPyConnection, SnapshotInfo | None, Mapping[str, int], frozenset[str]
        ] = (self._con, None, {}, frozenset())
        self._retired: list[duckdb.DuckDBPyConnection] = []
        self._swap = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def threads(self) -> int | None:
        threads = self._config.get("threads")
        return None if threads is None else int(threads)

    @property
    def snapshot(self) -> SnapshotInfo | None:
        return self._serving[1]

    def source_version(self) -> str:
        """The data version of the source file as opened."""
        return self._version

    def source_changed(self) -> bool:
        """True when the file at the source path is no longer the one opened (replaced, grown)."""
        try:
            return file_version(self._path) != self._version
        except OSError:
            return False

    def use_snapshot(self, info: SnapshotInfo) -> None:
        """Serve queries from the bounded snapshot ``info`` from now on.

        Raises:
            WarehouseUnavailable: the snapshot file cannot be opened (the current one serves on).
        """
        try:
            con = duckdb.connect(str(info.path), read_only=True, config=self._config)
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"cannot open bounded snapshot {info.path}: {exc}") from exc
        with self._swap:
            old = self._serving[0]
            self._serving = (con, info, info.bounded(), info.precomputed())
            if old is not self._con:
                self._retired.append(old)

    def prebounded(self) -> Mapping[str, int]:
        return self._serving[2]  # computed once per swap, not per query

    def precomputed(self) -> frozenset[str]:
        return self._serving[3]

    def columns(self) -> dict[str, list[tuple[str, str]]]:
        rows = (
            self._con.cursor()
            .execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
            )
            .fetchall()
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for table, column, sql_type in rows:
            out.setdefault(str(table), []).append((str(column), str(sql_type)))
        return out

    def data_version(self) -> str:
        """Identifies the data the answers are computed on: the source file's identity, size and
        mtime, plus the bounded snapshot's spec when one serves."""
        info = self._serving[1]
        return self._version if info is None else info.data_version

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any],
        *,
        before_execute: Callable[[], None] | None = None,
    ) -> ResultSet:
        """Run ``sql``. ``before_execute`` runs once the warehouse is reachable and before the
        statement is sent: the service marks the budget reservation as executing there, so that
        "unreachable" (refundable) and "may have touched data" (spent) are never confused.

        A statement with parameters is bounded per query (its one parameter is the salt): it
        reads the source, never a snapshot, which lacks blocked columns and is bounded already.
        """
        con = self._serving[0] if not parameters else self._con
        try:
            cursor = con.cursor()
        except duckdb.Error as exc:
            raise WarehouseUnavailable("the warehouse connection is closed") from exc
        if before_execute is not None:
            try:
                before_execute()
            except BaseException:
                cursor.close()
                raise
        timed_out = threading.Event()

        def _interrupt() -> None:
            timed_out.set()
            cursor.interrupt()

        disarm = WATCHDOG.arm(self._timeout_s, _interrupt)
        try:
            cursor.execute(sql, list(parameters))
            columns = tuple(d[0] for d in cursor.description or ())
            rows = cursor.fetchall()
        except duckdb.Error as exc:
            if timed_out.is_set():
                raise QueryTimeout(f"the query ran past the {self._timeout_s:g} s timeout") from exc
            # The detail may describe data; it goes to the log via __cause__, never to the user.
            raise WarehouseError("the warehouse could not complete the query") from exc
        finally:
            disarm()
            cursor.close()
        return ResultSet(columns=columns, rows=rows)

    def close(self) -> None:
        with self._swap:
            serving = self._serving[0]
            for con in (*self._retired, serving, self._con):
                con.close()
            self._retired = []


def file_version(path: Path) -> str:
    """A file's data version: its resolved path, size and modification time, hashed."""
    stat = path.stat()
    return hashlib.sha256(
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
