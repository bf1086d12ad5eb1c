"""Bounded snapshots on a real DuckDB warehouse: what they keep, and that queries on them agree
with per-query bounding.

The properties the privacy argument needs (docs/privacy-model.md, "Bounded snapshots"):
at most K rows per unit; which of a unit's rows are kept depends on that unit's rows alone;
and for a query without WHERE the snapshot and per-query bounding keep the same rows, so the exact
(pre-noise) aggregates are equal.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from gateway.policy_loader import load_policy
from gateway.settings import demo_policy_path, load_secrets
from gateway.snapshots import SnapshotInfo, build_snapshot, find_snapshot, snapshot_spec
from gateway.warehouse import DuckDBWarehouse, file_version
from rewriter.catalog import Catalog, build_catalog
from rewriter.plan import QueryPlan
from rewriter.planner import PlanRequest, plan_query
from tests.conftest import Gateway

SALT = b"snapshot-test-salt-0123456789abcdef"
ALL = frozenset({"clinic"})


def _catalog(path: Path) -> Catalog:
    # threads=2 as in tests.conftest.start_gateway: DuckDB refuses a second connection to one
    # file with another configuration while the module's gateway has it open.
    wh = DuckDBWarehouse(path, threads=2)
    try:
        return build_catalog(load_policy(demo_policy_path()).policy, wh.columns())
    finally:
        wh.close()


def _build(source: Path, directory: Path, salt: bytes = SALT) -> SnapshotInfo:
    return build_snapshot(
        source=source,
        source_version=file_version(source),
        catalog=_catalog(source),
        salt=salt,
        directory=directory,
        threads=1,
    )


def _rows(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def snapshot(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> SnapshotInfo:
    return _build(demo_warehouse, tmp_path_factory.mktemp("bounded"))


def test_at_most_k_rows_per_unit_and_all_of_light_units(
    snapshot: SnapshotInfo, demo_warehouse: Path
) -> None:
    k = load_policy(demo_policy_path()).policy.datasets["clinic"].defaults.max_rows_per_unit
    assert snapshot.bounded() == {"visits": k, "patients": k}
    assert snapshot.tables["departments"]["max_rows_per_unit"] is None  # public: verbatim copy
    kept = dict(_rows(snapshot.path, "SELECT patient_id, COUNT(*) FROM visits GROUP BY 1"))
    source = dict(
        _rows(
            demo_warehouse,
            "SELECT patient_id, COUNT(*) FROM visits WHERE patient_id IS NOT NULL GROUP BY 1",
        )
    )
    assert max(kept.values()) <= k
    assert kept == {u: min(n, k) for u, n in source.items()}  # exactly min(n, K) per unit
    assert max(source.values()) > k  # the fixture has heavy units, so bounding did something
    assert _rows(snapshot.path, "SELECT COUNT(*) FROM departments") == _rows(
        demo_warehouse, "SELECT COUNT(*) FROM departments"
    )


def test_kept_rows_depend_only_on_the_unit_itself(
    snapshot: SnapshotInfo, demo_warehouse: Path, tmp_path: Path
) -> None:
    """Add rows for a new unit and for one existing unit X: every other unit keeps exactly the
    rows it kept before (the ranking is per unit, keyed by row content only)."""
    changed = tmp_path / "changed.duckdb"
    shutil.copy(demo_warehouse, changed)
    con = duckdb.connect(str(changed))
    heavy = con.execute(
        "SELECT patient_id FROM visits GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT 1"
    ).fetchone()
    assert heavy is not None
    x = heavy[0]
    # 40 new rows for X (adversarial: they may outrank X's old rows) and 40 for a new unit.
    for unit in (x, 10**9):
        con.execute(
            "INSERT INTO visits SELECT v.* REPLACE (m.top + 1 + r.i AS visit_id, "
            "? AS patient_id, v.cost + r.i AS cost) "
            "FROM (SELECT * FROM visits LIMIT 1) AS v, range(40) AS r(i), "
            "(SELECT MAX(visit_id) AS top FROM visits) AS m",
            [unit],
        )
    con.close()
    after = _build(changed, tmp_path / "bounded")

    unit_at = [r[0] for r in _rows(snapshot.path, "DESCRIBE visits")].index("patient_id")

    def kept(path: Path) -> dict[Any, Counter[tuple[Any, ...]]]:
        out: dict[Any, Counter[tuple[Any, ...]]] = {}
        for row in _rows(path, "SELECT * FROM visits"):
            out.setdefault(row[unit_at], Counter())[row] += 1
        return out

    before_kept, after_kept = kept(snapshot.path), kept(after.path)
    others = set(before_kept) - {x}
    assert others and all(before_kept[u] == after_kept[u] for u in others)
    k = snapshot.bounded()["visits"]
    assert sum(after_kept[10**9].values()) == k and sum(after_kept[x].values()) == k


QUERIES = [
    "SELECT department, COUNT(*) AS n, SUM(cost) AS s FROM visits GROUP BY department",
    "SELECT department, AVG(cost) AS a, COUNT(cost) AS c, SUM(cost * 2) AS d FROM visits "
    "GROUP BY department",
    "SELECT COUNT(*) AS n, AVG(los_days) AS a FROM visits",
    "SELECT visit_day, COUNT(*) AS n FROM visits GROUP BY visit_day",
    "SELECT department, SUM(cost) AS s FROM visits GROUP BY department ORDER BY s DESC LIMIT 3",
]


def _snapshot_plan(
    sql: str, catalog: Catalog, snapshot: SnapshotInfo, terms: bool = True
) -> QueryPlan:
    """``sql`` planned for ``snapshot`` (with its stored terms, or without when not ``terms``)."""
    return plan_query(
        PlanRequest(
            sql=sql,
            granted=ALL,
            epsilon=1,
            prebounded=snapshot.bounded(),
            precomputed=snapshot.precomputed() if terms else frozenset(),
        ),
        catalog,
    )


@pytest.mark.parametrize("terms", [True, False], ids=["precomputed-sums", "clamped-per-row"])
@pytest.mark.parametrize("sql", QUERIES)
def test_same_exact_aggregates_as_per_query_bounding(
    sql: str, terms: bool, snapshot: SnapshotInfo, demo_warehouse: Path
) -> None:
    catalog = _catalog(demo_warehouse)
    per_query = plan_query(PlanRequest(sql=sql, granted=ALL, epsilon=1), catalog)
    on_snapshot = _snapshot_plan(sql, catalog, snapshot, terms)
    assert per_query.parameters and not on_snapshot.parameters  # no salt, no window
    # SUM of a bare measure (and AVG's sum) reads the stored term; SUM(cost * 2) is computed.
    sums_a_measure = re.search(r"(SUM|AVG)\((cost|los_days)\)", sql) is not None
    assert ("__pg_sum_" in on_snapshot.warehouse_sql) == (terms and sums_a_measure)
    assert "ROW_NUMBER" in per_query.warehouse_sql
    assert "ROW_NUMBER" not in on_snapshot.warehouse_sql
    assert per_query.measurements == on_snapshot.measurements  # same sensitivities and costs
    exact = sorted(_rows(demo_warehouse, per_query.warehouse_sql, [SALT.decode()]))
    assert exact == sorted(_rows(snapshot.path, on_snapshot.warehouse_sql))
    assert exact  # not vacuous


def test_terms_built_under_other_bounds_are_never_summed(
    snapshot: SnapshotInfo, demo_warehouse: Path, tmp_path: Path
) -> None:
    """A policy whose bounds changed since the snapshot was built names other terms: the query
    clamps each row to the new bounds (the stored terms were clamped to the old ones, and the
    sensitivity is computed from the new), and the snapshot is stale (a rebuild is due)."""
    policy = yaml.safe_load(demo_policy_path().read_text())
    policy["datasets"]["clinic"]["tables"]["visits"]["columns"]["cost"]["bounds"] = [0, 100]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    wh = DuckDBWarehouse(demo_warehouse, threads=2)
    try:
        narrowed = build_catalog(load_policy(path).policy, wh.columns())
    finally:
        wh.close()
    sql = "SELECT department, SUM(cost) AS s FROM visits GROUP BY department"
    plan = _snapshot_plan(sql, narrowed, snapshot)
    assert not plan.parameters and "__pg_sum_" not in plan.warehouse_sql
    assert "LEAST(GREATEST" in plan.warehouse_sql
    (m,) = plan.measurements
    assert m.sensitivity == 5 * 100 * 1000  # K × the new bound, in fixed point
    per_query = plan_query(PlanRequest(sql=sql, granted=ALL, epsilon=1), narrowed)
    exact = sorted(_rows(demo_warehouse, per_query.warehouse_sql, [SALT.decode()]))
    assert exact == sorted(_rows(snapshot.path, plan.warehouse_sql))
    assert max(s for _, s in exact) > 0
    assert snapshot_spec(narrowed, SALT)[0] != snapshot.spec


#: Queries that read ``department`` in every way the rewriter lets a dimension be read.
ENUM_QUERIES = [
    "SELECT department, COUNT(*) AS n FROM visits WHERE department IN ('er', 'oncology', 'nope') "
    "GROUP BY department",
    "SELECT COUNT(*) AS n, SUM(cost) AS s FROM visits WHERE department < 'neurology'",
    "SELECT COUNT(*) AS n FROM visits WHERE department BETWEEN 'cardiology' and 'er'",
    "SELECT COUNT(*) AS n FROM visits WHERE department <> 'er' AND department >= 'd'",
    "SELECT SUM(CASE WHEN department = 'er' THEN cost ELSE 0 END) AS s, "
    "SUM(CASE WHEN department IS NOT NULL THEN 1 ELSE 0 END) AS n FROM visits",
    "SELECT SUM(CASE WHEN department > 'm' THEN los_days ELSE 0 END) AS s FROM visits",
    "SELECT SUBSTRING(department, 1, 3) AS d, COUNT(*) AS n FROM visits GROUP BY d",
    "SELECT LEFT(department, 1) AS d, COUNT(*) AS n FROM visits WHERE department IS NOT NULL "
    "GROUP BY d",
    "SELECT v.department, COUNT(*) AS n FROM visits v JOIN departments d "
    "ON v.department = d.department WHERE d.floor > 1 GROUP BY v.department",
]


def _visit_types(path: Path) -> dict[str, str]:
    """Column name -> DuckDB type of the ``visits`` table in the file at ``path``."""
    return {str(r[0]): str(r[1]) for r in _rows(path, "DESCRIBE visits")}


def test_text_dimensions_with_a_declared_domain_are_stored_as_enums(
    snapshot: SnapshotInfo,
) -> None:
    assert snapshot.tables["visits"]["enums"] == ["department"]
    types = _visit_types(snapshot.path)
    domain = load_policy(demo_policy_path()).policy.datasets["clinic"].tables["visits"]
    values = domain.columns["department"].values
    assert values is not None
    # The members are the policy's values, in code-point order, whatever the data holds.
    assert types["department"] == "ENUM(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"
    assert types["visit_day"] == "DATE"  # no declared domain: as in the source
    # Stored in key order (runs of one department), the same rows as before.
    keys = [r[0] for r in _rows(snapshot.path, "SELECT department FROM visits")]
    assert keys == sorted(keys)


@pytest.mark.parametrize("sql", ENUM_QUERIES)
def test_an_enum_column_answers_as_its_text_would(
    sql: str, snapshot: SnapshotInfo, demo_warehouse: Path, tmp_path: Path
) -> None:
    """The same snapshot with ``department`` turned back into VARCHAR gives the same exact
    aggregates for every way a query may read it (comparisons with text, IN, BETWEEN, CASE,
    string functions, a join with a text column)."""
    as_text = tmp_path / "text.duckdb"
    shutil.copy(snapshot.path, as_text)
    con = duckdb.connect(str(as_text))
    con.execute("ALTER TABLE visits ALTER department TYPE VARCHAR")
    con.close()
    assert _visit_types(as_text)["department"] == "VARCHAR"
    plan = _snapshot_plan(sql, _catalog(demo_warehouse), snapshot)
    exact = sorted(_rows(snapshot.path, plan.warehouse_sql), key=repr)
    assert exact == sorted(_rows(as_text, plan.warehouse_sql), key=repr)
    # Not vacuous: some aggregate is not zero.
    assert any(v for row in exact for v in row if not isinstance(v, str | None))


def test_a_domain_the_data_leaves_stays_text(demo_warehouse: Path, tmp_path: Path) -> None:
    """One visit in a department the policy does not declare: the column stays VARCHAR (an
    ENUM of the policy's values could not hold it), and the snapshot still builds."""
    source = tmp_path / "stray.duckdb"
    shutil.copy(demo_warehouse, source)
    con = duckdb.connect(str(source))
    con.execute("UPDATE visits SET department = 'elsewhere' WHERE visit_id = 1")
    con.close()
    info = _build(source, tmp_path / "bounded")
    assert info.tables["visits"]["enums"] == []
    types = _visit_types(info.path)
    assert types["department"] == "VARCHAR"


def test_a_filtered_query_keeps_at_most_k_rows_per_unit(
    snapshot: SnapshotInfo, demo_warehouse: Path
) -> None:
    """With a WHERE the two forms may keep different rows, never more than K per unit."""
    sql = "SELECT COUNT(*) AS n FROM visits WHERE department = 'er'"
    catalog = _catalog(demo_warehouse)
    plan = plan_query(
        PlanRequest(sql=sql, granted=ALL, epsilon=1, prebounded=snapshot.bounded()), catalog
    )
    per_unit = _rows(
        snapshot.path,
        "SELECT MAX(n) FROM (SELECT patient_id, COUNT(*) AS n FROM visits "
        "WHERE department = 'er' GROUP BY 1)",
    )[0][0]
    assert per_unit <= snapshot.bounded()["visits"] == plan.max_rows_per_unit


def test_a_different_k_falls_back_to_per_query_bounding(demo_warehouse: Path) -> None:
    catalog = _catalog(demo_warehouse)
    plan = plan_query(
        PlanRequest(
            sql="SELECT COUNT(*) AS n FROM visits", granted=ALL, epsilon=1, prebounded={"visits": 1}
        ),
        catalog,
    )
    assert "ROW_NUMBER" in plan.warehouse_sql and plan.parameters  # the snapshot's K is stale


def test_the_spec_names_the_salt_and_k(demo_warehouse: Path) -> None:
    catalog = _catalog(demo_warehouse)
    spec, plan = snapshot_spec(catalog, SALT)
    assert spec != snapshot_spec(catalog, b"another-salt-0123456789abcdef")[0]
    assert plan["departments"] is None and plan["visits"] == 5
    assert SALT.decode() not in spec


def test_the_gateway_serves_from_the_snapshot(gateway: Gateway) -> None:
    services = gateway.services
    info = services.warehouse.snapshot
    assert info is not None and info.path.parent == services.settings.data_dir / "bounded"
    with gateway.client() as c:
        r = c.post("/v1/query", json={"sql": "SELECT COUNT(*) AS n FROM visits"})
        assert r.status_code == 200, r.text
        audit_id = r.json()["audit_id"]
    record = next(e for e in services.audit.export() if e["id"] == audit_id)["record"]
    assert record["data_version"] == info.data_version
    assert info.data_version.startswith(services.warehouse.source_version())
    assert "ROW_NUMBER" not in record["rewritten_sql"]
    with gateway.client("admin") as c:
        status = c.get("/v1/admin/snapshot").json()
    assert status["bounding"] == "snapshot" and status["stale"] is False
    assert status["serving"]["name"] == info.name


def _replace_without_er(demo_warehouse: Path, source: Path) -> None:
    """A new load of ``source``: the demo data without the 'er' visits, renamed into place."""
    replacement = source.with_name("new.duckdb")
    shutil.copy(demo_warehouse, replacement)
    con = duckdb.connect(str(replacement))
    con.execute("DELETE FROM visits WHERE department = 'er'")
    con.close()
    replacement.replace(source)


def test_a_changed_source_is_rebuilt_while_the_old_snapshot_serves(
    tmp_path: Path, demo_warehouse: Path
) -> None:
    from gateway.composition import build_services
    from gateway.settings import Settings

    source = tmp_path / "wh.duckdb"
    shutil.copy(demo_warehouse, source)
    settings = Settings(data_dir=tmp_path / "data", warehouse_path=source, warehouse_threads=1)
    services = build_services(settings)
    try:
        first = services.warehouse.snapshot
        assert first is not None and not services.snapshot_stale()
        # The warehouse owner replaces the file (a new load); the gateway notices.
        _replace_without_er(demo_warehouse, source)
        assert services.snapshot_stale()
        assert services.warehouse.snapshot == first  # still serving the old one
        second = services.refresh_snapshot()
        assert second.name != first.name and services.warehouse.snapshot == second
        assert not first.path.exists() and second.path.exists()  # the old file is gone
        assert find_snapshot(settings.data_dir / "bounded", second.source_version, second.spec)
        er = services.warehouse.execute("SELECT COUNT(*) FROM visits WHERE department = 'er'", [])
        assert er.rows == [(0,)]  # queries now read the new data
        assert services.warehouse.data_version() == second.data_version
    finally:
        services.close()


def test_gateways_sharing_data_dir_build_a_changed_source_once(
    tmp_path: Path, demo_warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways on one data_dir (``serve --workers``) notice the same change at once: one
    builds the new snapshot under the lock beside it, the other finds it and serves it."""
    import gateway.composition as composition
    from gateway.composition import build_services
    from gateway.settings import Settings

    source = tmp_path / "wh.duckdb"
    shutil.copy(demo_warehouse, source)
    settings = Settings(data_dir=tmp_path / "data", warehouse_path=source, warehouse_threads=1)
    a, b = build_services(settings), build_services(settings)  # b found a's snapshot
    builds: list[str] = []
    real_build = composition.build_snapshot

    def counted(**kwargs: Any) -> SnapshotInfo:
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # the other gateway arrives meanwhile and waits on the lock
        return real_build(**kwargs)

    monkeypatch.setattr(composition, "build_snapshot", counted)
    try:
        _replace_without_er(demo_warehouse, source)
        got: dict[str, SnapshotInfo] = {}
        threads = [
            threading.Thread(target=lambda s=s, n=n: got.update({n: s.refresh_snapshot()}), name=n)
            for n, s in (("a", a), ("b", b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(builds) == 1
        assert got["a"].name == got["b"].name
        assert a.warehouse.snapshot == b.warehouse.snapshot == got["a"]
        assert (settings.data_dir / "bounded" / "build.lock").exists()
    finally:
        a.close()
        b.close()


def test_blocked_columns_stay_out_of_the_snapshot(
    snapshot: SnapshotInfo, demo_warehouse: Path
) -> None:
    columns = {r[0] for r in _rows(snapshot.path, "DESCRIBE patients")}
    source = _catalog(demo_warehouse).tables["patients"].columns
    blocked = {c.name for c in source.values() if not c.visible}
    assert {"ssn", "name"} <= blocked and not blocked & columns  # never copied
    assert columns == {c.name for c in source.values()} - blocked


def test_per_query_plans_read_the_source_even_while_a_snapshot_serves(gateway: Gateway) -> None:
    """A table whose K changed is bounded per query, on the source (the snapshot lacks the
    blocked columns its ranking hashes, and is bounded already)."""
    services = gateway.services
    assert services.warehouse.snapshot is not None
    plan = plan_query(
        PlanRequest(sql="SELECT COUNT(*) AS n FROM visits", granted=ALL, epsilon=1, prebounded={}),
        services.queries.catalog,
    )
    salt = load_secrets(services.settings)["bounding_salt"].decode()
    per_query = services.warehouse.execute(plan.warehouse_sql, [salt]).rows
    on_snapshot = plan_query(
        PlanRequest(
            sql="SELECT COUNT(*) AS n FROM visits",
            granted=ALL,
            epsilon=1,
            prebounded=services.warehouse.prebounded(),
        ),
        services.queries.catalog,
    )
    assert per_query == services.warehouse.execute(on_snapshot.warehouse_sql, []).rows


def test_snapshot_build_command(tmp_path: Path, demo_warehouse: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVGATE_")}
    env.update(
        PRIVGATE_DATA_DIR=str(tmp_path / "data"),
        PRIVGATE_WAREHOUSE_PATH=str(demo_warehouse),
        PRIVGATE_WAREHOUSE_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "snapshot", "build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tables"]["visits"]["max_rows_per_unit"] == 5
    assert "table 3/3" in result.stderr and "ready" in result.stderr  # progress
    assert (tmp_path / "data" / "bounded" / f"{info['name']}.duckdb").is_file()


def test_a_join_never_mixes_snapshot_and_source_tables() -> None:
    """If one protected table of a join is not in the snapshot, none is read from it: the
    statement then has the salt as a parameter and runs on the source, where a table read as
    'already bounded' would be unbounded."""
    from gateway.demo import DEMO_POLICY_PATH
    from gateway.policy_loader import load_policy
    from rewriter.planner import PlanRequest, plan_query
    from tests.test_rewriter import DEMO_COLUMNS

    catalog = build_catalog(load_policy(DEMO_POLICY_PATH).policy, DEMO_COLUMNS)
    sql = "SELECT COUNT(*) FROM visits v JOIN patients p ON v.patient_id = p.patient_id"
    both = plan_query(
        PlanRequest(
            sql=sql, granted=frozenset({"clinic"}), prebounded={"visits": 5, "patients": 5}
        ),
        catalog,
    )
    assert both.parameters == () and "ROW_NUMBER" not in both.warehouse_sql
    one = plan_query(
        PlanRequest(sql=sql, granted=frozenset({"clinic"}), prebounded={"visits": 5}), catalog
    )
    assert one.parameters == ("salt", "salt")
    assert one.warehouse_sql.count("ROW_NUMBER() OVER") == 2  # both bounded per query


def test_a_snapshot_replaced_by_one_of_another_k_after_planning_is_refused(
    tmp_path: Path, demo_warehouse: Path
) -> None:
    """A pre-bounded plan's sensitivity assumes the K of the snapshot it was planned for: if the
    serving snapshot changes K before the statement runs, nothing is charged or read."""
    from gateway.composition import build_services
    from gateway.service import CallContext, QueryFailed, QueryRequest
    from gateway.settings import Settings

    source = tmp_path / "wh.duckdb"
    shutil.copy(demo_warehouse, source)
    services = build_services(Settings(data_dir=tmp_path / "data", warehouse_path=source))
    try:
        warehouse = services.warehouse
        con, info, bounded, sums = warehouse._serving
        assert info is not None and bounded and sums
        analyst = services.principals.get("analyst")
        assert analyst is not None
        ctx = CallContext(principal=analyst, door="cli", client="test")
        resolve = services.queries.resolve

        def plan_then_swap(*args: Any, **kwargs: Any) -> Any:
            plan = resolve(*args, **kwargs)
            # A rebuild for a policy with another K lands between planning and execution.
            warehouse._serving = (con, info, {name: k + 1 for name, k in bounded.items()}, sums)
            return plan

        services.queries.resolve = plan_then_swap  # type: ignore[method-assign]
        before = services.ledger.spent_total(principal="analyst", dataset="clinic")
        with pytest.raises(QueryFailed) as failed:
            services.queries.run(QueryRequest(sql="SELECT COUNT(*) AS n FROM visits"), ctx)
        assert failed.value.error.code == "warehouse.unavailable"
        assert services.ledger.spent_total(principal="analyst", dataset="clinic") == before

        # The same K, other precomputed terms (a rebuild for other bounds): refused as well.
        def plan_then_other_terms(*args: Any, **kwargs: Any) -> Any:
            plan = resolve(*args, **kwargs)
            warehouse._serving = (con, info, dict(bounded), frozenset())
            return plan

        warehouse._serving = (con, info, bounded, sums)
        services.queries.resolve = plan_then_other_terms  # type: ignore[method-assign]
        with pytest.raises(QueryFailed) as failed:
            services.queries.run(QueryRequest(sql="SELECT SUM(cost) AS s FROM visits"), ctx)
        assert failed.value.error.code == "warehouse.unavailable"
        assert services.ledger.spent_total(principal="analyst", dataset="clinic") == before
        warehouse._serving = (con, info, bounded, sums)

        # The same K and terms again (a rebuild for new data): served as usual.
        def plan_then_same_k(*args: Any, **kwargs: Any) -> Any:
            plan = resolve(*args, **kwargs)
            warehouse._serving = (con, info, dict(bounded), sums)
            return plan

        services.queries.resolve = plan_then_same_k  # type: ignore[method-assign]
        answer = services.queries.run(QueryRequest(sql="SELECT COUNT(*) AS n FROM visits"), ctx)
        assert answer["rows"]
    finally:
        services.close()
