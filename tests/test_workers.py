"""``privgate serve --workers N``: real worker processes on one port, one SQLite control DB.

Concurrent clients are answered by every worker with no overspend across them; a policy reload
sent to one worker reaches all of them (the supervisor replaces them one at a time); an invalid
policy replaces none; a source change's snapshot is built once for all processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _free_port, write_policy


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == pid and b"resource_tracker" not in cmdline:
                out.append(int(entry.name))
    return sorted(out)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _big_budget(policy: dict[str, Any]) -> None:
    policy["datasets"]["clinic"]["budget"] = {"per_principal": {"epsilon": 100000, "delta": 0.5}}


def _block_los_days(policy: dict[str, Any]) -> None:
    _big_budget(policy)
    policy["datasets"]["clinic"]["tables"]["visits"]["columns"]["los_days"] = "blocked"


class Served:
    def __init__(self, tmp: Path, warehouse: Path, workers: int) -> None:
        self.policy = write_policy(tmp / "policy.yaml", _big_budget)
        self.env = {
            **os.environ,
            "PRIVGATE_DATA_DIR": str(tmp / "data"),
            "PRIVGATE_WAREHOUSE_PATH": str(warehouse),
            "PRIVGATE_POLICY_PATH": str(self.policy),
            "PRIVGATE_PG_PORT": "0",
            "PRIVGATE_LOG_LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "gateway.cli"]
        self.keys = {
            who: subprocess.run(
                [*cli, "key", "create", "--principal", who],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for who in ("analyst", "admin")
        }
        self.port = _free_port()
        self.log = tmp / "serve.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cli, "serve", "--port", str(self.port), "--workers", str(workers)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda: len(self.workers()) == workers and self.ready(), 120)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url("/readyz"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def workers(self) -> list[int]:
        """The pids of the supervisor's uvicorn workers (its children that run the gateway)."""
        return _children(self.proc.pid)

    def wait_for(self, condition: Any, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited:\n{self.log.read_text()[-3000:]}")
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out:\n{self.log.read_text()[-3000:]}")

    def query(self, sql: str, epsilon: float = 0.01) -> httpx.Response:
        # A new connection each time: the kernel spreads them over the workers.
        return httpx.post(
            self.url("/v1/query"),
            json={"sql": sql, "epsilon": epsilon},
            headers={"Authorization": f"Bearer {self.keys['analyst']}"},
            timeout=60,
        )

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(
            method,
            self.url(path),
            headers={"Authorization": f"Bearer {self.keys['admin']}"},
            timeout=60,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served(tmp_path: Path, demo_warehouse: Path) -> Any:
    s = Served(tmp_path, demo_warehouse, workers=2)
    yield s
    s.stop()


def test_every_worker_answers_and_the_ledger_adds_up(served: Served) -> None:
    before = {pid: _cpu_seconds(pid) for pid in served.workers()}
    charged: list[Decimal] = []
    errors: list[str] = []

    def client(i: int) -> None:
        for n in range(25):
            # A new connection per query (Served.query), so either worker may take it; one
            # keep-alive connection per thread could have landed them all on one worker.
            r = served.query(
                "SELECT department, COUNT(*) FROM visits GROUP BY department",
                epsilon=float(f"0.01{i:02d}{n:03d}"),  # a fresh question each time
            )
            if r.status_code == 200:
                charged.append(Decimal(r.json()["epsilon_charged"]))
            else:
                errors.append(r.text)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(charged) == 200
    after = {pid: _cpu_seconds(pid) for pid in served.workers()}
    assert after.keys() == before.keys()
    # Both workers served: each answer costs milliseconds of CPU, an idle worker spends
    # about 0.01 s over the run; 0.05 s is a dozen answers or more.
    assert all(after[pid] - before[pid] > 0.05 for pid in before), (before, after)
    budgets = served.admin("GET", "/v1/admin/budgets?principal=analyst&dataset=clinic").json()
    (account,) = [b for b in budgets["budgets"] if b["scope"] == "principal"]
    assert Decimal(account["epsilon_spent"]) == sum(charged, Decimal(0))


def test_a_reload_sent_to_one_worker_reaches_every_worker(served: Served) -> None:
    sql = "SELECT department, AVG(los_days) FROM visits GROUP BY department"
    assert served.query(sql).status_code == 200
    old = set(served.workers())
    write_policy(served.policy, _block_los_days)
    r = served.admin("POST", "/v1/admin/policy/reload")
    assert r.status_code == 200, r.text
    assert r.json()["changed"] is True and r.json()["workers_restarting"] is True
    # The supervisor replaces both workers, each new one ready before the old one stops.
    served.wait_for(lambda: not (set(served.workers()) & old), 120)
    assert len(served.workers()) == 2
    codes = {served.query(sql).json()["error"]["code"] for _ in range(20)}
    assert codes == {"catalog.unknown_column"}  # blocked columns look unknown, on every worker


def test_an_invalid_policy_replaces_no_worker(served: Served) -> None:
    old = set(served.workers())
    served.policy.write_text("datasets: [this is not a policy\n")
    os.kill(served.proc.pid, signal.SIGHUP)
    time.sleep(3)
    assert set(served.workers()) == old
    sql = "SELECT department, COUNT(*) FROM visits GROUP BY department"
    assert all(served.query(sql).status_code == 200 for _ in range(10))
    assert "the policy could not be reloaded" in served.log.read_text()


def test_workers_share_the_cores_among_their_warehouses() -> None:
    from gateway.workers import warehouse_threads_per_worker

    assert warehouse_threads_per_worker(None, 2, 2) == 1
    assert warehouse_threads_per_worker(None, 3, 8) == 2
    assert warehouse_threads_per_worker(None, 4, 2) == 1  # never zero
    assert warehouse_threads_per_worker(None, 2, None) == 1
    assert warehouse_threads_per_worker(3, 2, 2) == 3  # a configured number wins
