"""The privacy suite has two tiers: the CI tier (default) and the long tier (``-m slow``).

A plain ``pytest`` run skips the tests of this directory marked ``slow``; they run when a marker
expression is given that mentions ``slow`` (``pytest tests/privacy -m slow``) or when
``PRIVGATE_LONG=1`` is set. ``bench/privacy_long.py`` runs the long tier and prints its figures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import pytest

from tests.conftest import Gateway, start_gateway

_HERE = Path(__file__).parent


def long_tier(config: pytest.Config) -> bool:
    return "slow" in (config.getoption("markexpr") or "") or os.environ.get(
        "PRIVGATE_LONG", ""
    ) in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_tier(config):
        return
    skip = pytest.mark.skip(reason="long tier: run with `pytest tests/privacy -m slow`")
    for item in items:
        if item.get_closest_marker("slow") is not None and _HERE in item.path.parents:
            item.add_marker(skip)


# --- a demo warehouse with adversarial rows, and a gateway on it ---------------------------------

#: A patient who is alone on their visit day, in their zip3 and in their birth year.
TARGET = 1_990_001
TARGET_DAY = "2030-06-15"
TARGET_ZIP3 = "000"
TARGET_BIRTH_YEAR = 1901
#: A day visited only by rows whose unit is NULL (they belong to nobody and must not count).
NULL_UNIT_DAY = "2030-07-01"
NULL_UNIT_ROWS = 150
#: A patient with many rows whose values overflow everything.
HUGE = 1_990_002
HUGE_DAY = "2030-08-01"


@pytest.fixture(scope="session")
def attack_warehouse(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Path:
    """The demo warehouse plus the adversarial rows above (NOT NULL constraints dropped)."""
    path = tmp_path_factory.mktemp("attack-warehouse") / "clinic.duckdb"
    shutil.copyfile(demo_warehouse, path)
    con = duckdb.connect(str(path))
    try:
        for table in ("visits", "patients"):
            con.execute(f"CREATE TABLE {table}_copy AS SELECT * FROM {table}")
            con.execute(f"DROP TABLE {table}")
            con.execute(f"ALTER TABLE {table}_copy RENAME TO {table}")
        con.execute(
            f"INSERT INTO visits VALUES "
            f"(9000001, {TARGET}, 'oncology', DATE '{TARGET_DAY}', 4321.5, 3, 'C50.911 target'),"
            f"(9000002, {TARGET}, 'oncology', DATE '{TARGET_DAY}', 1e300, 2147483647, 'x'),"
            f"(9000003, {TARGET}, 'oncology', DATE '{TARGET_DAY}', 'nan'::DOUBLE, -5, 'y')"
        )
        con.execute(
            f"INSERT INTO patients VALUES ({TARGET}, '999-99-9999', 'Tara Target', "
            f"'tara.target@example.org', 'F', {TARGET_BIRTH_YEAR}, '{TARGET_ZIP3}', 'none')"
        )
        con.execute(
            "INSERT INTO visits SELECT 9100000 + i, NULL, 'er', DATE '"
            + NULL_UNIT_DAY
            + f"', 4000, 1, 'orphan' FROM range({NULL_UNIT_ROWS}) t(i)"
        )
        con.execute(
            f"INSERT INTO visits SELECT 9200000 + i, {HUGE}, 'radiology', DATE '{HUGE_DAY}', "
            "1.7e308, 2147483647, 'huge' FROM range(400) t(i)"
        )
        con.execute("INSERT INTO visits VALUES (9300001, 1000001, NULL, NULL, NULL, NULL, NULL)")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path


def big_budget(policy: dict[str, Any]) -> None:
    policy["datasets"]["clinic"]["budget"] = {
        "per_principal": {"epsilon": 1_000_000, "delta": 0.5},
        "per_query_max": {"epsilon": 10},
    }


@dataclass(frozen=True)
class Secrets:
    """Values that must never leave the gateway: blocked and masked columns, identifiers."""

    strings: frozenset[str]  # ssn, name, email, diagnosis values: never a substring of a body
    ids: frozenset[str]  # patient_id and visit_id values: never a key cell or in a message


@pytest.fixture(scope="session")
def secrets(attack_warehouse: Path) -> Secrets:
    con = duckdb.connect(str(attack_warehouse), read_only=True)
    try:
        strings: set[str] = set()
        for sql in (
            "SELECT ssn FROM patients UNION SELECT name FROM patients "
            "UNION SELECT email FROM patients",
            "SELECT DISTINCT diagnosis FROM visits WHERE diagnosis IS NOT NULL",
        ):
            strings.update(str(r[0]) for r in con.execute(sql).fetchall())
        ids = {str(r[0]) for r in con.execute("SELECT patient_id FROM patients").fetchall()}
        ids.update(
            str(r[0])
            for r in con.execute(
                "SELECT DISTINCT patient_id FROM visits WHERE patient_id IS NOT NULL"
            ).fetchall()
        )
        # Short diagnosis fragments ("x") would match everywhere: keep the identifying ones.
        return Secrets(frozenset(s for s in strings if len(s) >= 6), frozenset(ids))
    finally:
        con.close()


def start_quiet_gateway(
    tmp: Path, warehouse: Path, mutate: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[Gateway]:
    """``tests.conftest.start_gateway`` with the anomaly rules (``gateway.anomaly``) switched off.

    The rules are detection and containment on top of DP: they quarantine a principal whose
    traffic looks like differencing, bursts or a high ε burn rate. The attacks here must fail
    *without* them (an attacker can spread queries over time, replicas and accounts), and a
    quarantined principal would turn every later probe into a 403 that proves nothing.
    """
    gen = start_gateway(tmp, warehouse, mutate)
    with mock.patch.dict(os.environ, {"PRIVGATE_ANOMALY_ENABLED": "false"}):
        gateway = next(gen)  # Settings is built (and reads the environment) here
    try:
        yield gateway
    finally:
        next(gen, None)  # runs start_gateway's clean-up (server stop, services.close)


@pytest.fixture(scope="module")
def privacy_gateway(
    tmp_path_factory: pytest.TempPathFactory, attack_warehouse: Path, secrets: Secrets
) -> Iterator[Gateway]:
    """A fresh gateway per module on the attack warehouse, demo policy, a very large budget,
    anomaly rules off.

    (``secrets`` first: DuckDB refuses a second connection with another configuration.)"""
    yield from start_quiet_gateway(
        tmp_path_factory.mktemp("privacy-gw"), attack_warehouse, big_budget
    )
