"""Explain a plan without running it, and solve for the ε an accuracy target needs.

Both read the plan and the noise calibration only: no warehouse access, no budget spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from typing import Any

import opendp.prelude as dp

from budgets.cost import fraction_str
from budgets.errors import QueryCostTooHigh
from gateway.noise import accuracy, calibrate, calibrate_threshold
from gateway.release import avg_mechanism
from rewriter.errors import Unsupported
from rewriter.plan import OutputKind, QueryPlan

MAX_EPSILON = Fraction(100)


@dataclass(frozen=True, slots=True)
class AccuracyTarget:
    """Released values within ±``n`` of the (bounded) truth with probability ``confidence``."""

    n: float
    confidence: float = 0.95
    column: str | None = None


def _targets(plan: QueryPlan, target: AccuracyTarget) -> list[tuple[str, int, int]]:
    """(output name, sensitivity, fixed point) of every COUNT/SUM output the target applies to."""
    if not plan.protected:
        raise Unsupported("accuracy targets apply to protected tables; public tables are exact")
    measurements = {m.column: m for m in plan.measurements}
    chosen = []
    for out in plan.outputs:
        if target.column is not None and out.name != target.column:
            continue
        if out.kind is OutputKind.AVG:
            if target.column is not None:
                raise Unsupported(
                    "accuracy targets apply to COUNT and SUM columns, not AVG",
                    hint="Target the count or sum, or give epsilon instead.",
                )
            continue
        if out.kind in (OutputKind.COUNT, OutputKind.SUM) and out.measurement is not None:
            m = measurements[out.measurement]
            chosen.append((out.name, m.sensitivity, m.fixed_point))
    if not chosen:
        where = f"named {target.column!r}" if target.column else ""
        raise Unsupported(
            f"no COUNT or SUM column {where} to aim the accuracy at".replace("  ", " ")
        )
    return chosen


def solve_epsilon(
    plan_at: Callable[[Fraction], QueryPlan], target: AccuracyTarget, query_max: Fraction | None
) -> tuple[Fraction, QueryPlan]:
    """The smallest ε (to 6 significant digits, rounded up) meeting ``target``, and its plan.

    The budget is split evenly over the plan's parts, so with P parts a measurement gets ε / P and
    its noise scale is sensitivity · P / ε; OpenDP's ``accuracy_to_discrete_laplacian_scale`` gives
    the largest scale that meets the target.
    """
    if not (0 < target.confidence < 1) or not (target.n > 0 and math.isfinite(target.n)):
        raise Unsupported("accuracy needs n > 0 and 0 < confidence < 1")
    probe = plan_at(Fraction(1))
    parts = len(probe.measurements) + (1 if probe.threshold is not None else 0)
    alpha = 1 - target.confidence
    needed = Fraction(0)
    for _, sensitivity, fixed_point in _targets(probe, target):
        scale = float(
            dp.accuracy_to_discrete_laplacian_scale(accuracy=target.n * fixed_point, alpha=alpha)
        )
        needed = max(needed, Fraction(sensitivity) * parts / Fraction(scale))
    epsilon = _round_up(needed)
    for _ in range(20):  # calibration nudges scales up by ulps: confirm, else step up
        if query_max is not None and epsilon > query_max:
            raise QueryCostTooHigh(
                f"±{target.n:g} at {target.confidence:.0%} needs epsilon ≥ {fraction_str(epsilon)}, "
                f"above this dataset's per-query maximum of {fraction_str(query_max)}",
                hint="Ask for a coarser accuracy, fewer aggregates, or coarser groups.",
            )
        if epsilon > MAX_EPSILON:
            raise QueryCostTooHigh(f"this accuracy needs epsilon above {MAX_EPSILON}")
        plan = plan_at(epsilon)
        worst = max(half for _, half in halfwidths(plan, alpha, target.column))
        if worst <= target.n:
            return epsilon, plan
        epsilon = _round_up(epsilon * Fraction(1_000_001, 1_000_000))
    raise Unsupported("could not meet the accuracy target")  # pragma: no cover


def _round_up(value: Fraction) -> Fraction:
    if value <= 0:
        return Fraction(1, 10**6)
    digits = Decimal(value.numerator) / Decimal(value.denominator)
    exponent = digits.adjusted() - 5
    quantum = Decimal(1).scaleb(exponent)
    return Fraction(digits.quantize(quantum, rounding=ROUND_CEILING))


def halfwidths(plan: QueryPlan, alpha: float, column: str | None = None) -> list[tuple[str, float]]:
    """Noise half-widths (output units) of the COUNT/SUM outputs at level 1 - alpha."""
    measurements = {m.column: m for m in plan.measurements}
    out = []
    for o in plan.outputs:
        if o.kind in (OutputKind.COUNT, OutputKind.SUM) and o.measurement is not None:
            if column is not None and o.name != column:
                continue
            m = measurements[o.measurement]
            scale = calibrate(m.sensitivity, m.epsilon).scale
            out.append((o.name, accuracy(scale, alpha) / m.fixed_point))
    return out


def explain(plan: QueryPlan) -> dict[str, Any]:
    """What a run of ``plan`` would do and cost, without running it."""
    measurements = {m.column: m for m in plan.measurements}
    columns: list[dict[str, Any]] = []
    for o in plan.outputs:
        entry: dict[str, Any] = {
            "name": o.name,
            "type": o.type.value,
            "noisy": o.kind is not OutputKind.KEY,
        }
        if o.kind is OutputKind.EXPR:
            entry.update(mechanism="post-processing of the released columns", epsilon="0")
        elif o.kind is OutputKind.QUANTILE and o.measurement is not None:
            m = measurements[o.measurement]
            entry.update(
                mechanism="opendp private_quantile (exponential mechanism)",
                what=m.description,
                alpha=m.alpha,
                candidates=len(m.candidates),
                resolution=(m.candidates[-1] - m.candidates[0]) / max(len(m.candidates) - 1, 1),
                epsilon=fraction_str(m.epsilon),
            )
        elif o.kind in (OutputKind.VAR, OutputKind.STDDEV) and o.measurement is not None:
            parts = [measurements[c] for c in (o.measurement, o.denominator, o.second) if c]
            entry.update(
                mechanism="discrete_laplace sum, sum of squares and count",
                what=" ; ".join(p.description for p in parts),
                epsilon=fraction_str(sum((p.epsilon for p in parts), Fraction(0))),
            )
        elif o.measurement is not None:
            m = measurements[o.measurement]
            cal = calibrate(m.sensitivity, m.epsilon)
            entry.update(
                mechanism="discrete_laplace",
                what=m.description,
                sensitivity=m.sensitivity / m.fixed_point,
                scale=cal.scale / m.fixed_point,
                epsilon=fraction_str(m.epsilon),
            )
            if o.kind is OutputKind.AVG and o.denominator is not None:
                d = measurements[o.denominator]
                centred = m.center_count is not None
                entry["mechanism"] = avg_mechanism(m)
                entry["denominator_scale"] = calibrate(d.sensitivity, d.epsilon).scale
                entry["epsilon"] = fraction_str(m.epsilon + d.epsilon)
                offset = f"(avg - {m.center / m.fixed_point:g})" if centred else "avg"
                entry["expected_ci95"] = (
                    f"varies with the count: ±(sum noise + {offset} × count noise) / count, "
                    f"clamped to [{o.bounds[0] if o.bounds else ''}, "
                    f"{o.bounds[1] if o.bounds else ''}]"
                )
            else:
                entry["expected_ci95_halfwidth"] = cal.ci95_halfwidth / m.fixed_point
        columns.append(entry)
    groups: dict[str, Any]
    if plan.row_access:
        groups = {
            "handling": "masked_rows",
            "why": "rows of a table whose policy allows masked row-level access: masked columns "
            "through their masks, public columns as they are; not differentially private, no "
            "cost",
        }
    elif not plan.protected:
        groups = {
            "handling": "public_table",
            "why": "a public table: exact rows, no noise, no cost",
        }
    elif not plan.group_keys:
        groups = {"handling": "none", "why": "one row for the whole (filtered) table"}
    elif plan.zero_fill:
        domain = 1
        for k in plan.group_keys:
            domain *= len(k.public_domain or ())
        groups = {
            "handling": "public_domain",
            "groups": domain,
            "why": "every key has declared public values: all combinations are released, "
            "zero-filled; nothing is suppressed and no delta is spent",
        }
    else:
        assert plan.threshold is not None
        spec = calibrate_threshold(
            plan.threshold.max_groups,
            plan.threshold.epsilon,
            plan.threshold.delta,
            plan.threshold.min_group_size,
        )
        open_keys = [k.source for k in plan.group_keys if k.public_domain is None]
        groups = {
            "handling": "threshold",
            "threshold": spec.threshold,
            "threshold_scale": spec.scale,
            "why": (
                f"{', '.join(open_keys)} {'has' if len(open_keys) == 1 else 'have'} no declared "
                "public values, so a group is released only if its noisy count of distinct people "
                f"reaches {spec.threshold} (Laplace noise of scale {spec.scale:g}); groups with "
                f"fewer people (and always those under min_group_size "
                f"{plan.threshold.min_group_size}) are withheld, and their number is not disclosed"
            ),
        }
    return {
        "dataset": plan.dataset,
        "protected": plan.protected,
        "rewritten_sql": plan.warehouse_sql,
        "columns": columns,
        "groups": groups,
        "max_rows_per_unit": plan.max_rows_per_unit,
        "cost": {
            "epsilon": fraction_str(plan.cost.epsilon),
            "delta": fraction_str(plan.cost.delta),
        },
        "notes": [
            "Intervals cover the noise only: clamping measures to their bounds and keeping at most "
            f"{plan.max_rows_per_unit} rows per person can move values further.",
        ]
        if plan.protected
        else [],
    }
