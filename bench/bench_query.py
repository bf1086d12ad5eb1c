"""DP query time ÷ raw (non-private) query time on the demo's largest table, measured in one run.

    ./dev bench [--patients 100000] [--repeat 15] [--bounding both|snapshot|per-query]

Both sides run on locked-down DuckDB connections to the same warehouse file in the same process;
the raw query always reads the source table. The DP side is the full ``QueryService.run`` path
(plan, reserve, bounded SQL, noise, commit, audit) without HTTP, once with bounded snapshots (the
default: bounding done once per data version, its build time reported) and once with per-query
bounding. Every DP run asks a fresh question (a different ε each time), so no run is a replay.
The gateway's own overhead (run time minus the time inside ``warehouse.execute``: planning,
budget reservation and commit, noise, audit) is reported as p50/p99 (over at least 50 runs with the snapshot).
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
from gateway.warehouse import DuckDBWarehouse

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
    """Wraps ``warehouse.execute`` to add up the time spent inside it (per DP run)."""

    def __init__(self, warehouse: Any) -> None:
        self._execute = warehouse.execute
        self.spent = 0.0
        warehouse.execute = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._execute(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - start


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


def _gateway(
    tmp: Path, warehouse: Path, policy_path: Path, snapshots: bool
) -> tuple[Any, CallContext, float]:
    started = time.perf_counter()
    settings = Settings(
        data_dir=tmp / ("control-snap" if snapshots else "control-pq"),
        warehouse_path=warehouse,
        policy_path=policy_path,
        bounded_snapshots=snapshots,
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
        raw_wh = DuckDBWarehouse(warehouse)  # the source file, never a snapshot
        visits = raw_wh.execute("SELECT COUNT(*) FROM visits", []).rows[0][0]
        print(f"visits: {visits:,} rows, {args.patients:,} patients; median of {args.repeat} runs")
        modes = ["snapshot", "per-query"] if args.bounding == "both" else [args.bounding]
        counter = iter(range(1, 10**9))
        for mode in modes:
            services, ctx, built = _gateway(tmp, warehouse, policy_path, mode == "snapshot")
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
