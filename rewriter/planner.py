"""Turn one SQL string into a :class:`QueryPlan`, applying the rules in ``rewriter.rules`` order."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from sqlglot import exp

from budgets.cost import PrivacyCost, to_fraction
from budgets.errors import QueryCostTooHigh
from rewriter.catalog import Catalog, CatalogColumn, CatalogTable, LogicalType
from rewriter.errors import InvalidEpsilon, Unsupported
from rewriter.parse import parse_select
from rewriter.plan import (
    GroupKey,
    Measurement,
    OutputColumn,
    OutputKind,
    QueryPlan,
    Threshold,
)
from rewriter.policy import ColumnClass, DatasetPolicy, Scalar
from rewriter.rules.allow_nodes import allow_nodes
from rewriter.rules.bound_and_emit import (
    SALT_PARAMETER,
    UNITS_COLUMN,
    bound_and_emit,
    measurement_sql,
)
from rewriter.rules.check_where import check_where
from rewriter.rules.masked_rows import MASK_KEY_PARAMETER, is_row_query, masked_outputs
from rewriter.rules.order_limit import order_limit
from rewriter.rules.relation import emit_relation, needs_relation, resolve_relation
from rewriter.rules.resolve_columns import Resolution, resolve_columns
from rewriter.rules.resolve_table import resolve_table
from rewriter.rules.row_expr import RowValue
from rewriter.rules.shape_aggregates import (
    MeasurementDraft,
    OutputDraft,
    Shape,
    centred_sum,
    shape_aggregates,
    sum_sensitivity,
)

#: Smallest epsilon a query may ask for: below it the noise swamps any answer, and the scales
#: (sensitivity / epsilon) leave the range the samplers are calibrated for.
MIN_EPSILON = Fraction(1, 10**6)

#: Row cap for queries on public tables that set no LIMIT.
PUBLIC_ROW_CAP = 10_000


@dataclass(frozen=True, slots=True)
class PlanRequest:
    sql: str
    granted: frozenset[str]
    epsilon: float | str | None = None
    dialect: str = "duckdb"
    #: The accuracy solver plans at trial epsilons and applies the per-query maximum itself.
    check_query_max: bool = True
    #: Tables served from a bounded snapshot, with the K each was bounded to (lower-case names).
    #: A table whose snapshot K differs from the dataset's current K is bounded per query.
    prebounded: Mapping[str, int] = field(default_factory=dict)
    #: The fixed-point terms those snapshots store (``table.column`` names, lower-case table):
    #: a SUM whose term is among them sums it instead of clamping each row.
    precomputed: frozenset[str] = frozenset()


def plan_query(request: PlanRequest, catalog: Catalog) -> QueryPlan:
    """Plan ``request.sql`` against ``catalog``, or raise a :class:`RewriteError` saying why not."""
    tree = parse_select(request.sql)
    allow_nodes(tree)
    if needs_relation(tree):
        return _relation_plan(tree, catalog, request)
    resolved = resolve_table(tree, catalog, request.granted)
    resolution = resolve_columns(tree, resolved)
    predicate = check_where(tree, resolution)
    if resolved.table.public:
        return _public_plan(tree, resolved.table, request)
    if resolved.table.row_access and is_row_query(tree):
        return _masked_rows_plan(tree, resolved.table, resolution, predicate, request)
    dataset = catalog.datasets[resolved.table.dataset]
    unit = resolved.table.columns[dataset.privacy_unit.lower()]
    k = dataset.defaults.max_rows_per_unit
    prebounded = request.prebounded.get(resolved.table.name.lower()) == k

    def emit(
        shape: Shape, predicate: exp.Expression | None, with_units: bool, redacted: bool
    ) -> str:
        return bound_and_emit(
            table=resolved.table,
            unit=unit,
            keys=shape.keys,
            measurements=shape.measurements,
            max_rows_per_unit=k,
            with_units=with_units,
            dialect=request.dialect,
            prebounded=prebounded,
            precomputed=request.precomputed,
            predicate=predicate,
        )

    return _protected_plan(
        tree,
        request,
        dataset_name=resolved.table.dataset,
        dataset=dataset,
        tables=(resolved.table.name,),
        unit=unit,
        resolution=resolution,
        predicate=predicate,
        rows_per_unit=k,
        parameters=() if prebounded else (SALT_PARAMETER,),
        emit=emit,
    )


def _relation_plan(tree: exp.Select, catalog: Catalog, request: PlanRequest) -> QueryPlan:
    """Joins, subqueries and CTEs (rewriter.rules.relation)."""
    relation = resolve_relation(
        tree,
        catalog,
        request.granted,
        dialect=request.dialect,
        prebounded=dict(request.prebounded),
    )
    resolution = relation.resolution
    predicate = check_where(tree, resolution)
    dataset = catalog.datasets[relation.dataset]
    unit_name = dataset.privacy_unit.lower()
    unit = relation.sources[0].columns[unit_name]

    def emit(
        shape: Shape, predicate: exp.Expression | None, with_units: bool, redacted: bool
    ) -> str:
        args: dict[str, str] = {}
        for m in shape.measurements:
            if m.arg is not None and m.arg.sql not in args:
                args[m.arg.sql] = f"a{len(args)}"
        quoted = {
            sql: exp.to_identifier(a, quoted=True).sql(request.dialect) for sql, a in args.items()
        }
        return emit_relation(
            relation,
            keys=shape.keys,
            args=[(sql, a) for sql, a in args.items()],
            measurements_sql=[
                measurement_sql(m, quoted[m.arg.sql] if m.arg is not None else "", request.dialect)
                for m in shape.measurements
            ],
            predicate=predicate,
            with_units=with_units,
            units_column=UNITS_COLUMN,
            dialect=request.dialect,
            redacted=redacted,
        )

    return _protected_plan(
        tree,
        request,
        dataset_name=relation.dataset,
        dataset=dataset,
        tables=relation.tables,
        unit=unit,
        resolution=resolution,
        predicate=predicate,
        rows_per_unit=relation.rows_per_unit,
        parameters=(SALT_PARAMETER,) * relation.salt_refs,
        emit=emit,
        note=relation.note,
    )


def _protected_plan(
    tree: exp.Select,
    request: PlanRequest,
    *,
    dataset_name: str,
    dataset: DatasetPolicy,
    tables: tuple[str, ...],
    unit: CatalogColumn,
    resolution: Resolution,
    predicate: exp.Expression | None,
    rows_per_unit: int,
    parameters: tuple[str, ...],
    emit: Callable[[Shape, exp.Expression | None, bool, bool], str],
    note: str = "",
) -> QueryPlan:
    shape = shape_aggregates(tree, resolution, dialect=request.dialect, unit=unit)
    ordering = order_limit(tree, shape.outputs, resolution)
    epsilon = epsilon_for(request, dataset)
    k = rows_per_unit
    domains = [_domain(key) for key in shape.keys]
    needs_threshold = any(d is None for d in domains)
    if not shape.measurements:
        raise Unsupported("a query on a protected table needs at least one aggregate")
    n_parts = len(shape.measurements) + (1 if needs_threshold else 0)
    share = epsilon / n_parts
    sql = emit(shape, predicate, needs_threshold, False)
    redacted_shape = shape_aggregates(
        tree, resolution, dialect=request.dialect, unit=unit, redact=True
    )
    redacted_sql = emit(redacted_shape, _redacted(predicate), needs_threshold, True)
    centred = _centred_sums(shape)
    measurements = tuple(
        _measurement(i, m, k, bool(shape.keys), share, note, centred.get(i))
        for i, m in enumerate(shape.measurements)
    )
    delta = to_fraction(dataset.defaults.delta) if needs_threshold else Fraction(0)
    if needs_threshold and delta == 0:
        raise Unsupported(
            "grouping by a dimension without declared values needs delta > 0",
            hint="Group by dimensions with public values, or ask an admin to set defaults.delta.",
        )
    threshold = (
        Threshold(
            units_column=UNITS_COLUMN,
            max_groups=k,
            epsilon=share,
            delta=delta,
            min_group_size=dataset.defaults.min_group_size,
        )
        if needs_threshold
        else None
    )
    outputs = tuple(_output_column(o) for o in shape.outputs)
    hidden = tuple(_output_column(o) for o in shape.hidden)
    return QueryPlan(
        dataset=dataset_name,
        tables=tables,
        normalized_sql=tree.sql(dialect="postgres"),
        redacted_sql=redact_literals(tree),
        warehouse_sql=sql,
        redacted_warehouse_sql=redacted_sql,
        parameters=parameters,
        protected=True,
        outputs=outputs,
        group_keys=tuple(
            GroupKey(
                column=f"k{i}",
                source=k_.column.name if k_.column is not None else k_.source,
                type=k_.type,
                public_domain=domains[i],
            )
            for i, k_ in enumerate(shape.keys)
        ),
        measurements=measurements,
        threshold=threshold,
        max_rows_per_unit=dataset.defaults.max_rows_per_unit,
        cost=PrivacyCost(epsilon, delta),
        order_by=ordering.order_by,
        limit=ordering.limit,
        offset=ordering.offset,
        hidden=hidden,
        having=shape.having,
        rows_per_unit=rows_per_unit,
    )


#: Candidate grid of DP quantiles: this many steps over the bounds (resolution (high - low) / N).
QUANTILE_STEPS = 1000


def quantile_candidates(m: MeasurementDraft) -> tuple[float, ...]:
    """Evenly spaced candidates over the clamp bounds; whole numbers for narrow integer ranges."""
    assert m.clamp is not None
    low, high = float(m.clamp[0]), float(m.clamp[1])
    if high <= low:
        return (low,)
    integral = m.arg is not None and m.arg.type is LogicalType.INTEGER
    if integral and high - low <= QUANTILE_STEPS and low.is_integer():
        return tuple(float(v) for v in range(int(low), int(high) + 1))
    step = (high - low) / QUANTILE_STEPS
    return (*(low + i * step for i in range(QUANTILE_STEPS)), high)


def _domain(key: RowValue) -> tuple[Scalar, ...] | None:
    """The declared public values of a key that is a bare dimension column, else None
    (generalising expressions are released through the threshold)."""
    return key.column.values if key.column is not None else None


def _output_column(o: OutputDraft) -> OutputColumn:
    return OutputColumn(
        name=o.name,
        kind=o.kind,
        type=o.type,
        key_index=o.key_index,
        measurement=f"m{o.measurement}" if o.measurement is not None else None,
        denominator=f"m{o.denominator}" if o.denominator is not None else None,
        bounds=o.bounds,
        second=f"m{o.second}" if o.second is not None else None,
        population=o.population,
        formula=o.formula,
    )


def epsilon_for(request: PlanRequest, dataset: DatasetPolicy) -> Fraction:
    """The epsilon ``request`` spends on ``dataset``: its own or the default, validated."""
    return _epsilon(
        request.epsilon,
        dataset.defaults.epsilon,
        dataset.budget.per_query_max if request.check_query_max else None,
    )


def _epsilon(requested: float | str | None, default: float, query_max: object) -> Fraction:
    if isinstance(requested, bool):
        raise InvalidEpsilon("epsilon must be a number")
    if requested is None:
        eps = to_fraction(default)
    else:
        try:
            eps = to_fraction(requested)
        except Exception:
            raise InvalidEpsilon(f"epsilon {requested!r} is not a number") from None
    if eps < MIN_EPSILON:
        raise InvalidEpsilon(f"epsilon must be at least {MIN_EPSILON}")
    max_eps = getattr(query_max, "epsilon", None)
    if max_eps is not None and eps > to_fraction(max_eps):
        raise QueryCostTooHigh(
            f"epsilon {float(eps)} exceeds this dataset's per-query maximum of {max_eps}",
        )
    if eps > 100:
        raise InvalidEpsilon("epsilon above 100 gives no meaningful protection")
    return eps


def _centred_sums(shape: Shape) -> dict[int, int]:
    """The SUM measurements released centred: sum index → its AVG's COUNT measurement index.

    A sum is centred when only AVG outputs read it (a SUM, VAR or STDDEV output of the same
    argument needs the plain sum, and then the AVG reads that one: one measurement, not two).
    An AVG's sum and count are drafted from the same row value, so every AVG reading a sum
    reads the same count.
    """
    every = (*shape.outputs, *shape.hidden)
    plain = {o.measurement for o in every if o.kind is not OutputKind.AVG}
    out: dict[int, int] = {}
    for o in every:
        if o.kind is OutputKind.AVG and o.measurement not in plain:
            assert o.measurement is not None and o.denominator is not None
            assert out.setdefault(o.measurement, o.denominator) == o.denominator
    return out


def _measurement(
    i: int,
    m: MeasurementDraft,
    k: int,
    grouped: bool,
    share: Fraction,
    note: str,
    count: int | None,
) -> Measurement:
    """Measurement ``i`` of the plan; ``count``: release it as a centred sum (its AVG's COUNT)."""
    description = _describe(m.kind.value, m.source, m.clamp)
    sensitivity = sum_sensitivity(m, k, grouped=grouped)
    center = 0
    if count is not None:
        center, centred_sensitivity = centred_sum(m, k)
        if center != 0 and centred_sensitivity < sensitivity:
            sensitivity = centred_sensitivity
            description += f", centred at {center / m.fixed_point:g}"
        else:
            center, count = 0, None  # nothing to gain (an interval centred on zero)
    return Measurement(
        column=f"m{i}",
        kind=m.kind,
        sensitivity=sensitivity,
        epsilon=share,
        fixed_point=m.fixed_point,
        description=description + (f" [{note}]" if note else ""),
        alpha=m.alpha,
        candidates=quantile_candidates(m) if m.alpha is not None else (),
        center=center,
        center_count=None if count is None else f"m{count}",
    )


def _describe(kind: str, column: str, clamp: tuple[int | float, int | float] | None) -> str:
    if kind == "count":
        return "COUNT(*)" if column == "*" else f"COUNT({column})"
    if kind == "count_units":
        return "COUNT(DISTINCT unit): people"
    if kind == "count_distinct":
        return f"COUNT(DISTINCT {column})"
    if kind == "quantile":
        assert clamp is not None
        return f"quantile of {column} clamped to [{clamp[0]}, {clamp[1]}]"
    assert clamp is not None
    return f"SUM({column} clamped to [{clamp[0]}, {clamp[1]}])"


def _public_plan(tree: exp.Select, table: CatalogTable, request: PlanRequest) -> QueryPlan:
    """Public reference tables hold no personal data: run as written (after the allow-list)."""
    query = tree.copy()
    if query.args.get("limit") is None:
        query = query.limit(PUBLIC_ROW_CAP)
    outputs = tuple(
        OutputColumn(
            name=e.alias_or_name or f"column{i + 1}", kind=OutputKind.KEY, type=LogicalType.OTHER
        )
        for i, e in enumerate(query.expressions)
        if not isinstance(e, exp.Star)
    )
    if any(isinstance(e, exp.Star) for e in query.expressions):
        outputs = tuple(
            OutputColumn(name=c.name, kind=OutputKind.KEY, type=c.type)
            for c in table.columns.values()
            if c.cls is ColumnClass.PUBLIC
        )
    return QueryPlan(
        dataset=table.dataset,
        tables=(table.name,),
        normalized_sql=tree.sql(dialect="postgres"),
        redacted_sql=redact_literals(tree),
        warehouse_sql=query.sql(dialect=request.dialect),
        redacted_warehouse_sql=redact_literals(query),
        parameters=(),
        protected=False,
        outputs=outputs,
        group_keys=(),
        measurements=(),
        threshold=None,
        max_rows_per_unit=0,
        cost=PrivacyCost.zero(),
    )


def _masked_rows_plan(
    tree: exp.Select,
    table: CatalogTable,
    resolution: Resolution,
    predicate: exp.Expression | None,
    request: PlanRequest,
) -> QueryPlan:
    """Rows of a ``row_access: masked`` table through the masks (rewriter.rules.masked_rows)."""
    columns = masked_outputs(tree, table, resolution, request.dialect)
    drafts = tuple(
        OutputDraft(c.name, OutputKind.KEY, c.type, key_index=i, source_sql=c.name)
        for i, c in enumerate(columns)
    )
    ordering = order_limit(tree, drafts, resolution)
    limit = ordering.limit if ordering.limit is not None else PUBLIC_ROW_CAP
    quoted = exp.to_identifier(table.name, quoted=True).sql(dialect=request.dialect)

    def emit(pred: exp.Expression | None) -> str:
        select = ", ".join(
            f"{c.sql} AS {exp.to_identifier(c.name, quoted=True).sql(dialect=request.dialect)}"
            for c in columns
        )
        where = f" WHERE {pred.sql(dialect=request.dialect)}" if pred is not None else ""
        order = ""
        if ordering.order_by:
            order = " ORDER BY " + ", ".join(
                f"{k.output_index + 1}{' DESC' if k.descending else ''}" for k in ordering.order_by
            )
        offset = f" OFFSET {ordering.offset}" if ordering.offset else ""
        return f"SELECT {select} FROM {quoted} AS __pg_t{where}{order} LIMIT {limit}{offset}"

    return QueryPlan(
        dataset=table.dataset,
        tables=(table.name,),
        normalized_sql=tree.sql(dialect="postgres"),
        redacted_sql=redact_literals(tree),
        warehouse_sql=emit(predicate),
        redacted_warehouse_sql=emit(_redacted(predicate)),
        parameters=(MASK_KEY_PARAMETER,) * sum(1 for c in columns if c.keyed),
        protected=False,
        outputs=tuple(
            OutputColumn(name=c.name, kind=OutputKind.KEY, type=c.type, key_index=i)
            for i, c in enumerate(columns)
        ),
        group_keys=(),
        measurements=(),
        threshold=None,
        max_rows_per_unit=0,
        cost=PrivacyCost.zero(),
        row_access=True,
    )


def _redacted(predicate: exp.Expression | None) -> exp.Expression | None:
    return None if predicate is None else predicate.copy().transform(_redact)


def _redact(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Literal):
        return exp.var("?")
    return node


def redact_literals(tree: exp.Expression) -> str:
    """The statement with every literal replaced by ``?``: what audit records store by default.

    >>> import sqlglot
    >>> redact_literals(sqlglot.parse_one("SELECT COUNT(*) FROM t WHERE ssn = '123-45-6789'"))
    'SELECT COUNT(*) FROM t WHERE ssn = ?'
    """

    return tree.copy().transform(_redact).sql(dialect="postgres")
