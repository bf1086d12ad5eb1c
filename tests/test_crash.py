"""kill -9 of the gateway under load: no answer lacks a durable charge, and a restart settles every
reservation the dead process left (unused ones refunded, executing ones committed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import _free_port, write_policy


def _env(tmp: Path, warehouse: Path) -> dict[str, str]:
    def big(policy: dict) -> None:  # type: ignore[type-arg]
        policy["datasets"]["clinic"]["budget"] = {
            "per_principal": {"epsilon": 100000, "delta": 0.5}
        }

    policy = write_policy(tmp / "policy.yaml", big)
    return {
        **os.environ,
        "PRIVGATE_DATA_DIR": str(tmp / "data"),
        "PRIVGATE_WAREHOUSE_PATH": str(warehouse),
        "PRIVGATE_POLICY_PATH": str(policy),
        "PRIVGATE_RECONCILE_GRACE_S": "1",
        "PRIVGATE_PG_PORT": "0",  # REST only: this test is about the ledger under kill -9
        "PRIVGATE_RECONCILE_INTERVAL_S": "0.5",
    }


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


def _states(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT query_id, state FROM budget_reservations").fetchall())
    finally:
        con.close()


def test_kill_9_under_load(tmp_path: Path, demo_warehouse: Path) -> None:
    env = _env(tmp_path, demo_warehouse)
    key = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "key", "create", "--principal", "analyst"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = _free_port()
    proc = _serve(env, port)
    answered: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as c:
            while not stop.is_set():
                i += 1
                sql = (
                    "SELECT visit_day, COUNT(*) FROM visits "
                    f"WHERE los_days < {worker * 100000 + i} GROUP BY visit_day"
                )
                try:
                    r = c.post("/v1/query", json={"sql": sql, "epsilon": 0.01})
                except httpx.HTTPError:
                    return  # the server died under us
                if r.status_code == 200:
                    answered.append(r.json()["query_id"])

    threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()

    db = tmp_path / "data" / "control.db"
    states = _states(db)
    assert answered, "the load produced no answers before the kill"
    # Every answer that reached a client has a durable, committed charge.
    assert all(states.get(qid) == "committed" for qid in answered)
    in_flight = [q for q, s in states.items() if s in ("reserved", "executing")]

    proc = _serve(env, port)  # restart: reconciles at start-up and every 0.5 s after the grace
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = _states(db)
            if not any(s in ("reserved", "executing") for s in states.values()):
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not any(s in ("reserved", "executing") for s in states.values()), states
    # Nothing is lost: the lifetime spend equals the committed reservations exactly.
    con = sqlite3.connect(db)
    try:
        committed = con.execute(
            "SELECT COALESCE(SUM(eps_units), 0) FROM budget_reservations WHERE state = 'committed'"
        ).fetchone()[0]
        spent = con.execute(
            "SELECT eps_spent FROM budget_accounts WHERE scope_kind = 'principal'"
        ).fetchone()[0]
    finally:
        con.close()
    assert spent == committed
    print(f"answered {len(answered)}, in flight at the kill {len(in_flight)}")
