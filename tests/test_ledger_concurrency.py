"""No overspend under concurrency: many threads, and two OS processes, on one real ledger.

SQLite serialises writers with ``BEGIN IMMEDIATE``; PostgreSQL with row locks on the account rows.
Either way a budget of 1.0 admits exactly ten charges of 0.1, however they race.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine

from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted
from budgets.ledger import SqlLedger
from tests.test_ledger import BACKENDS, open_engine

ROOT = Path(__file__).resolve().parent.parent
ONE = PrivacyCost.of("1.0")
TENTH = PrivacyCost.of("0.1")


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from open_engine(request.param, tmp_path)


@pytest.fixture
def ledger(engine: Engine) -> SqlLedger:
    ledger = SqlLedger(engine)
    ledger.create_schema()
    return ledger


def test_a_hundred_racing_tenths_fill_a_budget_of_one_exactly(ledger: SqlLedger) -> None:
    threads, repetitions = 100, 20
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for rep in range(repetitions):
            principal = f"racer-{rep}"
            start = threading.Barrier(threads)

            def attempt(
                _: int, principal: str = principal, start: threading.Barrier = start
            ) -> bool:
                start.wait()
                try:
                    ledger.reserve(
                        query_id=uuid.uuid4().hex,
                        principal=principal,
                        dataset="sales",
                        cost=TENTH,
                        principal_limit=ONE,
                    )
                except BudgetExhausted:
                    return False
                return True

            outcomes = list(pool.map(attempt, range(threads)))
            assert outcomes.count(True) == 10, f"repetition {rep}"
            assert ledger.spent_total(principal=principal, dataset="sales") == ONE


# A second OS process: imports the ledger afresh, says "ready", and races once told "go".
_WORKER = """
import json, sys, uuid
from concurrent.futures import ThreadPoolExecutor
from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted
from budgets.ledger import SqlLedger
from gateway.control_db import make_control_engine

url, window = sys.argv[1], None if sys.argv[2] == "none" else int(sys.argv[2])
ledger = SqlLedger(make_control_engine(url))
ledger.balance(principal="warm-up", dataset="sales", principal_limit=PrivacyCost.of(1))

def attempt(_):
    try:
        ledger.reserve(
            query_id=uuid.uuid4().hex, principal="alice", dataset="sales",
            cost=PrivacyCost.of("0.1", "1e-9"), principal_limit=PrivacyCost.of(1, "1e-8"),
            dataset_limit=PrivacyCost.of("1.5", "1e-6"), principal_window_s=window,
        )
    except BudgetExhausted:
        return False
    return True

print("ready", flush=True)
sys.stdin.readline()
with ThreadPoolExecutor(max_workers=8) as pool:
    outcomes = list(pool.map(attempt, range(40)))
print(json.dumps({"ok": outcomes.count(True), "exhausted": outcomes.count(False)}), flush=True)
"""


@pytest.mark.parametrize("window", ["none", "3600"])
def test_two_processes_never_overspend(ledger: SqlLedger, engine: Engine, window: str) -> None:
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, window],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # release both at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [json.loads(worker.communicate(timeout=60)[0]) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(w.returncode == 0 for w in workers)
    assert sum(r["ok"] for r in results) == 10
    assert sum(r["exhausted"] for r in results) == 70
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of(1, "1e-8")
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of(1, "1e-8")
