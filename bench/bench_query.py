"""DP query time ÷ raw (non-private) query time on the demo's largest table, measured in one run.

    ./dev bench [--patients 100000] [--repeat 15]

Both sides run on the same locked-down DuckDB warehouse adapter in the same process; the DP side is
the full ``QueryService.run`` path (plan, reserve, bounded SQL, noise, commit, audit) without HTTP.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        warehouse = data_dir / f"bench-{args.patients}.duckdb"
        ensure_demo_warehouse(warehouse, patients=args.patients)
        policy = yaml.safe_load(demo_policy_path().read_text())
        policy["datasets"]["clinic"]["budget"] = {"per_principal": {"epsilon": 100000, "delta": 0.9}}
        policy_path = Path(tmp) / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        settings = Settings(
            data_dir=Path(tmp) / "control", warehouse_path=warehouse, policy_path=policy_path
        )
        services = build_services(settings)
        analyst = services.principals.get("analyst")
        assert analyst is not None
        ctx = CallContext(principal=analyst, door="cli", client="bench")
        visits = services.warehouse.execute("SELECT COUNT(*) FROM visits", []).rows[0][0]
        print(f"visits: {visits:,} rows, {args.patients:,} patients; median of {args.repeat} runs")
        print(f"{'query':28s} {'raw ms':>9s} {'DP ms':>9s} {'DP / raw':>9s}")
        for name, (dp_sql, raw_sql) in QUERIES.items():
            raw = _time(lambda q=raw_sql: services.warehouse.execute(q, []), args.repeat)
            dp = _time(
                lambda q=dp_sql: services.queries.run(QueryRequest(sql=q, epsilon=0.1), ctx),
                args.repeat,
            )
            print(f"{name:28s} {raw * 1000:9.1f} {dp * 1000:9.1f} {dp / raw:8.1f}x")
        services.close()


if __name__ == "__main__":
    main()
