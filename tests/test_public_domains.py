"""Public key domains read from a public table (`values_from`): every key, zero counts included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.catalog_load import load_catalog
from gateway.policy_loader import load_policy
from gateway.warehouse import DuckDBWarehouse
from rewriter.catalog import CatalogMismatch
from tests.conftest import large_budget, start_gateway, write_policy


def _from_departments(policy: dict[str, Any]) -> None:
    columns = policy["datasets"]["clinic"]["tables"]["visits"]["columns"]
    columns["department"] = {"class": "dimension", "values_from": "departments.department"}
    large_budget(policy)


def test_domain_from_a_public_table_is_zero_filled(tmp_path: Path, demo_warehouse: Path) -> None:
    for gw in start_gateway(tmp_path, demo_warehouse, _from_departments):
        with gw.client() as c:
            r = c.post(
                "/v1/query",
                json={
                    "sql": "SELECT department, COUNT(*) FROM visits WHERE department = 'er' "
                    "GROUP BY department",
                    "epsilon": 10,
                },
            )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["groups"]["handling"] == "public_domain"
        assert body["delta_charged"] == "0"  # no threshold: the domain is public
        names = [row[0] for row in body["rows"]]
        assert len(names) == 8 and "er" in names
        assert 0 in [n for d, n in body["rows"] if d != "er"]


@pytest.mark.parametrize(
    ("ref", "problem"),
    [("patients.sex", "public table"), ("departments.nope", "not in the warehouse")],
)
def test_values_from_must_name_a_public_column(
    tmp_path: Path, demo_warehouse: Path, ref: str, problem: str
) -> None:
    def mutate(policy: dict[str, Any]) -> None:
        columns = policy["datasets"]["clinic"]["tables"]["visits"]["columns"]
        columns["department"] = {"class": "dimension", "values_from": ref}

    policy = load_policy(write_policy(tmp_path / "p.yaml", mutate)).policy
    warehouse = DuckDBWarehouse(demo_warehouse, threads=2)
    try:
        with pytest.raises(CatalogMismatch, match=problem):
            load_catalog(policy, warehouse)
    finally:
        warehouse.close()
