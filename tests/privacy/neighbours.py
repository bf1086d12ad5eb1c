"""Neighbouring datasets and the product's release path, batched.

Each scenario builds two small DuckDB databases that differ by exactly one unit's rows (per batch,
see below), plans a real query with ``rewriter.planner.plan_query`` on a real catalog, computes the
true aggregates by running ``plan.warehouse_sql`` on both (contribution bounding and clamping
included), and then samples ``gateway.release.release(plan, ResultSet)`` — the product's own noise
and post-processing path.

**Batching (parallel copies).** One ``release`` call with a single group costs ~0.5 ms; a vector of
groups costs ~25 µs per group, because the product calls OpenDP's vector mechanism once per
measurement. So the schema has a ``batch`` dimension with a declared public domain 0..N−1 and every
query groups by it: one ``release`` call then releases N groups, and each group is an independent copy
of the same neighbouring pair. This is exact, not an approximation:

* a public-domain key changes neither the sensitivity nor the ε split (the planner charges COUNT,
  SUM, AVG exactly as without the key — ``test_batch_plan_matches_scalar_plan`` checks this);
* OpenDP draws independent noise per coordinate (and per key in the threshold mechanism);
* batch b of D′ differs from batch b of D by the rows of one unit, and those rows fall in batch b
  only, so the output of batch b under D′ vs D is exactly the single-pair mechanism's output.

The adversarial unit has more rows than ``max_rows_per_unit`` (bounding must cut it to K) with values
far outside the declared bounds (clamping must cut them to the upper bound), so the true difference
between neighbours is the full sensitivity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import duckdb

from gateway.release import Released, release
from gateway.warehouse import ResultSet
from rewriter.catalog import Catalog, build_catalog
from rewriter.plan import QueryPlan
from rewriter.planner import PlanRequest, plan_query
from rewriter.policy import Policy

from .dpaudit import Features

SALT = "privacy-audit-salt"
DATASET = "audit"
SCHEMA = (
    "CREATE TABLE visits (visit_id BIGINT, patient_id BIGINT, batch INTEGER, visit_day DATE, "
    "cost DOUBLE, los_days INTEGER, diagnosis VARCHAR)"
)
COMMON_DAY = "2024-01-01"
#: Days that only the adversarial unit visits (one per kept row).
UNIQUE_DAYS = ("2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04", "2025-01-05")


def policy_document(
    *, batches: int, epsilon: float, delta: float, max_rows: int, min_group_size: int = 1
) -> dict[str, Any]:
    return {
        "datasets": {
            DATASET: {
                "privacy_unit": "patient_id",
                "defaults": {
                    "epsilon": epsilon,
                    "delta": delta,
                    "min_group_size": min_group_size,
                    "max_rows_per_unit": max_rows,
                },
                "tables": {
                    "visits": {
                        "columns": {
                            "visit_id": "identifier",
                            "patient_id": "identifier",
                            "batch": {"class": "dimension", "values": list(range(batches))},
                            "visit_day": {"class": "dimension"},
                            "cost": {"class": "measure", "bounds": [0, 5000]},
                            "los_days": {"class": "measure", "bounds": [0, 30]},
                            "diagnosis": "blocked",
                        }
                    }
                },
            }
        }
    }


def catalog_for(document: dict[str, Any]) -> Catalog:
    con = duckdb.connect(":memory:")
    con.execute(SCHEMA)
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall():
        columns.setdefault(table, []).append((column, dtype))
    con.close()
    return build_catalog(Policy.model_validate(document), columns)


def plan(sql: str, catalog: Catalog, epsilon: float | None = None) -> QueryPlan:
    return plan_query(PlanRequest(sql=sql, granted=frozenset({DATASET}), epsilon=epsilon), catalog)


def true_result(plan_: QueryPlan, inserts: list[str]) -> ResultSet:
    """Run the plan's warehouse SQL on a fresh database filled by ``inserts``."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(SCHEMA)
        for sql in inserts:
            con.execute(sql)
        cur = con.execute(plan_.warehouse_sql, [SALT for _ in plan_.parameters])
        columns = tuple(d[0] for d in cur.description)
        return ResultSet(columns=columns, rows=cur.fetchall())
    finally:
        con.close()


def rows_sql(
    *,
    batches: int,
    units: int,
    rows_per_unit: int,
    unit_offset: int,
    day: str | None = COMMON_DAY,
    day_from_row: bool = False,
    cost: str = "100.25",
    los: str = "2",
) -> str:
    """INSERT ``units`` units per batch with ``rows_per_unit`` rows each (unit ids distinct)."""
    # patient_id = b * 1_000_000 + offset + u ; visit_id unique over the whole table.
    day_sql = f"(DATE '{UNIQUE_DAYS[0]}' + CAST(r AS INTEGER))" if day_from_row else f"DATE '{day}'"
    return (
        "INSERT INTO visits SELECT "
        f"(b * 1000000 + {unit_offset} + u) * 1000 + r, b * 1000000 + {unit_offset} + u, "
        f"CAST(b AS INTEGER), {day_sql}, {cost}, {los}, 'secret' "
        f"FROM range({batches}) t1(b), range({units}) t2(u), range({rows_per_unit}) t3(r)"
    )


@dataclass(frozen=True)
class Scenario:
    """One query, two neighbouring databases, and how to read a batch's output."""

    name: str
    plan: QueryPlan
    results: tuple[ResultSet, ResultSet]  # (D, D′)
    batches: int
    extract: Callable[[Released, int], list[Features]]
    feature_names: tuple[str, ...]

    @property
    def epsilon(self) -> float:
        return float(self.plan.cost.epsilon)

    @property
    def delta(self) -> float:
        return float(self.plan.cost.delta)

    def sample(self, side: int, n: int) -> list[Features]:
        """``n`` independent outputs of the mechanism on D (side 0) or D′ (side 1)."""
        out: list[Features] = []
        while len(out) < n:
            out.extend(self.extract(release(self.plan, self.results[side]), self.batches))
        return out[:n]

    def with_plan(self, name: str, plan_: QueryPlan) -> Scenario:
        return dataclasses.replace(self, name=name, plan=plan_)


def value_per_batch(released: Released, batches: int) -> list[Features]:
    """Zero-filled ``SELECT batch, <agg> … GROUP BY batch``: one value per batch, in batch order."""
    assert len(released.rows) == batches
    return [(float(row[1]),) for row in released.rows]


def groups_per_batch(released: Released, batches: int) -> list[Features]:
    """Thresholded ``SELECT batch, visit_day, COUNT(*) … GROUP BY batch, visit_day``.

    Features per batch: (number of released unique-day groups, released count of the common day or
    −1 when that group is withheld).
    """
    unique = [0] * batches
    common = [-1.0] * batches
    for b, day, n in released.rows:
        if str(day) == COMMON_DAY:
            common[b] = float(n)
        else:
            unique[b] += 1
    return [(float(unique[b]), common[b]) for b in range(batches)]


def understate_sensitivity(plan_: QueryPlan, factor: int) -> QueryPlan:
    """The same plan with every measurement's sensitivity divided by ``factor`` (a control)."""
    return dataclasses.replace(
        plan_,
        measurements=tuple(
            dataclasses.replace(m, sensitivity=max(1, m.sensitivity // factor))
            for m in plan_.measurements
        ),
    )


def understate_groups(plan_: QueryPlan) -> QueryPlan:
    """The same plan with the threshold told one unit touches one group only (a control)."""
    assert plan_.threshold is not None
    return dataclasses.replace(plan_, threshold=dataclasses.replace(plan_.threshold, max_groups=1))


# --- the scenarios ------------------------------------------------------------------------------

#: The adversarial unit: more rows than K (8), values far above the bounds (clamped to 5000, 30).
ADVERSARY_ROWS, ADVERSARY_COST, ADVERSARY_LOS = 8, "1e12", "1000000"


def pure_scenario(kind: str, *, batches: int, epsilon: float = 0.5) -> Scenario:
    """COUNT(*), SUM(cost) (fixed point), SUM(los_days) (integer) or AVG(cost), grouped by batch."""
    agg = {
        "count": "COUNT(*)",
        "sum": "SUM(cost)",
        "sum_int": "SUM(los_days)",
        "avg": "AVG(cost)",
    }[kind]
    doc = policy_document(batches=batches, epsilon=epsilon, delta=1e-7, max_rows=5)
    catalog = catalog_for(doc)
    p = plan(f"SELECT batch, {agg} AS v FROM visits GROUP BY batch", catalog)
    base = [rows_sql(batches=batches, units=3, rows_per_unit=2, unit_offset=0)]
    adversary = rows_sql(
        batches=batches,
        units=1,
        unit_offset=500,
        rows_per_unit=ADVERSARY_ROWS,
        cost=ADVERSARY_COST,
        los=ADVERSARY_LOS,
    )
    results = (true_result(p, base), true_result(p, [*base, adversary]))
    return Scenario(kind, p, results, batches, value_per_batch, (f"{agg} per batch",))


def threshold_scenario(
    *,
    batches: int,
    epsilon: float,
    delta: float,
    max_rows: int,
    design: str,
    common_units: int = 0,
) -> Scenario:
    """``SELECT batch, visit_day, COUNT(*) … GROUP BY batch, visit_day`` (visit_day has no domain).

    design "unique": D′ adds a unit whose K kept rows fall on K days nobody else visits (the
    L0 = K worst case for the group-key release; under D those groups do not exist).
    design "common": D′ adds a unit with K rows on the common day, which ``common_units`` other
    units also visit (the count and the threshold's unit count both move).
    """
    doc = policy_document(batches=batches, epsilon=epsilon, delta=delta, max_rows=max_rows)
    catalog = catalog_for(doc)
    p = plan(
        "SELECT batch, visit_day, COUNT(*) AS n FROM visits GROUP BY batch, visit_day", catalog
    )
    base = (
        [rows_sql(batches=batches, units=common_units, rows_per_unit=1, unit_offset=0)]
        if common_units
        else []
    )
    if design == "unique":
        adversary = rows_sql(
            batches=batches,
            units=1,
            rows_per_unit=max_rows + 3,
            unit_offset=900_000,
            day_from_row=True,
        )
    else:
        adversary = rows_sql(
            batches=batches, units=1, rows_per_unit=max_rows + 3, unit_offset=900_000
        )
    results = (true_result(p, base), true_result(p, [*base, adversary]))
    return Scenario(
        f"threshold-{design}",
        p,
        results,
        batches,
        groups_per_batch,
        ("unique-day groups released", "common-day count (−1 = withheld)"),
    )


def fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10**9)
