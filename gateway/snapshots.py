"""Bounded snapshots: contribution bounding done once per data version instead of in every query.

Bounding inside each query (a keyed ``ROW_NUMBER`` per unit) costs 20-100x the raw query on DuckDB
(FIELD-NOTES). A bounded snapshot is a gateway-owned DuckDB file holding, per protected table, the
rows each unit keeps — at most ``max_rows_per_unit``, chosen by the same keyed ranking as the
per-query form (:func:`rewriter.rules.bound_and_emit.snapshot_select`), without the policy's
blocked columns — and a verbatim copy of each public table. Queries then read the copy without
any window, at about the raw query's cost.

A snapshot is named by what it was built from: the source warehouse's data version and a *spec*
digest of the tables, their columns, units and K, and a fingerprint of the bounding salt. A
changed source, policy K or salt therefore needs a new snapshot; until it is ready the old one
keeps serving (stamped with its own, older, data version), or per-query bounding when there is
none. Files live in ``<data_dir>/bounded/``: ``<name>.duckdb`` and its manifest ``<name>.json``,
both written to a temporary name and renamed, so a crash never leaves a half snapshot in use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from rewriter.catalog import Catalog, CatalogTable, LogicalType
from rewriter.policy import ColumnClass
from rewriter.rules.bound_and_emit import precomputed_sums, snapshot_select

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """What every bounded snapshot (a DuckDB file, a PostgreSQL schema, a Spark database)
    records; each subclass adds where it lives and names itself by it (``name``)."""

    source_version: str
    spec: str
    built_at: str
    seconds: float
    #: Per table: ``{"max_rows_per_unit": K or None (public copy), "rows": n, …}``.
    tables: Mapping[str, Mapping[str, Any]]

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def data_version(self) -> str:
        """What answers computed on this snapshot are stamped with."""
        return f"{self.source_version}.b{self.spec[:8]}"

    def bounded(self) -> dict[str, int]:
        """The protected tables in it and their K (lower-case names), for the planner."""
        return {
            name.lower(): int(t["max_rows_per_unit"])
            for name, t in self.tables.items()
            if t.get("max_rows_per_unit") is not None
        }

    def precomputed(self) -> frozenset[str]:
        """The fixed-point terms it stores, as ``table.column`` (lower-case table names), for
        the planner (rewriter.rules.bound_and_emit.precomputed_sums)."""
        return frozenset(
            f"{name.lower()}.{column}"
            for name, t in self.tables.items()
            if t.get("max_rows_per_unit") is not None
            for column in t.get("precomputed", ())
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_version": self.source_version,
            "data_version": self.data_version,
            "spec": self.spec,
            "built_at": self.built_at,
            "seconds": self.seconds,
            "tables": {k: dict(v) for k, v in self.tables.items()},
        }


@dataclass(frozen=True, slots=True)
class SnapshotInfo(SnapshotManifest):
    """A built snapshot file, as its manifest records it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def snapshot_spec(catalog: Catalog, salt: bytes) -> tuple[str, dict[str, int | None]]:
    """The spec digest and, per catalog table, its K (``None`` for public tables)."""
    plan: dict[str, int | None] = {}
    described: list[Any] = []
    for name in sorted(catalog.tables):
        table = catalog.tables[name]
        k: int | None = None
        unit = None
        if not table.public:
            ds = catalog.datasets[table.dataset]
            k = ds.defaults.max_rows_per_unit
            unit = ds.privacy_unit.lower()
        plan[table.name] = k
        # The precomputed terms' names digest the measures' bounds: a change of bounds asks
        # for a new snapshot (the old one serves meanwhile, its terms unused).
        sums = sorted(precomputed_sums(table, "duckdb")) if k is not None else []
        described.append([table.name, list(table.columns), unit, k, sums])
    fingerprint = hmac.new(salt, b"privgate-snapshot-salt-id", hashlib.sha256).hexdigest()[:16]
    # v3: text dimensions with a declared domain are stored as ENUMs (_enum_domains).
    blob = json.dumps({"v": 3, "tables": described, "salt": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24], plan


def _name(source_version: str, spec: str) -> str:
    return f"{source_version}-{spec[:12]}"


def find_snapshot(directory: Path, source_version: str, spec: str) -> SnapshotInfo | None:
    """The complete snapshot built from exactly this source and spec, if there is one."""
    return read_manifest(directory / f"{_name(source_version, spec)}.json")


def read_manifest(path: Path) -> SnapshotInfo | None:
    try:
        data = json.loads(path.read_text())
        info = SnapshotInfo(
            path=path.with_suffix(".duckdb"),
            source_version=str(data["source_version"]),
            spec=str(data["spec"]),
            built_at=str(data["built_at"]),
            seconds=float(data["seconds"]),
            tables=data["tables"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if info.path.is_file() else None


def build_snapshot(
    *,
    source: Path,
    source_version: str,
    catalog: Catalog,
    salt: bytes,
    directory: Path,
    threads: int | None = None,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Build the snapshot of ``source`` for ``catalog`` into ``directory`` and return it.

    The salt is a bound parameter of the ranking, never part of any SQL text.

    Raises:
        duckdb.Error: the source cannot be read or the directory written.
    """
    say = progress or (lambda _msg: None)
    spec, plan = snapshot_spec(catalog, salt)
    name = _name(source_version, spec)
    directory.mkdir(parents=True, exist_ok=True)
    # A per-process scratch name: two gateways sharing data_dir may build the same snapshot.
    final = directory / f"{name}.duckdb"
    tmp = directory / f"{name}.{os.getpid()}.duckdb.tmp"
    tmp.unlink(missing_ok=True)
    started = time.perf_counter()
    config: dict[str, Any] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    tables: dict[str, dict[str, Any]] = {}
    try:
        con.execute(f"ATTACH {_literal(str(source))} AS src (READ_ONLY)")
        con.execute(f"ATTACH {_literal(str(tmp))} AS snap")
        con.execute("USE src")
        for i, (table_name, k) in enumerate(sorted(plan.items()), start=1):
            table = catalog.tables[table_name.lower()]
            quoted = _ident(table.name)
            say(
                f"bounded snapshot: table {i}/{len(plan)} {table.name} "
                f"({'public copy' if k is None else f'at most {k} rows per unit'})"
            )
            t0 = time.perf_counter()
            if k is None:
                con.execute(f"CREATE TABLE snap.main.{quoted} AS SELECT * FROM {quoted}")
            else:
                ds = catalog.datasets[table.dataset]
                select = snapshot_select(
                    table=table,
                    unit=table.columns[ds.privacy_unit.lower()],
                    max_rows_per_unit=k,
                    dialect="duckdb",
                )
                # Blocked columns served only the ranking: the copy leaves them out, so that
                # data_dir holds no second copy of what no query may ever read.
                enums = _enum_domains(con, table, quoted)
                kept_cols = ", ".join(
                    _kept_column(c.name, enums.get(c.name)) for c in table.visible_columns()
                )
                sums = precomputed_sums(table, "duckdb")
                terms = "".join(f", {sql} AS {_ident(name)}" for name, sql in sums.items())
                # Rows stored in the order of their ENUM keys: runs of one key compress and
                # group together (the kept rows are the same in any order).
                order = f" ORDER BY {', '.join(_ident(c) for c in enums)}" if enums else ""
                con.execute(
                    f"CREATE TABLE snap.main.{quoted} AS SELECT {kept_cols}{terms} "
                    f"FROM ({select}) AS __pg_t{order}",
                    [salt.decode()],
                )
            rows = _count(con, f"snap.main.{quoted}")
            source_rows = _count(con, quoted)
            tables[table.name] = {"max_rows_per_unit": k, "rows": rows, "source_rows": source_rows}
            if k is not None:
                tables[table.name]["precomputed"] = sorted(sums)
                tables[table.name]["enums"] = sorted(enums)
            # Row counts go to the manifest (admins only), not to the log.
            say(f"bounded snapshot: {table.name} done in {time.perf_counter() - t0:.1f} s")
        con.execute("DETACH snap")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, final)
    seconds = round(time.perf_counter() - started, 3)
    info = SnapshotInfo(
        path=final,
        source_version=source_version,
        spec=spec,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=seconds,
        tables=tables,
    )
    manifest = directory / f"{name}.json"
    scratch = manifest.with_suffix(".json.tmp")
    scratch.write_text(json.dumps({k: v for k, v in info.as_json().items() if k != "name"}))
    os.replace(scratch, manifest)  # the manifest last: its presence means "complete"
    say(f"bounded snapshot {name} ready in {seconds:.1f} s")
    return info


def remove_others(directory: Path, keep: SnapshotInfo) -> None:
    """Delete every snapshot but ``keep`` (open readers keep their file until they close).

    Scratch files of builds in progress are left alone unless a day old (a crashed build).
    """
    for path in directory.glob("*"):
        if path.suffix == ".tmp":
            try:
                if time.time() - path.stat().st_mtime > 86_400:
                    path.unlink(missing_ok=True)
            except OSError:
                pass
        elif path.stem != keep.name and path.suffix in (".duckdb", ".json"):
            path.unlink(missing_ok=True)


#: Larger declared domains stay VARCHAR (an ENUM's gain is in small dictionaries).
MAX_ENUM_VALUES = 4096


def _enum_domains(
    con: duckdb.DuckDBPyConnection, table: CatalogTable, quoted: str
) -> dict[str, tuple[str, ...]]:
    """The text dimensions of ``table`` the snapshot stores as ENUMs, with their members.

    A dimension with a declared domain (``values``, all strings) qualifies when the source holds
    no other non-NULL value: the ENUM's members are the policy's values, never the data's, in
    code-point (= UTF-8 byte) order, so that sorting and MIN/MAX order them as VARCHAR does.
    DuckDB compares an ENUM with text, and passes it to string functions, as the VARCHAR it
    stands for, so every query gives what it gives on the text column; grouping and filtering
    on a one- or two-byte code instead of a string took 0.6x the warehouse time of the demo's
    GROUP BY department (bench/README.md). The gain is the engine's only: answers, sensitivities
    and the kept rows are unchanged.
    """
    out: dict[str, tuple[str, ...]] = {}
    for col in table.visible_columns():
        values = col.values
        if (
            col.cls is not ColumnClass.DIMENSION
            or col.type is not LogicalType.STRING
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            continue
        domain = tuple(sorted({str(v) for v in values}))
        if len(domain) > MAX_ENUM_VALUES:
            continue
        name = _ident(col.name)
        stray = con.execute(
            f"SELECT COUNT(*) FROM {quoted} WHERE {name} IS NOT NULL "
            f"AND NOT list_contains(?::VARCHAR[], {name})",
            [list(domain)],
        ).fetchone()
        if stray is not None and int(stray[0]) == 0:
            out[col.name] = domain
    return out


def _kept_column(name: str, domain: tuple[str, ...] | None) -> str:
    if domain is None:
        return _ident(name)
    members = ", ".join(_literal(v) for v in domain)
    return f"CAST({_ident(name)} AS ENUM({members})) AS {_ident(name)}"


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Rebuilds:
    """At most one background rebuild at a time, with its state for the admin API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = False
        self.last_error: str | None = None
        self.last_progress: str | None = None

    def start(self, job: Callable[[Progress], None]) -> bool:
        """Run ``job`` in a daemon thread; False if one is already running."""
        with self._lock:
            if self.running:
                return False
            self.running = True
            self.last_error = None

        def run() -> None:
            def note(message: str) -> None:
                self.last_progress = message
                log.info("%s", message)

            try:
                job(note)
            except Exception as exc:
                self.last_error = type(exc).__name__
                log.exception("bounded snapshot rebuild failed; the previous one keeps serving")
            finally:
                with self._lock:
                    self.running = False

        threading.Thread(target=run, name="privgate-snapshot", daemon=True).start()
        return True
