"""Apache Spark SQL warehouse through PySpark: a local or cluster SparkSession, or Spark Connect.

Spark has no roles and no read-only sessions (docs/operations.md#spark-warehouse says what to lock
down instead: read-only storage credentials and catalog permissions). This adapter adds what it
can: it sends only single queries (a statement that is not one SELECT, checked with sqlglot
before Spark sees it, is refused: ``spark.sql`` runs DDL and DML eagerly), on its own session
(``newSession()``: its own current database, time zone and SQL settings, the cluster's
SparkContext shared), and stops a statement past the timeout by cancelling its job group
(``setJobGroup(…, interruptOnCancel=True)`` + ``cancelJobGroup``; tags on Spark Connect).

The bounding salt never appears in the SQL text: the rewriter refers to it with positional
``?`` markers (``rewriter.rules.bound_and_emit``) bound by ``spark.sql(query, args=[…])``. It
does appear, as a literal, in the analysed plan that the Spark UI and event logs show: keep them
off or closed to analysts.

Bounded snapshots (``gateway.snapshots_spark``) live in databases of their own. While one serves,
a statement without parameters (planned as pre-bounded) reads the snapshot's bounded tables and
the source database's public tables: every table reference is qualified with its database
(sqlglot), so the session's current database never changes per query. A statement with
parameters (bounded per query) reads the source database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlglot
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql.types import TimestampType
from sqlglot import exp

from gateway.errors import InternalError, QueryTimeout, WarehouseError, WarehouseUnavailable
from gateway.snapshots_spark import SparkSnapshotInfo
from gateway.warehouse import ResultSet

_T = TypeVar("_T")

#: How long a data version is trusted before it is computed again (file listings saved).
_VERSION_TTL_S = 2.0
#: How often the watchdog repeats its cancel once a statement is past the timeout: a job group
#: cancels the jobs running *now*, and a statement may start further jobs.
_CANCEL_EVERY_S = 0.2
#: Past this many input files per table the data version digests the file names only.
_MAX_STATUS_FILES = 20_000

#: Settings of a session this adapter creates itself from a master URL (overridable by ``conf``):
#: no UI and no event log, since both show analysed plans, which hold the salt as a literal.
_OWN_SESSION_CONF = {
    "spark.app.name": "privgate",
    "spark.ui.enabled": "false",
    "spark.eventLog.enabled": "false",
}


class SparkWarehouse:
    """One database of a Spark catalog, queried through a session of the adapter's own.

    Args:
        spark: a SparkSession, or a master URL (``local[2]``, ``spark://host:7077``, ``yarn``,
            ``k8s://…``) for a session this adapter creates (and stops on :meth:`close`), or a
            Spark Connect URL ``sc://host:15002`` (needs ``pyspark[connect]``).
        database: the catalog database (schema) whose tables privgate serves.
        timeout_s: statement timeout; the watchdog cancels the statement's jobs when it passes.
        time_zone: the session time zone (an IANA name): date_trunc of timestamps and the wall
            clock of returned TIMESTAMP values are in it.
        conf: extra Spark settings for a session created here (ignored for a given session).
    """

    dialect = "spark"

    def __init__(
        self,
        spark: SparkSession | str,
        *,
        database: str = "default",
        timeout_s: float = 30.0,
        time_zone: str = "UTC",
        conf: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self._zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise WarehouseUnavailable(f"unknown time zone {time_zone!r} for Spark") from None
        self._database = database
        self._timeout_s = timeout_s
        self._owned: SparkSession | None = None
        if isinstance(spark, str):
            spark = self._owned = _create_session(spark, conf or {})
        try:
            self._spark = _own_session(spark)
            if not self._spark.catalog.databaseExists(database):
                raise WarehouseUnavailable(f"Spark database {database!r} does not exist")
            self._spark.catalog.setCurrentDatabase(database)
            self._spark.conf.set("spark.sql.session.timeZone", time_zone)
        except PySparkException as exc:
            self.close()
            raise WarehouseUnavailable(
                f"cannot use the Spark session: {type(exc).__name__}"
            ) from exc
        except BaseException:
            self.close()
            raise
        #: Classic PySpark cancels by job group; Spark Connect has no SparkContext: tags.
        self._classic = _has_context(self._spark)
        self._version: tuple[float, str] | None = None
        self._version_lock = threading.Lock()
        #: (snapshot serving or None, the tables it bounds and their K): swapped as one reference.
        #: (the snapshot serving, its bounded tables and K, its stored terms): swapped as one.
        self._serving: tuple[SparkSnapshotInfo | None, Mapping[str, int], frozenset[str]] = (
            None,
            {},
            frozenset(),
        )

    @property
    def database(self) -> str:
        return self._database

    @property
    def session(self) -> SparkSession:
        return self._spark

    @property
    def snapshot(self) -> SparkSnapshotInfo | None:
        return self._serving[0]

    def use_snapshot(self, info: SparkSnapshotInfo) -> None:
        """Serve statements without parameters from the snapshot database ``info`` from now on."""
        self._serving = (info, info.bounded(), info.precomputed())

    def prebounded(self) -> Mapping[str, int]:
        return self._serving[1]

    def precomputed(self) -> frozenset[str]:
        return self._serving[2]  # computed once per swap, not per query

    def source_version(self) -> str:
        """The data version of the source database (its tables, columns and files)."""
        return self._source_version()

    # -- catalog -------------------------------------------------------------------------------

    def _tables(self) -> list[str]:
        tables = self._catch(self._spark.catalog.listTables, self._database)
        return sorted(t.name for t in tables if not t.isTemporary)

    def columns(self) -> dict[str, list[tuple[str, str]]]:
        """Each table's columns and Spark type names (``bigint``, ``decimal(10,2)``, …), in
        table order (partition columns last, as ``SELECT *`` has them)."""
        out: dict[str, list[tuple[str, str]]] = {}
        for table in self._tables():
            cols = self._catch(self._spark.catalog.listColumns, self._qualified(table))
            out[table] = [(str(c.name), str(c.dataType)) for c in cols]
        return out

    def data_version(self) -> str:
        """The serving snapshot's data version, else the source's."""
        info = self._serving[0]
        return info.data_version if info is not None else self._source_version()

    def _source_version(self) -> str:
        """A digest of the database's tables, their columns and their input files.

        Detected: a table created, dropped or altered; a table rewritten or appended to by
        Spark (new part files: ``inputFiles()`` of each table and view); on classic PySpark
        also a file replaced in place under the same name (each input file's size and
        modification time, from one directory listing per directory, for tables of up to
        20,000 files). Not detected: changes behind sources without files (JDBC tables and
        the like) — there a stale version can only replay an earlier, already-paid answer,
        never a privacy loss. Re-read at most every 2 s.
        """
        now = time.monotonic()
        cached = self._version
        if cached is not None and now - cached[0] < _VERSION_TTL_S:
            return cached[1]
        with self._version_lock:
            parts: list[Any] = [self._database, sorted(self.columns().items())]
            for table in self._tables():
                files = sorted(self._catch(self._input_files, table))
                parts.append((table, files, self._file_status(files)))
            digest = hashlib.sha256(repr(parts).encode())
            version = "spark-" + digest.hexdigest()[:16]
            self._version = (time.monotonic(), version)
        return version

    def _input_files(self, table: str) -> list[str]:
        # A session caches each table's file listing; a writer elsewhere (another application,
        # another session) leaves it stale, so this session would neither see new files nor stop
        # reading deleted ones. Refreshing here, at most once per TTL, makes the version and the
        # queries after it read what is there now.
        name = self._qualified(table)
        self._spark.catalog.refreshTable(name)
        return list(self._spark.table(name).inputFiles())

    def _file_status(self, files: list[str]) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of ``files`` through Hadoop's FileSystem (classic PySpark only)."""
        if not self._classic or not files or len(files) > _MAX_STATUS_FILES:
            return []
        try:
            jvm = self._spark.sparkContext._jvm
            assert jvm is not None
            hadoop_conf = self._spark.sparkContext._jsc.hadoopConfiguration()
            wanted = set(files)
            out: list[tuple[str, int, int]] = []
            for directory in sorted({f.rsplit("/", 1)[0] for f in files}):
                path = jvm.org.apache.hadoop.fs.Path(directory)
                for status in path.getFileSystem(hadoop_conf).listStatus(path):
                    name = str(status.getPath().toString())
                    if name in wanted:
                        out.append((name, int(status.getLen()), int(status.getModificationTime())))
            return sorted(out)
        except Exception as exc:  # py4j errors are not PySparkExceptions
            raise WarehouseError("the Spark warehouse could not list its files") from exc

    # -- queries -------------------------------------------------------------------------------

    def execute(
        self,
        sql: str,
        parameters: Sequence[Any],
        *,
        before_execute: Callable[[], None] | None = None,
    ) -> ResultSet:
        """Run one query; ``parameters`` bind its ``?`` markers (the salt). See
        :meth:`gateway.warehouse.DuckDBWarehouse.execute` for ``before_execute``."""
        _require_query(sql)
        info, bounded, _ = self._serving
        if info is not None and not parameters:
            # Planned as pre-bounded: the snapshot's bounded tables, the source's public ones.
            sql = _qualify(sql, info.database, bounded, self._database)
        if before_execute is not None:
            before_execute()
        timed_out = threading.Event()
        with self._cancellable() as cancel:
            done = threading.Event()

            def _watch() -> None:
                if done.wait(self._timeout_s):
                    return
                timed_out.set()
                while not done.is_set():
                    cancel()
                    done.wait(_CANCEL_EVERY_S)

            watchdog = threading.Thread(target=_watch, name="privgate-spark-watchdog", daemon=True)
            watchdog.start()
            try:
                frame = self._spark.sql(sql, args=list(parameters) if parameters else None)
                fields = frame.schema.fields
                rows = frame.collect()
            except Exception as exc:  # PySparkException, py4j errors, interrupted collects
                if timed_out.is_set():
                    raise QueryTimeout(
                        f"the query ran past the {self._timeout_s:g} s timeout"
                    ) from exc
                # The detail may describe data; it goes to the log via __cause__, never to the user.
                raise WarehouseError("the warehouse could not complete the query") from exc
            finally:
                done.set()
                watchdog.join()
        stamps = [i for i, f in enumerate(fields) if isinstance(f.dataType, TimestampType)]
        out = [tuple(_plain(v) for v in row) for row in rows]
        if stamps:
            out = [self._wall_clock(row, stamps) for row in out]
        return ResultSet(columns=tuple(f.name for f in fields), rows=out)

    @contextmanager
    def _cancellable(self) -> Iterator[Callable[[], None]]:
        """Mark the jobs this thread starts, and yield what cancels them."""
        group = f"privgate-{uuid.uuid4().hex}"
        if self._classic:
            context = self._spark.sparkContext
            context.setJobGroup(group, "privgate query", interruptOnCancel=True)
            try:
                yield lambda: context.cancelJobGroup(group)
            finally:
                context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
                context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
                context.setLocalProperty("spark.job.interruptOnCancel", None)  # type: ignore[arg-type]
        else:
            spark = self._spark

            def _interrupt() -> None:
                spark.interruptTag(group)

            spark.addTag(group)
            try:
                yield _interrupt
            finally:
                self._spark.removeTag(group)

    def _wall_clock(self, row: tuple[Any, ...], stamps: list[int]) -> tuple[Any, ...]:
        # PySpark turns TIMESTAMP values into naive datetimes in the *Python process's* local
        # time zone; the SQL computed them (date_trunc, literals) in the session's.
        cells = list(row)
        for i in stamps:
            value = cells[i]
            if isinstance(value, dt.datetime):
                cells[i] = value.astimezone(self._zone).replace(tzinfo=None)
        return tuple(cells)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.stop()
            self._owned = None

    # -- helpers -------------------------------------------------------------------------------

    def _qualified(self, table: str) -> str:
        return ".".join(
            exp.to_identifier(part, quoted=True).sql(dialect="spark")
            for part in (self._database, table)
        )

    def _catch(self, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except PySparkException as exc:
            raise WarehouseError("the Spark warehouse could not read its catalog") from exc


def _create_session(url: str, conf: Mapping[str, str]) -> SparkSession:
    builder = SparkSession.builder
    try:
        if url.startswith("sc://"):
            return builder.remote(url).getOrCreate()
        for key, value in {**_OWN_SESSION_CONF, **conf}.items():
            builder = builder.config(key, value)
        return builder.master(url).getOrCreate()
    except (PySparkException, ImportError, OSError) as exc:
        # Java missing, the master unreachable, Spark Connect's client libraries not installed.
        raise WarehouseUnavailable(f"cannot start a Spark session for {url}: {exc}") from exc


def _own_session(spark: SparkSession) -> SparkSession:
    """A session of our own on the same SparkContext: its current database, time zone and SQL
    settings do not touch the caller's. Spark Connect has no ``newSession``: the given one."""
    try:
        return spark.newSession()
    except (PySparkException, NotImplementedError):
        return spark


def _has_context(spark: SparkSession) -> bool:
    try:
        spark.sparkContext  # noqa: B018 - raises on Spark Connect
    except PySparkException:
        return False
    return True


def _require_query(sql: str) -> None:
    """Refuse anything but one query: ``spark.sql`` would run DDL and DML on the spot.

    The rewriter only ever emits single queries, so anything else is a bug (an internal error),
    refused before Spark sees it.
    """
    try:
        statements = sqlglot.parse(sql, read="spark")
    except sqlglot.errors.SqlglotError as exc:
        raise InternalError("privgate sends only single queries to Spark") from exc
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise InternalError("privgate sends only single queries to Spark")


def _qualify(sql: str, snapshot: str, bounded: Mapping[str, int], source: str) -> str:
    """``sql`` with every table reference qualified: the ``snapshot`` database for the tables in
    ``bounded``, the ``source`` database for the others; CTE names are left alone.

    The qualifiers are inserted into the text at the positions sqlglot's parser reports, so the
    rest of the statement goes to Spark exactly as the rewriter wrote it (sqlglot's regenerated
    SQL is equivalent but not identical, e.g. ``NOT x IS NULL``); without positions, the
    regenerated statement. A reference that already names a database, or that is not a plain
    table name (a table function), is refused (fail closed: the rewriter emits neither), and so
    is a result whose tables do not all read from the intended database.
    """
    tree = _parse_one(sql)
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    if ctes & {name.lower() for name in bounded}:
        # A CTE named like a bounded table hides it: a reference to the table inside the CTE's
        # own body would be left unqualified and read the unbounded source. (The rewriter names
        # its CTEs __pg_*; refuse rather than guess which reference is which.)
        raise InternalError("privgate could not direct a statement to the Spark snapshot")
    wanted: dict[str, str] = {}
    edits: list[tuple[int, str]] = []
    positioned = True
    for table in tree.find_all(exp.Table):
        if (
            not isinstance(table.this, exp.Identifier)
            or table.args.get("db") is not None
            or table.args.get("catalog") is not None
        ):
            raise InternalError("privgate reads only its own table names from a Spark snapshot")
        name = table.name.lower()
        if name in ctes:
            continue
        database = snapshot if name in bounded else source
        wanted[name] = database
        qualifier = exp.to_identifier(database, quoted=True)
        meta = table.this.meta
        start, stop = meta.get("start"), meta.get("end")
        if (
            isinstance(start, int)
            and isinstance(stop, int)
            and sql[start : stop + 1].strip("`").lower() == name
        ):
            edits.append((start, qualifier.sql(dialect="spark") + "."))
        else:
            positioned = False
        table.set("db", qualifier)
    if positioned:
        out = sql
        for at, text in sorted(edits, reverse=True):
            out = out[:at] + text + out[at:]
    else:
        out = tree.sql(dialect="spark")
    for table in _parse_one(out).find_all(exp.Table):
        name = table.name.lower()
        if name in ctes and not table.db:
            continue
        if table.db != wanted.get(name) or table.args.get("catalog") is not None:
            raise InternalError("privgate could not direct a statement to the Spark snapshot")
    return out


def _parse_one(sql: str) -> exp.Expr:
    try:
        return sqlglot.parse_one(sql, read="spark")
    except sqlglot.errors.SqlglotError as exc:
        raise InternalError("privgate sends only single queries to Spark") from exc


def _plain(value: Any) -> Any:
    """DECIMAL results (the fixed-point sums) as int when whole, else float."""
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    return value
