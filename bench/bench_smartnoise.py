"""Accuracy and latency of privgate versus SmartNoise SQL at equal ε, same data, same queries.

    ./dev bench smartnoise [--repeat 200] [--epsilon 1.0] [--block 1] [--venv /tmp/privgate-snsql-venv]

SmartNoise SQL runs in its own virtual environment (it pins an older OpenDP than privgate's),
created on first use with ``pip install smartnoise-sql`` (``--snsql-spec`` to pin another
version), as a worker subprocess fed one JSON command per line; privgate runs in this process
through ``QueryService.run`` (plan, reserve, bounded SQL, noise, commit, audit; no HTTP). The two
take turns, so a load change on the machine hits both: one run each by default, or ``--block N``
runs of one system before the other's N. Alternating single runs costs the in-process system its
CPU caches (the SmartNoise process runs in between, on a 2-core machine); blocks measure each the
way a server runs, many queries in a row.

Data: the 1,000-person PUMS sample in /work/shared/datasets/pums (``PUMS_pid.csv``, one row per
``pid``) with SmartNoise's own metadata (``PUMS_pid.yaml``: age 0-100, income 0-500000). privgate
gets the same table in a DuckDB file and a policy with the same bounds, ``pid`` as the privacy
unit and one row per unit (``max_rows_per_unit: 1``, SmartNoise's ``max_ids: 1``); ``sex`` and
``married`` are dimensions with the public domain [0, 1]. SmartNoise's pandas reader runs the SQL
on an in-memory SQLite copy of the data frame; privgate runs it on DuckDB.

Equal ε: privgate charges the query's ε and splits it over its measurements (AVG = SUM and
COUNT). SmartNoise's ``Privacy(epsilon=…)`` is spent by each of its mechanisms, so it is given ε
÷ (its number of mechanisms for that query), and the total it reports (``get_privacy_cost``) is
printed next to privgate's charge. Two SmartNoise set-ups:

* ``matched``: ``censor_dims: false``, i.e. groups released without a threshold, as privgate
  releases a public domain (and a query without GROUP BY). Mechanisms and sensitivities are then
  the same on both sides, except AVG (privgate centres its sum on the interval's midpoint, which
  halves that sum's sensitivity here), so equal errors are expected on COUNT and SUM up to the
  discrete (privgate) versus continuous (SmartNoise) Laplace.
* ``default``: the metadata as shipped (``censor_dims`` on): SmartNoise also computes a noisy
  count of distinct persons per group to censor small groups, and spends part of ε on it (and δ).

Every privgate run asks a fresh question: ε + i·10⁻⁹ for the i-th run (a relative change of 10⁻⁹),
so no run is a replay. Errors are against the exact (unclamped) answer over the whole table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import yaml

from gateway.composition import build_services
from gateway.service import CallContext, QueryRequest
from gateway.settings import Settings

PUMS_DIR = Path("/work/shared/datasets/pums")
DEFAULT_VENV = Path(tempfile.gettempdir()) / "privgate-snsql-venv"
DELTA = 1e-5

#: name -> (privgate SQL, SmartNoise SQL, grouped?)
QUERIES: dict[str, tuple[str, str, bool]] = {
    "COUNT(*) GROUP BY sex": (
        "SELECT sex, COUNT(*) AS n FROM pums GROUP BY sex",
        "SELECT sex, COUNT(*) AS n FROM PUMS.PUMS GROUP BY sex",
        True,
    ),
    "AVG(income) GROUP BY sex": (
        "SELECT sex, AVG(income) AS a FROM pums GROUP BY sex",
        "SELECT sex, AVG(income) AS a FROM PUMS.PUMS GROUP BY sex",
        True,
    ),
    "SUM(income)": (
        "SELECT SUM(income) AS s FROM pums",
        "SELECT SUM(income) AS s FROM PUMS.PUMS",
        False,
    ),
    "COUNT(*) WHERE age > 40": (
        "SELECT COUNT(*) AS n FROM pums WHERE age > 40",
        "SELECT COUNT(*) AS n FROM PUMS.PUMS WHERE age > 40",
        False,
    ),
}

POLICY: dict[str, Any] = {
    "datasets": {
        "pums": {
            "privacy_unit": "pid",
            "defaults": {
                "epsilon": 1.0,
                "delta": DELTA,
                "min_group_size": 10,
                "max_rows_per_unit": 1,
            },
            "budget": {
                "per_principal": {"epsilon": 1_000_000, "delta": 0.5},
                "per_query_max": {"epsilon": 100},
            },
            "tables": {
                "pums": {
                    "columns": {
                        "pid": "identifier",
                        "age": {"class": "measure", "bounds": [0, 100]},
                        "income": {"class": "measure", "bounds": [0, 500000]},
                        "sex": {"class": "dimension", "values": [0, 1]},
                        "married": {"class": "dimension", "values": [0, 1]},
                        "educ": {"class": "dimension"},
                        "race": {"class": "dimension"},
                    }
                }
            },
        }
    },
    "principals": {"bench": {"role": "analyst", "datasets": ["pums"]}},
}

# The SmartNoise side: a worker reading one JSON command per line on stdin, answering one JSON
# line on stdout. Runs in the SmartNoise venv, so it imports nothing of privgate.
WORKER = r"""
import json, sys, time
import pandas as pd
import snsql
from snsql import Privacy

try:
    from importlib.metadata import version
    VERSION = version("smartnoise-sql")
except Exception:
    VERSION = "?"

df = None
readers = {}
out = sys.stdout
sys.stdout = sys.stderr  # anything SmartNoise prints must not garble the protocol


def answer(result, grouped):
    rows = result[1:]
    if grouped:
        return {str(r[0]): float(r[1]) for r in rows}
    return {"": float(rows[0][0]) if rows and rows[0][0] is not None else None}


for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "setup":
        df = pd.read_csv(cmd["csv"])
        reply = {"version": VERSION, "snsql": snsql.__file__}
    elif op == "reader":
        probe = snsql.from_df(df, privacy=Privacy(epsilon=1.0, delta=cmd["delta"]),
                              metadata=cmd["metadata"])
        try:
            mechs = [c for c in probe._get_mechanism_costs(cmd["sql"]) if c]
            per_mech = cmd["epsilon"] / len(mechs)
            reader = snsql.from_df(df, privacy=Privacy(epsilon=per_mech, delta=cmd["delta"]),
                                   metadata=cmd["metadata"])
            eps, delta = reader.get_privacy_cost(cmd["sql"])
        except ValueError as exc:  # e.g. "Noise scale is too large" (SmartNoise caps it at 1e7)
            reply = {"refused": str(exc).split(".  ")[0]}
        else:
            readers[cmd["id"]] = (reader, cmd["sql"], cmd["grouped"])
            reply = {"mechanisms": len(mechs), "per_mechanism_epsilon": per_mech,
                     "cost_epsilon": float(eps), "cost_delta": float(delta)}
    elif op == "run":
        reader, sql, grouped = readers[cmd["id"]]
        start = time.perf_counter()
        result = reader.execute(sql)
        seconds = time.perf_counter() - start
        reply = {"seconds": seconds, "answer": answer(result, grouped)}
    else:
        reply = {"error": f"unknown op {op}"}
    out.write(json.dumps(reply) + "\n")
    out.flush()
"""


def ensure_venv(venv: Path, spec: str) -> Path:
    """The SmartNoise venv's python, creating the venv and installing ``spec`` on first use."""
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{spec.replace('/', '_')}"
    if stamp.exists():
        return python
    if not python.exists():
        print(f"creating {venv} ...", file=sys.stderr)
        # The base interpreter, not this venv's: the new venv must not see privgate's packages.
        base = Path(getattr(sys, "_base_executable", sys.executable))
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    print(f"pip install {spec} into {venv} ...", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        check=True,
    )
    stamp.touch()
    return python


class SmartNoise:
    """The worker subprocess in the SmartNoise venv."""

    def __init__(self, python: Path, script: Path) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"SmartNoise worker exited ({self.proc.poll()}); see its stderr")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def load_pums(csv: Path, path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE pums AS SELECT CAST(age AS INTEGER) AS age, CAST(sex AS INTEGER) AS sex, "
            "CAST(educ AS INTEGER) AS educ, CAST(race AS INTEGER) AS race, "
            "CAST(income AS BIGINT) AS income, CAST(married AS INTEGER) AS married, "
            "CAST(pid AS BIGINT) AS pid FROM read_csv_auto(?)",
            [str(csv)],
        )
    finally:
        con.close()


def exact_answers(path: Path) -> dict[str, dict[str, float]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        out: dict[str, dict[str, float]] = {}
        for name, (sql, _, grouped) in QUERIES.items():
            rows = con.execute(sql).fetchall()
            out[name] = (
                {str(r[0]): float(r[1]) for r in rows} if grouped else {"": float(rows[0][0])}
            )
        return out
    finally:
        con.close()


def privgate_answer(envelope: dict[str, Any], grouped: bool) -> dict[str, float]:
    rows = envelope["rows"]
    if grouped:
        return {str(r[0]): float(r[1]) for r in rows}
    return {"": float(rows[0][0])}


def abs_errors(answer: dict[str, float | None], exact: dict[str, float]) -> list[float]:
    """|noisy - exact| per cell of the exact answer; a missing (censored) group counts as 0."""
    return [abs((answer.get(k) or 0.0) - v) for k, v in exact.items()]


def _mae(errors: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(errors)
    se = statistics.stdev(errors) / len(errors) ** 0.5 if len(errors) > 1 else 0.0
    return mean, se


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=200, help="runs per query per system")
    parser.add_argument("--epsilon", type=Decimal, default=Decimal("1.0"), help="ε per query")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SmartNoise's venv")
    parser.add_argument("--snsql-spec", default="smartnoise-sql", help="what pip installs")
    parser.add_argument("--data", type=Path, default=PUMS_DIR, help="PUMS_pid.csv/.yaml here")
    parser.add_argument(
        "--block",
        type=int,
        default=1,
        help="consecutive runs of one system before the other takes its turn (1: alternate)",
    )
    args = parser.parse_args()

    python = ensure_venv(args.venv, args.snsql_spec)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv = args.data / "PUMS_pid.csv"
        metadata = yaml.safe_load((args.data / "PUMS_pid.yaml").read_text())
        table_meta = metadata[""]["PUMS"]["PUMS"]
        table_meta.update({"max_ids": 1, "row_privacy": False})
        variants = {"matched": False, "default": True}
        meta_paths = {}
        for variant, censor in variants.items():
            table_meta["censor_dims"] = censor
            meta_paths[variant] = tmp / f"PUMS_pid.{variant}.yaml"
            meta_paths[variant].write_text(yaml.safe_dump(metadata))

        warehouse = tmp / "pums.duckdb"
        load_pums(csv, warehouse)
        exact = exact_answers(warehouse)
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(POLICY))
        services = build_services(
            Settings(
                data_dir=tmp / "control",
                warehouse_path=warehouse,
                policy_path=policy_path,
                # Rules on, thresholds out of a benchmark's reach (the defaults quarantine
                # after 200 fresh queries of one shape in 10 minutes).
                anomaly_rate_max_requests=10**8,
                anomaly_differencing_max_repeats=10**8,
                anomaly_burn_rate_max_epsilon=1e8,
            )
        )
        bench = services.principals.get("bench")
        assert bench is not None
        ctx = CallContext(principal=bench, door="cli", client="bench")

        script = tmp / "snsql_worker.py"
        script.write_text(WORKER)
        sn = SmartNoise(python, script)
        try:
            info = sn.call(op="setup", csv=str(csv))
            print(
                f"SmartNoise SQL {info['version']} ({args.venv}); privgate QueryService in-process"
            )
            print(
                f"data: {csv} (1,000 persons); ε = {args.epsilon} per query; "
                f"{args.repeat} runs per query per system; "
                f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
            )
            results = _run_all(args, sn, services, ctx, exact, meta_paths, variants)
        finally:
            sn.close()
            services.close()
        _print(results, args)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


def _run_all(
    args: argparse.Namespace,
    sn: SmartNoise,
    services: Any,
    ctx: CallContext,
    exact: dict[str, dict[str, float]],
    meta_paths: dict[str, Path],
    variants: dict[str, bool],
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    counter = 0
    for name, (pg_sql, sn_sql, grouped) in QUERIES.items():
        r: dict[str, Any] = {"exact": exact[name], "privgate": {"errors": [], "seconds": []}}
        for variant in variants:
            setup = sn.call(
                op="reader",
                id=f"{variant}:{name}",
                sql=sn_sql,
                grouped=grouped,
                metadata=str(meta_paths[variant]),
                epsilon=float(args.epsilon),
                delta=DELTA,
            )
            r[variant] = {"setup": setup, "errors": [], "seconds": []}
        charged: set[str] = set()
        block = max(1, args.block)
        for start_i in range(-3, args.repeat, block):  # three warm-up runs of each
            runs = range(start_i, min(start_i + block, args.repeat))
            for i in runs:
                counter += 1
                eps = str(args.epsilon + Decimal(counter) * Decimal("1e-9"))
                start = time.perf_counter()
                env = services.queries.run(QueryRequest(sql=pg_sql, epsilon=eps), ctx)
                took = time.perf_counter() - start
                assert not env["cached"], "a replay: the ε was not fresh"
                if i >= 0:
                    r["privgate"]["seconds"].append(took)
                    r["privgate"]["errors"] += abs_errors(
                        privgate_answer(env, grouped), exact[name]
                    )
                    charged.add(f"{env['epsilon_charged']} (δ {env['delta_charged']})")
            for variant in variants:
                if "refused" in r[variant]["setup"]:
                    continue
                for i in runs:
                    reply = sn.call(op="run", id=f"{variant}:{name}")
                    if i >= 0:
                        r[variant]["seconds"].append(reply["seconds"])
                        r[variant]["errors"] += abs_errors(reply["answer"], exact[name])
        r["privgate"]["charged"] = sorted(charged)[:1] + (["…"] if len(charged) > 1 else [])
        results[name] = r
    return results


def _geomean(values: list[float]) -> float:
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    return statistics.geometric_mean(finite) if len(finite) == len(values) else math.nan


def _print(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print("\nε per query (privgate charged; SmartNoise get_privacy_cost; mechanisms x ε each):")
    for name, r in results.items():
        parts = [f"privgate {' '.join(r['privgate']['charged'])}"]
        for variant in ("matched", "default"):
            s = r[variant]["setup"]
            if "refused" in s:
                parts.append(f"SN {variant} refused: {s['refused']}")
                continue
            parts.append(
                f"SN {variant} {s['cost_epsilon']:.6g} (δ {s['cost_delta']:.2g}; "
                f"{s['mechanisms']} x {s['per_mechanism_epsilon']:.4g})"
            )
        print(f"  {name:26s} " + "; ".join(parts))

    header = (
        f"\n{'query':26s} {'exact':>22s} {'MAE privgate':>14s} {'MAE SN':>12s} "
        f"{'MAE pg/SN':>10s} {'p50 ms pg':>10s} {'p50 ms SN':>10s} {'SN/pg':>7s}"
    )
    for variant in ("matched", "default"):
        print(f"\nSmartNoise set-up: {variant} (MAE ± standard error; latency = median)")
        print(header.lstrip("\n"))
        ratios_mae, ratios_lat = [], []
        for name, r in results.items():
            if "refused" in r[variant]["setup"]:
                print(f"{name:26s} SmartNoise refused the query: {r[variant]['setup']['refused']}")
                continue
            pg_mae, pg_se = _mae(r["privgate"]["errors"])
            sn_mae, sn_se = _mae(r[variant]["errors"])
            pg_ms = statistics.median(r["privgate"]["seconds"]) * 1000
            sn_ms = statistics.median(r[variant]["seconds"]) * 1000
            exact = ", ".join(f"{v:.6g}" for v in r["exact"].values())
            mae_ratio = pg_mae / sn_mae if sn_mae > 0 else math.nan  # 0: a lucky short run
            ratios_mae.append(mae_ratio)
            ratios_lat.append(sn_ms / pg_ms)
            print(
                f"{name:26s} {exact:>22s} {pg_mae:8.4g}±{pg_se:<5.2g} {sn_mae:7.4g}±{sn_se:<5.2g}"
                f"{mae_ratio:9.2f}x {pg_ms:10.2f} {sn_ms:10.2f} {sn_ms / pg_ms:6.1f}x"
            )
        if not ratios_mae:
            continue
        print(
            f"{'geometric mean':26s} {'':>22s} {'':>14s} {'':>12s} "
            f"{_geomean(ratios_mae):9.2f}x {'':>10s} {'':>10s} "
            f"{statistics.geometric_mean(ratios_lat):6.1f}x"
        )
    print(
        f"\ntargets: latency SN/privgate >= 20x, MAE privgate/SN <= 0.7x "
        f"({args.repeat} runs per query and system)"
    )


if __name__ == "__main__":
    main()
