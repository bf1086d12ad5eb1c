"""The released answer with the noise off: what every released column is, exactly, by definition.

Used by the corpus to compare the rewriter's SQL with hand-written references. It follows the
privacy model's post-processing (docs/privacy-model.md) without any mechanism: counts and sums as
computed, fixed-point sums divided back, AVG = SUM / COUNT clamped to the bounds, VAR from the
three sums, quantiles as PERCENTILE_CONT over the clamped values, formulas and HAVING on those
values, every group of the domain (public domains zero-filled), ORDER BY and LIMIT last.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
from typing import Any

from gateway.release import evaluate, holds
from gateway.warehouse import ResultSet
from rewriter.plan import MeasurementKind, OutputKind, QueryPlan


def percentile(values: list[float], q: float) -> float | None:
    """PERCENTILE_CONT: linear interpolation between closest ranks (as PostgreSQL and DuckDB)."""
    data = sorted(values)
    if not data:
        return None
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value  # kept: timestamps stay timestamps
    return value


def exact_rows(plan: QueryPlan, result: ResultSet) -> list[list[Any]]:
    index = {name: i for i, name in enumerate(result.columns)}
    measurements = {m.column: m for m in plan.measurements}
    n_keys = len(plan.group_keys)
    rows = [tuple(plain(v) for v in r) for r in result.rows]
    if not plan.group_keys:
        groups: list[tuple[Any, ...]] = [()]
        by_key = {(): rows[0]} if rows else {}
    else:
        by_key = {tuple(r[:n_keys]): r for r in rows}
        if plan.zero_fill:
            domains = [k.public_domain or () for k in plan.group_keys]
            groups = [tuple(g) for g in itertools.product(*domains)]
        else:
            groups = [
                g
                for g in by_key
                if all(
                    k.public_domain is None or g[i] in k.public_domain
                    for i, k in enumerate(plan.group_keys)
                )
            ]

    def true(column: str, group: tuple[Any, ...]) -> Any:
        row = by_key.get(group)
        value = row[index[column]] if row is not None else None
        if measurements[column].kind is MeasurementKind.QUANTILE:
            return [float(v) for v in (value or []) if v is not None]
        return int(value or 0)

    out: list[list[Any]] = []
    every = (*plan.outputs, *plan.hidden)
    for group in groups:
        cells: list[Any] = []
        for o in every:
            if o.kind is OutputKind.KEY:
                assert o.key_index is not None
                cells.append(group[o.key_index])
                continue
            if o.kind is OutputKind.EXPR:
                cells.append(None)
                continue
            assert o.measurement is not None
            m = measurements[o.measurement]
            raw = true(m.column, group)
            if o.kind is OutputKind.COUNT:
                cells.append(raw)
            elif o.kind is OutputKind.SUM:
                cells.append(raw if m.fixed_point == 1 else raw / m.fixed_point)
            elif o.kind is OutputKind.AVG:
                assert o.denominator is not None and o.bounds is not None
                count = true(o.denominator, group)
                low, high = o.bounds
                cells.append(min(max(raw / m.fixed_point / max(count, 1), low), high))
            elif o.kind in (OutputKind.VAR, OutputKind.STDDEV):
                assert o.denominator is not None and o.second is not None and o.bounds
                n = max(true(o.denominator, group), 1)
                q = measurements[o.second]
                mean = raw / m.fixed_point / n
                var = max(true(o.second, group) / q.fixed_point / n - mean * mean, 0.0)
                if not o.population and n > 1:
                    var = var * n / (n - 1)
                cells.append(math.sqrt(var) if o.kind is OutputKind.STDDEV else var)
            elif o.kind is OutputKind.QUANTILE:
                assert m.alpha is not None
                cells.append(percentile(raw, m.alpha))
            else:  # pragma: no cover
                raise AssertionError(o.kind)
        for i, o in enumerate(every):
            if o.kind is OutputKind.EXPR and o.formula is not None:
                cells[i] = evaluate(o.formula, cells)
        if plan.having is not None and not holds(plan.having, cells):
            continue
        out.append(cells[: len(plan.outputs)])
    for key in reversed(plan.order_by):
        k = key.output_index
        out.sort(
            key=lambda r: (r[k] is None, r[k] if r[k] is not None else 0), reverse=key.descending
        )
    end = plan.offset + plan.limit if plan.limit is not None else None
    return out[plan.offset : end]
