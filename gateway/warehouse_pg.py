"""PostgreSQL (and PostgreSQL-compatible) warehouse through SQLAlchemy + psycopg 3.

Least privilege, checked before serving (docs/operations.md#postgresql-warehouse): the role must
not be a superuser, must not be a member of the server-file roles (``pg_read_server_files``,
``pg_write_server_files``, ``pg_execute_server_program``), must hold no INSERT/UPDATE/DELETE/
TRUNCATE privilege on a table of the schema and no CREATE on the schema. A role that could
write is refused (fail closed), with the statements that make a read-only one. On top of that
every session is read-only (``default_transaction_read_only``) with a ``statement_timeout``, and a
watchdog cancels a statement that outlives the timeout by more than half a second (a server that
ignores the setting, a stuck network).

The bounding salt never appears in the SQL text: the rewriter refers to the query's parameters
as ``current_setting('privgate.p1')`` … (see ``rewriter.rules.bound_and_emit``) and this adapter
sets them with ``set_config(…, is_local => true)`` in the statement's own transaction, so they
vanish with it. The statement itself is sent without parameters, so no ``%`` in an analyst's
string literal is ever read as a placeholder.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gateway.errors import QueryTimeout, WarehouseError, WarehouseUnavailable
from gateway.snapshots_pg import PgSnapshotInfo
from gateway.warehouse import ResultSet
from gateway.watchdog import WATCHDOG

#: Roles whose members can read or write server files or run programs: never for a warehouse role.
_SERVER_FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")

#: How long a data version is trusted before it is read again (one round trip per query saved).
_VERSION_TTL_S = 2.0

_READ_ONLY_HINT = (
    "Connect privgate with a role that may only read, e.g.: CREATE ROLE privgate_reader LOGIN "
    "PASSWORD '…'; GRANT USAGE ON SCHEMA {schema} TO privgate_reader; GRANT SELECT ON ALL TABLES "
    "IN SCHEMA {schema} TO privgate_reader. See docs/operations.md#postgresql-warehouse."
)


def parameter_setting(index: int) -> str:
    """The session setting holding the statement's ``index``-th (1-based) parameter."""
    return f"privgate.p{index}"


class PostgresWarehouse:
    """A PostgreSQL schema, read through a least-privileged, read-only role."""

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        timeout_s: float = 30.0,
        pool_size: int = 8,
    ) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise WarehouseUnavailable("the warehouse URL is not a valid SQLAlchemy URL") from None
        if not parsed.drivername.startswith("postgresql"):
            raise WarehouseUnavailable("the warehouse URL must be a postgresql:// URL")
        parsed = parsed.set(drivername="postgresql+psycopg")
        self._schema = schema
        self._timeout_s = timeout_s
        timeout_ms = max(1, int(timeout_s * 1000))
        options = (
            f"-c statement_timeout={timeout_ms} -c default_transaction_read_only=on "
            f"-c idle_in_transaction_session_timeout={timeout_ms + 5000}"
        )
        self._engine = create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args={"options": options, "connect_timeout": 10},
        )
        self._version: tuple[float, str] | None = None
        self._version_lock = threading.Lock()
        #: (snapshot serving or None, the tables it bounds and their K): swapped as one reference.
        #: (the snapshot serving, its bounded tables and K, its stored terms): swapped as one.
        self._serving: tuple[PgSnapshotInfo | None, Mapping[str, int], frozenset[str]] = (
            None,
            {},
            frozenset(),
        )
        self._role = ""
        try:
            self._check_role()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            # The driver's message may hold the host or user, not the password (never in it).
            raise WarehouseUnavailable(
                f"cannot connect to the PostgreSQL warehouse: {getattr(exc, 'orig', exc)}"
            ) from exc
        except BaseException:
            self._engine.dispose()
            raise

    # -- least privilege -----------------------------------------------------------------------

    def _check_role(self) -> None:
        hint = _READ_ONLY_HINT.format(schema=self._schema)
        with self._engine.connect() as conn:
            cur = _raw(conn).cursor()
            cur.execute(
                "SELECT current_user, rolsuper, rolcreaterole, rolbypassrls "
                "FROM pg_roles WHERE rolname = current_user"
            )
            user, superuser, createrole, bypassrls = _one(cur)
            self._role = str(user)
            if superuser or createrole or bypassrls:
                raise WarehouseUnavailable(
                    f"the warehouse role {user} is a superuser or may create roles or bypass "
                    f"row security: privgate refuses to query with it. {hint}"
                )
            for role in _SERVER_FILE_ROLES:
                cur.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,))
                if _one(cur)[0]:
                    raise WarehouseUnavailable(
                        f"the warehouse role {user} is a member of {role}. {hint}"
                    )
            cur.execute("SELECT has_schema_privilege(current_user, %s, 'CREATE')", (self._schema,))
            if _one(cur)[0]:
                raise WarehouseUnavailable(
                    f"the warehouse role {user} may create objects in schema {self._schema}. {hint}"
                )
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                "AND has_table_privilege(current_user, c.oid, "
                "'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES') ORDER BY 1",
                (self._schema,),
            )
            writable = [str(r[0]) for r in cur.fetchall()]
            if writable:
                raise WarehouseUnavailable(
                    f"the warehouse role {user} may modify {', '.join(writable[:5])}. {hint}"
                )

    # -- Warehouse protocol --------------------------------------------------------------------

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def role(self) -> str:
        """The role queries run as (bounded snapshots grant it SELECT)."""
        return self._role

    @property
    def snapshot(self) -> PgSnapshotInfo | None:
        return self._serving[0]

    def use_snapshot(self, info: PgSnapshotInfo) -> None:
        """Serve statements without parameters from the snapshot schema ``info`` from now on."""
        self._serving = (info, info.bounded(), info.precomputed())

    def prebounded(self) -> Mapping[str, int]:
        return self._serving[1]

    def precomputed(self) -> frozenset[str]:
        return self._serving[2]  # computed once per swap, not per query

    def source_version(self) -> str:
        """The data version of the source schema (its write counters and columns)."""
        return self._source_version()

    def columns(self) -> dict[str, list[tuple[str, str]]]:
        rows = self._fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            (self._schema,),
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for table, column, sql_type in rows:
            out.setdefault(str(table), []).append((str(column), str(sql_type)))
        return out

    def data_version(self) -> str:
        """The serving snapshot's data version, else the source's."""
        info = self._serving[0]
        return info.data_version if info is not None else self._source_version()

    def _source_version(self) -> str:
        """A digest of the schema's columns and its tables' write counters.

        PostgreSQL has no file to stat; ``pg_stat_user_tables`` counts the rows each table has had
        inserted, updated and deleted, so any committed write changes the digest (statistics
        arrive within ~a second). A stale version can only replay an earlier, already-paid
        answer: never a privacy loss.
        """
        now = time.monotonic()
        cached = self._version
        if cached is not None and now - cached[0] < _VERSION_TTL_S:
            return cached[1]
        with self._version_lock:
            rows = self._fetch(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del "
                "FROM pg_stat_user_tables WHERE schemaname = %s ORDER BY relname",
                (self._schema,),
            )
            digest = hashlib.sha256(repr((rows, sorted(self.columns().items()))).encode())
            version = "pg-" + digest.hexdigest()[:16]
            self._version = (time.monotonic(), version)
        return version

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any],
        *,
        before_execute: Callable[[], None] | None = None,
    ) -> ResultSet:
        """Run ``sql`` in a read-only transaction; see :meth:`DuckDBWarehouse.execute` for
        ``before_execute`` (called once a connection is held, before anything is sent)."""
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            raise WarehouseUnavailable("the PostgreSQL warehouse is unreachable") from exc
        try:
            raw = _raw(conn)
            # What the statement reads is fixed before before_execute, which checks it (the
            # service refuses a pre-bounded plan if the snapshot changed since planning).
            info = self._serving[0]
            if before_execute is not None:
                before_execute()
            timed_out = threading.Event()

            def _cancel() -> None:
                timed_out.set()
                raw.cancel_safe(timeout=2.0)

            disarm = WATCHDOG.arm(self._timeout_s + 0.5, _cancel)
            # A statement with parameters is bounded per query and reads the source; one
            # without reads the snapshot's bounded copies first (public tables from the source).
            path = [self._schema] if parameters or info is None else [info.schema, self._schema]
            try:
                with raw.cursor() as cur:
                    cur.execute(
                        "SELECT set_config('search_path', %s, true)",
                        (", ".join(_quote(p) for p in path),),
                    )
                    for i, value in enumerate(parameters, start=1):
                        cur.execute(
                            "SELECT set_config(%s, %s, true)", (parameter_setting(i), str(value))
                        )
                    cur.execute(sql.encode())  # bytes, no parameters: sent exactly as written
                    columns = tuple(d.name for d in cur.description or ())
                    rows = [tuple(_plain(v) for v in row) for row in cur.fetchall()]
            except pg_errors.QueryCanceled as exc:
                raise QueryTimeout(f"the query ran past the {self._timeout_s:g} s timeout") from exc
            except psycopg.Error as exc:
                if timed_out.is_set():
                    raise QueryTimeout(
                        f"the query ran past the {self._timeout_s:g} s timeout"
                    ) from exc
                # The detail may describe data; it goes to the log via __cause__, never to the user.
                raise WarehouseError("the warehouse could not complete the query") from exc
            finally:
                disarm()
                try:
                    raw.rollback()
                except psycopg.Error:
                    conn.invalidate()
        finally:
            conn.close()
        return ResultSet(columns=columns, rows=rows)

    def close(self) -> None:
        self._engine.dispose()

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._engine.connect() as conn:
                cur = _raw(conn).cursor()
                cur.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()]
        except SQLAlchemyError as exc:
            raise WarehouseUnavailable("the PostgreSQL warehouse is unreachable") from exc
        except psycopg.Error as exc:
            raise WarehouseError("the PostgreSQL warehouse could not read its catalog") from exc


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def _plain(value: Any) -> Any:
    """NUMERIC results (PostgreSQL's SUM of BIGINT) as int when whole, else float."""
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    return value
