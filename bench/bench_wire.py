"""Trivial-query rate over privgate's PostgreSQL wire endpoint ÷ a real PostgreSQL, same client.

    ./dev bench wire [--queries 3000] [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

The gateway runs in a child process (so that client and server do not share a GIL); the client
is one psycopg connection per target, measured in the same run. Targets: the real PostgreSQL
(no TLS: the local server has none), privgate without TLS, and privgate with TLS. ``SELECT 1``
is a catalog-side statement (answered by the shadow), so the ratio is the cost of the proxy:
parse + route + one shadow round trip. A repeated DP aggregate (a stored answer replayed at
no cost) shows the data path's floor.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg


def _serve(conn: Any, admin_dsn: str, prefix: str) -> None:
    from gateway.composition import build_services, build_wire
    from gateway.demo import build_demo_warehouse
    from gateway.settings import Settings
    from gateway.wire.shadow import Shadow

    tmp = Path(tempfile.mkdtemp(prefix="privgate-bench-wire-"))
    build_demo_warehouse(tmp / "demo.duckdb", patients=3000, progress=False)
    settings = Settings(data_dir=tmp, warehouse_path=tmp / "demo.duckdb", warehouse_threads=1)
    services = build_services(settings)
    _, key = services.principals.create_key("analyst")
    shadow = Shadow(admin_dsn=admin_dsn, prefix=prefix)
    tls = build_wire(services, host="127.0.0.1", port=0, shadow=shadow)
    services.settings = settings.model_copy(update={"wire_require_tls": False})
    plain = build_wire(services, host="127.0.0.1", port=0, shadow=shadow)
    conn.send((tls.server.port, plain.server.port, key))
    conn.recv()  # until the parent is done
    shadow.drop_all()
    services.close()


def _rate(dsn: str, sql: str, n: int, *, simple: bool) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):  # warm up (and, for DP queries, store the answer once)
            conn.execute(sql).fetchall()
        started = time.perf_counter()
        if simple:
            raw = sql.encode()
            for _ in range(n):
                conn.pgconn.exec_(raw)
        else:
            for _ in range(n):
                conn.execute(sql).fetchall()
        return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    parent, child = mp.Pipe()
    prefix = f"privgate_shadow_b{uuid.uuid4().hex[:6]}"
    proc = mp.get_context("spawn").Process(target=_serve, args=(child, args.admin_dsn, prefix))
    proc.start()
    tls_port, plain_port, key = parent.recv()
    try:
        pg = args.admin_dsn + "?sslmode=disable"
        base = f"host=127.0.0.1 user=analyst password={key} dbname=clinic"
        wire_plain = f"{base} port={plain_port} sslmode=disable"
        wire_tls = f"{base} port={tls_port} sslmode=require"
        n = args.queries
        print(f"trivial-query rate, one psycopg connection, {n} queries each (queries/s)")
        for label, simple in (("extended protocol", False), ("simple protocol", True)):
            real = _rate(pg, "SELECT 1", n, simple=simple)
            plain = _rate(wire_plain, "SELECT 1", n, simple=simple)
            tls = _rate(wire_tls, "SELECT 1", n, simple=simple)
            print(
                f"  SELECT 1, {label:17s}: PostgreSQL {real:8.0f} | privgate {plain:7.0f} "
                f"({plain / real:.2f}x) | privgate+TLS {tls:7.0f} ({tls / real:.2f}x)"
            )
        dp = "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"
        replay = _rate(wire_plain, dp, max(n // 5, 100), simple=True)
        print(f"  repeated DP aggregate (stored answer replayed, no cost): {replay:.0f} q/s")
    finally:
        parent.send("done")
        proc.join(60)


if __name__ == "__main__":
    main()
