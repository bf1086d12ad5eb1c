"""Statements compiled once and run on the SQLite driver's cursor: the per-query control-DB path.

A prebuilt SQLAlchemy Core statement still costs ~15–30 µs of SQLAlchemy's own work per execution
(the compiled cache lookup, an execution context, parameter processing, a result object), ten
times what ``sqlite3`` takes to run it; a query runs about twenty of them. :class:`Prepared`
compiles its statement once per set of parameter names and then executes the SQL text on the
caller's open connection's DB-API cursor, inside the caller's transaction (SQLAlchemy opened it
and will commit or roll it back; it does not track statements). Values still go through the
dialect's own bind and result processors (SQLite's ``DateTime`` is text, ``Boolean`` an
integer), so rows are the same as SQLAlchemy's.

Only on SQLite: on any other dialect :meth:`Prepared.run` is ``conn.execute`` (the round trip
dominates there, and SQLAlchemy's events and pre-ping stay in force). Not supported, and refused
when compiled: expanding ``IN`` parameters and columns filled by Python-side defaults (the
statements here pass every value).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: Per positional parameter: (name, constant value or None, bind processor or None).
    binds: tuple[tuple[str | None, Any, Callable[[Any], Any] | None], ...]
    keys: tuple[str, ...]
    results: tuple[Callable[[Any], Any] | None, ...]


class Rows:
    """The rows of one execution, as dicts (the subset of SQLAlchemy's ``Result`` used here)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[dict[str, Any]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> dict[str, Any] | None:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> dict[str, Any] | None:
        if len(self._rows) > 1:
            raise exc.MultipleResultsFound("more than one row where at most one was expected")
        return self.first()

    def one(self) -> dict[str, Any]:
        row = self.one_or_none()
        if row is None:
            raise exc.NoResultFound("no row where exactly one was expected")
        return row

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else next(iter(row.values()))


class Prepared:
    """One Core statement, for :meth:`run` on the connection of the caller's transaction."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[frozenset[str], _Compiled] = {}

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Rows:
        params = params or {}
        if conn.dialect.name != "sqlite":
            result = conn.execute(self.statement, dict(params))
            rows = [dict(m) for m in result.mappings()] if result.returns_rows else []
            return Rows(rows, result.rowcount)
        names = frozenset(params)
        compiled = self._compiled.get(names)
        if compiled is None:
            compiled = self._compiled[names] = self._compile(conn.dialect, names)
        values = [
            (params[name] if name is not None else constant)
            if process is None
            else process(params[name] if name is not None else constant)
            for name, constant, process in compiled.binds
        ]
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            cursor = driver.execute(compiled.sql, values)
        except sqlite3.Error as error:
            # Wrapped as SQLAlchemy wraps it (IntegrityError, OperationalError, ...), so callers
            # catch one exception type on every dialect; the values stay out of the message.
            raise exc.DBAPIError.instance(
                compiled.sql, values, error, sqlite3.Error, hide_parameters=True
            ) from error
        try:
            fetched = cursor.fetchall() if compiled.keys else []
            rowcount = cursor.rowcount
        finally:
            cursor.close()
        keys, processors = compiled.keys, compiled.results
        out = [
            {
                key: value if process is None else process(value)
                for key, value, process in zip(keys, row, processors, strict=True)
            }
            for row in fetched
        ]
        return Rows(out, rowcount)

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Compiled:
        stmt: Any = self.statement
        if isinstance(stmt, Insert):
            compiled: Any = stmt.compile(dialect=dialect, column_keys=sorted(names))
        else:
            compiled = stmt.compile(dialect=dialect)
        sql = str(compiled)
        if "POSTCOMPILE" in sql:
            raise NotImplementedError("Prepared does not support expanding IN parameters")
        binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if name in names:
                binds.append((name, None, process))
            elif not bind.required or bind.value is not None:
                binds.append((None, bind.effective_value, process))
            else:
                raise ValueError(f"Prepared: no value for {name!r} (a default is not applied)")
        columns = list(stmt.exported_columns)
        keys = tuple(str(c.key) for c in columns)
        results = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        return _Compiled(sql=sql, binds=tuple(binds), keys=keys, results=results)
