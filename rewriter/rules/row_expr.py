"""Row-level expressions inside aggregates and GROUP BY keys, with bounds by interval arithmetic.

Every value an aggregate sums must lie in a known interval, or its sensitivity is unknown. A
measure column is clamped to its declared bounds *where it is read*, so whatever the data hold,
each reference lies in ``[low, high]``; arithmetic, CASE, COALESCE and LEAST/GREATEST then carry
intervals by the usual rules (docs/privacy-model.md, "Expressions"). Arithmetic runs in double
precision, which never raises on data (overflow gives ±inf, 0·inf gives NaN, and both are clamped
away by the final clamp to the computed interval); division is by non-zero constants only, since
division by data can raise on some engines. Nothing here can fail on some rows and not on others:
the error-oracle argument of ``check_where`` carries over.

Group keys are dimension columns or *generalising* expressions of one dimension — ``date_trunc``,
``EXTRACT``, ``floor(x / w) * w``, ``width_bucket`` and prefix ``substr`` — emitted in forms that
give the same answer on DuckDB, PostgreSQL and Spark SQL and cannot raise (Spark's ANSI mode, on
by default since Spark 4, raises on casts and integer arithmetic that overflow: nothing emitted
here casts a value that could be out of range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from rewriter.catalog import CatalogColumn, LogicalType
from rewriter.errors import (
    FunctionNotAllowed,
    IdentifierReference,
    MaskedColumn,
    MeasureMisuse,
    TypeMismatch,
    Unsupported,
    shown,
)
from rewriter.policy import ColumnClass
from rewriter.rules.check_where import base_column, predicate
from rewriter.rules.resolve_columns import Resolution

INF = math.inf
_NUMERIC = (LogicalType.INTEGER, LogicalType.FLOAT)
#: Column classes whose values may be read inside a row expression.
_READABLE = (ColumnClass.MEASURE, ColumnClass.DIMENSION, ColumnClass.PUBLIC)


@dataclass(frozen=True, slots=True)
class RowValue:
    """A compiled row-level expression."""

    sql: str
    type: LogicalType
    low: float = -INF
    high: float = INF
    #: The source text (PostgreSQL form), for messages, descriptions and matching.
    source: str = ""
    #: The column itself when the expression is a bare column reference.
    column: CatalogColumn | None = None

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def double(dialect: str) -> str:
    """The double-precision type's name: ``DOUBLE`` on DuckDB and Spark."""
    return "DOUBLE PRECISION" if dialect == "postgres" else "DOUBLE"


def measure_value(col: CatalogColumn, dialect: str, source: str = "") -> RowValue:
    """A bounded measure column as read inside an aggregate: clamped to its declared bounds.

    Whatever the data hold, the value lies in ``[low, high]`` (NaN and ±inf included:
    ``GREATEST(NaN, low)`` is NaN, ``LEAST(NaN, high)`` is high), and it is NULL exactly when the
    column is. A bounded snapshot precomputes sums of this very expression
    (:func:`rewriter.rules.bound_and_emit.precomputed_sums`).
    """
    assert col.bounds is not None
    if col.type not in _NUMERIC:
        raise MeasureMisuse(f"measure {col.name} is not numeric")
    ref = base_column(col).sql(dialect=dialect)
    low, high = float(col.bounds[0]), float(col.bounds[1])
    clamped = (
        f"(CASE WHEN {ref} IS NULL THEN NULL ELSE LEAST(GREATEST("
        f"CAST({ref} AS {double(dialect)}), {_num(low)}), {_num(high)}) END)"
    )
    kind = LogicalType.INTEGER if col.type is LogicalType.INTEGER else LogicalType.FLOAT
    if kind is LogicalType.INTEGER and not (low.is_integer() and high.is_integer()):
        kind = LogicalType.FLOAT
    return RowValue(clamped, kind, low, high, source or col.name, col)


def _num(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _literal_number(node: exp.Expression) -> float | None:
    negative = False
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Neg):
        negative, node = True, node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            value = float(str(node.this))
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        return -value if negative else value
    return None


def _mul(a: float, b: float) -> float:
    if a == 0 or b == 0:
        return 0.0
    return a * b


class RowCompiler:
    """Compiles the expressions of one query against its column resolution."""

    def __init__(self, res: Resolution, dialect: str, *, redact: bool = False) -> None:
        self._res = res
        self._dialect = dialect
        #: Emit the analyst's literals as ``?`` (the audit log's redacted warehouse SQL).
        self._redact = redact

    # -- values inside aggregates -------------------------------------------------------------

    def value(self, node: exp.Expression, where: str) -> RowValue:
        """A row value of any type (for COUNT and CASE conditions' results)."""
        source = node.sql(dialect="postgres")
        out = self._value(node, where)
        return RowValue(out.sql, out.type, out.low, out.high, source, out.column)

    def _value(self, node: exp.Expression | None, where: str) -> RowValue:
        if node is None:
            raise Unsupported(f"an argument is missing in {where}")
        if isinstance(node, exp.Paren):
            return self._value(node.this, where)
        number = _literal_number(node)
        if number is not None:
            is_int = number.is_integer() and "." not in node.sql() and "e" not in node.sql().lower()
            return RowValue(
                _num(number) if is_int else repr(number),
                LogicalType.INTEGER if is_int else LogicalType.FLOAT,
                number,
                number,
            )
        if isinstance(node, exp.Literal) and node.is_string:
            return RowValue(
                exp.Literal.string(str(node.this)).sql(dialect=self._dialect), LogicalType.STRING
            )
        if isinstance(node, exp.Null):
            return RowValue("NULL", LogicalType.OTHER, INF, -INF)  # the empty interval
        if isinstance(node, exp.Boolean):
            return RowValue("TRUE" if node.this else "FALSE", LogicalType.BOOLEAN)
        if isinstance(node, exp.Column):
            return self._column(node, where)
        if isinstance(node, exp.Neg):
            inner = self._numeric(node.this, where)
            return RowValue(f"(-{inner.sql})", inner.type, -inner.high, -inner.low)
        if isinstance(node, exp.Add | exp.Sub | exp.Mul):
            return self._arith(node, where)
        if isinstance(node, exp.Div):
            return self._div(node, where)
        if isinstance(node, exp.Case):
            return self._case(node, where)
        if isinstance(node, exp.Coalesce):
            return self._coalesce(node, where)
        if isinstance(node, exp.Greatest | exp.Least):
            return self._clamp(node, where)
        if isinstance(node, exp.Abs):
            inner = self._numeric(node.this, where)
            low = 0.0 if inner.low <= 0 <= inner.high else min(abs(inner.low), abs(inner.high))
            return RowValue(
                f"ABS({inner.sql})", inner.type, low, max(abs(inner.low), abs(inner.high))
            )
        if isinstance(node, exp.AggFunc):
            raise Unsupported(f"aggregates cannot be nested: {shown(node, 60)}")
        if isinstance(node, exp.Func):
            raise FunctionNotAllowed(
                f"function {node.sql_name().lower()}() is not allowed inside an aggregate",
                hint="Inside aggregates use arithmetic, CASE, COALESCE, LEAST/GREATEST and ABS.",
            )
        raise Unsupported(f"{shown(node, 60)} is not supported inside an aggregate")

    def _column(self, node: exp.Column, where: str) -> RowValue:
        col = self._res.get(id(node))
        if col is None:
            raise Unsupported(f"{node.name} is not a column of the table")
        source = node.sql(dialect="postgres")
        if col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(
                f"identifier column {col.name} cannot be used in {where}",
                hint=f"COUNT(DISTINCT {col.name}) counts people; identifiers are never read.",
            )
        if col.cls is ColumnClass.MASKED:
            raise MaskedColumn(f"masked column {col.name} cannot be used in {where}")
        if col.cls not in _READABLE or col.type is LogicalType.OTHER:
            raise Unsupported(f"column {col.name} cannot be used in {where}")
        ref = base_column(col).sql(dialect=self._dialect)
        if col.cls is ColumnClass.MEASURE and col.bounds is not None:
            return measure_value(col, self._dialect, source)
        if col.type in _NUMERIC:
            return RowValue(
                f"CAST({ref} AS {double(self._dialect)})", col.type, -INF, INF, source, col
            )
        return RowValue(ref, col.type, source=source, column=col)

    def _numeric(self, node: exp.Expression, where: str) -> RowValue:
        value = self._value(node, where)
        if value.type not in _NUMERIC:
            if value.sql == "NULL":
                return value
            raise TypeMismatch(f"{shown(node, 60)} is not numeric; arithmetic needs numbers")
        return value

    def _arith(self, node: exp.Add | exp.Sub | exp.Mul, where: str) -> RowValue:
        a = self._numeric(node.this, where)
        b = self._numeric(node.expression, where)
        kind = _join_types(a.type, b.type)
        if isinstance(node, exp.Add):
            return RowValue(f"({a.sql} + {b.sql})", kind, a.low + b.low, a.high + b.high)
        if isinstance(node, exp.Sub):
            return RowValue(f"({a.sql} - {b.sql})", kind, a.low - b.high, a.high - b.low)
        corners = [_mul(x, y) for x in (a.low, a.high) for y in (b.low, b.high)]
        return RowValue(f"({a.sql} * {b.sql})", kind, min(corners), max(corners))

    def _div(self, node: exp.Div, where: str) -> RowValue:
        divisor = _literal_number(node.expression)
        if divisor is None:
            raise Unsupported(
                f"division by data is not allowed: {shown(node, 60)}",
                hint="Divide by a non-zero number; ratios of aggregates (SUM(a) / COUNT(*)) are "
                "computed after the noise.",
            )
        if divisor == 0:
            raise Unsupported("division by zero")
        a = self._numeric(node.this, where)
        ends = sorted((a.low / divisor, a.high / divisor))
        return RowValue(
            f"(CAST({a.sql} AS {double(self._dialect)}) / {_num(divisor)})",
            LogicalType.FLOAT,
            ends[0],
            ends[1],
        )

    def _case(self, node: exp.Case, where: str) -> RowValue:
        subject = node.this
        branches: list[RowValue] = []
        parts = ["CASE"]
        for branch in node.args.get("ifs") or []:
            cond = branch.this
            if subject is not None:
                cond = exp.EQ(this=subject.copy(), expression=cond.copy())
                # The copies are not in the resolution: resolve through the originals.
                cond = self._resolved_copy(cond, subject, branch.this)
            checked = predicate(cond, self._res)
            if self._redact:
                checked = checked.transform(
                    lambda n: exp.var("?") if isinstance(n, exp.Literal) else n
                )
            condition = checked.sql(dialect=self._dialect)
            value = self._value(branch.args["true"], where)
            branches.append(value)
            parts.append(f"WHEN {condition} THEN {value.sql}")
        default = node.args.get("default")
        if default is not None:
            value = self._value(default, where)
            branches.append(value)
            parts.append(f"ELSE {value.sql}")
        else:
            branches.append(RowValue("NULL", LogicalType.OTHER, INF, -INF))
        parts.append("END")
        kinds = {b.type for b in branches if b.sql != "NULL"}
        kind = _common(kinds, node)
        return RowValue(
            " ".join(parts),
            kind,
            min(b.low for b in branches),
            max(b.high for b in branches),
        )

    def _resolved_copy(
        self, cond: exp.EQ, subject: exp.Expression, value: exp.Expression
    ) -> exp.Expression:
        # A simple CASE x WHEN v: compare the original nodes (the resolution is keyed by node).
        return exp.EQ(this=subject, expression=value)

    def _coalesce(self, node: exp.Coalesce, where: str) -> RowValue:
        args = [node.this, *node.expressions]
        values = [self._value(a, where) for a in args]
        kind = _common({v.type for v in values if v.sql != "NULL"}, node)
        return RowValue(
            f"COALESCE({', '.join(v.sql for v in values)})",
            kind,
            min(v.low for v in values),
            max(v.high for v in values),
        )

    def _clamp(self, node: exp.Greatest | exp.Least, where: str) -> RowValue:
        args = [node.this, *node.expressions]
        values = [self._numeric(a, where) for a in args]
        kind = _common({v.type for v in values}, node)
        # GREATEST/LEAST skip NULL arguments: the result is one of the non-null arguments, so it
        # lies in the hull of their intervals; with a constant among them it is also at least
        # (GREATEST) or at most (LEAST) that constant.
        low = min(v.low for v in values)
        high = max(v.high for v in values)
        constants = [v.low for v in values if v.low == v.high]
        if isinstance(node, exp.Greatest):
            if constants:
                low = max(low, max(constants))
            name = "GREATEST"
        else:
            if constants:
                high = min(high, min(constants))
            name = "LEAST"
        return RowValue(f"{name}({', '.join(v.sql for v in values)})", kind, low, high)

    # -- group keys ---------------------------------------------------------------------------

    def key(self, node: exp.Expression) -> RowValue:
        """A GROUP BY key: a dimension or a generalising expression of one dimension."""
        source = node.sql(dialect="postgres")
        out = self._key(node)
        return RowValue(out.sql, out.type, source=source, column=out.column)

    def _key(self, node: exp.Expression) -> RowValue:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column):
            col = self._dimension(node, "GROUP BY")
            return RowValue(base_column(col).sql(dialect=self._dialect), col.type, column=col)
        if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
            return self._trunc(node)
        if isinstance(node, exp.Extract):
            return self._extract(node)
        if isinstance(node, exp.Mul | exp.Floor):
            return self._bucket(node)
        if isinstance(node, exp.WidthBucket):
            return self._width_bucket(node)
        if isinstance(node, exp.Substring | exp.Left):
            return self._prefix(node)
        raise Unsupported(
            f"GROUP BY {shown(node, 60)} is not supported",
            hint="Group by dimension columns or date_trunc, EXTRACT, floor(x / w) * w, "
            "width_bucket or substr(x, 1, n) of one.",
        )

    def _dimension(self, node: exp.Expression, where: str) -> CatalogColumn:
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Column) or id(node) not in self._res:
            raise Unsupported(f"{where} needs a dimension column here: {shown(node, 60)}")
        col = self._res[id(node)]
        if col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(f"identifier column {col.name} cannot be used in {where}")
        if col.cls is ColumnClass.MEASURE:
            raise MeasureMisuse(
                f"measure {col.name} cannot be used in {where}; aggregate it instead"
            )
        if col.cls is ColumnClass.MASKED:
            raise MaskedColumn(f"masked column {col.name} cannot be used in {where}")
        if col.cls not in (ColumnClass.DIMENSION, ColumnClass.PUBLIC):
            raise Unsupported(f"column {col.name} cannot be used in {where}")
        if col.type is LogicalType.OTHER:
            raise Unsupported(f"column {col.name} has a type that cannot be grouped on")
        return col

    _TRUNC_UNITS = ("year", "quarter", "month", "week", "day", "hour", "minute")

    def _trunc(self, node: exp.Expression) -> RowValue:
        unit_node = node.args.get("unit")
        unit = str(unit_node.name if unit_node is not None else "").lower()
        if unit not in self._TRUNC_UNITS:
            raise Unsupported(
                f"date_trunc unit {unit!r} is not supported",
                hint=f"Use one of {', '.join(self._TRUNC_UNITS)}.",
            )
        col = self._dimension(node.this, "GROUP BY")
        if col.type not in (LogicalType.DATE, LogicalType.TIMESTAMP):
            raise TypeMismatch(f"date_trunc needs a date or timestamp; {col.name} is {col.type}")
        ref = base_column(col).sql(dialect=self._dialect)
        # On a DATE, PostgreSQL's date_trunc goes through timestamptz (time-zone dependent):
        # truncate a TIMESTAMP and cast back, the same on both engines.
        trunc = f"date_trunc('{unit}', CAST({ref} AS TIMESTAMP))"
        if col.type is LogicalType.DATE:
            return RowValue(f"CAST({trunc} AS DATE)", LogicalType.DATE, column=None)
        return RowValue(trunc, LogicalType.TIMESTAMP)

    _EXTRACT_PARTS = ("year", "quarter", "month", "week", "day", "dow", "doy", "hour")

    def _extract(self, node: exp.Extract) -> RowValue:
        part = str(node.this.name).lower()
        if part not in self._EXTRACT_PARTS:
            raise Unsupported(
                f"EXTRACT({part}) is not supported",
                hint=f"Use one of {', '.join(self._EXTRACT_PARTS)}.",
            )
        col = self._dimension(node.expression, "GROUP BY")
        if col.type not in (LogicalType.DATE, LogicalType.TIMESTAMP):
            raise TypeMismatch(f"EXTRACT needs a date or timestamp; {col.name} is {col.type}")
        ref = base_column(col).sql(dialect=self._dialect)
        if self._dialect == "spark":
            # No isfinite guard: Spark has no isfinite, and needs none, since its DATE and
            # TIMESTAMP types have no infinite values (0001-01-01 to 9999-12-31 only). Spark's
            # dow counts Sunday = 1 … Saturday = 7; DuckDB and PostgreSQL count Sunday = 0.
            extracted = f"CAST(EXTRACT({part} FROM {ref}) AS INTEGER)"
            return RowValue(
                f"({extracted} - 1)" if part == "dow" else extracted, LogicalType.INTEGER
            )
        # isfinite: EXTRACT of ±infinity is ±Infinity on PostgreSQL, which no integer holds.
        return RowValue(
            f"CASE WHEN isfinite({ref}) THEN CAST(EXTRACT({part} FROM {ref}) AS INTEGER) END",
            LogicalType.INTEGER,
        )

    def _bucket(self, node: exp.Expression) -> RowValue:
        # floor(x / w) * w, or floor(x / w): buckets of width w.
        width: float | None = None
        floor = node
        if isinstance(node, exp.Mul):
            floor, width = node.this, _literal_number(node.expression)
        while isinstance(floor, exp.Paren):
            floor = floor.this
        div = floor.this if isinstance(floor, exp.Floor) else None
        while isinstance(div, exp.Paren):
            div = div.this
        if not isinstance(div, exp.Div) or _literal_number(div.expression) in (None, 0):
            raise Unsupported(
                f"GROUP BY {shown(node, 60)}: buckets are written floor(x / w) * w",
                hint="Use floor(column / width) * width with a non-zero number for width.",
            )
        divisor = _literal_number(div.expression)
        assert divisor is not None
        if width is not None and width != divisor:
            raise Unsupported("in floor(x / w) * w both widths must be the same number")
        col = self._dimension(div.this, "GROUP BY")
        if col.type not in _NUMERIC:
            raise TypeMismatch(f"buckets need a numeric dimension; {col.name} is {col.type}")
        ref = base_column(col).sql(dialect=self._dialect)
        sql = f"floor(CAST({ref} AS {double(self._dialect)}) / {_num(divisor)})"
        if self._dialect == "spark":
            # Spark's floor of a DOUBLE is a BIGINT: floor(NaN) is 0 and floor(±inf) or of
            # |x| >= 2^63 raises under ANSI mode. Doubles of magnitude 2^52 or more are whole
            # already (and NaN stays NaN, ±inf stays ±inf, as DuckDB's and PostgreSQL's floor
            # give); below that the BIGINT is exact and is cast back to DOUBLE.
            v = f"(CAST({ref} AS DOUBLE) / {_num(divisor)})"
            sql = (
                f"(CASE WHEN isnan({v}) OR abs({v}) >= 4503599627370496 THEN {v} "
                f"ELSE CAST(floor({v}) AS DOUBLE) END)"
            )
        if width is not None:
            sql = f"({sql} * {_num(width)})"
        return RowValue(sql, LogicalType.FLOAT)

    def _width_bucket(self, node: exp.WidthBucket) -> RowValue:
        parts = [node.args.get(k) for k in ("min_value", "max_value", "num_buckets")]
        if any(p is None for p in parts):
            raise Unsupported("width_bucket takes a column and three numbers (low, high, count)")
        low, high, count = (_literal_number(p) for p in parts if p is not None)
        if low is None or high is None or count is None or not count.is_integer():
            raise Unsupported("width_bucket takes a column and three numbers (low, high, count)")
        if not (high > low and 1 <= count <= 10_000):
            raise Unsupported("width_bucket needs low < high and 1 to 10000 buckets")
        col = self._dimension(node.this, "GROUP BY")
        if col.type not in _NUMERIC:
            raise TypeMismatch(f"width_bucket needs a numeric dimension; {col.name} is {col.type}")
        ref = f"CAST({base_column(col).sql(dialect=self._dialect)} AS {double(self._dialect)})"
        n = int(count)
        # Written out: PostgreSQL's width_bucket raises on NaN, DuckDB has none. NaN sorts above
        # every number on both engines, so it lands in the overflow bucket n + 1.
        sql = (
            f"CASE WHEN {ref} IS NULL THEN NULL WHEN {ref} < {_num(low)} THEN 0 "
            f"WHEN {ref} >= {_num(high)} THEN {n + 1} ELSE CAST(floor(({ref} - {_num(low)}) * "
            f"{n} / {_num(high - low)}) AS INTEGER) + 1 END"
        )
        return RowValue(sql, LogicalType.INTEGER)

    def _prefix(self, node: exp.Substring | exp.Left) -> RowValue:
        start: float | None
        if isinstance(node, exp.Left):
            start, length = 1.0, _literal_number(node.expression)
        else:
            start = _literal_number(node.args.get("start") or exp.Literal.number(1))
            length = _literal_number(node.args.get("length") or exp.Null())
        if start != 1 or length is None or not length.is_integer() or not 1 <= length <= 1000:
            raise Unsupported(
                "GROUP BY substr(x, 1, n) takes a prefix: start 1 and a length of 1 to 1000"
            )
        col = self._dimension(node.this, "GROUP BY")
        if col.type is not LogicalType.STRING:
            raise TypeMismatch(f"substr needs a text dimension; {col.name} is {col.type}")
        ref = base_column(col).sql(dialect=self._dialect)
        return RowValue(f"substr({ref}, 1, {int(length)})", LogicalType.STRING)


def _join_types(a: LogicalType, b: LogicalType) -> LogicalType:
    if LogicalType.FLOAT in (a, b):
        return LogicalType.FLOAT
    if a is LogicalType.OTHER:  # NULL
        return b
    if b is LogicalType.OTHER:
        return a
    return LogicalType.INTEGER


def _common(kinds: set[LogicalType], node: exp.Expression) -> LogicalType:
    if not kinds:
        return LogicalType.OTHER
    if kinds <= set(_NUMERIC):
        return LogicalType.FLOAT if LogicalType.FLOAT in kinds else LogicalType.INTEGER
    if len(kinds) == 1:
        return next(iter(kinds))
    raise TypeMismatch(f"the branches of {shown(node, 60)} have different types")
