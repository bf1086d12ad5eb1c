"""Rule 5: a query on a protected table releases only group keys and allowed aggregates.

Each SELECT item is either a GROUP BY key (a *dimension*) or COUNT(*), COUNT(col), SUM(measure) or
AVG(measure). Identifiers can never be selected or grouped on (they single people out); measures
only appear inside aggregates, clamped to their declared bounds. The result is a list of output
drafts, the group keys, and the integer measurements the warehouse must compute per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from rewriter.catalog import CatalogColumn, LogicalType
from rewriter.errors import (
    AggregationRequired,
    IdentifierReference,
    MaskedColumn,
    MeasureMisuse,
    Unsupported,
    shown,
)
from rewriter.plan import MeasurementKind, OutputKind
from rewriter.policy import ColumnClass
from rewriter.rules.resolve_columns import Resolution

#: Float measures are summed as integers of 1/FIXED_POINT: integer sums are exact and reproducible
#: (DuckDB's SUM(DOUBLE) is not), and their sensitivity is an exact integer.
FIXED_POINT = 1000
#: Largest |value| × FIXED_POINT a summed row may contribute: with K ≤ 10,000 rows per unit the
#: sensitivity stays below 2^50, so noise scales stay far inside the 64-bit range.
MAX_PER_ROW = 10**11


@dataclass(frozen=True, slots=True)
class MeasurementDraft:
    kind: MeasurementKind
    column: CatalogColumn | None  # None for COUNT(*)
    fixed_point: int = 1
    clamp: tuple[int | float, int | float] | None = None

    @property
    def signature(self) -> tuple[str, str]:
        return (self.kind.value, self.column.name if self.column is not None else "*")


@dataclass(frozen=True, slots=True)
class OutputDraft:
    name: str
    kind: OutputKind
    type: LogicalType
    key_index: int | None = None
    measurement: int | None = None
    denominator: int | None = None
    bounds: tuple[float, float] | None = None
    source_sql: str = ""


@dataclass(frozen=True, slots=True)
class Shape:
    outputs: tuple[OutputDraft, ...]
    keys: tuple[CatalogColumn, ...]
    measurements: tuple[MeasurementDraft, ...]


def shape_aggregates(tree: exp.Select, resolution: Resolution) -> Shape:
    """Classify the SELECT list and GROUP BY of a protected query."""
    items = list(tree.expressions)
    if any(isinstance(e, exp.Star) for e in items):
        raise AggregationRequired("SELECT * returns rows of a protected table")
    keys = _group_keys(tree, resolution)
    measurements: list[MeasurementDraft] = []
    outputs: list[OutputDraft] = []
    for item in items:
        name = item.alias_or_name if isinstance(item, exp.Alias) else ""
        expr = item.this if isinstance(item, exp.Alias) else item
        outputs.append(_output(expr, name, keys, resolution, measurements))
    return Shape(tuple(outputs), tuple(keys), tuple(measurements))


def _group_keys(tree: exp.Select, res: Resolution) -> list[CatalogColumn]:
    group = tree.args.get("group")
    if group is None:
        return []
    if any(group.args.get(k) for k in ("grouping_sets", "cube", "rollup", "totals", "all")):
        raise Unsupported("GROUPING SETS, CUBE, ROLLUP and GROUP BY ALL are not supported")
    items = list(tree.expressions)
    keys: list[CatalogColumn] = []
    for node in group.expressions:
        target: exp.Expression = node
        if isinstance(node, exp.Literal) and not node.is_string:
            if not str(node.this).isdigit():
                raise Unsupported("GROUP BY positions are whole numbers (1 = first select item)")
            index = int(str(node.this)) - 1
            if not 0 <= index < len(items):
                raise Unsupported(f"GROUP BY position {node.this} is not in the select list")
            target = items[index].this if isinstance(items[index], exp.Alias) else items[index]
        elif isinstance(node, exp.Column) and id(node) not in res:
            target = _alias_target(items, node.name)
        col = _dimension(target, res, "GROUP BY")
        if col.name not in {k.name for k in keys}:
            keys.append(col)
    return keys


def _alias_target(items: list[exp.Expression], name: str) -> exp.Expression:
    for item in items:
        if isinstance(item, exp.Alias) and item.alias.lower() == name.lower():
            target: exp.Expression = item.this
            return target
    raise Unsupported(f"GROUP BY {name} names no column")


def _dimension(node: exp.Expression, res: Resolution, where: str) -> CatalogColumn:
    if not isinstance(node, exp.Column) or id(node) not in res:
        raise Unsupported(f"{where} supports plain dimension columns only (expressions come later)")
    col = res[id(node)]
    if col.cls is ColumnClass.IDENTIFIER:
        raise IdentifierReference(f"identifier column {col.name} cannot be used in {where}")
    if col.cls is ColumnClass.MEASURE:
        raise MeasureMisuse(f"measure {col.name} cannot be used in {where}; aggregate it instead")
    if col.cls is ColumnClass.MASKED:
        raise MaskedColumn(f"masked column {col.name} cannot be used in {where}")
    if col.cls is not ColumnClass.DIMENSION:
        raise Unsupported(f"column {col.name} cannot be used in {where}")
    if col.type is LogicalType.OTHER:
        raise Unsupported(f"column {col.name} has a type that cannot be grouped on")
    return col


def _output(
    expr: exp.Expression,
    alias: str,
    keys: list[CatalogColumn],
    res: Resolution,
    measurements: list[MeasurementDraft],
) -> OutputDraft:
    source = expr.sql(dialect="postgres")
    if isinstance(expr, exp.Column):
        col = res.get(id(expr))
        if col is not None and col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(f"identifier column {col.name} cannot be selected")
        if col is not None and col.cls is ColumnClass.MEASURE:
            raise MeasureMisuse(f"measure {col.name} can only be released inside SUM, AVG or COUNT")
        if col is None or col.name not in {k.name for k in keys}:
            raise AggregationRequired(
                f"column {expr.name} must appear in GROUP BY or be used in an aggregate"
            )
        index = [k.name for k in keys].index(col.name)
        return OutputDraft(
            alias or col.name, OutputKind.KEY, col.type, key_index=index, source_sql=source
        )
    if isinstance(expr, exp.Count):
        arg = expr.this
        if isinstance(arg, exp.Star):
            m = _add(measurements, MeasurementDraft(MeasurementKind.COUNT, None))
        else:
            col = _counted(arg, res)
            m = _add(measurements, MeasurementDraft(MeasurementKind.COUNT, col))
        return OutputDraft(
            alias or "count",
            OutputKind.COUNT,
            LogicalType.INTEGER,
            measurement=m,
            source_sql=source,
        )
    if isinstance(expr, exp.Sum | exp.Avg):
        col = _measure(expr.this, res, "SUM" if isinstance(expr, exp.Sum) else "AVG")
        s = _add(measurements, _sum_draft(col))
        assert col.bounds is not None
        if isinstance(expr, exp.Sum):
            out_type = (
                LogicalType.INTEGER if _sum_draft(col).fixed_point == 1 else LogicalType.FLOAT
            )
            return OutputDraft(
                alias or "sum", OutputKind.SUM, out_type, measurement=s, source_sql=source
            )
        c = _add(measurements, MeasurementDraft(MeasurementKind.COUNT, col))
        return OutputDraft(
            alias or "avg",
            OutputKind.AVG,
            LogicalType.FLOAT,
            measurement=s,
            denominator=c,
            bounds=col.bounds,
            source_sql=source,
        )
    if isinstance(expr, exp.Literal | exp.Neg | exp.Boolean | exp.Null | exp.Cast):
        raise Unsupported("constant select items are not supported on protected tables yet")
    raise Unsupported(f"select item {shown(expr)} is not supported yet")


def _counted(node: exp.Expression, res: Resolution) -> CatalogColumn:
    if not isinstance(node, exp.Column) or id(node) not in res:
        raise Unsupported("COUNT takes * or a column")
    col = res[id(node)]
    if col.cls is ColumnClass.IDENTIFIER:
        raise Unsupported(
            f"COUNT({col.name}) counts rows; COUNT(DISTINCT {col.name}) (people) is not supported yet",
            hint="Use COUNT(*) to count rows.",
        )
    if col.cls is ColumnClass.MASKED:
        raise MaskedColumn(f"masked column {col.name} cannot be counted yet")
    return col


def _measure(node: exp.Expression, res: Resolution, fn: str) -> CatalogColumn:
    if not isinstance(node, exp.Column) or id(node) not in res:
        raise Unsupported(f"{fn} takes a measure column (expressions come later)")
    col = res[id(node)]
    if col.cls is ColumnClass.IDENTIFIER:
        raise IdentifierReference(f"identifier column {col.name} cannot be aggregated with {fn}")
    if col.cls is not ColumnClass.MEASURE or col.bounds is None:
        raise MeasureMisuse(
            f"{fn}({col.name}) needs a measure with declared bounds; {col.name} is a {col.cls.value}",
            hint="Ask an admin to declare the column as a measure with bounds, or use COUNT.",
        )
    if col.type not in (LogicalType.INTEGER, LogicalType.FLOAT):
        raise MeasureMisuse(f"measure {col.name} is not numeric")
    return col


def _sum_draft(col: CatalogColumn) -> MeasurementDraft:
    assert col.bounds is not None
    low, high = col.bounds
    if max(abs(low), abs(high)) * FIXED_POINT > MAX_PER_ROW:
        # Decided from the policy alone, before any data: wider bounds could overflow the
        # warehouse's 64-bit cast or the noise's integer range on some data and not on other.
        raise MeasureMisuse(
            f"the bounds of {col.name} are too wide to sum exactly",
            hint=f"Declare bounds within ±{MAX_PER_ROW // FIXED_POINT:,} for summed measures.",
        )
    if col.type is LogicalType.INTEGER and float(low).is_integer() and float(high).is_integer():
        return MeasurementDraft(MeasurementKind.SUM, col, 1, (int(low), int(high)))
    return MeasurementDraft(MeasurementKind.SUM, col, FIXED_POINT, (low, high))


def _add(measurements: list[MeasurementDraft], draft: MeasurementDraft) -> int:
    for i, m in enumerate(measurements):
        if m.signature == draft.signature:
            return i
    measurements.append(draft)
    return len(measurements) - 1


def sum_sensitivity(draft: MeasurementDraft, max_rows_per_unit: int) -> int:
    """L1 sensitivity of a measurement over the whole vector of groups, in integer units.

    One unit adds or removes at most ``max_rows_per_unit`` rows; each row changes one group's count
    by 1, or one group's (fixed-point) sum by at most max(|low|, |high|) after clamping and rounding.

    >>> sum_sensitivity(MeasurementDraft(MeasurementKind.COUNT, None), 5)
    5
    """
    if draft.kind is MeasurementKind.COUNT:
        return max_rows_per_unit
    assert draft.clamp is not None
    low, high = draft.clamp
    per_row = math.ceil(max(abs(low), abs(high)) * draft.fixed_point)
    return max_rows_per_unit * max(per_row, 1)
