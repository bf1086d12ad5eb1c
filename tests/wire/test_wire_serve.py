"""`privgate serve` starts REST and the wire endpoint together, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from gateway.wire.shadow import Shadow
from tests.conftest import PG_ADMIN_URL, _free_port, write_policy
from tests.wire.conftest import require_postgres


def test_serve_starts_rest_and_the_wire_endpoint(tmp_path: Path, demo_warehouse: Path) -> None:
    require_postgres()
    prefix = f"pgs_t{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PRIVGATE_DATA_DIR": str(tmp_path / "data"),
        "PRIVGATE_WAREHOUSE_PATH": str(demo_warehouse),
        "PRIVGATE_POLICY_PATH": str(write_policy(tmp_path / "policy.yaml")),
        "PRIVGATE_WIRE_SHADOW_DSN": PG_ADMIN_URL,
        "PRIVGATE_WIRE_SHADOW_PREFIX": prefix,
    }
    key = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "key", "create", "--principal", "analyst"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port, pg_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--pg-port",
            str(pg_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.2)
        dsn = (
            f"host=127.0.0.1 port={pg_port} user=analyst password={key} dbname=clinic "
            "sslmode=require connect_timeout=10"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT department, COUNT(*) AS n FROM visits GROUP BY department"
            ).fetchall()
            assert len(rows) == 8
            audit_id = conn.execute("SELECT audit_id FROM privgate_last_query()").fetchone()
        assert audit_id is not None
        budget = httpx.get(
            f"http://127.0.0.1:{port}/v1/budget", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert budget["budgets"][0]["epsilon_spent"] == "0.5"  # one budget for both doors
    finally:
        proc.terminate()
        proc.wait(30)
        Shadow(admin_dsn=PG_ADMIN_URL, prefix=prefix).drop_all()
