"""The composition root: the only place that builds concrete classes and wires them together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from sqlalchemy import Engine

from budgets.group_commit import GroupCommit
from budgets.ledger import ReconcileReport, SqlLedger
from gateway.anomaly import AnomalyDetector, AnomalyRules
from gateway.audit import AuditLog
from gateway.catalog_load import load_catalog
from gateway.control_db import make_control_engine, migrate, wal_flusher
from gateway.errors import WarehouseUnavailable
from gateway.file_lock import FileLock
from gateway.logs import log_query_record
from gateway.metrics import Metrics
from gateway.policy_loader import LoadedPolicy, load_policy
from gateway.principals import PrincipalStore
from gateway.results import ResultStore
from gateway.service import QueryService
from gateway.settings import Settings, load_secrets
from gateway.snapshots import (
    Progress,
    Rebuilds,
    SnapshotInfo,
    SnapshotManifest,
    build_snapshot,
    find_snapshot,
    remove_others,
    snapshot_spec,
)
from gateway.snapshots_pg import (
    PgSnapshotInfo,
    build_pg_snapshot,
    find_pg_snapshot,
    remove_other_pg_snapshots,
)
from gateway.warehouse import DuckDBWarehouse, file_version
from gateway.warehouse_pg import PostgresWarehouse

log = logging.getLogger("privgate.composition")


if TYPE_CHECKING:
    from gateway.snapshots_spark import SparkSnapshotInfo
    from gateway.warehouse_spark import SparkWarehouse

AnyWarehouse = Union[DuckDBWarehouse, PostgresWarehouse, "SparkWarehouse"]


class SnapshotsUnsupported(RuntimeError):
    """The warehouse cannot hold bounded snapshots (it bounds per query)."""


_Info = TypeVar("_Info", bound=SnapshotManifest)


def _serve_snapshot(
    warehouse: Any,
    *,
    find: Callable[[], _Info | None],
    build: Callable[[], _Info],
    remove_others: Callable[[_Info], object],
) -> _Info:
    """The snapshot for the current source and policy: found, else built; served from now on
    (unless it already serves); every other snapshot of this source dropped."""
    info = find()
    if info is None:
        info = build()
    current = warehouse.snapshot
    if current is None or current.name != info.name:
        warehouse.use_snapshot(info)
    remove_others(info)
    return info


@dataclass
class Services:
    settings: Settings
    policy: LoadedPolicy
    warehouse: AnyWarehouse
    ledger: SqlLedger
    audit: AuditLog
    principals: PrincipalStore
    queries: QueryService
    metrics: Metrics
    anomaly: AnomalyDetector
    #: The control database, for readiness checks.
    control: Engine
    _stop: threading.Event = field(default_factory=threading.Event)
    #: Called by :meth:`close`, in order (the wire endpoint, its shadow server, …).
    on_close: list[Callable[[], None]] = field(default_factory=list)
    rebuilds: Rebuilds = field(default_factory=Rebuilds)

    def close(self) -> None:
        self._stop.set()
        self.stop_doors()
        self.warehouse.close()

    def stop_doors(self) -> None:
        """Run the :attr:`on_close` steps once (the wire endpoint, its shadow server).

        Called from the REST app's shutdown too: uvicorn re-raises SIGTERM once it has shut
        down, which ends the process before code after ``uvicorn.run`` would run.
        """
        steps, self.on_close = list(self.on_close), []
        for fn in steps:
            try:
                fn()
            except Exception:
                log.exception("shutdown step failed")

    def reconcile(self) -> ReconcileReport:
        """Settle reservations left unfinished by a crash (see ``budgets.ledger.reconcile``)."""
        report = self.ledger.reconcile(older_than_s=self.settings.resolved_reconcile_grace_s)
        if report.refunded or report.committed:
            log.warning(
                "reconciled stale reservations: %d refunded, %d committed",
                report.refunded,
                report.committed,
            )
        return report

    def start_reconciler(self) -> None:
        """Reconcile now and then every ``reconcile_interval_s`` in a daemon thread."""
        self.reconcile()

        def loop() -> None:
            while not self._stop.wait(self.settings.reconcile_interval_s):
                try:
                    self.reconcile()
                except Exception:
                    log.exception("reconcile failed")

        threading.Thread(target=loop, name="privgate-reconciler", daemon=True).start()

    # -- bounded snapshots (gateway.snapshots) ------------------------------------------------

    def refresh_snapshot(
        self, progress: Progress | None = None
    ) -> SnapshotInfo | PgSnapshotInfo | SparkSnapshotInfo:
        """Serve the bounded snapshot for the current source and policy, building it if needed.

        Raises:
            duckdb.Error, OSError, WarehouseUnavailable, psycopg.Error, PySparkException: it could
                not be built or opened; the previous snapshot (or per-query bounding) keeps
                serving.
        """
        warehouse = self.warehouse
        catalog = self.queries.catalog
        salt, source_version, spec = self._snapshot_target()
        if isinstance(warehouse, PostgresWarehouse):
            writer = self.settings.warehouse_snapshot_url
            if writer is None:
                raise SnapshotsUnsupported(
                    "bounded snapshots on PostgreSQL need PRIVGATE_WAREHOUSE_SNAPSHOT_URL; "
                    "this warehouse bounds contributions inside every query"
                )
            url = writer.get_secret_value()
            pg = warehouse
            return _serve_snapshot(
                pg,
                find=lambda: find_pg_snapshot(url, source_version, spec),
                build=lambda: build_pg_snapshot(
                    writer_url=url,
                    reader_role=pg.role,
                    source_schema=pg.schema,
                    source_version=source_version,
                    catalog=catalog,
                    salt=salt,
                    progress=progress,
                ),
                remove_others=lambda info: remove_other_pg_snapshots(url, info.name),
            )
        if warehouse.dialect == "spark":
            return self._refresh_spark_snapshot(salt, source_version, spec, progress)
        if not isinstance(warehouse, DuckDBWarehouse):
            raise SnapshotsUnsupported(
                f"bounded snapshots are not built on {warehouse.dialect} warehouses; this one "
                "bounds contributions inside every query"
            )
        directory = self.settings.data_dir / "bounded"
        duck = warehouse
        directory.mkdir(parents=True, exist_ok=True)
        # Processes sharing data_dir (serve --workers, replicas on one host) build it once: the
        # first builds under the lock, the others then find it (gateway.file_lock).
        lock = FileLock(directory / "build.lock")
        try:
            with lock.held():
                return self._serve_duckdb_snapshot(
                    duck, directory, source_version, spec, salt, progress
                )
        finally:
            lock.close()

    def _serve_duckdb_snapshot(
        self,
        duck: DuckDBWarehouse,
        directory: Path,
        source_version: str,
        spec: str,
        salt: bytes,
        progress: Progress | None,
    ) -> SnapshotInfo:
        catalog = self.queries.catalog
        return _serve_snapshot(
            duck,
            find=lambda: find_snapshot(directory, source_version, spec),
            build=lambda: build_snapshot(
                source=duck.path,
                source_version=source_version,
                catalog=catalog,
                salt=salt,
                directory=directory,
                threads=duck.threads,
                progress=progress,
            ),
            remove_others=lambda info: remove_others(directory, info),
        )

    def _refresh_spark_snapshot(
        self, salt: bytes, source_version: str, spec: str, progress: Progress | None
    ) -> SparkSnapshotInfo:
        """The Spark branch of :meth:`refresh_snapshot`: a database of the warehouse's catalog
        (built through the warehouse's own session, which needs CREATE DATABASE there)."""
        from gateway.snapshots_spark import (
            build_spark_snapshot,
            find_spark_snapshot,
            remove_other_spark_snapshots,
        )
        from gateway.warehouse_spark import SparkWarehouse

        warehouse = self.warehouse
        if not isinstance(warehouse, SparkWarehouse):  # pragma: no cover - checked by the caller
            raise SnapshotsUnsupported("not a Spark warehouse")
        spark = warehouse.session
        catalog = self.queries.catalog
        return _serve_snapshot(
            warehouse,
            find=lambda: find_spark_snapshot(spark, source_version, spec),
            build=lambda: build_spark_snapshot(
                warehouse=warehouse,
                catalog=catalog,
                salt=salt,
                source_version=source_version,
                progress=progress,
            ),
            remove_others=lambda info: remove_other_spark_snapshots(
                spark, info.name, source=warehouse.database
            ),
        )

    def rebuild_snapshot_in_background(self) -> bool:
        """Start a rebuild (the current snapshot serves meanwhile); False if one is running."""

        def job(note: Progress) -> None:
            self.refresh_snapshot(note)

        return self.rebuilds.start(job)

    def snapshot_stale(self) -> bool:
        """True when the serving snapshot no longer matches the source file or the policy."""
        current = self.warehouse.snapshot
        if current is None:
            return True
        try:
            _, source_version, spec = self._snapshot_target()
        except OSError:
            return False
        return (current.source_version, current.spec) != (source_version, spec)

    def _snapshot_target(self) -> tuple[bytes, str, str]:
        """(salt, source version, spec) of the snapshot the source and policy call for now.

        Raises:
            OSError: the warehouse file cannot be read.
        """
        salt = load_secrets(self.settings)["bounding_salt"]
        spec, _ = snapshot_spec(self.queries.catalog, salt)
        if isinstance(self.warehouse, PostgresWarehouse):
            return salt, self.warehouse.source_version(), spec
        if isinstance(self.warehouse, DuckDBWarehouse):
            return salt, file_version(self.warehouse.path), spec
        return salt, self.warehouse.source_version(), spec  # Spark

    @property
    def snapshots_enabled(self) -> bool:
        """Bounded snapshots are on and the warehouse can hold them (DuckDB, PostgreSQL with a
        snapshot builder role, or Spark)."""
        if not self.settings.bounded_snapshots:
            return False
        if isinstance(self.warehouse, PostgresWarehouse):
            return self.settings.warehouse_snapshot_url is not None
        return isinstance(self.warehouse, DuckDBWarehouse) or self.warehouse.dialect == "spark"

    def start_snapshot_watch(self) -> None:
        """Check every ``snapshot_check_interval_s`` whether the snapshot is stale; rebuild then."""
        if not self.snapshots_enabled:
            return

        def loop() -> None:
            while not self._stop.wait(self.settings.snapshot_check_interval_s):
                try:
                    if self.snapshot_stale():
                        self.rebuild_snapshot_in_background()
                except Exception:
                    log.exception("bounded snapshot check failed")

        threading.Thread(target=loop, name="privgate-snapshot-watch", daemon=True).start()

    def reload_policy(self) -> LoadedPolicy:
        """Re-read the policy file and swap it in atomically; on any error the old one stays.

        Raises:
            PolicyFileError: the file is unreadable or invalid.
            CatalogMismatch: the policy names tables or columns the warehouse lacks.
        """
        loaded = load_policy(self.settings.resolved_policy_path)
        catalog = load_catalog(loaded.policy, self.warehouse)
        for name, p in loaded.policy.principals.items():
            self.principals.upsert_principal(name, role=p.role, datasets=p.datasets)
        self.queries.swap_policy(catalog, loaded.version)
        self.policy = loaded
        if self.snapshots_enabled and self.snapshot_stale():
            # A changed K or table: tables whose K no longer matches are bounded per query
            # (the planner checks) until the new snapshot is ready.
            self.rebuild_snapshot_in_background()
        return loaded


def build_control(settings: Settings) -> tuple[SqlLedger, AuditLog, PrincipalStore]:
    """The control-plane stores alone (for CLI commands that need no warehouse)."""
    secrets = load_secrets(settings)
    engine = make_control_engine(settings.resolved_control_db_url)
    # SQLite has one write turn per file: concurrent queries share transactions (one turn and
    # one flush for several; budgets.group_commit), and the flush (an fsync of the write-ahead
    # log) runs after the turn is released. PostgreSQL serialises on row locks instead.
    url = settings.resolved_control_db_url
    group = GroupCommit(engine, flush=wal_flusher(url)) if engine.dialect.name == "sqlite" else None
    ledger = SqlLedger(engine, group=group)
    audit = AuditLog(
        engine,
        mac_key=secrets["audit_key"],
        old_keys=settings.resolved_audit_old_keys,
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_dir=settings.audit_checkpoint_dir,
    )
    principals = PrincipalStore(
        engine, pepper=secrets["key_pepper"], old_peppers=settings.resolved_key_old_peppers
    )
    migrate(engine)
    audit.create_schema()  # the genesis head is sealed with the MAC key: not a migration's job
    unsalted = principals.fill_wire_salts()
    if unsalted:
        log.warning(
            "%d principals have wire verifiers made before salts were stored, during a pepper "
            "rotation: their keys log in over the wire again after one use over REST",
            unsalted,
        )
    return ledger, audit, principals


def build_warehouse(settings: Settings) -> AnyWarehouse:
    """The Spark warehouse if ``warehouse_spark_master`` is set, else the PostgreSQL one at
    ``warehouse_url`` if set, else the DuckDB file."""
    if settings.warehouse_spark_master is not None:
        try:
            from gateway.warehouse_spark import SparkWarehouse
        except ImportError as exc:
            raise WarehouseUnavailable(
                "a Spark warehouse needs pyspark: pip install 'privgate[spark]'"
            ) from exc
        return SparkWarehouse(
            settings.warehouse_spark_master,
            database=settings.warehouse_spark_database,
            timeout_s=settings.statement_timeout_s,
        )
    if settings.warehouse_url is not None:
        return PostgresWarehouse(
            settings.warehouse_url.get_secret_value(),
            schema=settings.warehouse_schema,
            timeout_s=settings.statement_timeout_s,
        )
    return DuckDBWarehouse(
        settings.resolved_warehouse_path,
        timeout_s=settings.statement_timeout_s,
        threads=settings.warehouse_threads,
    )


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    policy = load_policy(settings.resolved_policy_path)
    warehouse = build_warehouse(settings)
    catalog = load_catalog(policy.policy, warehouse)
    ledger, audit, principals = build_control(settings)
    for name, p in policy.policy.principals.items():
        principals.upsert_principal(name, role=p.role, datasets=p.datasets)
    # The same engine (one pool): run() commits charge, audit record and answer together.
    results = ResultStore(ledger.engine)
    metrics = Metrics(
        accounts=ledger.list_accounts,
        quarantined=lambda: len(principals.list_quarantined()),
    )
    anomaly = AnomalyDetector(
        AnomalyRules.from_settings(settings),
        audit=audit,
        quarantine=lambda name, reason: principals.quarantine(name, reason=reason),
        on_alert=metrics.alert,
    )
    queries = QueryService(
        catalog=catalog,
        warehouse=warehouse,
        ledger=ledger,
        audit=audit,
        results=results,
        salt=load_secrets(settings)["bounding_salt"],
        policy_version=policy.version,
        # Metrics first (cheap, in memory), then the rules (may write an alert), then the log line.
        listeners=(metrics, anomaly, log_query_record),
        quarantined=principals.is_quarantined,
        sql_cipher=settings.sql_cipher() if settings.audit_sql_text == "full" else None,
    )
    services = Services(
        settings,
        policy,
        warehouse,
        ledger,
        audit,
        principals,
        queries,
        metrics=metrics,
        anomaly=anomaly,
        control=ledger.engine,
    )
    if services.snapshots_enabled:
        # Built before serving, so that every answer of this process comes from one snapshot
        # until the source or the policy changes; a failure leaves per-query bounding in place.
        try:
            services.refresh_snapshot(lambda message: log.info("%s", message))
        except Exception:
            log.exception("the bounded snapshot could not be built; bounding per query instead")
    return services


def build_wire(
    services: Services,
    *,
    host: str | None = None,
    port: int | None = None,
    shadow: Any = None,
) -> Any:
    """The PostgreSQL wire endpoint beside REST (a started ``WireThread``), or ``None`` if off.

    The shadow catalog server is ``PRIVGATE_WIRE_SHADOW_DSN`` when set, else an embedded
    PostgreSQL that privgate starts in ``data_dir``. TLS uses the configured pair
    (``PRIVGATE_WIRE_TLS_*``, else ``PRIVGATE_TLS_*``), else a self-signed one in ``data_dir``.

    Raises:
        ShadowError: no shadow server is configured and none can be started here.
        TlsConfigError: a half-configured or missing certificate/key pair.
    """
    from gateway.tls import server_context, wire_tls
    from gateway.wire.server import WireConfig, WireServer, WireThread
    from gateway.wire.shadow import Shadow

    settings = services.settings
    bind_port = settings.pg_port if port is None else port
    if bind_port == 0 and port is None:
        return None
    pair = wire_tls(settings)  # before anything starts: a bad pair stops nothing half-way
    if shadow is None:
        if settings.wire_shadow_dsn is not None:
            dsn = settings.wire_shadow_dsn.get_secret_value()
        else:
            from gateway.wire.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(settings.data_dir / "shadow-pg")
            dsn = embedded.start()
            services.on_close.append(embedded.stop)
        shadow = Shadow(
            admin_dsn=dsn,
            statement_timeout_ms=settings.wire_shadow_timeout_ms,
            prefix=settings.wire_shadow_prefix,
        )
        services.on_close.append(shadow.close)
    server = WireServer(
        service=services.queries,
        principals=services.principals,
        audit=services.audit,
        shadow=shadow,
        ssl_context=server_context(pair.cert, pair.key),
        config=WireConfig(
            require_tls=settings.wire_require_tls,
            allow_cleartext=settings.wire_allow_cleartext,
            max_connections=settings.wire_max_connections,
            idle_timeout_s=settings.wire_idle_timeout_s,
        ),
        metrics=services.metrics,
    )
    thread = WireThread(server, host or settings.pg_host, bind_port)
    thread.start()
    services.on_close.insert(0, thread.stop)
    return thread
