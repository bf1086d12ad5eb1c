"""Two gateway processes sharing one PostgreSQL control plane: 100 concurrent requests at ε = 0.1
against a 1.0 budget, spread over both replicas — exactly 10 answered, ledger exactly 1.0."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import _free_port, write_policy
from tests.test_crash import _serve


def test_two_replicas_never_overspend(
    tmp_path: Path, demo_warehouse: Path, pg_database: str
) -> None:
    def one_budget(policy: dict[str, Any]) -> None:
        policy["datasets"]["clinic"]["budget"] = {"per_principal": {"epsilon": 1.0, "delta": 1e-5}}

    policy = write_policy(tmp_path / "policy.yaml", one_budget)
    base_env = {
        **os.environ,
        "PRIVGATE_WAREHOUSE_PATH": str(demo_warehouse),
        "PRIVGATE_POLICY_PATH": str(policy),
        "PRIVGATE_CONTROL_DB_URL": pg_database,
        # Both replicas must share the secrets (pepper, audit key, salt): one data dir's file.
        "PRIVGATE_DATA_DIR": str(tmp_path / "shared"),
        "PRIVGATE_PG_PORT": "0",  # REST only: the ledger is under test here
    }
    key = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "key", "create", "--principal", "analyst"],
        env=base_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ports = [_free_port(), _free_port()]
    procs = [_serve(base_env, port) for port in ports]
    try:

        def one(i: int) -> tuple[int, str]:
            port = ports[i % 2]
            sql = f"SELECT department, COUNT(*) FROM visits WHERE los_days < {1000 + i} GROUP BY department"
            with httpx.Client(timeout=120) as c:
                r = c.post(
                    f"http://127.0.0.1:{port}/v1/query",
                    json={"sql": sql, "epsilon": 0.1},
                    headers={"Authorization": f"Bearer {key}"},
                )
            return r.status_code, r.json().get("error", {}).get("code", "ok")

        with ThreadPoolExecutor(max_workers=50) as pool:
            outcomes = Counter(pool.map(one, range(100)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    assert outcomes == Counter({(200, "ok"): 10, (429, "budget.exhausted"): 90}), outcomes
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_database)
    with engine.connect() as conn:
        spent = conn.execute(
            text("SELECT eps_spent FROM budget_accounts WHERE scope_kind = 'principal'")
        ).scalar_one()
        verify_ok = conn.execute(text("SELECT COUNT(*) FROM audit_log")).scalar_one()
    engine.dispose()
    assert spent == 10**12  # exactly 1.0 in ledger units
    assert verify_ok >= 100
    # Both replicas appended to one audit chain; it verifies end to end.
    verify = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify"],
        env=base_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
