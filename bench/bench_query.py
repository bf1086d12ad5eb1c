"""DP query time ÷ raw (non-private) query time on the demo's largest table, measured in one run.

    ./dev bench [--patients 100000] [--repeat 15] [--bounding both|snapshot|per-query]
                [--warehouse duckdb|postgres]

Both sides run on locked-down DuckDB connections to the same warehouse file in the same process;
the raw query always reads the source table. The DP side is the full ``QueryService.run`` path
(plan, reserve, bounded SQL, noise, commit, audit) without HTTP, once with bounded snapshots (the
default: bounding done once per data version, its build time reported) and once with per-query
bounding. Every DP run asks a fresh question (a different ε each time), so no run is a replay.
The gateway's own overhead (run time minus the time inside ``warehouse.execute``: planning,
budget reservation and commit, noise, audit) is reported as p50/p99 (over at least 50 runs with the snapshot).

``--warehouse postgres`` copies the demo tables into a database ``privgate_bench_<patients>`` on
the local PostgreSQL (``--pg-admin-url``, kept between runs), with a read-only query role; the
raw query then runs through psycopg as the admin on the same server, and the snapshot mode builds
the bounded schema with the admin as the builder role.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.composition import build_services
from gateway.demo import ensure_demo_warehouse
from gateway.service import CallContext, QueryRequest
from gateway.settings import Settings, demo_policy_path
from gateway.warehouse import DuckDBWarehouse, ResultSet

QUERIES = {
    "group by public domain": (
        "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY department",
        "SELECT department, COUNT(*) AS n, AVG(LEAST(GREATEST(cost, 0), 5000)) FROM visits "
        "GROUP BY department",
    ),
    "group by thresholded key": (
        "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day",
        "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day",
    ),
    "filtered sum": (
        "SELECT SUM(cost) FROM visits WHERE department = 'oncology' AND los_days > 0",
        "SELECT SUM(LEAST(GREATEST(cost, 0), 5000)) FROM visits "
        "WHERE department = 'oncology' AND los_days > 0",
    ),
}


def _time(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class _WarehouseClock:
    """Wraps ``warehouse.execute`` to add up the time spent inside it (per DP run).

    The gateway's ``before_execute`` callback (the budget reservation, made once the warehouse is
    reachable) runs inside ``execute`` but is gateway work: its time is not counted here.
    """

    def __init__(self, warehouse: Any) -> None:
        self._execute = warehouse.execute
        self.spent = 0.0
        warehouse.execute = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        callback = kwargs.get("before_execute")
        in_callback = 0.0
        if callback is not None:

            def timed() -> None:
                nonlocal in_callback
                started = time.perf_counter()
                try:
                    callback()
                finally:
                    in_callback += time.perf_counter() - started

            kwargs["before_execute"] = timed
        start = time.perf_counter()
        try:
            return self._execute(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - start - in_callback


def _overhead(fn: Any, clock: _WarehouseClock, runs: int) -> tuple[float, float]:
    """p50 and p99 of (run time - warehouse time): what the gateway adds to the warehouse."""
    fn()
    samples = []
    for _ in range(runs):
        clock.spent = 0.0
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start - clock.spent)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


class _PgRaw:
    """The raw query on PostgreSQL, as the admin, through psycopg: no gateway at all."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._con = psycopg.connect(dsn, autocommit=True)

    def execute(self, sql: str, _params: list[Any]) -> ResultSet:
        cur = self._con.execute(sql)
        return ResultSet(tuple(d.name for d in cur.description or ()), cur.fetchall())

    def close(self) -> None:
        self._con.close()


def _pg_copy(admin_url: str, warehouse: Path, patients: int) -> tuple[str, str, str]:
    """(admin DSN, reader URL, builder URL) of a PostgreSQL copy of the demo warehouse."""
    import sys

    import duckdb
    import psycopg

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/
    from tests.pg_helpers import copy_tables

    database = f"privgate_bench_{patients}"
    base = admin_url.rsplit("/", 1)[0]
    dsn = f"{base}/{database}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if exists.fetchone() is None:
            admin.execute(f'CREATE DATABASE "{database}"')
            source = duckdb.connect(":memory:")
            source.execute(f"ATTACH '{warehouse}' AS src (READ_ONLY)")
            tables = ("departments", "patients", "visits")
            for t in tables:
                source.execute(f"CREATE TABLE main.{t} AS SELECT * FROM src.{t}")
            source.execute("DETACH src")
            with psycopg.connect(dsn, autocommit=True) as con:
                started = time.perf_counter()
                con.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                copy_tables(source, con, tables)
                print(f"copied the demo into PostgreSQL in {time.perf_counter() - started:.1f} s")
            source.close()
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                "'privgate_bench_reader') THEN CREATE ROLE privgate_bench_reader LOGIN; END IF; "
                "END $$"
            )
            con.execute("GRANT USAGE ON SCHEMA public TO privgate_bench_reader")
            con.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO privgate_bench_reader")
    user = admin_url.split("://", 1)[1].split("@", 1)[0]
    host = base.split("@", 1)[1]
    reader = f"postgresql+psycopg://privgate_bench_reader@{host}/{database}"
    builder = f"postgresql+psycopg://{user}@{host}/{database}"
    return dsn, reader, builder


def _gateway(
    tmp: Path,
    warehouse: Path,
    policy_path: Path,
    snapshots: bool,
    pg: tuple[str, str, str] | None = None,
) -> tuple[Any, CallContext, float]:
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if pg is not None:
        extra["warehouse_url"] = pg[1]
        if snapshots:
            extra["warehouse_snapshot_url"] = pg[2]
    settings = Settings(
        data_dir=tmp / ("control-snap" if snapshots else "control-pq"),
        warehouse_path=warehouse,
        policy_path=policy_path,
        bounded_snapshots=snapshots,
        **extra,
    )
    services = build_services(settings)
    built = time.perf_counter() - started
    analyst = services.principals.get("analyst")
    assert analyst is not None
    return services, CallContext(principal=analyst, door="cli", client="bench"), built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--bounding", choices=["both", "snapshot", "per-query"], default="both")
    parser.add_argument("--warehouse", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = args.data_dir or tmp
        warehouse = data_dir / f"bench-{args.patients}.duckdb"
        ensure_demo_warehouse(warehouse, patients=args.patients)
        policy = yaml.safe_load(demo_policy_path().read_text())
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.9}
        }
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        pg = None
        raw_wh: Any
        if args.warehouse == "postgres":
            pg = _pg_copy(args.pg_admin_url, warehouse, args.patients)
            raw_wh = _PgRaw(pg[0])
        else:
            raw_wh = DuckDBWarehouse(warehouse)  # the source file, never a snapshot
        visits = raw_wh.execute("SELECT COUNT(*) FROM visits", []).rows[0][0]
        print(
            f"{args.warehouse}: visits {visits:,} rows, {args.patients:,} patients; "
            f"median of {args.repeat} runs"
        )
        modes = ["snapshot", "per-query"] if args.bounding == "both" else [args.bounding]
        counter = iter(range(1, 10**9))
        for mode in modes:
            services, ctx, built = _gateway(tmp, warehouse, policy_path, mode == "snapshot", pg)
            info = services.warehouse.snapshot
            extra = f"; snapshot built in {info.seconds:.2f} s" if info is not None else ""
            print(f"\nbounding: {mode} (gateway start {built:.2f} s{extra})")
            clock = _WarehouseClock(services.warehouse)
            print(
                f"{'query':28s} {'raw ms':>9s} {'DP ms':>9s} {'DP / raw':>9s} "
                f"{'gateway p50 ms':>15s} {'p99 ms':>8s}"
            )
            for name, (dp_sql, raw_sql) in QUERIES.items():
                raw = _time(lambda q=raw_sql: raw_wh.execute(q, []), args.repeat)

                def dp(q: str = dp_sql, svc: Any = services, c: CallContext = ctx) -> None:
                    # A different epsilon each run: a fresh answer, never a replay.
                    eps = f"0.1{next(counter):09d}"
                    svc.queries.run(QueryRequest(sql=q, epsilon=eps), c)

                dp_s = _time(dp, args.repeat)
                # 50 runs for the percentiles where runs are fast (the snapshot); per-query
                # bounding takes seconds per run, so it gets --repeat runs only.
                runs = max(args.repeat, 50) if mode == "snapshot" else args.repeat
                p50, p99 = _overhead(dp, clock, runs)
                print(
                    f"{name:28s} {raw * 1000:9.1f} {dp_s * 1000:9.1f} {dp_s / raw:8.2f}x "
                    f"{p50 * 1000:15.2f} {p99 * 1000:8.2f}"
                )
            services.close()
        raw_wh.close()


if __name__ == "__main__":
    main()
