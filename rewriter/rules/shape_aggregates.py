"""Rule 5: a query on a protected table releases only group keys and allowed aggregates.

Each SELECT item is a GROUP BY key (a dimension, or a generalising expression of one), an
aggregate — COUNT(*), COUNT(x), COUNT(DISTINCT unit), COUNT(DISTINCT dimension), SUM, AVG,
VARIANCE/VAR_POP/VAR_SAMP, STDDEV/STDDEV_POP/STDDEV_SAMP over row expressions with bounds
(``rewriter.rules.row_expr``) — or arithmetic over aggregates and numbers, computed after the
noise. HAVING filters released rows the same way. Identifiers can never be selected or grouped on
(they single people out); measures only appear inside aggregates, clamped to their bounds. The
result is the output drafts, the group keys, and the integer measurements the warehouse computes
per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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
from rewriter.rules.row_expr import RowCompiler, RowValue

#: Float measures are summed as integers of 1/FIXED_POINT: integer sums are exact and reproducible
#: (DuckDB's SUM(DOUBLE) is not), and their sensitivity is an exact integer.
FIXED_POINT = 1000
#: Largest |value| × FIXED_POINT a summed row may contribute: with K ≤ 10,000 rows per unit the
#: sensitivity stays below 2^50, so noise scales stay far inside the 64-bit range.
MAX_PER_ROW = 10**11

_VARIANCES: dict[type[exp.Expression], tuple[OutputKind, bool]] = {
    exp.Variance: (OutputKind.VAR, False),
    exp.VariancePop: (OutputKind.VAR, True),
    exp.Stddev: (OutputKind.STDDEV, False),
    exp.StddevSamp: (OutputKind.STDDEV, False),
    exp.StddevPop: (OutputKind.STDDEV, True),
}
_COMPARISONS: dict[type[exp.Expression], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_ARITH: dict[type[exp.Expression], str] = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/"}


@dataclass(frozen=True, slots=True)
class MeasurementDraft:
    kind: MeasurementKind
    #: The row expression aggregated; None for COUNT(*) and COUNT(DISTINCT unit).
    arg: RowValue | None
    fixed_point: int = 1
    clamp: tuple[int | float, int | float] | None = None
    #: QUANTILE: which quantile (0 = MIN, 0.5 = MEDIAN, 1 = MAX).
    alpha: float | None = None

    @property
    def column(self) -> CatalogColumn | None:
        return self.arg.column if self.arg is not None else None

    @property
    def signature(self) -> tuple[str, str, float | None]:
        return (self.kind.value, self.arg.sql if self.arg is not None else "*", self.alpha)

    @property
    def source(self) -> str:
        return self.arg.source if self.arg is not None else "*"


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
    second: int | None = None
    population: bool = False
    formula: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    outputs: tuple[OutputDraft, ...]
    keys: tuple[RowValue, ...]
    measurements: tuple[MeasurementDraft, ...]
    hidden: tuple[OutputDraft, ...] = ()
    having: tuple[Any, ...] | None = None


@dataclass
class _Builder:
    compiler: RowCompiler
    res: Resolution
    keys: list[RowValue]
    unit: CatalogColumn | None
    measurements: list[MeasurementDraft] = field(default_factory=list)
    outputs: list[OutputDraft] = field(default_factory=list)
    hidden: list[OutputDraft] = field(default_factory=list)

    def add_measurement(self, draft: MeasurementDraft) -> int:
        for i, m in enumerate(self.measurements):
            if m.signature == draft.signature:
                return i
        self.measurements.append(draft)
        return len(self.measurements) - 1

    def ref(self, draft: OutputDraft) -> tuple[str, int]:
        """A formula reference to ``draft``: an output with the same source, or a hidden one."""
        for i, out in enumerate(self.outputs):
            if out.source_sql == draft.source_sql and out.kind is draft.kind:
                return ("ref", i)
        for i, out in enumerate(self.hidden):
            if out.source_sql == draft.source_sql and out.kind is draft.kind:
                return ("ref", -(i + 1))  # fixed up once the visible outputs are known
        self.hidden.append(draft)
        return ("ref", -len(self.hidden))


def shape_aggregates(
    tree: exp.Select,
    resolution: Resolution,
    *,
    dialect: str = "duckdb",
    unit: CatalogColumn | None = None,
    redact: bool = False,
) -> Shape:
    """Classify the SELECT list, GROUP BY and HAVING of a protected query.

    ``redact``: emit the analyst's literals inside aggregates as ``?`` (for the audit copy).
    """
    items = list(tree.expressions)
    if any(isinstance(e, exp.Star) for e in items):
        raise AggregationRequired("SELECT * returns rows of a protected table")
    compiler = RowCompiler(resolution, dialect, redact=redact)
    keys = _group_keys(tree, resolution, compiler)
    b = _Builder(compiler, resolution, keys, unit)
    for item in items:
        name = item.alias_or_name if isinstance(item, exp.Alias) else ""
        expr = item.this if isinstance(item, exp.Alias) else item
        b.outputs.append(_output(expr, name, b))
    having = None
    node = tree.args.get("having")
    if node is not None:
        having = _condition(node.this, b, tree)
    n = len(b.outputs)
    outputs = [_fix(o, n) for o in b.outputs]
    hidden = [_fix(o, n) for o in b.hidden]
    return Shape(
        tuple(outputs),
        tuple(keys),
        tuple(b.measurements),
        tuple(hidden),
        _fix_tree(having, n) if having is not None else None,
    )


# -- GROUP BY ---------------------------------------------------------------------------------


def _group_keys(tree: exp.Select, res: Resolution, compiler: RowCompiler) -> list[RowValue]:
    group = tree.args.get("group")
    if group is None:
        return []
    if any(group.args.get(k) for k in ("grouping_sets", "cube", "rollup", "totals", "all")):
        raise Unsupported("GROUPING SETS, CUBE, ROLLUP and GROUP BY ALL are not supported")
    items = list(tree.expressions)
    keys: list[RowValue] = []
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
        if target.find(exp.AggFunc) is not None:
            raise Unsupported("GROUP BY cannot name an aggregate")
        key = compiler.key(target)
        if key.sql not in {k.sql for k in keys}:
            keys.append(key)
    return keys


def _alias_target(items: list[exp.Expression], name: str) -> exp.Expression:
    for item in items:
        if isinstance(item, exp.Alias) and item.alias.lower() == name.lower():
            target: exp.Expression = item.this
            return target
    raise Unsupported(f"GROUP BY {name} names no column")


def _key_index(expr: exp.Expression, b: _Builder) -> int | None:
    """The GROUP BY key ``expr`` is (by column, or by the same expression), if any."""
    while isinstance(expr, exp.Paren):
        expr = expr.this
    if isinstance(expr, exp.Column):
        col = b.res.get(id(expr))
        for i, k in enumerate(b.keys):
            if col is not None and k.column is not None and k.column == col:
                return i
        return None
    try:
        compiled = b.compiler.key(expr)
    except Exception:
        return None
    for i, k in enumerate(b.keys):
        if k.sql == compiled.sql:
            return i
    return None


# -- SELECT items -----------------------------------------------------------------------------


def _output(expr: exp.Expression, alias: str, b: _Builder) -> OutputDraft:
    source = expr.sql(dialect="postgres")
    if expr.find(exp.AggFunc) is None:
        return _key_output(expr, alias, b, source)
    if isinstance(expr, exp.AggFunc | exp.WithinGroup):
        return _aggregate(expr, alias, b)
    formula = _formula(expr, b)
    return OutputDraft(
        alias or "expr", OutputKind.EXPR, LogicalType.FLOAT, source_sql=source, formula=formula
    )


def _key_output(expr: exp.Expression, alias: str, b: _Builder, source: str) -> OutputDraft:
    if isinstance(expr, exp.Column):
        col = b.res.get(id(expr))
        if col is not None and col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(f"identifier column {col.name} cannot be selected")
        if col is not None and col.cls is ColumnClass.MEASURE:
            raise MeasureMisuse(
                f"measure {col.name} can only be released inside SUM, AVG or COUNT",
                hint=f"Aggregate it, e.g. SUM({col.name}) or AVG({col.name}).",
            )
    if isinstance(expr, exp.Literal | exp.Neg | exp.Boolean | exp.Null | exp.Cast):
        raise Unsupported("constant select items are not supported on protected tables")
    index = _key_index(expr, b)
    if index is None:
        label = expr.name if isinstance(expr, exp.Column) else shown(expr, 60)
        raise AggregationRequired(
            f"column {label} must appear in GROUP BY or be used in an aggregate"
        )
    key = b.keys[index]
    name = alias or (key.column.name if key.column is not None else expr.alias_or_name or "key")
    return OutputDraft(name, OutputKind.KEY, key.type, key_index=index, source_sql=source)


def _aggregate(expr: exp.Expression, alias: str, b: _Builder) -> OutputDraft:
    source = expr.sql(dialect="postgres")
    if isinstance(expr, exp.Count):
        return _count(expr, alias, b, source)
    if isinstance(expr, exp.Sum | exp.Avg):
        fn = "SUM" if isinstance(expr, exp.Sum) else "AVG"
        value = _bounded(expr.this, fn, b)
        draft = sum_draft(value)
        s = b.add_measurement(draft)
        if isinstance(expr, exp.Sum):
            kind = LogicalType.INTEGER if draft.fixed_point == 1 else LogicalType.FLOAT
            return OutputDraft(
                alias or "sum", OutputKind.SUM, kind, measurement=s, source_sql=source
            )
        c = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT, value))
        return OutputDraft(
            alias or "avg",
            OutputKind.AVG,
            LogicalType.FLOAT,
            measurement=s,
            denominator=c,
            bounds=(value.low, value.high),
            source_sql=source,
        )
    spec = _VARIANCES.get(type(expr))
    if spec is not None:
        out_kind, population = spec
        fn = type(expr).__name__.upper()
        value = _bounded(expr.this, fn, b)
        s = b.add_measurement(sum_draft(value))
        s2 = b.add_measurement(sum_draft(_square(value)))
        c = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT, value))
        return OutputDraft(
            alias or out_kind.value,
            out_kind,
            LogicalType.FLOAT,
            measurement=s,
            denominator=c,
            second=s2,
            population=population,
            bounds=(value.low, value.high),
            source_sql=source,
        )
    quantile = _quantile_spec(expr)
    if quantile is not None:
        alpha, target = quantile
        names: dict[type[exp.Expression], str] = {
            exp.Min: "MIN",
            exp.Max: "MAX",
            exp.Median: "MEDIAN",
        }
        fn = names.get(type(expr), "PERCENTILE_CONT")
        value = _bounded(target, fn, b)
        m = b.add_measurement(
            MeasurementDraft(
                MeasurementKind.QUANTILE, value, clamp=(value.low, value.high), alpha=alpha
            )
        )
        return OutputDraft(
            alias or fn.lower(),
            OutputKind.QUANTILE,
            LogicalType.FLOAT,
            measurement=m,
            bounds=(value.low, value.high),
            source_sql=source,
        )
    raise Unsupported(f"aggregate {shown(expr, 60)} is not supported")


def _quantile_spec(expr: exp.Expression) -> tuple[float, exp.Expression] | None:
    """(alpha, argument) of MIN, MAX, MEDIAN and PERCENTILE_CONT/DISC(α) WITHIN GROUP."""
    if isinstance(expr, exp.Min):
        return 0.0, expr.this
    if isinstance(expr, exp.Max):
        return 1.0, expr.this
    if isinstance(expr, exp.Median):
        return 0.5, expr.this
    if isinstance(expr, exp.WithinGroup):
        fn, order = expr.this, expr.expression
        if not isinstance(fn, exp.PercentileCont | exp.PercentileDisc):
            raise Unsupported(f"{shown(expr, 60)} is not supported")
        alpha = fn.this
        if not (isinstance(alpha, exp.Literal) and not alpha.is_string):
            raise Unsupported("PERCENTILE_CONT takes a number between 0 and 1")
        q = float(str(alpha.this))
        if not 0 <= q <= 1:
            raise Unsupported("PERCENTILE_CONT takes a number between 0 and 1")
        if not isinstance(order, exp.Order) or len(order.expressions) != 1:
            raise Unsupported("PERCENTILE_CONT … WITHIN GROUP (ORDER BY one expression)")
        ordered = order.expressions[0]
        if ordered.args.get("desc"):
            q = 1 - q
        return q, ordered.this
    if isinstance(expr, exp.PercentileCont | exp.PercentileDisc | exp.Quantile):
        raise Unsupported(
            "write percentiles as PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)",
            hint="e.g. PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY cost)",
        )
    return None


def _count(expr: exp.Count, alias: str, b: _Builder, source: str) -> OutputDraft:
    arg = expr.this
    if arg is None:
        raise Unsupported("COUNT() needs an argument", hint="COUNT(*) counts rows.")
    if isinstance(arg, exp.Star):
        m = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT, None))
    elif isinstance(arg, exp.Distinct):
        if len(arg.expressions) != 1:
            raise Unsupported("COUNT(DISTINCT …) takes one column")
        inner = arg.expressions[0]
        col = b.res.get(id(inner)) if isinstance(inner, exp.Column) else None
        if col is not None and col.cls is ColumnClass.IDENTIFIER:
            if b.unit is None or col.name != b.unit.name:
                raise IdentifierReference(
                    f"COUNT(DISTINCT {col.name}) counts an identifier that is not the privacy unit",
                    hint=f"COUNT(DISTINCT {b.unit.name if b.unit else 'unit'}) counts people.",
                )
            m = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT_UNITS, None))
        else:
            value = b.compiler.value(inner, "COUNT(DISTINCT …)")
            if value.column is None or value.column.cls is ColumnClass.MEASURE:
                raise MeasureMisuse(
                    "COUNT(DISTINCT …) takes the privacy unit or a dimension column",
                    hint="Distinct values of a measure would release them; group by a bucket "
                    "of it instead.",
                )
            m = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT_DISTINCT, value))
    else:
        col = b.res.get(id(arg)) if isinstance(arg, exp.Column) else None
        if col is not None and col.cls is ColumnClass.IDENTIFIER:
            raise Unsupported(
                f"COUNT({col.name}) counts rows; use COUNT(*) for rows, or "
                f"COUNT(DISTINCT {col.name}) for people if it is the privacy unit",
                hint="Use COUNT(*) to count rows.",
            )
        if col is not None and col.cls is ColumnClass.MASKED:
            raise MaskedColumn(f"masked column {col.name} cannot be counted yet")
        value = b.compiler.value(arg, "COUNT")
        if value.sql == "NULL":
            raise Unsupported("COUNT(NULL) is always 0", hint="Use COUNT(*) to count rows.")
        m = b.add_measurement(MeasurementDraft(MeasurementKind.COUNT, value))
    return OutputDraft(
        alias or "count", OutputKind.COUNT, LogicalType.INTEGER, measurement=m, source_sql=source
    )


def _bounded(node: exp.Expression, fn: str, b: _Builder) -> RowValue:
    """The argument of SUM/AVG/VARIANCE/STDDEV: numeric, with a finite interval."""
    col = b.res.get(id(node)) if isinstance(node, exp.Column) else None
    if col is not None and col.cls is ColumnClass.IDENTIFIER:
        raise IdentifierReference(f"identifier column {col.name} cannot be aggregated with {fn}")
    if col is not None and (col.cls is not ColumnClass.MEASURE or col.bounds is None):
        raise MeasureMisuse(
            f"{fn}({col.name}) needs a measure with declared bounds; {col.name} is a "
            f"{col.cls.value}",
            hint=f"Ask an admin to declare {col.name} as a measure with bounds, clamp it with "
            f"LEAST(GREATEST({col.name}, low), high), or use COUNT.",
        )
    value = b.compiler.value(node, fn)
    if value.type not in (LogicalType.INTEGER, LogicalType.FLOAT):
        raise MeasureMisuse(f"{fn}({shown(node, 60)}) needs a numeric argument")
    if not value.bounded:
        raise MeasureMisuse(
            f"{fn}({shown(node, 60)}) has no bounds",
            hint="Declare bounds for the measures it reads in the policy, or clamp it with "
            "LEAST(GREATEST(expression, low), high).",
        )
    return value


def _square(value: RowValue) -> RowValue:
    ends = (value.low * value.low, value.high * value.high)
    low = 0.0 if value.low <= 0 <= value.high else min(ends)
    return RowValue(
        f"({value.sql} * {value.sql})",
        value.type,
        low,
        max(ends),
        source=f"({value.source})^2",
    )


def sum_draft(value: RowValue) -> MeasurementDraft:
    low, high = value.low, value.high
    if max(abs(low), abs(high)) * FIXED_POINT > MAX_PER_ROW:
        # Decided from the policy and the query alone, before any data: wider bounds could
        # overflow the warehouse's 64-bit cast or the noise's integer range on some data only.
        raise MeasureMisuse(
            f"the bounds of {value.source or 'this expression'} are too wide to sum exactly",
            hint=f"Keep summed values within ±{MAX_PER_ROW // FIXED_POINT:,}.",
        )
    if value.type is LogicalType.INTEGER and float(low).is_integer() and float(high).is_integer():
        return MeasurementDraft(MeasurementKind.SUM, value, 1, (int(low), int(high)))
    return MeasurementDraft(MeasurementKind.SUM, value, FIXED_POINT, (low, high))


# -- formulas over released aggregates ------------------------------------------------------


def _formula(node: exp.Expression, b: _Builder) -> tuple[Any, ...]:
    if isinstance(node, exp.Paren):
        return _formula(node.this, b)
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return ("num", float(str(node.this)))
        except ValueError:
            raise Unsupported("a number in this expression cannot be read") from None
    if isinstance(node, exp.Neg):
        return ("neg", _formula(node.this, b))
    op = _ARITH.get(type(node))
    if op is not None:
        return (op, _formula(node.this, b), _formula(node.expression, b))
    if isinstance(node, exp.Round):
        digits = node.args.get("decimals")
        n = 0
        if digits is not None:
            if not (isinstance(digits, exp.Literal) and str(digits.this).isdigit()):
                raise Unsupported("ROUND(x, n) takes a whole number n")
            n = min(int(str(digits.this)), 15)
        return ("round", _formula(node.this, b), n)
    if isinstance(node, exp.Abs):
        return ("abs", _formula(node.this, b))
    if isinstance(node, exp.AggFunc):
        draft = _aggregate(node, "", b)
        return b.ref(draft)
    raise Unsupported(
        f"{shown(node, 60)} cannot be computed from released aggregates",
        hint="Combine aggregates with + - * /, ROUND and ABS; put row-level logic inside the "
        "aggregate.",
    )


def _condition(node: exp.Expression, b: _Builder, tree: exp.Select) -> tuple[Any, ...]:
    if isinstance(node, exp.Paren):
        return _condition(node.this, b, tree)
    if isinstance(node, exp.And | exp.Or):
        return (
            "and" if isinstance(node, exp.And) else "or",
            _condition(node.this, b, tree),
            _condition(node.expression, b, tree),
        )
    if isinstance(node, exp.Not):
        return ("not", _condition(node.this, b, tree))
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        return ("is_null", _term(node.this, b, tree))
    op = _COMPARISONS.get(type(node))
    if op is not None:
        return (op, _term(node.this, b, tree), _term(node.expression, b, tree))
    raise Unsupported(f"HAVING condition {shown(node, 60)} is not supported")


def _term(node: exp.Expression, b: _Builder, tree: exp.Select) -> tuple[Any, ...]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Literal) and node.is_string:
        return ("str", str(node.this))
    if isinstance(node, exp.Column) and node.find(exp.AggFunc) is None:
        if id(node) not in b.res:  # an output alias
            for i, out in enumerate(b.outputs):
                if out.name.lower() == node.name.lower():
                    return ("ref", i)
            raise Unsupported(f"HAVING {node.name} names no column of the result")
        index = _key_index(node, b)
        if index is None:
            raise AggregationRequired(
                f"column {node.name} in HAVING must be a GROUP BY key or inside an aggregate"
            )
        key = b.keys[index]
        return b.ref(
            OutputDraft(
                key.column.name if key.column else "key",
                OutputKind.KEY,
                key.type,
                key_index=index,
                source_sql=node.sql(dialect="postgres"),
            )
        )
    if node.find(exp.AggFunc) is None and _key_index(node, b) is not None:
        index = _key_index(node, b)
        assert index is not None
        key = b.keys[index]
        return b.ref(
            OutputDraft(
                "key",
                OutputKind.KEY,
                key.type,
                key_index=index,
                source_sql=node.sql(dialect="postgres"),
            )
        )
    return _formula(node, b)


def _fix(out: OutputDraft, n_visible: int) -> OutputDraft:
    if out.formula is None:
        return out
    return OutputDraft(
        out.name,
        out.kind,
        out.type,
        source_sql=out.source_sql,
        formula=_fix_tree(out.formula, n_visible),
    )


def _fix_tree(tree: tuple[Any, ...], n_visible: int) -> tuple[Any, ...]:
    """Hidden references (negative while building) become ``n_visible + i``."""
    if tree[0] == "ref":
        i = tree[1]
        return ("ref", i if i >= 0 else n_visible + (-i - 1))
    return (tree[0], *(_fix_tree(t, n_visible) if isinstance(t, tuple) else t for t in tree[1:]))


def centred_sum(draft: MeasurementDraft, rows_per_unit: int) -> tuple[int, int]:
    """The centre of a SUM's fixed-point terms and the L1 sensitivity of the centred sum.

    A row's term is ``ROUND(clamp(x) * fixed_point)``, an integer in [lo, hi] with lo =
    floor(low * fixed_point) and hi = ceil(high * fixed_point). Centred at the integer c = (lo +
    hi) // 2, it lies in [lo - c, hi - c], so one unit's at most ``rows_per_unit`` rows move the
    centred sum, over the whole vector of groups, by at most rows_per_unit * max(c - lo, hi - c)
    — about half of :func:`sum_sensitivity` when the interval lies on one side of zero.

    >>> centred_sum(MeasurementDraft(MeasurementKind.SUM, None, 1, (0, 500000)), 1)
    (250000, 250000)
    """
    assert draft.kind is MeasurementKind.SUM and draft.clamp is not None
    low, high = draft.clamp
    # The same double products the warehouse rounds (its clamp literals are these floats, and a
    # correctly rounded product is monotone in x): no term lies outside [lo, hi].
    lo = math.floor(low * draft.fixed_point)
    hi = math.ceil(high * draft.fixed_point)
    center = (lo + hi) // 2
    return center, rows_per_unit * max(center - lo, hi - center, 1)


def sum_sensitivity(draft: MeasurementDraft, rows_per_unit: int, grouped: bool = True) -> int:
    """L1 sensitivity of a measurement over the whole vector of groups, in integer units.

    One unit adds or removes at most ``rows_per_unit`` rows; each row changes one group's count
    by 1, or one group's (fixed-point) sum by at most max(|low|, |high|) after clamping and
    rounding. COUNT(DISTINCT unit) changes by 1 in each group the unit's rows fall in: at most
    ``rows_per_unit`` groups, and one without GROUP BY. COUNT(DISTINCT dimension) gains or loses at
    most one value per row of the unit.

    >>> sum_sensitivity(MeasurementDraft(MeasurementKind.COUNT, None), 5)
    5
    """
    if draft.kind is MeasurementKind.COUNT_UNITS:
        return rows_per_unit if grouped else 1
    if draft.kind in (
        MeasurementKind.COUNT,
        MeasurementKind.COUNT_DISTINCT,
        MeasurementKind.QUANTILE,  # rows (symmetric distance): the quantile mechanism's d_in
    ):
        return rows_per_unit
    assert draft.clamp is not None
    low, high = draft.clamp
    per_row = math.ceil(max(abs(low), abs(high)) * draft.fixed_point)
    return rows_per_unit * max(per_row, 1)
