"""REST throughput of a real running gateway: 16 concurrent clients over real HTTP, 1M-row demo.

    ./dev bench rest [--clients 16] [--workers 1] [--seconds 30] [--patients 90000]
                     [--profile --py-spy PATH]

The gateway runs as a subprocess (``python -m gateway.cli serve [--workers N]``, uvicorn, REST
only) on the demo clinic warehouse (90,000 patients give about 1.0 M visits), with the bundled
demo policy except for the budget scopes. An analyst principal, its key and its budget are created through the admin
API with an admin key made by ``privgate key create``. Each client thread keeps one HTTP/1.1
connection open (``http.client``, keep-alive) and sends one-table DP GROUP BY queries for the
given time; every query asks a fresh question (its own ε, 0.01 + n·10⁻⁹), so none is answered by
replay (privgate has no result cache to switch off: replay of an identical query is the only
one, and a new ε defeats it).

Reference first: the same GROUP BY without privacy, straight on DuckDB in this process (1 and
``--clients`` cursors). Then, after a warm-up, a one-client baseline, and:

Phase 1 (large budget): queries/s, p50/p99 latency, errors, server CPU, and the no-overspend
check: the sum of the ε the answers report as charged equals the ledger's spent figure from the
admin API and stays within the limit. Phase 2 (small budget, runs out mid-run): spent ≤ limit,
the sum of the charged ε equals the ledger's spent, every refused query got
``budget.exhausted``, and what is left cannot pay for one more query.

The anomaly rules stay on, with thresholds raised so that a benchmark does not quarantine itself
(600 requests a minute is the default rate limit). ``--profile`` samples the server with py-spy
(``pip install py-spy``, or ``--py-spy PATH``) during the baseline and phase 1 and prints where
its time goes.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import yaml

from gateway.demo import ensure_demo_warehouse
from gateway.settings import demo_policy_path

SQL = "SELECT department, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY department"
#: The reference: the same GROUP BY without privacy (clamped only), straight on DuckDB.
RAW_SQL = (
    "SELECT department, COUNT(*) AS n, AVG(LEAST(GREATEST(cost, 0), 5000)) FROM visits "
    "GROUP BY department"
)
DATASET = "clinic"


@dataclass
class Tally:
    """What the client threads saw (appends from several threads: list.append is atomic)."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful queries
    refused_latencies: list[float] = field(default_factory=list)
    charged: list[Decimal] = field(default_factory=list)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Admin:
    """A tiny admin-API client, used from the main thread only."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # A new connection per call: uvicorn closes keep-alive connections idle for 5 s.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, None if body is None else json.dumps(body), self.headers)
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data

    def balance(self, principal: str) -> dict[str, Any]:
        rows = self.call("GET", f"/v1/admin/budgets?principal={principal}&dataset={DATASET}")
        (account,) = [b for b in rows["budgets"] if b["scope"] == "principal"]
        return dict(account)

    def analyst(self, name: str, epsilon: str, delta: str) -> str:
        self.call("POST", "/v1/admin/principals", {"name": name, "datasets": [DATASET]})
        key = self.call("POST", f"/v1/admin/principals/{name}/keys", {})["key"]
        self.call(
            "PUT", f"/v1/admin/budgets/{name}/{DATASET}", {"epsilon": epsilon, "delta": delta}
        )
        return str(key)


def _client(port: int, key: str, stop_at: float, counter: Any, tally: Tally) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    while time.perf_counter() < stop_at:
        # A fresh question each time: a new ε (exact in its shortest decimal form).
        eps = f"0.01{next(counter):07d}"
        body = '{"sql": ' + json.dumps(SQL) + ', "epsilon": ' + eps + "}"
        start = time.perf_counter()
        try:
            conn.request("POST", "/v1/query", body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.transport_errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        took = time.perf_counter() - start
        try:
            answer = json.loads(data)
        except ValueError:
            tally.codes[f"http {resp.status} (not JSON)"] += 1
            continue
        if resp.status == 200:
            tally.codes["ok"] += 1
            tally.latencies.append(took)
            tally.charged.append(Decimal(answer["epsilon_charged"]))
        else:
            tally.codes[answer.get("error", {}).get("code", f"http {resp.status}")] += 1
            tally.refused_latencies.append(took)
    conn.close()


def _load(port: int, key: str, clients: int, seconds: float, counter: Any) -> Tally:
    tally = Tally()
    stop_at = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, key, stop_at, counter, tally))
        for _ in range(clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.elapsed = time.perf_counter() - started
    return tally


def _report(name: str, tally: Tally) -> None:
    ok = len(tally.latencies)
    print(f"\n{name}: {tally.elapsed:.1f} s")
    print(f"  answered           {ok:7d}   {ok / tally.elapsed:8.1f} q/s")
    if ok:
        print(
            f"  latency (answered) p50 {_pct(tally.latencies, 0.5) * 1000:7.1f} ms   "
            f"p99 {_pct(tally.latencies, 0.99) * 1000:7.1f} ms   "
            f"max {max(tally.latencies) * 1000:7.1f} ms"
        )
    refused = sum(n for code, n in tally.codes.items() if code != "ok")
    if refused:
        print(
            f"  refused            {refused:7d}   p50 "
            f"{_pct(tally.refused_latencies, 0.5) * 1000:.1f} ms   p99 "
            f"{_pct(tally.refused_latencies, 0.99) * 1000:.1f} ms"
        )
    print(f"  codes              {dict(tally.codes)}")
    print(f"  transport errors   {len(tally.transport_errors)}", end="")
    print(f"  (first: {tally.transport_errors[0]})" if tally.transport_errors else "")


def _check(tally: Tally, account: dict[str, Any], *, expect_refusals: bool) -> bool:
    charged = sum(tally.charged, Decimal(0))
    spent = Decimal(account["epsilon_spent"])
    limit = Decimal(account["epsilon_limit"])
    remaining = Decimal(account["epsilon_remaining"])
    largest = max(tally.charged, default=Decimal(0))
    checks = {
        "sum of charged ε == ledger spent": charged == spent,
        "ledger spent <= limit": spent <= limit,
        "no transport errors": not tally.transport_errors,
    }
    refusal_codes = {c for c in tally.codes if c != "ok"}
    if expect_refusals:
        checks["budget ran out (some refused)"] = bool(refusal_codes)
        checks["every refusal is budget.exhausted"] = refusal_codes <= {"budget.exhausted"}
        # Not refused early: what is left cannot pay for one more query.
        checks["remaining < one query's ε"] = remaining < largest
    else:
        checks["no refusals"] = not refusal_codes
    print(f"  ε charged (sum of answers) {charged}")
    print(f"  ledger: limit {limit}, spent {spent}, remaining {remaining}")
    for what, good in checks.items():
        print(f"  {'PASS' if good else 'FAIL'}  {what}")
    return all(checks.values())


def _profile_done(
    profiler: subprocess.Popen[bytes] | None, raw: Path, seconds: float, answered: int | None
) -> None:
    if profiler is None:
        return
    _, err = profiler.communicate(timeout=seconds + 60)
    if raw.exists():
        _summarize_profile(raw, answered)
    else:
        print(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


def _py_spy(
    exe: str | None, pid: int, seconds: float, out: Path, wanted: bool
) -> subprocess.Popen[bytes] | None:
    if not wanted:
        return None
    exe = exe or shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("--profile: py-spy not found (pip install py-spy); no profile taken")
        return None
    command = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command += ["--subprocesses"]  # the workers of serve --workers
    command += ["--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


#: Frames of these files are grouped under one name in the profile summary (first match wins,
#: from the leaf up): what the time is spent on, not which helper spent it.
_BUCKETS = (
    ("gateway/noise.py", "noise (OpenDP)"),
    ("opendp/", "noise (OpenDP)"),
    ("duckdb", "warehouse (DuckDB)"),
    ("gateway/warehouse.py", "warehouse (DuckDB)"),
    ("sqlglot", "planning (sqlglot)"),
    ("rewriter/", "planning (rewriter)"),
    ("gateway/audit", "audit log"),
    ("budgets/", "ledger"),
    ("gateway/results.py", "stored answers / replay keys"),
    ("gateway/anomaly.py", "anomaly rules"),
    ("gateway/principals.py", "auth (key lookup)"),
    ("gateway/auth.py", "auth (key lookup)"),
    ("sqlalchemy", "control DB (SQLAlchemy/SQLite)"),
    ("sqlite3", "control DB (SQLAlchemy/SQLite)"),
    ("pydantic", "FastAPI/pydantic/JSON"),
    ("fastapi", "FastAPI/pydantic/JSON"),
    ("starlette", "FastAPI/pydantic/JSON"),
    ("json/", "FastAPI/pydantic/JSON"),
    ("uvicorn", "uvicorn/HTTP"),
    ("h11", "uvicorn/HTTP"),
    ("httptools", "uvicorn/HTTP"),
    ("gateway/logs.py", "logging"),
    ("logging/", "logging"),
    ("gateway/service.py", "QueryService (own code)"),
    ("gateway/release.py", "release (own code)"),
    ("gateway/", "gateway (other)"),
)


_OWN = ("gateway/", "budgets/")


def _is_control_db(frame: str) -> bool:
    return "sqlalchemy" in frame or "sqlite3" in frame


def _summarize_profile(raw: Path, answered: int | None, top: int = 12) -> None:
    """Active samples of the server by category (first matching frame from the leaf up).

    With ``answered`` (a one-client run, one query in flight at a time) each category is also
    given as milliseconds per query.
    """
    buckets: collections.Counter[str] = collections.Counter()
    db_callers: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # py-spy records idle threads too unless --idle is off (the default): those are gone.
        total += count
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            name = next((b for pattern, b in _BUCKETS if pattern in frame), None)
            if name is not None:
                buckets[name] += count
                break
        else:
            buckets["other (interpreter, threads, event loop)"] += count
        if _is_control_db(frames[-1]):
            caller = next(
                (
                    f
                    for f in reversed(frames)
                    if any(o in f for o in _OWN) and "control_db.py" not in f
                ),
                "?",
            )
            db_callers[caller.split(" (")[0]] += count
    if not total:
        print("profile: no samples")
        return
    print(f"  server profile: {total} active samples (all threads, 200 Hz)")
    for name, count in buckets.most_common():
        per_query = f"  {count / 200 / answered * 1000:6.1f} ms/query" if answered else ""
        print(f"  {100 * count / total:5.1f} %{per_query}  {name}")
    print("  hottest leaf frames:")
    for frame, count in leaves.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame[:110]}")
    if db_callers:
        print(
            "  control-DB calls (leaf in SQLAlchemy/sqlite) by the privgate function making them:"
        )
        for caller, count in db_callers.most_common(top):
            print(f"  {100 * count / total:5.1f} %  {caller}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=90_000, help="~11 visits per patient")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=1, help="privgate serve --workers N (REST processes)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="phase 1 duration")
    parser.add_argument("--exhaust-seconds", type=float, default=10.0, help="phase 2 duration")
    parser.add_argument(
        "--small-budget",
        default="auto",
        help="phase 2 ε limit (each query costs ~0.01); auto: half what phase 1's rate would spend",
    )
    parser.add_argument(
        "--reference-seconds", type=float, default=5.0, help="raw DuckDB rate first (0: none)"
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=5.0, help="1-client run first (0: none)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the warehouse here")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server (baseline and phase 1)"
    )
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: on PATH)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warehouse = (args.data_dir or tmp) / f"bench-{args.patients}.duckdb"
        warehouse.parent.mkdir(parents=True, exist_ok=True)
        ensure_demo_warehouse(warehouse, patients=args.patients)
        if args.reference_seconds > 0:
            _reference(warehouse, args.clients, args.reference_seconds)
        policy = yaml.safe_load(demo_policy_path().read_text())
        policy["datasets"][DATASET]["budget"] = {
            "per_principal": {"epsilon": 1000, "delta": 1e-5},
            "per_query_max": {"epsilon": 1},
        }
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        port = _free_port()
        env = {
            **os.environ,
            "PRIVGATE_DATA_DIR": str(tmp / "data"),
            "PRIVGATE_WAREHOUSE_PATH": str(warehouse),
            "PRIVGATE_POLICY_PATH": str(policy_path),
            "PRIVGATE_LOG_LEVEL": "WARNING",
            # Rules on, thresholds out of a benchmark's reach (the defaults would quarantine it).
            "PRIVGATE_ANOMALY_RATE_MAX_REQUESTS": "100000000",
            "PRIVGATE_ANOMALY_DIFFERENCING_MAX_REPEATS": "100000000",
            "PRIVGATE_ANOMALY_BURN_RATE_MAX_EPSILON": "100000000",
        }
        cli = [sys.executable, "-m", "gateway.cli"]
        admin_key = subprocess.run(
            [*cli, "key", "create", "--principal", "admin"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        log_path = tmp / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--pg-port",
                    "0",
                    "--workers",
                    str(args.workers),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(server, port, log_path)
            _wait_workers(server, args.workers, log_path)
            ok = _run(args, port, admin_key, server.pid, tmp)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        errors = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if '"level": "ERROR"' in line or "Traceback" in line
        ]
        print(
            f"\nserver log: {len(errors)} error lines"
            + (f"; first: {errors[0][:300]}" if errors else "")
        )
        sys.exit(0 if ok else 1)


def _wait_ready(server: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 300  # builds the bounded snapshot before serving
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"gateway exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("gateway did not become ready in 300 s")


def _wait_workers(server: subprocess.Popen[bytes], workers: int, log_path: Path) -> None:
    """With ``--workers N``: until all N workers run (uvicorn also starts a resource tracker)."""
    if workers <= 1:
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"gateway exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        if len(_tree(server.pid)) - 1 >= workers:
            time.sleep(2.0)  # each opens its warehouse and snapshot before it answers
            return
        time.sleep(0.2)
    sys.exit(f"the {workers} workers did not start in 120 s")


def _raw_worker(con: Any, stop_at: float, done: list[int], i: int) -> None:
    cur = con.cursor()  # one cursor per thread (a shared connection mixes up results)
    while time.perf_counter() < stop_at:
        cur.execute(RAW_SQL).fetchall()
        done[i] += 1
    cur.close()


def _reference(warehouse: Path, clients: int, seconds: float) -> None:
    """The raw query's rate on DuckDB in this process (one cursor per thread), no gateway."""
    con = duckdb.connect(str(warehouse), read_only=True)
    visits = con.execute("SELECT COUNT(*) FROM visits").fetchone()
    print(f"warehouse: {warehouse} ({visits[0] if visits else '?':,} visits)")
    try:
        for n in sorted({1, clients}):
            done = [0] * n
            stop_at = time.perf_counter() + seconds
            threads = [
                threading.Thread(target=_raw_worker, args=(con, stop_at, done, i)) for i in range(n)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = sum(done) / (time.perf_counter() - started)
            print(f"reference: raw query on DuckDB, {n:2d} threads: {rate:7.1f} q/s (no gateway)")
    finally:
        con.close()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of ``serve --workers``), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    out, frontier = [pid], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        out += kids
        frontier = kids
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (Linux /proc)."""
    total = 0.0
    for p in _tree(pid):
        if (fields := _stat(p)) is not None:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _measured(
    name: str, pid: int, port: int, key: str, clients: int, seconds: float, counter: Any
) -> Tally:
    cpu_before, own_before = _cpu_seconds(pid), time.process_time()
    tally = _load(port, key, clients, seconds, counter)
    cpu = _cpu_seconds(pid) - cpu_before
    own = time.process_time() - own_before
    _report(name, tally)
    answered = max(1, len(tally.latencies))
    print(
        f"  CPU: server {cpu:.1f} s ({cpu / tally.elapsed:.2f} cores, "
        f"{cpu / answered * 1000:.1f} ms per answered query); "
        f"clients {own:.1f} s ({own / tally.elapsed:.2f} cores)"
    )
    return tally


def _run(args: argparse.Namespace, port: int, admin_key: str, pid: int, tmp: Path) -> bool:
    admin = Admin(port, admin_key)
    counter = itertools.count(1)
    print(f"gateway pid {pid} on 127.0.0.1:{port}, {args.workers} worker(s); query: {SQL}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the run")

    key = admin.analyst("bench", "100000", "0.00001")
    warm = _load(port, key, args.clients, 3.0, counter)  # connections, caches, thread pool
    print(f"warm-up: {len(warm.latencies)} queries in {warm.elapsed:.1f} s")
    single = Tally()
    if args.baseline_seconds > 0:
        profiler = _py_spy(args.py_spy, pid, args.baseline_seconds, tmp / "p0.txt", args.profile)
        single = _measured("baseline: 1 client", pid, port, key, 1, args.baseline_seconds, counter)
        _profile_done(profiler, tmp / "p0.txt", args.baseline_seconds, len(single.latencies))
    profiler = _py_spy(args.py_spy, pid, args.seconds, tmp / "p1.txt", args.profile)
    tally = _measured(
        f"phase 1: large budget, {args.clients} clients",
        pid,
        port,
        key,
        args.clients,
        args.seconds,
        counter,
    )
    # The ledger also holds the warm-up's and the baseline's charges: check them together.
    both = Tally(
        charged=warm.charged + single.charged + tally.charged,
        codes=warm.codes + single.codes + tally.codes,
        transport_errors=warm.transport_errors + single.transport_errors + tally.transport_errors,
    )
    ok = _check(both, admin.balance("bench"), expect_refusals=False)
    print(f"  load average after phase 1: {os.getloadavg()[0]:.2f}")
    _profile_done(profiler, tmp / "p1.txt", args.seconds, None)

    small = args.small_budget
    if small == "auto":
        # About half of what phase 1's rate would spend in phase 2: it runs out mid-run.
        rate = len(tally.latencies) / tally.elapsed
        small = str(max(Decimal("0.05"), Decimal(rate * args.exhaust_seconds * 0.01 / 2)))[:6]
    key2 = admin.analyst("bench-small", small, "0.00001")
    tally2 = _measured(
        f"phase 2: ε limit {small}, {args.clients} clients",
        pid,
        port,
        key2,
        args.clients,
        args.exhaust_seconds,
        counter,
    )
    ok2 = _check(tally2, admin.balance("bench-small"), expect_refusals=True)
    return ok and ok2


if __name__ == "__main__":
    main()
