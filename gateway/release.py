"""Turn the warehouse's true per-group aggregates into the released (noisy) result.

Order of operations: (1) decide which groups are released — the declared public domain in full
(zero-filled), or the groups whose noisy distinct-unit count passes the threshold; (2) add discrete
Laplace noise to every measurement over the released groups (an AVG's SUM centred on its
interval's midpoint); (3) post-process: fixed-point scaling, AVG = noisy SUM / noisy COUNT clamped
to the bounds, counts floored at 0, ORDER BY, LIMIT. Step 3 reads only noisy values. True values
never leave this module: they are not returned, logged or audited.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from budgets.cost import fraction_str
from gateway.noise import (
    accuracy,
    calibrate,
    calibrate_threshold,
    release_keys,
    release_measurements,
    release_quantile,
)
from gateway.warehouse import ResultSet
from rewriter.plan import Measurement, MeasurementKind, OutputKind, QueryPlan


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: str
    noisy: bool
    mechanism: str | None = None
    #: Noise scale in the column's own units (for AVG: of the numerator sum).
    scale: float | None = None
    denominator_scale: float | None = None
    ci95_halfwidth: float | None = None
    epsilon: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "name": self.name,
                "type": self.type,
                "noisy": self.noisy,
                "mechanism": self.mechanism,
                "scale": self.scale,
                "denominator_scale": self.denominator_scale,
                "ci95_halfwidth": self.ci95_halfwidth,
                "epsilon": self.epsilon,
            }.items()
            if v is not None or k in ("name", "type", "noisy")
        }


@dataclass(frozen=True, slots=True)
class GroupRelease:
    handling: str  # "none" | "public_domain" | "threshold" | "public_table"
    threshold: int | None = None
    threshold_scale: float | None = None
    released: int = 0


@dataclass(frozen=True, slots=True)
class Released:
    columns: tuple[ColumnInfo, ...]
    rows: list[list[Any]]
    #: Per row, per column: [low, high] 95 % interval (noise only) for noisy columns, else None.
    intervals: list[list[list[float] | None]]
    groups: GroupRelease


def jsonable(value: Any) -> Any:
    """Make a warehouse value JSON-friendly."""
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity; public-table arithmetic can produce them
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, bytes):
        return value.hex()
    return value


def release(plan: QueryPlan, result: ResultSet) -> Released:
    """Release ``result`` (the true aggregates of ``plan.warehouse_sql``) under ``plan``."""
    if not plan.protected:
        return _release_public(plan, result)
    index = {name: i for i, name in enumerate(result.columns)}
    n_keys = len(plan.group_keys)
    groups: list[tuple[Any, ...]]
    values: dict[str, list[Any]]
    if not plan.group_keys:
        only = result.rows[0] if result.rows else None
        groups = [()]
        values = {
            m.column: [_true(m, only[index[m.column]] if only is not None else None)]
            for m in plan.measurements
        }
        group_info = GroupRelease(handling="none", released=1)
    elif plan.zero_fill:
        domains = [k.public_domain or () for k in plan.group_keys]
        by_key = {tuple(_norm(r[i]) for i in range(n_keys)): r for r in result.rows}
        groups = [tuple(g) for g in itertools.product(*domains)]
        values = {
            m.column: [
                _true(m, by_key[g][index[m.column]] if g in by_key else None) for g in groups
            ]
            for m in plan.measurements
        }
        group_info = GroupRelease(handling="public_domain", released=len(groups))
    else:
        assert plan.threshold is not None
        rows = [r for r in result.rows if _in_domains(plan, r)]
        kept = release_keys(
            plan.threshold, [_int(r[index[plan.threshold.units_column]]) for r in rows]
        )
        # The warehouse's GROUP BY order is unspecified and may depend on the data (suppressed
        # groups included): release in an order that depends only on the released keys.
        rows = sorted((rows[i] for i in kept), key=lambda r: _key_order(r[:n_keys]))
        groups = [tuple(r[:n_keys]) for r in rows]
        values = {m.column: [_true(m, r[index[m.column]]) for r in rows] for m in plan.measurements}
        spec = calibrate_threshold(
            plan.threshold.max_groups,
            plan.threshold.epsilon,
            plan.threshold.delta,
            plan.threshold.min_group_size,
        )
        group_info = GroupRelease(
            handling="threshold",
            threshold=spec.threshold,
            threshold_scale=spec.scale,
            released=len(groups),
        )
    for m in plan.measurements:
        if m.center_count is not None:
            counts = values[m.center_count]
            values[m.column] = [
                centred(m, s, n) for s, n in zip(values[m.column], counts, strict=True)
            ]
    noisy: dict[str, list[Any]] = {
        m.column: release_quantile(m, values[m.column])
        for m in plan.measurements
        if m.kind is MeasurementKind.QUANTILE
    }
    noisy.update(
        release_measurements(
            [
                (m, values[m.column])
                for m in plan.measurements
                if m.kind is not MeasurementKind.QUANTILE
            ]
        )
    )
    measurements = {m.column: m for m in plan.measurements}
    columns = tuple(_column_info(plan, i, measurements) for i in range(len(plan.outputs)))
    every = (*plan.outputs, *plan.hidden)
    n_visible = len(plan.outputs)
    out_rows: list[list[Any]] = []
    out_intervals: list[list[list[float] | None]] = []
    for g_index, group in enumerate(groups):
        row: list[Any] = []
        intervals: list[list[float] | None] = []
        for out in every:
            if out.kind is OutputKind.EXPR:
                value, interval = None, None  # filled below, from the released cells
            else:
                value, interval = _cell(out, group, g_index, noisy, measurements)
            row.append(value)
            intervals.append(interval)
        for i, out in enumerate(every):
            if out.kind is OutputKind.EXPR and out.formula is not None:
                row[i] = _finite(evaluate(out.formula, row))
        # HAVING reads released values only (post-processing, no extra cost).
        if plan.having is not None and not holds(plan.having, row):
            continue
        out_rows.append(row[:n_visible])
        out_intervals.append(intervals[:n_visible])
    out_rows, out_intervals = _order_and_cut(plan, out_rows, out_intervals)
    return Released(columns, out_rows, out_intervals, group_info)


def evaluate(formula: tuple[Any, ...], row: list[Any]) -> Any:
    """A post-processing formula over released cells; NULL in, or division by zero, gives NULL."""
    op = formula[0]
    if op == "ref":
        return row[formula[1]]
    if op == "num" or op == "str":
        return formula[1]
    if op in ("neg", "abs"):
        v = evaluate(formula[1], row)
        if v is None:
            return None
        return -v if op == "neg" else abs(v)
    if op == "round":
        v = evaluate(formula[1], row)
        return None if v is None else round(float(v), int(formula[2]))
    a, b = evaluate(formula[1], row), evaluate(formula[2], row)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return None if b == 0 else a / b
    raise ValueError(f"unknown formula operator {op!r}")  # pragma: no cover - planner-built


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def holds(condition: tuple[Any, ...], row: list[Any]) -> bool:
    """A HAVING condition over released cells: the row is kept when it is TRUE (SQL's three-valued
    logic: a comparison with NULL is unknown, and so is NOT of unknown)."""
    return _truth(condition, row) is True


def _truth(condition: tuple[Any, ...], row: list[Any]) -> bool | None:
    op = condition[0]
    if op in ("and", "or"):
        a, b = _truth(condition[1], row), _truth(condition[2], row)
        if op == "and":
            return False if False in (a, b) else (None if None in (a, b) else True)
        return True if True in (a, b) else (None if None in (a, b) else False)
    if op == "not":
        v = _truth(condition[1], row)
        return None if v is None else not v
    if op == "is_null":
        return evaluate(condition[1], row) is None
    a, b = evaluate(condition[1], row), evaluate(condition[2], row)
    if a is None or b is None:
        return None
    try:
        return _COMPARE[op](a, b)
    except TypeError:  # a key compared with a value of another type
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(
    out: Any,
    group: tuple[Any, ...],
    g: int,
    noisy: dict[str, list[int]],
    measurements: dict[str, Measurement],
) -> tuple[Any, list[float] | None]:
    if out.kind is OutputKind.KEY:
        return jsonable(group[out.key_index]), None
    m = measurements[out.measurement]
    cal = calibrate(m.sensitivity, m.epsilon)
    if out.kind is OutputKind.COUNT:
        value = max(noisy[m.column][g], 0)
        half = cal.ci95_halfwidth
        return value, [max(value - half, 0.0), value + half]
    if out.kind is not OutputKind.AVG:
        assert m.center_count is None, "only an AVG reads a centred sum"
    if out.kind is OutputKind.SUM:
        raw = noisy[m.column][g]
        half = cal.ci95_halfwidth / m.fixed_point
        total: int | float = raw if m.fixed_point == 1 else raw / m.fixed_point
        return total, [total - half, total + half]
    if out.kind in (OutputKind.VAR, OutputKind.STDDEV):
        return _variance(out, g, noisy, measurements), None
    if out.kind is OutputKind.QUANTILE:
        return noisy[m.column][g], None
    # AVG: noisy sum / noisy count, clamped to the declared bounds (post-processing).
    # A centred sum (center != 0) adds up (term - center): the mean is center + that / count.
    d = measurements[out.denominator]
    assert m.center_count in (None, d.column)
    offset = m.center / m.fixed_point
    total = noisy[m.column][g] / m.fixed_point
    count = noisy[d.column][g]
    low, high = out.bounds
    value = min(max(offset + total / max(count, 1), low), high)
    # 95 % by a union bound over the two 97.5 % noise intervals (noise only, not bounding bias).
    s_half = accuracy(calibrate(m.sensitivity, m.epsilon).scale, 0.025) / m.fixed_point
    c_half = accuracy(calibrate(d.sensitivity, d.epsilon).scale, 0.025)
    if count - c_half <= 0:
        return value, [low, high]
    corners = [
        offset + s / c
        for s in (total - s_half, total + s_half)
        for c in (count - c_half, count + c_half)
    ]
    return value, [max(min(corners), low), min(max(corners), high)]


def _variance(
    out: Any, g: int, noisy: dict[str, list[int]], measurements: dict[str, Measurement]
) -> float:
    """VAR/STDDEV from noisy SUM(x), SUM(x²) and COUNT(x), clamped to what [low, high] allows."""
    m, d, q = measurements[out.measurement], measurements[out.denominator], measurements[out.second]
    n = max(noisy[d.column][g], 1)
    low, high = out.bounds
    mean = min(max(noisy[m.column][g] / m.fixed_point / n, low), high)
    square = noisy[q.column][g] / q.fixed_point / n
    # Values in [low, high] have a population variance of at most ((high - low) / 2)².
    var = min(max(square - mean * mean, 0.0), ((high - low) / 2) ** 2)
    if not out.population and n > 1:
        var = var * n / (n - 1)
    return math.sqrt(var) if out.kind is OutputKind.STDDEV else var


def _column_info(plan: QueryPlan, i: int, measurements: dict[str, Measurement]) -> ColumnInfo:
    out = plan.outputs[i]
    if out.kind is OutputKind.KEY:
        return ColumnInfo(out.name, out.type.value, False)
    if out.kind is OutputKind.EXPR:
        return ColumnInfo(out.name, out.type.value, True, mechanism="post-processing")
    if out.kind is OutputKind.QUANTILE:
        assert out.measurement is not None
        q = measurements[out.measurement]
        return ColumnInfo(
            out.name,
            out.type.value,
            True,
            mechanism="opendp private_quantile (exponential mechanism over "
            f"{len(q.candidates)} candidates)",
            epsilon=fraction_str(q.epsilon),
        )
    if out.kind in (OutputKind.VAR, OutputKind.STDDEV):
        parts = [measurements[c] for c in (out.measurement, out.denominator, out.second) if c]
        return ColumnInfo(
            out.name,
            out.type.value,
            True,
            mechanism="discrete_laplace sum, sum of squares and count",
            epsilon=fraction_str(sum((p.epsilon for p in parts), Fraction(0))),
        )
    assert out.measurement is not None
    m = measurements[out.measurement]
    cal = calibrate(m.sensitivity, m.epsilon)
    eps = m.epsilon
    denominator_scale = None
    if out.kind is OutputKind.AVG:
        assert out.denominator is not None
        d = measurements[out.denominator]
        denominator_scale = calibrate(d.sensitivity, d.epsilon).scale
        eps = eps + d.epsilon
        mechanism = avg_mechanism(m)
        half = None
    else:
        mechanism = "discrete_laplace"
        half = cal.ci95_halfwidth / m.fixed_point
    return ColumnInfo(
        name=out.name,
        type=out.type.value,
        noisy=True,
        mechanism=mechanism,
        scale=cal.output_scale(m.fixed_point),
        denominator_scale=denominator_scale,
        ci95_halfwidth=half,
        epsilon=fraction_str(eps),
    )


def _order_and_cut(
    plan: QueryPlan, rows: list[list[Any]], intervals: list[list[list[float] | None]]
) -> tuple[list[list[Any]], list[list[list[float] | None]]]:
    paired = list(zip(rows, intervals, strict=True))

    def sort_key(k: int) -> Callable[[tuple[list[Any], Any]], tuple[bool, Any]]:
        return lambda p: (p[0][k] is None, p[0][k] if p[0][k] is not None else 0)

    for key in reversed(plan.order_by):  # stable sorts, last key first
        paired.sort(key=sort_key(key.output_index), reverse=key.descending)
    start = plan.offset
    end = start + plan.limit if plan.limit is not None else None
    paired = paired[start:end]
    return [p[0] for p in paired], [p[1] for p in paired]


def _release_public(plan: QueryPlan, result: ResultSet) -> Released:
    typed = len(plan.outputs) == len(result.columns)
    columns = tuple(
        ColumnInfo(name, plan.outputs[i].type.value if typed else "other", False)
        for i, name in enumerate(result.columns)
    )
    rows = [[jsonable(v) for v in r] for r in result.rows]
    return Released(
        columns,
        rows,
        [[None] * len(columns) for _ in rows],
        GroupRelease("masked_rows" if plan.row_access else "public_table", released=len(rows)),
    )


def _in_domains(plan: QueryPlan, row: tuple[Any, ...]) -> bool:
    for i, key in enumerate(plan.group_keys):
        if key.public_domain is not None and _norm(row[i]) not in key.public_domain:
            return False
    return True


def _key_order(keys: tuple[Any, ...]) -> tuple[tuple[bool, str, Any], ...]:
    """A total order over key tuples of mixed, possibly NULL values."""
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in keys)


def _norm(value: Any) -> Any:
    if isinstance(value, dt.date):  # datetimes too (a subclass)
        return value.isoformat()
    return value


def avg_mechanism(m: Measurement) -> str:
    """How an AVG whose numerator is ``m`` is noised (the envelope's and explain's wording)."""
    shape = "sum" if m.center_count is None else "centred sum"
    return f"discrete_laplace {shape} / discrete_laplace count"


def centred(m: Measurement, total: int, count: int) -> int:
    """A centred sum's exact value (an AVG's numerator): the sum of (term - center) over the
    rows its COUNT counts, from the group's two exact integers, before any noise."""
    return total - m.center * count


def exact_value(m: Measurement, row: Mapping[str, Any]) -> int:
    """The exact integer the noise is added to for measurement ``m`` (not a quantile), from one
    warehouse result row by column name (a group the warehouse did not return: 0)."""
    total = _int(row.get(m.column))
    if m.center_count is None:
        return total
    return centred(m, total, _int(row.get(m.center_count)))


def _true(m: Measurement, value: Any) -> Any:
    """A measurement's true per-group value: an integer, or a quantile's list of values."""
    if m.kind is MeasurementKind.QUANTILE:
        return list(value) if value is not None else []
    return _int(value)


def _int(value: Any) -> int:
    return int(value) if value is not None else 0
