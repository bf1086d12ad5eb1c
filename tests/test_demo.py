"""The demo clinic warehouse and its policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from gateway import demo
from gateway.demo import (
    DEMO_POLICY_PATH,
    DEPARTMENTS,
    RARE_DAYS,
    DemoSummary,
    build_demo_warehouse,
    ensure_demo_warehouse,
    table_checksums,
)
from rewriter.policy import ColumnClass, Policy

N = 2000


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    path = tmp_path_factory.mktemp("demo") / "clinic.duckdb"
    return path, build_demo_warehouse(path, patients=N, progress=False)


@pytest.fixture(scope="module")
def con(built: tuple[Path, DemoSummary]) -> Iterator[Any]:
    c = duckdb.connect(str(built[0]), read_only=True)
    yield c
    c.close()


def one(con: Any, sql: str) -> Any:
    return con.execute(sql).fetchone()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.model_validate(yaml.safe_load(DEMO_POLICY_PATH.read_text()))


# --- shape -------------------------------------------------------------------------------------


def test_summary_and_row_counts(built: tuple[Path, DemoSummary], con: Any) -> None:
    path, summary = built
    assert summary.path == path
    assert summary.patients == N == one(con, "SELECT count(*) FROM patients")[0]
    assert summary.departments == 8 == one(con, "SELECT count(*) FROM departments")[0]
    assert summary.visits == one(con, "SELECT count(*) FROM visits")[0]
    assert 8 * N <= summary.visits <= 14 * N  # about ten visits per patient
    assert (
        summary.max_visits_per_patient
        == one(con, "SELECT max(n) FROM (SELECT count(*) n FROM visits GROUP BY patient_id)")[0]
    )
    with pytest.raises(AttributeError):
        summary.visits = 0  # type: ignore[misc]


def test_schema(con: Any) -> None:
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall()
    got: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        got.setdefault(table, []).append((column, dtype))
    assert got == {
        "departments": [("department", "VARCHAR"), ("building", "VARCHAR"), ("floor", "INTEGER")],
        "patients": [
            ("patient_id", "BIGINT"),
            ("ssn", "VARCHAR"),
            ("name", "VARCHAR"),
            ("email", "VARCHAR"),
            ("sex", "VARCHAR"),
            ("birth_year", "INTEGER"),
            ("zip3", "VARCHAR"),
            ("insurance", "VARCHAR"),
        ],
        "visits": [
            ("visit_id", "BIGINT"),
            ("patient_id", "BIGINT"),
            ("department", "VARCHAR"),
            ("visit_day", "DATE"),
            ("cost", "DOUBLE"),
            ("los_days", "INTEGER"),
            ("diagnosis", "VARCHAR"),
        ],
    }
    # No generator scratch tables or macros are left in the file.
    assert {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()} == {
        "departments",
        "patients",
        "visits",
    }


def test_departments(con: Any) -> None:
    rows = con.execute("SELECT department FROM departments ORDER BY 1").fetchall()
    assert tuple(r[0] for r in rows) == DEPARTMENTS
    assert set(DEPARTMENTS) == {
        "cardiology",
        "oncology",
        "er",
        "pediatrics",
        "neurology",
        "orthopedics",
        "radiology",
        "dermatology",
    }


def test_patient_values(con: Any) -> None:
    assert one(con, "SELECT count(DISTINCT patient_id) FROM patients")[0] == N
    ssns = [r[0] for r in con.execute("SELECT ssn FROM patients").fetchall()]
    assert all(re.fullmatch(r"9\d\d-\d\d-\d{4}", s) for s in ssns)
    assert one(con, "SELECT count(DISTINCT email) FROM patients")[0] == N
    assert one(con, "SELECT count(*) FROM patients WHERE email NOT LIKE '%@example.___'")[0] == 0
    assert one(con, "SELECT count(*) FROM patients WHERE name NOT LIKE '% %'")[0] == 0
    assert {r[0] for r in con.execute("SELECT DISTINCT sex FROM patients").fetchall()} == {"F", "M"}
    lo, hi = one(con, "SELECT min(birth_year), max(birth_year) FROM patients")
    assert 1930 <= lo < 1940 and 2010 < hi <= 2020
    zips = [r[0] for r in con.execute("SELECT DISTINCT zip3 FROM patients").fetchall()]
    assert all(re.fullmatch(r"\d{3}", z) for z in zips)
    assert 100 <= len(zips) <= 300
    insurance = {r[0] for r in con.execute("SELECT DISTINCT insurance FROM patients").fetchall()}
    assert insurance == {"public", "private", "none"}


def test_visit_values(con: Any) -> None:
    n = one(con, "SELECT count(*) FROM visits")[0]
    assert one(con, "SELECT count(DISTINCT visit_id) FROM visits")[0] == n
    orphans = "SELECT count(*) FROM visits v ANTI JOIN patients p USING (patient_id)"
    assert one(con, orphans)[0] == 0
    depts = con.execute("SELECT department, count(*) FROM visits GROUP BY 1").fetchall()
    counts = dict(depts)
    assert set(counts) == set(DEPARTMENTS)
    assert max(counts.values()) > 2 * min(counts.values())  # non-uniform
    # Regular days cover 2024; only the rare days are outside it.
    first, last = one(
        con, "SELECT min(visit_day), max(visit_day) FROM visits WHERE visit_day < '2025-01-01'"
    )
    assert "2024-01-01" <= str(first) < "2024-01-08"
    assert "2024-12-24" < str(last) <= "2024-12-31"
    days = one(con, "SELECT count(DISTINCT visit_day) FROM visits WHERE visit_day >= '2025-01-01'")
    assert days[0] == len(RARE_DAYS)
    # Costs: at least 20, whole cents, mostly at most 3000, some above 5000.
    lo, bad_cents, le_3000, above_5000 = one(
        con,
        "SELECT min(cost), count_if(round(cost, 2) <> cost), avg((cost <= 3000)::INT), "
        "count_if(cost > 5000) FROM visits",
    )
    assert lo >= 20 and bad_cents == 0 and le_3000 > 0.85 and above_5000 > 0
    # Length of stay: 0..30, mostly 0.
    lo, hi, zero = one(
        con, "SELECT min(los_days), max(los_days), avg((los_days = 0)::INT) FROM visits"
    )
    assert lo == 0 and 10 <= hi <= 30 and zero > 0.8
    assert one(con, "SELECT count(*) FROM visits WHERE diagnosis IS NULL OR diagnosis = ''")[0] == 0


def test_visits_per_patient_are_skewed(con: Any) -> None:
    per_patient = [
        r[0]
        for r in con.execute(
            "SELECT count(v.visit_id) FROM patients p LEFT JOIN visits v USING (patient_id) "
            "GROUP BY p.patient_id"
        ).fetchall()
    ]
    assert min(per_patient) >= 1
    share = lambda pred: sum(map(pred, per_patient)) / len(per_patient)  # noqa: E731
    assert share(lambda n: n <= 10) > 0.5  # most patients: 1-10 visits
    assert 0.01 < share(lambda n: 25 <= n < 200) < 0.2  # a few percent: dozens
    heavy = [n for n in per_patient if n >= 200]
    assert len(heavy) >= 3  # guaranteed at any size >= 1000
    assert all(n <= 810 for n in heavy)


def test_rare_days_have_exactly_one_patient_each(con: Any) -> None:
    rows = con.execute(
        "SELECT visit_day::VARCHAR, count(DISTINCT patient_id), count(*), min(patient_id) "
        "FROM visits WHERE visit_day >= '2025-01-01' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == list(RARE_DAYS)
    assert all(r[1] == 1 and 2 <= r[2] <= 4 for r in rows)
    assert len({r[3] for r in rows}) == len(RARE_DAYS)  # five different patients


# --- determinism, atomicity, progress ----------------------------------------------------------


def test_same_seed_same_tables_across_runs_and_threads(
    built: tuple[Path, DemoSummary], tmp_path: Path
) -> None:
    reference = table_checksums(built[0])
    again = build_demo_warehouse(tmp_path / "a.duckdb", patients=N, progress=False, threads=1)
    assert table_checksums(again.path) == reference
    other = build_demo_warehouse(tmp_path / "b.duckdb", patients=N, progress=False, seed=7)
    other_sums = table_checksums(other.path)
    assert other_sums["departments"] == reference["departments"]
    assert other_sums["patients"] != reference["patients"]
    assert other_sums["visits"] != reference["visits"]


def test_checksum_sees_row_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    for path, order in ((a, "ASC"), (b, "DESC")):
        c = duckdb.connect(str(path))
        for t in ("departments", "patients", "visits"):
            c.execute(f"CREATE TABLE {t} AS SELECT range AS x FROM range(10) ORDER BY x {order}")
        c.close()
    assert table_checksums(a) != table_checksums(b)


def test_heavy_patients_at_minimum_size(tmp_path: Path) -> None:
    s = build_demo_warehouse(tmp_path / "small.duckdb", patients=1000, progress=False)
    c = duckdb.connect(str(s.path), read_only=True)
    heavy = one(
        c,
        "SELECT count(*) FROM (SELECT patient_id FROM visits GROUP BY 1 HAVING count(*) >= 100)",
    )[0]
    c.close()
    assert heavy >= 3 and s.max_visits_per_patient >= 200


def test_failed_build_leaves_nothing_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clinic.duckdb"
    build_demo_warehouse(path, patients=100, progress=False)
    before = table_checksums(path)
    monkeypatch.setattr(demo, "_insert_visits_sql", lambda seed: "SELECT no_such_column")
    with pytest.raises(duckdb.Error):
        build_demo_warehouse(path, patients=200, progress=False)
    assert table_checksums(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinic.duckdb"]

    fresh = tmp_path / "fresh" / "clinic.duckdb"
    with pytest.raises(duckdb.Error):
        build_demo_warehouse(fresh, patients=100, progress=False)
    assert list(fresh.parent.iterdir()) == []


def test_ensure_builds_only_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "clinic.duckdb"
    assert ensure_demo_warehouse(path, patients=100, progress=False) == path
    assert table_checksums(path)["patients"].startswith("100:")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt an existing warehouse")

    monkeypatch.setattr(demo, "build_demo_warehouse", fail)
    assert ensure_demo_warehouse(path, patients=100, progress=False) == path


def test_progress_goes_to_stderr_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_demo_warehouse(tmp_path / "quiet.duckdb", patients=100, progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    build_demo_warehouse(tmp_path / "loud.duckdb", patients=100, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "demo warehouse" in err and "7/7" in err


@pytest.mark.parametrize("bad", [0, 19, -5, 2.5, True])
def test_rejects_bad_sizes(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="patients"):
        build_demo_warehouse(tmp_path / "x.duckdb", patients=bad, progress=False)
    assert not (tmp_path / "x.duckdb").exists()


# --- the demo policy ---------------------------------------------------------------------------


def test_demo_policy_validates(policy: Policy) -> None:
    clinic = policy.datasets["clinic"]
    assert clinic.privacy_unit == "patient_id"
    assert (clinic.defaults.epsilon, clinic.defaults.delta) == (0.5, 1e-7)
    assert (clinic.defaults.min_group_size, clinic.defaults.max_rows_per_unit) == (10, 5)
    assert clinic.budget.per_principal.epsilon == 10
    assert clinic.budget.total is not None and clinic.budget.total.epsilon == 100
    assert clinic.budget.per_query_max is not None and clinic.budget.per_query_max.epsilon == 1
    assert clinic.tables["departments"].public
    used = {c.cls for t in clinic.tables.values() for c in t.columns.values()}
    assert used >= set(ColumnClass) - {ColumnClass.PUBLIC}
    assert {p: v.role.value for p, v in policy.principals.items()} == {
        "analyst": "analyst",
        "admin": "admin",
    }


def test_demo_policy_matches_the_warehouse(policy: Policy, con: Any) -> None:
    rows = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
    ).fetchall()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    clinic = policy.datasets["clinic"]
    for table, tpolicy in clinic.tables.items():
        assert table in columns, f"policy names missing table {table}"
        if tpolicy.public:
            continue
        # Every declared column exists, and every column is declared (nothing left to a default).
        assert set(tpolicy.columns) == columns[table], table
        for column, cpolicy in tpolicy.columns.items():
            if cpolicy.values is not None:
                actual = {
                    r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall()
                }
                assert actual == set(cpolicy.values), (table, column)
            if cpolicy.bounds is not None:
                lo, hi = one(con, f"SELECT min({column}), max({column}) FROM {table}")
                assert cpolicy.bounds[0] <= lo and (column == "cost" or hi <= cpolicy.bounds[1])
    assert set(columns) <= set(clinic.tables)


def test_demo_policy_ships_with_the_package() -> None:
    assert DEMO_POLICY_PATH.parent == Path(demo.__file__).parent
    assert DEMO_POLICY_PATH.name == "demo_policy.yaml"
