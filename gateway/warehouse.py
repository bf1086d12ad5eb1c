"""Warehouse adapters. The embedded default is DuckDB, opened read-only and locked down.

Lock-down (FIELD-NOTES, "DuckDB 2.0"): external access off (no files, no URLs), extension autoload
and autoinstall off, configuration locked so a query cannot turn any of it back on. What the lock
cannot stop (``query('…')``, ``COLUMNS()``, whole-row structs, endless ``range()``) the rewriter's
allow-list refuses; a watchdog interrupts any statement past the timeout.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb

from gateway.errors import QueryTimeout, WarehouseError, WarehouseUnavailable


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


LOCKDOWN = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


class DuckDBWarehouse:
    """A read-only, locked-down DuckDB database file. One cursor per call: thread-safe."""

    dialect = "duckdb"

    def __init__(self, path: Path, *, timeout_s: float = 30.0, threads: int | None = None) -> None:
        if not path.exists():
            raise WarehouseUnavailable(f"warehouse file {path} does not exist")
        config: dict[str, Any] = dict(LOCKDOWN)
        if threads is not None:
            config["threads"] = threads
        self._path = path
        self._timeout_s = timeout_s
        try:
            self._con = duckdb.connect(str(path), read_only=True, config=config)
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"cannot open warehouse {path}: {exc}") from exc
        stat = path.stat()
        self._version = hashlib.sha256(
            f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        ).hexdigest()[:16]

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
        """Identifies the data the answers were computed on (file identity, size and mtime)."""
        return self._version

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any],
        *,
        before_execute: Callable[[], None] | None = None,
    ) -> ResultSet:
        """Run ``sql``. ``before_execute`` runs once the warehouse is reachable and before the
        statement is sent: the service marks the budget reservation as executing there, so that
        "unreachable" (refundable) and "may have touched data" (spent) are never confused."""
        try:
            cursor = self._con.cursor()
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

        watchdog = threading.Timer(self._timeout_s, _interrupt)
        watchdog.daemon = True
        watchdog.start()
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
            watchdog.cancel()
            cursor.close()
        return ResultSet(columns=columns, rows=rows)

    def close(self) -> None:
        self._con.close()
