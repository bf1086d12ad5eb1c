"""Masked row-level access: rows of a `row_access: masked` table, only through their masks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, large_budget, start_gateway
from tests.pg_helpers import in_memory_copy


def _policy(policy: dict[str, Any]) -> None:
    patients = policy["datasets"]["clinic"]["tables"]["patients"]
    patients["row_access"] = "masked"
    patients["columns"]["name"] = {"class": "masked", "mask": "truncate"}
    patients["columns"]["zip3"] = {"class": "masked", "mask": "generalize"}
    patients["columns"]["insurance"] = {"class": "public"}
    large_budget(policy)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[Gateway]:
    yield from start_gateway(tmp_path_factory.mktemp("masked"), demo_warehouse, _policy)


@pytest.fixture(scope="module")
def raw(demo_warehouse: Path) -> list[tuple[Any, ...]]:
    con = in_memory_copy(demo_warehouse, ("patients",))
    try:
        return con.execute(
            "SELECT email, name, zip3, insurance FROM patients ORDER BY patient_id LIMIT 50"
        ).fetchall()
    finally:
        con.close()


def _post(gw: Gateway, sql: str) -> Any:
    with gw.client() as c:
        return c.post("/v1/query", json={"sql": sql})


def test_masked_rows_show_pseudonyms_not_values(gw: Gateway, raw: list[tuple[Any, ...]]) -> None:
    r = _post(gw, "SELECT email, name, zip3, insurance FROM patients LIMIT 50")
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["rows"]
    assert len(rows) == 50
    assert body["epsilon_charged"] == "0"
    text = r.text
    for email, name, zip3, _ in raw:
        assert email not in text and name not in text
    for email_hash, name3, zip1, insurance in rows:
        assert len(email_hash) == 32 and int(email_hash, 16) >= 0  # md5 hex
        assert len(name3) <= 3 and len(zip1) <= 1
        assert insurance in ("public", "private", "none")
    # The same person gets the same pseudonym in every query (joinable), in any order.
    again = _post(gw, "SELECT email FROM patients ORDER BY 1 DESC LIMIT 5").json()["rows"]
    assert [r[0] for r in again] == sorted((r[0] for r in again), reverse=True)
    everyone = {r[0] for r in _post(gw, "SELECT email FROM patients").json()["rows"]}
    assert {r[0] for r in rows} <= everyone


def test_filters_read_public_columns_only(gw: Gateway) -> None:
    ok = _post(gw, "SELECT email FROM patients WHERE insurance = 'none'")
    assert ok.status_code == 200, ok.text
    for sql, code in [
        ("SELECT email FROM patients WHERE sex = 'F'", "sql.unsupported"),
        ("SELECT email FROM patients WHERE birth_year < 1950", "sql.unsupported"),
        ("SELECT email, sex FROM patients", "policy.aggregation_required"),
        ("SELECT patient_id, email FROM patients", "policy.identifier_reference"),
        ("SELECT upper(email) FROM patients", "policy.function_not_allowed"),
        ("SELECT email FROM patients WHERE email = 'x@y'", "policy.masked_column"),
        ("SELECT department FROM visits", "policy.aggregation_required"),  # no row_access
    ]:
        r = _post(gw, sql)
        assert r.status_code in (400, 403), (sql, r.text)
        assert r.json()["error"]["code"] == code, (sql, r.json())


def test_star_shows_masked_and_public_columns(gw: Gateway) -> None:
    body = _post(gw, "SELECT * FROM patients LIMIT 3").json()
    assert [c["name"] for c in body["columns"]] == [
        "name",
        "email",
        "zip3",
        "insurance",
    ]  # table order


def test_aggregates_on_the_table_are_still_dp(gw: Gateway) -> None:
    body = _post(gw, "SELECT sex, COUNT(*) FROM patients GROUP BY sex").json()
    assert body["epsilon_charged"] != "0"
