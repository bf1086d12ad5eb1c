"""`privgate policy suggest`: the draft is conservative, sensible, and validates once confirmed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy_loader import load_policy
from gateway.policy_suggest import (
    BOUNDS_TODO,
    ColumnFacts,
    classify_column,
    find_unit,
    redact_url,
    render_draft,
)
from gateway.warehouse import DuckDBWarehouse
from rewriter.catalog import build_catalog
from rewriter.policy import ColumnClass
from tests.test_cli import privgate

BLK, IDN, DIM, MEA = (
    ColumnClass.BLOCKED,
    ColumnClass.IDENTIFIER,
    ColumnClass.DIMENSION,
    ColumnClass.MEASURE,
)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (ColumnFacts("patient_id", "BIGINT", 100, 100), IDN),
        (ColumnFacts("ssn", "VARCHAR", 100, 3), BLK),  # by name, even if not unique
        (ColumnFacts("Email", "VARCHAR", 100, 100), BLK),
        (ColumnFacts("e_mail", "VARCHAR", 100, 100), BLK),
        (ColumnFacts("phoneNumber", "VARCHAR", 100, 100), BLK),
        (ColumnFacts("first_name", "VARCHAR", 100, 100), BLK),
        (ColumnFacts("home_address", "VARCHAR", 100, 100), BLK),
        (ColumnFacts("date_of_birth", "DATE", 100, 90), BLK),
        (ColumnFacts("visit_id", "BIGINT", 100, 100), IDN),
        (ColumnFacts("orderId", "INTEGER", 100, 100), IDN),
        (ColumnFacts("id", "INTEGER", 100, 100), IDN),
        (ColumnFacts("notes", "VARCHAR", 100, 2), BLK),
        (ColumnFacts("department", "VARCHAR", 100, 8), DIM),
        (ColumnFacts("license_plate", "VARCHAR", 100, 5), BLK),
        (ColumnFacts("token", "VARCHAR", 100, 5), BLK),
        (ColumnFacts("city", "text", 100, 99), BLK),  # nearly unique text: an identifier?
        (ColumnFacts("city", "text", 0, 0), BLK),  # no rows: no evidence either way
        (ColumnFacts("visit_day", "DATE", 100, 30), DIM),
        (ColumnFacts("paid", "boolean", 100, 2), DIM),
        (ColumnFacts("birth_year", "INTEGER", 100, 80, 1930, 2020), DIM),
        (ColumnFacts("stars", "INTEGER", 100, 5, 1, 5), DIM),  # few values
        (ColumnFacts("cost", "DECIMAL(18,2)", 100, 90, 0.5, 4873.25), MEA),
        (ColumnFacts("amount", "double precision", 100, 90, -12.0, 30.0), MEA),
        (ColumnFacts("amount", "numeric", 100, 0, None, None), BLK),  # all NULL: no bounds
        (ColumnFacts("visits", "INTEGER", 0, 0, None, None), BLK),  # empty: not "few values"
        (ColumnFacts("tags", "VARCHAR[]", 100, None), BLK),
        (ColumnFacts("payload", "jsonb", 100, None), BLK),
        (ColumnFacts("mood", "USER-DEFINED", 100, None), BLK),
    ],
    ids=lambda v: v.name if isinstance(v, ColumnFacts) else v.value,
)
def test_classify_column(facts: ColumnFacts, expected: ColumnClass) -> None:
    assert classify_column(facts, unit="patient_id").cls is expected


def test_measure_bounds_round_outward_and_carry_the_todo() -> None:
    s = classify_column(ColumnFacts("cost", "DOUBLE", 100, 90, 3.0, 4873.2), unit="u")
    assert s.bounds == (0, 5000)
    assert s.note == BOUNDS_TODO
    s = classify_column(ColumnFacts("delta", "DOUBLE", 100, 90, -0.37, 0.0), unit="u")
    assert s.bounds == (-0.4, 0)


def test_unit_must_be_in_most_tables() -> None:
    def t(*names: str) -> list[ColumnFacts]:
        return [ColumnFacts(n, "INTEGER") for n in names]

    assert find_unit({"a": t("user_id", "x"), "b": t("user_id"), "c": t("y")}) == "user_id"
    assert find_unit({"a": t("user_id"), "b": t("y")}) is None  # half is not most
    assert find_unit({"a": t("id"), "b": t("id")}) is None  # no known unit name: ask
    with pytest.raises(ValueError, match="--unit"):
        render_draft({"a": t("id")}, dataset="d", unit=None, source="s")
    with pytest.raises(ValueError, match="in no table"):
        render_draft({"a": t("id")}, dataset="d", unit="user_id", source="s")


def test_unitless_tables_are_public_only_when_they_look_impersonal() -> None:
    tables = {
        "visits": [ColumnFacts("user_id", "INTEGER"), ColumnFacts("no", "INTEGER", 5, 5, 1, 5)],
        "regions": [ColumnFacts("region", "VARCHAR", 5, 5)],
        "staff": [ColumnFacts("staff_name", "VARCHAR"), ColumnFacts("hired", "DATE")],
        "doctors": [ColumnFacts("doctor_id", "INTEGER"), ColumnFacts("specialty", "VARCHAR")],
    }
    data = yaml.safe_load(render_draft(tables, dataset="on", unit="user_id", source="s"))
    t = data["datasets"]["on"]["tables"]  # "on" and "no" were quoted, or YAML reads booleans
    assert t["regions"] == {"public": True}
    assert "staff" not in t and "doctors" not in t  # left out: invisible, the fail-closed default
    assert t["visits"]["columns"] == {"user_id": "identifier", "no": {"class": "dimension"}}


def test_names_cannot_break_out_of_comments() -> None:
    evil = "x\nfoo: {public: true}\n#"
    tables = {
        "t": [ColumnFacts("user_id", "INTEGER"), ColumnFacts(evil, "STRUCT(a INT)")],
        "u": [ColumnFacts(f"{evil}_id", "INTEGER")],
    }
    data = yaml.safe_load(render_draft(tables, dataset="d", unit="user_id", source=evil))
    assert data["datasets"]["d"]["tables"] == {
        "t": {"columns": {"user_id": "identifier", evil: "blocked"}}
    }


def _suggest(tmp_path: Path, warehouse: str, *args: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "draft.yaml"
    result = privgate("policy", "suggest", "--warehouse", warehouse, "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert "confirm every TODO" in result.stderr
    return out, yaml.safe_load(out.read_text())


def _validate(path: Path) -> None:
    result = privgate("policy", "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert ": ok (1 dataset(s)" in result.stdout


def test_demo_warehouse_draft_validates_and_is_sensible(
    tmp_path: Path, demo_warehouse: Path
) -> None:
    out, data = _suggest(tmp_path, f"duckdb:///{demo_warehouse}", "--dataset", "clinic")
    ds = data["datasets"]["clinic"]
    assert ds["privacy_unit"] == "patient_id"
    tables = ds["tables"]
    assert tables["departments"] == {"public": True}
    patients, visits = tables["patients"]["columns"], tables["visits"]["columns"]
    assert patients["patient_id"] == visits["patient_id"] == "identifier"
    assert {patients[c] for c in ("ssn", "name", "email")} == {"blocked"}
    assert visits["visit_id"] == "identifier"
    assert visits["department"] == visits["visit_day"] == {"class": "dimension"}
    assert visits["cost"]["class"] == visits["los_days"]["class"] == "measure"
    low, high = visits["cost"]["bounds"]
    assert low == 0 and high >= 5000  # the demo's heavy tail goes above 5000
    assert visits["los_days"]["bounds"] == [0, 30]
    text = out.read_text()
    assert text.count(BOUNDS_TODO) == 2
    assert "departments: {public: true}" in text and "public means no protection" in text

    # As drafted (bounds kept), and once the owner confirms cost's bounds from domain knowledge.
    _validate(out)
    confirmed = tmp_path / "confirmed.yaml"
    confirmed.write_text(
        text.replace(f"bounds: [0, {high}]}}  # {BOUNDS_TODO}", "bounds: [0, 5000]}")
    )
    assert BOUNDS_TODO in confirmed.read_text() and confirmed.read_text() != text
    _validate(confirmed)
    # The gateway would start with it: every declared table and column exists.
    warehouse = DuckDBWarehouse(demo_warehouse)
    try:
        build_catalog(load_policy(confirmed).policy, warehouse.columns())
    finally:
        warehouse.close()


def test_plain_path_and_unit_override(tmp_path: Path, demo_warehouse: Path) -> None:
    _out, data = _suggest(tmp_path, str(demo_warehouse), "--unit", "visit_id")
    ds = data["datasets"][demo_warehouse.stem]
    assert ds["privacy_unit"] == "visit_id"
    assert ds["tables"]["visits"]["columns"]["visit_id"] == "identifier"
    assert "patients" not in ds["tables"]  # no visit_id, personal (ssn, name): left out
    assert ds["tables"]["departments"] == {"public": True}


def test_refusals(tmp_path: Path, demo_warehouse: Path) -> None:
    existing = tmp_path / "policy.yaml"
    existing.write_text("keep me")
    args = ("policy", "suggest", "--warehouse", str(demo_warehouse))
    result = privgate(*args, "--out", str(existing))
    assert result.returncode == 1 and "exists" in result.stderr
    assert existing.read_text() == "keep me"
    result = privgate(*args, "--unit", "nobody_id")
    assert result.returncode == 1 and "in no table" in result.stderr
    result = privgate("policy", "suggest", "--warehouse", str(tmp_path / "missing.duckdb"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = privgate("policy", "suggest", "--warehouse", "mysql://h/db")
    assert result.returncode == 1 and "DuckDB file" in result.stderr


def test_postgresql_draft_validates_and_is_sensible(tmp_path: Path, pg_database: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_database)
    with engine.begin() as con:
        con.execute(
            sa.text(
                "CREATE TABLE people (person_id int PRIMARY KEY, ssn text, full_name text,"
                " email text, birth_year int, city text);"
                "CREATE TABLE orders (order_id bigint, person_id int, amount numeric(10,2),"
                " placed_on date, returned boolean, note text, tags text[]);"
                "CREATE TABLE countries (code char(2), label text);"
                "INSERT INTO people SELECT g, 'x' || g, 'n' || g, g || '@example.org',"
                " 1950 + g % 50, CASE WHEN g % 2 = 0 THEN 'Bern' ELSE 'Basel' END"
                " FROM generate_series(1, 40) g;"
                "INSERT INTO orders SELECT g, 1 + g % 40, (g * 7.3) % 480, DATE '2024-01-01' + g,"
                " g % 3 = 0, 'n', ARRAY['a'] FROM generate_series(1, 200) g;"
                "INSERT INTO countries VALUES ('CH', 'Switzerland'), ('FR', 'France')"
            )
        )
    engine.dispose()
    url = pg_database.replace("postgresql+psycopg://", "postgresql://")
    out, data = _suggest(tmp_path, url)
    (name,) = data["datasets"]
    assert name == url.rsplit("/", 1)[1]
    ds = data["datasets"][name]
    assert ds["privacy_unit"] == "person_id"
    people, orders = ds["tables"]["people"]["columns"], ds["tables"]["orders"]["columns"]
    assert people["person_id"] == orders["person_id"] == "identifier"
    assert {people[c] for c in ("ssn", "full_name", "email")} == {"blocked"}
    assert people["birth_year"] == people["city"] == {"class": "dimension"}
    assert orders["order_id"] == "identifier"
    assert orders["amount"] == {"class": "measure", "bounds": [0, 500]}
    assert orders["placed_on"] == orders["returned"] == {"class": "dimension"}
    assert orders["note"] == orders["tags"] == "blocked"
    assert ds["tables"]["countries"] == {"public": True}
    assert BOUNDS_TODO in out.read_text()
    _validate(out)


def test_the_source_line_never_holds_a_password() -> None:
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_postgresql_errors_never_echo_the_password() -> None:
    result = privgate("policy", "suggest", "--warehouse", "postgresql://u:s3cret@127.0.0.1:1/db")
    assert result.returncode == 1 and "cannot read the warehouse" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_doctests() -> None:
    import doctest

    import gateway.policy_suggest

    assert doctest.testmod(gateway.policy_suggest).failed == 0
