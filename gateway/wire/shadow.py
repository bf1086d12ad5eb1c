"""The shadow PostgreSQL: empty look-alike databases that answer BI tools' catalog questions.

psql ``\\dt``, pgjdbc ``DatabaseMetaData``, SQLAlchemy reflection and psycopg send ``pg_catalog`` and
``information_schema`` queries, ``SET``/``SHOW``, ``version()`` and transaction statements. The wire
endpoint forwards those to a shadow database whose user tables are exactly the tables and columns the
principal may see, with no rows, so that every answer is PostgreSQL's own. Data never goes there.

Why this is safe (the argument the code below keeps):

* **One database per visible set.** ``pg_class`` lists every table whatever the grants, so a shadow
  must not hold a table its principal may not see. The database name carries a digest of the table
  spec (and of :data:`LAYOUT_VERSION`): principals who see the same tables share one database.
  Databases are created from ``template0`` (nothing a DBA put into ``template1`` leaks in) and are
  checked on first use in each process against the spec, column by column (:meth:`Shadow._verify`).
* **One least-privileged role per database** (``<prefix>_<digest>_reader``): LOGIN, NOSUPERUSER
  NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS, member of no role, a connection limit,
  and defaults ``default_transaction_read_only=on``, ``statement_timeout``,
  ``idle_in_transaction_session_timeout`` and ``search_path=public``. Because the role is per
  database, a reader cannot connect to another principal's shadow (CONNECT is revoked from PUBLIC
  and granted to that one role); sessions that share a role are sessions of principals who see the
  same tables. Databases we do not own (``postgres`` on a shared server) keep whatever CONNECT they
  grant PUBLIC: use a dedicated cluster, e.g. :mod:`gateway.wire.embedded`, which revokes it.
* **Privileges, not settings, are the barrier.** A client may ``SET default_transaction_read_only``
  or ``statement_timeout`` itself (PostgreSQL has no way to pin a user-settable parameter), so
  nothing relies on them: the role holds USAGE on ``public``, SELECT on the empty tables and
  nothing else — no CREATE or TEMP on the database, no CREATE on ``public``, no USAGE on plpgsql,
  no INSERT/UPDATE/DELETE/TRUNCATE. Writing anywhere is impossible, so the tables stay empty.
* **No window on other sessions or the server.** EXECUTE or SELECT is revoked from PUBLIC, in each
  shadow, on everything matching :data:`REVOKED_FUNCTIONS` / :data:`REVOKED_RELATIONS`: activity
  and statistics (``pg_stat_activity``, ``pg_stat_get_*``, ``pg_stat_statements``, ``pg_locks``),
  files (``pg_ls_*``, ``pg_read_file*``), signals to sessions of the same role
  (``pg_terminate_backend``), server addresses, WAL/xid counters (activity side channels), large
  objects (the one write path a read-only-free session would have without table privileges),
  NOTIFY and advisory locks (channels between sessions). The revokes need a superuser admin; the
  check after them fails closed (:class:`ShadowError`) when any of them did not take.
* **Names are quoted identifiers** (:class:`psycopg.sql.Identifier`), types come from a fixed map,
  and no SQL is built from strings of names.
* **Creation is a rename.** A database is built as ``<name>_new`` and renamed when complete, under a
  PostgreSQL advisory lock on the admin database (so replicas must share the admin DSN's database)
  plus a thread lock: racing threads and processes wait for each other, and a crash leaves at most
  a ``_new`` database that the next attempt drops.

The reader's password is derived, not stored: HMAC-SHA-256 keyed by the admin DSN (which carries
the admin's credential) over the role name. Every replica configured with the same admin DSN
derives the same password, so no replica's ``ALTER ROLE`` locks another out, and nothing is written
to disk. It is sent as a SCRAM verifier, so it never appears in the server's statement log. Its
strength is that of the admin DSN: with trust or peer authentication the DSN holds no secret, but
then anyone who can reach the server can log in as the admin anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

#: The column types a shadow may use, with the name ``format_type`` reports for each.
PG_TYPES: dict[str, str] = {
    "bigint": "bigint",
    "double precision": "double precision",
    "text": "text",
    "date": "date",
    "timestamp": "timestamp without time zone",
    "boolean": "boolean",
}
#: Part of the digest: bump it when the layout or the hardening changes, so that new databases
#: replace old ones instead of being trusted.
LAYOUT_VERSION = 1
CONNECTION_LIMIT = 64
IDLE_IN_TRANSACTION_MS = 60_000
#: Per-role log settings of the reader: no statement text, no client errors (they quote literals).
#: ``log_min_messages = log`` keeps LOG/FATAL/PANIC and drops ERROR and WARNING.
QUIET_LOGGING = {
    "log_statement": "none",
    "log_min_error_statement": "panic",
    "log_min_duration_statement": "-1",
    "log_min_messages": "log",
}
CONNECT_TIMEOUT_S = 5

#: ``pg_proc.proname`` LIKE patterns whose EXECUTE is revoked from PUBLIC in every shadow.
REVOKED_FUNCTIONS: tuple[str, ...] = (
    r"pg\_stat\_%",  # pg_stat_get_activity, pg_stat_get_backend_*, pg_stat_statements*, pg_stat_file
    r"pg\_ls\_%",
    r"pg\_read\_file%",
    r"pg\_read\_binary\_file%",
    r"pg\_current\_logfile%",
    r"pg\_lock\_status",
    r"pg\_prepared\_xact",
    r"pg\_blocking\_pids",
    r"pg\_safe\_snapshot\_blocking\_pids",
    r"pg\_terminate\_backend",
    r"pg\_cancel\_backend",
    r"pg\_get\_replication\_slots",
    r"pg\_control\_%",
    r"pg\_current\_wal\_%",
    r"pg\_last\_wal\_%",
    r"pg\_current\_xact\_id%",
    r"pg\_current\_snapshot",
    r"txid\_current%",
    r"pg\_xact\_status",
    r"txid\_status",
    r"pg\_last\_committed\_xact",
    r"pg\_xact\_commit\_timestamp%",
    r"pg\_database\_size",
    r"pg\_tablespace\_size",
    r"pg\_tablespace\_location",
    r"inet\_server\_%",
    r"inet\_client\_%",
    r"lo\_%",
    r"loread",
    r"lowrite",
    r"pg\_notify",
    r"pg\_advisory%",
    r"pg\_try\_advisory%",
    r"pg\_logical\_emit\_message",
)
#: ``pg_class.relname`` LIKE patterns whose SELECT is revoked from PUBLIC (not ``pg_statistic_ext``
#: or ``pg_stats``, which psql ``\d`` reads and which describe only the empty tables).
REVOKED_RELATIONS: tuple[str, ...] = (
    r"pg\_stat\_%",  # pg_stat_activity, pg_stat_ssl, pg_stat_gssapi, pg_stat_statements, ...
    r"pg\_statio\_%",
    r"pg\_locks",
    r"pg\_prepared\_xacts",
    r"pg\_replication\_%",
    r"pg\_config",
    r"pg\_file\_settings",
    r"pg\_hba\_file\_rules",
    r"pg\_ident\_file\_mappings",
    r"pg\_shmem\_allocations",
    r"pg\_backend\_memory\_contexts",
)

_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,38}")
_DIGEST_CHARS = 16


@dataclass(frozen=True, slots=True)
class ShadowColumn:
    name: str
    pg_type: str  # a key of PG_TYPES


@dataclass(frozen=True, slots=True)
class ShadowTable:
    name: str
    columns: tuple[ShadowColumn, ...]


class ShadowError(Exception):
    """The shadow is unreachable or cannot be prepared. The message is safe to show a client."""


@dataclass(frozen=True, slots=True)
class _Target:
    database: str
    role: str
    password: str


def spec_digest(tables: Sequence[ShadowTable]) -> str:
    """The hex digest that names the shadow of ``tables`` (order of tables does not matter).

    >>> t = ShadowTable("visits", (ShadowColumn("id", "bigint"),))
    >>> u = ShadowTable("wards", ())
    >>> spec_digest([t, u]) == spec_digest([u, t]) != spec_digest([t])
    True
    """
    _validate(tables)
    canonical = [
        [t.name, [[c.name, c.pg_type] for c in t.columns]]
        for t in sorted(tables, key=lambda t: t.name)
    ]
    blob = json.dumps([LAYOUT_VERSION, canonical], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _validate(tables: Sequence[ShadowTable]) -> None:
    def check_name(name: str, what: str) -> None:
        # PostgreSQL silently truncates identifiers to 63 bytes, which could merge two names.
        if not name or "\0" in name or len(name.encode("utf-8")) > 63:
            raise ValueError(f"invalid shadow {what} name {name!r}")

    seen: set[str] = set()
    for table in tables:
        check_name(table.name, "table")
        if table.name in seen:
            raise ValueError(f"duplicate shadow table {table.name!r}")
        seen.add(table.name)
        columns: set[str] = set()
        for column in table.columns:
            check_name(column.name, "column")
            if column.name in columns:
                raise ValueError(f"duplicate column {column.name!r} in shadow table {table.name!r}")
            if column.pg_type not in PG_TYPES:
                raise ValueError(f"unsupported shadow column type {column.pg_type!r}")
            columns.add(column.name)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """A PostgreSQL ``SCRAM-SHA-256$...`` verifier, so that the password itself is never sent."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class Shadow:
    """Creates, hardens and hands out connections to shadow databases on one PostgreSQL server."""

    def __init__(
        self, *, admin_dsn: str, statement_timeout_ms: int = 5000, prefix: str = "privgate_shadow"
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"shadow prefix must match {_PREFIX.pattern}, got {prefix!r}")
        if statement_timeout_ms <= 0:
            raise ValueError("statement_timeout_ms must be positive")
        self._admin_dsn = admin_dsn
        self._admin_params = conninfo_to_dict(admin_dsn)
        self._timeout_ms = statement_timeout_ms
        self._warned_logging = False
        self._prefix = prefix
        self._key = hashlib.sha256(b"privgate-shadow-reader\0" + admin_dsn.encode()).digest()
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._closed = False

    def connect(
        self, tables: Sequence[ShadowTable], *, application_name: str = "privgate-wire"
    ) -> psycopg.Connection[Any]:
        """A new autocommit connection, as the shadow's reader role, to the shadow of ``tables``."""
        if self._closed:
            raise ShadowError("the catalog shadow is closed")
        target = self._prepare(tables)
        options = (
            f"-c statement_timeout={self._timeout_ms} -c default_transaction_read_only=on"
            f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        )
        params = {
            **self._admin_params,
            "dbname": target.database,
            "user": target.role,
            "password": target.password,
            "application_name": application_name,
            "options": options,
        }
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        try:
            return psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as exc:
            log.warning("cannot connect to shadow %s: %s", target.database, exc)
            raise ShadowError("the catalog shadow is unreachable") from exc

    def close(self) -> None:
        """Forget prepared shadows; later :meth:`connect` calls fail. Open connections stay open."""
        with self._lock:
            self._closed = True
            self._ready.clear()

    def drop_all(self) -> None:
        """Drop every shadow database and reader role under this prefix (tests, clean-ups)."""
        pattern = f"^{self._prefix}_[0-9a-f]{{{_DIGEST_CHARS}}}"
        with self._lock, self._admin() as admin:
            admin.execute("SELECT pg_advisory_lock(%s)", [self._lock_key()])
            rows = admin.execute(
                "SELECT datname FROM pg_database WHERE datname ~ %s", [pattern + "(_new)?$"]
            ).fetchall()
            for (name,) in rows:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            roles = admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname ~ %s", [pattern + "_reader$"]
            ).fetchall()
            for (name,) in roles:
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            self._ready.clear()

    # -- preparation ---------------------------------------------------------------------------

    def _target(self, digest: str) -> _Target:
        database = f"{self._prefix}_{digest[:_DIGEST_CHARS]}"
        role = f"{database}_reader"
        mac = hmac.new(self._key, role.encode(), hashlib.sha256).digest()
        return _Target(database, role, base64.urlsafe_b64encode(mac).decode().rstrip("="))

    def _lock_key(self) -> int:
        raw = hashlib.sha256(b"privgate-shadow-lock\0" + self._prefix.encode()).digest()
        return int.from_bytes(raw[:8], "big", signed=True)

    def _admin(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        params: dict[str, Any] = dict(self._admin_params)
        if dbname is not None:
            params["dbname"] = dbname
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        try:
            return psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as exc:
            log.warning("cannot connect to the shadow server as admin: %s", exc)
            raise ShadowError("the catalog shadow is unreachable") from exc

    def _prepare(self, tables: Sequence[ShadowTable]) -> _Target:
        digest = spec_digest(tables)
        target = self._target(digest)
        if digest in self._ready:
            return target
        with self._lock:
            if digest in self._ready:
                return target
            try:
                with self._admin() as admin:
                    # Session-level: released when this connection closes, even on error.
                    admin.execute("SELECT pg_advisory_lock(%s)", [self._lock_key()])
                    self._ensure_role(admin, target)
                    found = admin.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", [target.database]
                    ).fetchone()
                    if found is None:
                        self._create(admin, target, tables)
                with self._admin(target.database) as conn:
                    self._verify(conn, target, tables)
            except psycopg.Error as exc:
                log.error("cannot prepare shadow %s: %s", target.database, exc)
                raise ShadowError("the catalog shadow cannot be prepared") from exc
            self._ready.add(digest)
        return target

    def _ensure_role(self, admin: psycopg.Connection[Any], target: _Target) -> None:
        role = sql.Identifier(target.role)
        attributes = sql.SQL(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
            " CONNECTION LIMIT {} PASSWORD {}"
        ).format(sql.Literal(CONNECTION_LIMIT), sql.Literal(scram_verifier(target.password)))
        exists = admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [target.role]
        ).fetchone()
        verb = "ALTER ROLE {} WITH " if exists else "CREATE ROLE {} WITH "
        admin.execute(sql.SQL(verb).format(role) + attributes)
        defaults = {
            "default_transaction_read_only": "on",
            "statement_timeout": str(self._timeout_ms),
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
            "search_path": "public",
        }
        for name, value in defaults.items():
            admin.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    role, sql.Identifier(name), sql.Literal(value)
                )
            )
        # The reader's statements are the analysts' catalog queries, whose literals must not land
        # in the shadow server's log (docs/operations.md#what-is-kept-at-rest). These parameters
        # need a superuser admin role; with a lesser one the server's own settings apply.
        for name, value in QUIET_LOGGING.items():
            try:
                admin.execute(
                    sql.SQL("ALTER ROLE {} SET {} = {}").format(
                        role, sql.Identifier(name), sql.Literal(value)
                    )
                )
            except psycopg.errors.InsufficientPrivilege:
                if not self._warned_logging:
                    log.warning(
                        "the shadow admin role may not set %s for the reader role: the shadow "
                        "server's log settings decide whether failing catalog statements are "
                        "logged with their literals",
                        name,
                    )
                    self._warned_logging = True

    def _create(
        self, admin: psycopg.Connection[Any], target: _Target, tables: Sequence[ShadowTable]
    ) -> None:
        staging = f"{target.database}_new"
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(staging))
        )
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(staging))
        )
        with self._admin(staging) as conn, conn.transaction():
            self._furnish(conn, staging, target.role, tables)
        admin.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(staging), sql.Identifier(target.database)
            )
        )
        log.info("created shadow database %s (%d tables)", target.database, len(tables))

    def _furnish(
        self, conn: psycopg.Connection[Any], database: str, role: str, tables: Sequence[ShadowTable]
    ) -> None:
        db, reader = sql.Identifier(database), sql.Identifier(role)
        for statement in (
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
            "GRANT CONNECT ON DATABASE {db} TO {reader}",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
            "GRANT USAGE ON SCHEMA public TO {reader}",
            "REVOKE ALL ON LANGUAGE plpgsql FROM PUBLIC",
        ):
            conn.execute(sql.SQL(statement).format(db=db, reader=reader))
        for table in tables:
            name = sql.Identifier("public", table.name)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
                for c in table.columns
            )
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(name, columns))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(name, reader))
        functions = conn.execute(
            "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE p.proname LIKE ANY(%s) AND p.prokind IN ('f', 'w')",
            [list(REVOKED_FUNCTIONS)],
        ).fetchall()
        if functions:
            # The argument lists are PostgreSQL's own deparse of catalog functions, not input.
            signatures = sql.SQL(", ").join(
                sql.SQL("{}({})").format(sql.Identifier(nsp, fn), sql.SQL(args))
                for nsp, fn, args in functions
            )
            conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(signatures))
        relations = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relname LIKE ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'f', 'p')"
            " AND n.nspname <> 'public'",
            [list(REVOKED_RELATIONS)],
        ).fetchall()
        if relations:
            names = sql.SQL(", ").join(sql.Identifier(nsp, rel) for nsp, rel in relations)
            conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(names))

    def _verify(
        self, conn: psycopg.Connection[Any], target: _Target, tables: Sequence[ShadowTable]
    ) -> None:
        """Fail closed unless the database is exactly ``tables``, empty, and the role is harmless."""
        expected = sorted((t.name, c.name, PG_TYPES[c.pg_type]) for t in tables for c in t.columns)
        actual_columns = conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = 'public'"
        ).fetchall()
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_toast%' AND c.relkind NOT IN ('i', 'I', 't')"
        ).fetchall()
        problems: list[str] = []
        if sorted(tuple(r) for r in actual_columns) != expected:
            problems.append("columns differ from the spec")
        if sorted((n, r, k) for n, r, k in relations) != sorted(
            ("public", t.name, "r") for t in tables
        ):
            problems.append("relations differ from the spec")
        if tables:
            nonempty = sql.SQL(" OR ").join(
                sql.SQL("EXISTS (SELECT FROM {})").format(sql.Identifier("public", t.name))
                for t in tables
            )
            row = conn.execute(sql.SQL("SELECT {}").format(nonempty)).fetchone()
            if row is None or row[0]:
                problems.append("a shadow table has rows")
        checks = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM pg_proc p WHERE p.proname LIKE ANY(%(fn)s)
                 AND has_function_privilege(%(role)s, p.oid, 'EXECUTE')),
              (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname LIKE ANY(%(rel)s) AND n.nspname <> 'public'
                 AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
                 AND has_table_privilege(%(role)s, c.oid, 'SELECT')),
              (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND has_table_privilege(%(role)s, c.oid,
                   'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')),
              has_database_privilege(%(role)s, current_database(), 'CREATE, TEMPORARY'),
              has_schema_privilege(%(role)s, 'public', 'CREATE'),
              has_language_privilege(%(role)s, 'plpgsql', 'USAGE'),
              (SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolinherit OR rolreplication
                 OR rolbypassrls OR NOT rolcanlogin FROM pg_roles WHERE rolname = %(role)s),
              (SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                 WHERE r.rolname = %(role)s)
            """,
            {"fn": list(REVOKED_FUNCTIONS), "rel": list(REVOKED_RELATIONS), "role": target.role},
        ).fetchone()
        labels = (
            "catalog functions still executable",
            "catalog views still readable",
            "write privileges on shadow tables",
            "CREATE or TEMPORARY on the database",
            "CREATE on schema public",
            "USAGE on plpgsql",
            "role attributes too broad",
            "role is a member of other roles",
        )
        for label, value in zip(labels, checks or (True,) * len(labels), strict=True):
            if value:
                problems.append(f"{label} ({value})")
        if problems:
            log.error("shadow %s failed its safety check: %s", target.database, "; ".join(problems))
            raise ShadowError("the catalog shadow failed its safety check")
