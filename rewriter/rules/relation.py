"""Rule 2b: FROM clauses beyond one table — joins, subqueries and CTEs with an argued bound.

Accepted shapes (docs/privacy-model.md, "Joins" and "Subqueries"), each giving ``rows_per_unit``,
the most rows one unit can contribute to the relation the outer query aggregates:

* **protected ⋈ public** on ``protected.col = public.key``, INNER or LEFT: the public side is
  emitted with only the keys that occur exactly once in it (checked in the warehouse, at query
  time), so each protected row matches at most one public row: the bound stays K.
* **protected ⋈ protected on the privacy unit** (both tables of one dataset): each side keeps at
  most K rows per unit, so a unit has at most K · K rows in the join: the bound multiplies, and
  the plan says so.
* **a subquery or CTE over one protected table**: row-level (filters, derived columns with
  bounds; bound K), or grouped by the unit (per-unit pre-aggregation: one row per unit, bound 1;
  by the unit and dimensions: bound K), each per-unit aggregate bounded by what K rows of
  clamped values can reach.

Each protected base table is contribution-bounded *first* (per query, or from its bounded
snapshot), before any join or filter, so a unit's kept rows depend only on its own rows.
Everything else — CROSS and comma joins, SEMI and ANTI joins, joins on other columns, RIGHT/FULL
joins, USING, NATURAL, nested subqueries, LIMIT inside a subquery — is rejected with a reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sqlglot import exp

from rewriter.catalog import Catalog, CatalogColumn, CatalogTable, LogicalType
from rewriter.errors import (
    AggregationRequired,
    IdentifierReference,
    MaskedColumn,
    MeasureMisuse,
    RewriteError,
    UnknownColumn,
    UnknownTable,
    Unsupported,
    shown,
)
from rewriter.policy import ColumnClass
from rewriter.rules.bound_and_emit import group_by, row_digest
from rewriter.rules.check_where import check_where
from rewriter.rules.resolve_columns import Resolution
from rewriter.rules.resolve_table import _shown_name
from rewriter.rules.row_expr import RowCompiler, RowValue, double


@dataclass
class Source:
    alias: str
    qualifier: str
    kind: str  # "protected" | "public" | "derived"
    columns: dict[str, CatalogColumn]
    #: The CTE body the source is read from (bounded rows, unique-key public rows, derived rows).
    body: str = ""
    table: CatalogTable | None = None
    unit_sql: str = ""


@dataclass
class Relation:
    sources: list[Source]
    from_sql: str
    unit_sql: str
    rows_per_unit: int
    dataset: str
    tables: tuple[str, ...]
    #: How many times the salt is referenced (one per protected base table bounded per query).
    salt_refs: int
    resolution: Resolution
    ctes: list[tuple[str, str]] = field(default_factory=list)
    #: The same CTEs with the analyst's literals replaced by ``?`` (for the audit log).
    ctes_redacted: list[tuple[str, str]] = field(default_factory=list)
    #: Why the bound is what it is, for the plan and explain.
    note: str = ""


def needs_relation(tree: exp.Select) -> bool:
    """True when FROM is more than one plain table (joins, a subquery, a CTE)."""
    from_ = tree.args.get("from_")
    if tree.args.get("with_") is not None or tree.args.get("joins"):
        return True
    return from_ is not None and isinstance(from_.this, exp.Subquery)


def resolve_relation(
    tree: exp.Select,
    catalog: Catalog,
    granted: frozenset[str],
    *,
    dialect: str,
    prebounded: dict[str, int],
) -> Relation:
    """Resolve the FROM clause of ``tree`` into bounded sources, or raise."""
    ctes = _ctes(tree)
    from_ = tree.args.get("from_")
    if from_ is None:
        raise AggregationRequired("a query needs a FROM clause naming a table")
    builder = _Builder(catalog, granted, dialect, prebounded, ctes)
    first = builder.source(from_.this)
    joins = tree.args.get("joins") or []
    if len(joins) > 1:
        raise Unsupported("at most one JOIN is supported")
    sources = [first]
    from_sql = f"{first.alias} AS {first.alias}"
    rows_per_unit = builder.bound_of(first)
    note = builder.notes.get(first.alias, "")
    for join in joins:
        other = builder.source(join.this)
        sources.append(other)
        clause, rows_per_unit, note = builder.join(first, other, join, tree, rows_per_unit)
        from_sql += clause
    protected = [s for s in sources if s.kind != "public"]
    if not protected:  # pragma: no cover - public-only queries take the public path
        raise Unsupported("a join of public tables only is not supported")
    datasets = {s.table.dataset for s in sources if s.table is not None and s.kind != "public"}
    if len(datasets) != 1:
        raise Unsupported("all protected tables of a query must belong to one dataset")
    if builder.used_prebounded and builder.salt_refs:
        # A statement with parameters runs on the source, not on the snapshot (the warehouse
        # chooses by that): a table read as "already bounded" would then be read unbounded.
        # So either every protected table comes from the snapshot, or none does.
        return resolve_relation(tree, catalog, granted, dialect=dialect, prebounded={})
    resolution = _resolve_columns(tree, sources)
    return Relation(
        sources=sources,
        from_sql=from_sql,
        unit_sql=protected[0].unit_sql,
        rows_per_unit=rows_per_unit,
        dataset=next(iter(datasets)),
        tables=tuple(dict.fromkeys(builder.tables)),
        salt_refs=builder.salt_refs,
        resolution=resolution,
        ctes=builder.bodies,
        ctes_redacted=[(a, builder.redacted_bodies.get(a, b)) for a, b in builder.bodies],
        note=note,
    )


def _ctes(tree: exp.Select) -> dict[str, exp.Select]:
    with_ = tree.args.get("with_")
    out: dict[str, exp.Select] = {}
    if with_ is None:
        return out
    if with_.args.get("recursive"):
        raise Unsupported("WITH RECURSIVE is not supported")
    for cte in with_.expressions:
        body = cte.this
        if not isinstance(body, exp.Select):
            raise Unsupported("a CTE must be a single SELECT")
        out[cte.alias_or_name.lower()] = body
    return out


class _Builder:
    def __init__(
        self,
        catalog: Catalog,
        granted: frozenset[str],
        dialect: str,
        prebounded: dict[str, int],
        ctes: dict[str, exp.Select],
    ) -> None:
        self.catalog = catalog
        self.granted = granted
        self.dialect = dialect
        self.prebounded = prebounded
        self.ctes = ctes
        self.bodies: list[tuple[str, str]] = []
        #: Bodies whose audit copy differs (subqueries with the analyst's literals).
        self.redacted_bodies: dict[str, str] = {}
        self.tables: list[str] = []
        self.salt_refs = 0
        self.used_prebounded = False
        self.bounds: dict[str, int] = {}
        self.notes: dict[str, str] = {}
        self._n = 0

    def _alias(self) -> str:
        self._n += 1
        return f"__pg_s{self._n}"

    def _table(self, node: exp.Table) -> CatalogTable:
        schema = node.args.get("db")
        if node.args.get("catalog") is not None or (
            schema is not None and schema.name.lower() not in ("main", "public")
        ):
            raise UnknownTable(f"{_shown_name(node)} does not exist")
        table = self.catalog.table(node.name)
        if table is None or table.dataset not in self.granted:
            raise UnknownTable(f"{_shown_name(node)} does not exist")
        return table

    def k_of(self, table: CatalogTable) -> int:
        return self.catalog.datasets[table.dataset].defaults.max_rows_per_unit

    def bound_of(self, source: Source) -> int:
        return self.bounds.get(source.alias, 0)

    def source(self, node: exp.Expression) -> Source:
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise Unsupported("table functions are not allowed")
        if (
            isinstance(node, exp.Table)
            and node.name.lower() in self.ctes
            and not node.args.get("db")
        ):
            return self.derived(self.ctes[node.name.lower()], (node.alias or node.name).lower())
        if isinstance(node, exp.Subquery):
            inner = node.this
            if not isinstance(inner, exp.Select):
                raise Unsupported("a subquery in FROM must be a single SELECT")
            if not node.alias:
                raise Unsupported("a subquery in FROM needs an alias")
            return self.derived(inner, node.alias.lower())
        if not isinstance(node, exp.Table):
            raise Unsupported(f"FROM {shown(node, 60)} is not supported")
        table = self._table(node)
        qualifier = (node.alias or node.name).lower()
        return self.base(table, qualifier)

    def base(self, table: CatalogTable, qualifier: str) -> Source:
        alias = self._alias()
        self.tables.append(table.name)
        columns = {
            name: dataclasses.replace(col, source=alias)
            for name, col in table.columns.items()
            if col.visible
        }
        quoted = exp.to_identifier(table.name, quoted=True).sql(dialect=self.dialect)
        if table.public:
            return Source(alias, qualifier, "public", columns, f"SELECT * FROM {quoted}", table)
        ds = self.catalog.datasets[table.dataset]
        unit_name = ds.privacy_unit.lower()
        k = self.k_of(table)
        unit = exp.to_identifier(unit_name, quoted=True).sql(dialect=self.dialect)
        if self.prebounded.get(table.name) == k:
            self.used_prebounded = True
            body = f"SELECT * FROM {quoted}"
        else:
            self.salt_refs += 1
            every = [
                f"__pg_t.{exp.to_identifier(c.name, quoted=True).sql(dialect=self.dialect)}"
                for c in table.columns.values()
            ]
            # The same keyed ranking as single-table per-query bounding (bound_and_emit).
            digest = row_digest(every, self.dialect)
            body = (
                f"SELECT * FROM (SELECT __pg_t.*, ROW_NUMBER() OVER (PARTITION BY "
                f"__pg_t.{unit} ORDER BY {digest}) AS __pg_rank FROM {quoted} AS __pg_t "
                f"WHERE __pg_t.{unit} IS NOT NULL) AS __pg_r WHERE __pg_rank <= {int(k)}"
            )
        self.bodies.append((alias, body))
        self.bounds[alias] = k
        self.notes[alias] = f"{table.name}: at most K = {k} rows per unit"
        return Source(
            alias, qualifier, "protected", columns, body, table, unit_sql=f"{alias}.{unit}"
        )

    def join(
        self, left: Source, right: Source, join: exp.Join, tree: exp.Select, bound: int
    ) -> tuple[str, int, str]:
        side = (join.args.get("side") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        if kind in ("CROSS", "NATURAL") or join.args.get("method"):
            raise Unsupported(f"{kind or 'this'} JOIN is not supported: join on a key with ON")
        # The join is re-built as JOIN or LEFT JOIN: any other kind (ANTI, SEMI, …) or flag
        # would be dropped on the way and change which rows are joined, so it is refused.
        extra = [k for k in _JOIN_FLAGS if join.args.get(k)]
        if kind not in ("", "INNER", "OUTER") or extra:
            raise Unsupported(
                f"{kind or 'this'} JOIN is not supported",
                hint="Use JOIN … ON or LEFT JOIN … ON a key.",
            )
        if join.args.get("using"):
            raise Unsupported("JOIN … USING is not supported: write ON a.col = b.col")
        if side in ("RIGHT", "FULL"):
            raise Unsupported(
                f"{side} JOIN is not supported",
                hint="Put the protected table first and use JOIN or LEFT JOIN.",
            )
        on = join.args.get("on")
        if on is None:
            raise Unsupported(
                "a JOIN needs ON a.col = b.col (comma and cross joins multiply every row)"
            )
        while isinstance(on, exp.Paren):
            on = on.this
        if not isinstance(on, exp.EQ) or not all(
            isinstance(x, exp.Column) for x in (on.this, on.expression)
        ):
            raise Unsupported("JOIN … ON must be one equality of two columns")
        a = _column_of(on.this, [left, right])
        b = _column_of(on.expression, [left, right])
        if a[0] is b[0]:
            raise Unsupported("JOIN … ON must compare a column of each table")
        (sa, ca), (sb, cb) = (a, b) if a[0] is left else (b, a)
        join_sql = "LEFT JOIN" if side == "LEFT" else "JOIN"
        cond = (
            f"{exp.column(exp.to_identifier(ca.name, quoted=True), table=sa.alias).sql(dialect=self.dialect)}"
            f" = {exp.column(exp.to_identifier(cb.name, quoted=True), table=sb.alias).sql(dialect=self.dialect)}"
        )
        if sb.kind == "public":
            if ca.cls is ColumnClass.IDENTIFIER:
                raise IdentifierReference(
                    f"identifier column {ca.name} cannot be a join key with a public table",
                    hint="Join public tables on dimension columns.",
                )
            if ca.cls is ColumnClass.MASKED:
                raise MaskedColumn(f"masked column {ca.name} cannot be a join key")
            if ca.cls is ColumnClass.MEASURE:
                raise MeasureMisuse(f"measure {ca.name} cannot be a join key")
            if not _same_family(ca.type, cb.type):
                raise Unsupported(f"cannot join {ca.name} ({ca.type}) with {cb.name} ({cb.type})")
            key = exp.to_identifier(cb.name, quoted=True).sql(dialect=self.dialect)
            quoted = exp.to_identifier(sb.table.name if sb.table else "", quoted=True).sql(
                dialect=self.dialect
            )
            # Only keys that occur once: every protected row matches at most one public row,
            # whatever the public table holds (checked by the warehouse at query time).
            body = (
                f"SELECT * FROM {quoted} WHERE {key} IN (SELECT {key} FROM {quoted} "
                f"WHERE {key} IS NOT NULL GROUP BY {key} HAVING COUNT(*) = 1)"
            )
            self.bodies.append((sb.alias, body))
            note = (
                f"{self.notes.get(sa.alias, '')}; joined with public {sb.qualifier} on a key "
                "unique there: at most one match per row"
            )
            return f" {join_sql} {sb.alias} AS {sb.alias} ON {cond}", bound, note
        if sa.kind == "protected" and sb.kind == "protected":
            assert sa.table is not None and sb.table is not None
            unit = self.catalog.datasets[sa.table.dataset].privacy_unit.lower()
            if sa.table.dataset != sb.table.dataset or ca.name != unit or cb.name != unit:
                raise Unsupported(
                    "two protected tables join only on the privacy unit",
                    hint=f"Join ON a.{unit} = b.{unit}.",
                )
            product = self.bounds[sa.alias] * self.bounds[sb.alias]
            note = (
                f"{sa.table.name} ⋈ {sb.table.name} on {unit}: at most "
                f"{self.bounds[sa.alias]} × {self.bounds[sb.alias]} = {product} rows per unit"
            )
            return f" {join_sql} {sb.alias} AS {sb.alias} ON {cond}", product, note
        raise Unsupported("a derived table joins nothing: join base tables, aggregate outside")

    # -- subqueries and CTEs ----------------------------------------------------------------

    def derived(self, inner: exp.Select, qualifier: str) -> Source:
        for arg in ("joins", "with_", "having", "limit", "offset", "order", "distinct"):
            if inner.args.get(arg):
                raise Unsupported(
                    f"{arg.rstrip('_').upper()} inside a subquery is not supported",
                    hint="Filter and group inside; join, order and limit outside.",
                )
        from_ = inner.args.get("from_")
        if from_ is None or not isinstance(from_.this, exp.Table):
            raise Unsupported("a subquery reads one table")
        if from_.this.name.lower() in self.ctes:
            raise Unsupported("nested subqueries are not supported")
        table = self._table(from_.this)
        if table.public:
            raise Unsupported("subqueries over public tables are not supported")
        base = self.base(table, (from_.this.alias or from_.this.name).lower())
        res = _resolve_columns(inner, [base])
        predicate = check_where(inner, res)
        compiler = RowCompiler(res, self.dialect)
        # The audit copy: the same body with the analyst's literals as `?`.
        redacting = RowCompiler(res, self.dialect, redact=True)
        k = self.bounds[base.alias]
        unit = self.catalog.datasets[table.dataset].privacy_unit.lower()
        group = inner.args.get("group")
        alias = self._alias()
        columns: dict[str, CatalogColumn] = {}
        select: list[str] = [f"{base.unit_sql} AS __pg_unit"]
        select_redacted: list[str] = list(select)
        group_sql: list[str] = []
        if group is not None:
            keys = list(group.expressions)
            unit_keyed = False
            for node in keys:
                if isinstance(node, exp.Column) and res.get(id(node)) is not None:
                    col = res[id(node)]
                    if col.name == unit:
                        unit_keyed = True
                        continue
                group_sql.append(compiler.key(node).sql)
            if not unit_keyed:
                raise Unsupported(
                    f"a grouped subquery must group by the privacy unit {unit}",
                    hint=f"GROUP BY {unit}: one row per person, aggregated outside.",
                )
            bound = 1 if not group_sql else k
        else:
            bound = k
        items = list(inner.expressions)
        if any(isinstance(e, exp.Star) for e in items):
            if group is not None or len(items) != 1:
                raise Unsupported("SELECT * in a subquery takes no other items and no GROUP BY")
            # Every visible column, as it is: its class (and bounds) carry over, so the outer
            # query clamps measures where it reads them and never outputs identifiers.
            items = []
            for col in table.visible_columns():
                if col.name == unit:
                    continue
                ident = exp.to_identifier(col.name, quoted=True).sql(dialect=self.dialect)
                select.append(f"{base.alias}.{ident} AS {ident}")
                select_redacted.append(select[-1])
                columns[col.name] = dataclasses.replace(col, source=alias)
        for item in items:
            name = (item.alias_or_name or "").lower()
            expr = item.this if isinstance(item, exp.Alias) else item
            if not name:
                raise Unsupported(f"give {shown(expr, 40)} a name (AS …) in the subquery")
            made = _derived_column(
                expr, name, alias, res, compiler, group is not None, k, unit, group_sql
            )
            if made is None:
                continue  # the unit itself: carried as __pg_unit
            sql, column = made
            again = _derived_column(
                expr, name, alias, res, redacting, group is not None, k, unit, group_sql
            )
            assert again is not None
            ident = exp.to_identifier(name, quoted=True).sql(dialect=self.dialect)
            select.append(f"{sql} AS {ident}")
            select_redacted.append(f"{again[0]} AS {ident}")
            columns[name] = column
        grouped = ""
        if group is not None:
            grouped = " GROUP BY " + ", ".join([base.unit_sql, *group_sql])

        def body_of(items: list[str], pred: exp.Expression | None) -> str:
            where = f" WHERE {pred.sql(dialect=self.dialect)}" if pred is not None else ""
            return f"SELECT {', '.join(items)} FROM {base.alias} AS {base.alias}{where}{grouped}"

        body = body_of(select, predicate)
        self.bodies.append((alias, body))
        self.redacted_bodies[alias] = body_of(select_redacted, _redact_literals(predicate))
        # The unit column, if the subquery selected it, is an identifier of the derived table.
        unit_col = table.columns[unit]
        columns.setdefault(unit, dataclasses.replace(unit_col, name="__pg_unit", source=alias))
        self.bounds[alias] = bound
        self.notes[alias] = f"subquery {qualifier} over {table.name}: " + (
            "one row per unit" if bound == 1 else f"at most {bound} rows per unit"
        )
        return Source(
            alias, qualifier, "derived", columns, body, table, unit_sql=f"{alias}.__pg_unit"
        )


def _derived_column(
    expr: exp.Expression,
    name: str,
    alias: str,
    res: Resolution,
    compiler: RowCompiler,
    grouped: bool,
    k: int,
    unit: str,
    group_sql: list[str] | None = None,
) -> tuple[str, CatalogColumn] | None:
    is_unit = (
        isinstance(expr, exp.Column)
        and res.get(id(expr)) is not None
        and res[id(expr)].name == unit
    )
    if is_unit:
        return None
    if name == unit:
        raise Unsupported(
            f"{name} is the privacy unit: name other columns of the subquery otherwise",
            hint=f"SELECT {unit}, … AS other_name",
        )
    if grouped and not isinstance(expr, exp.AggFunc):
        # A non-aggregate item of a grouped subquery must be one of its GROUP BY keys.
        try:
            key_sql: str | None = compiler.key(expr).sql
        except RewriteError:
            key_sql = None  # not even a key (a measure, say)
        if key_sql is None or group_sql is None or key_sql not in group_sql:
            raise AggregationRequired(
                f"{shown(expr, 60)} must appear in the subquery's GROUP BY or be aggregated"
            )
    if isinstance(expr, exp.Column) and res.get(id(expr)) is not None:
        col = res[id(expr)]
        if col.cls is ColumnClass.IDENTIFIER:
            raise IdentifierReference(f"identifier column {col.name} cannot be selected")
        if col.cls is ColumnClass.MASKED:
            raise MaskedColumn(f"masked column {col.name} cannot be used in a subquery")
        if grouped and col.cls is ColumnClass.MEASURE:
            raise AggregationRequired(f"measure {col.name} must be aggregated per unit")
        value = compiler.value(expr, "a subquery") if col.cls is ColumnClass.MEASURE else None
        if value is not None:
            return value.sql, CatalogColumn(
                name, value.type, ColumnClass.MEASURE, (value.low, value.high), source=alias
            )
        return compiler.key(expr).sql, dataclasses.replace(col, name=name, source=alias)
    if grouped and isinstance(expr, exp.AggFunc):
        return _per_unit_aggregate(expr, name, alias, compiler, k, res, unit)
    if expr.find(exp.AggFunc) is not None:
        raise Unsupported(f"{shown(expr, 60)} in a subquery needs GROUP BY the privacy unit")
    try:
        key = compiler.key(expr)
        return key.sql, CatalogColumn(name, key.type, ColumnClass.DIMENSION, source=alias)
    except Unsupported:
        pass
    value = compiler.value(expr, "a subquery")
    if value.type not in (LogicalType.INTEGER, LogicalType.FLOAT) or not value.bounded:
        raise MeasureMisuse(
            f"{shown(expr, 60)} in a subquery needs bounds",
            hint="Clamp it with LEAST(GREATEST(expression, low), high).",
        )
    return value.sql, CatalogColumn(
        name, value.type, ColumnClass.MEASURE, (value.low, value.high), source=alias
    )


def _per_unit_aggregate(
    expr: exp.Expression,
    name: str,
    alias: str,
    compiler: RowCompiler,
    k: int,
    res: Resolution,
    unit: str,
) -> tuple[str, CatalogColumn]:
    """A per-unit aggregate over at most K bounded rows, and the interval it must lie in."""
    dialect = compiler._dialect
    if isinstance(expr, exp.Count):
        arg = expr.this
        if arg is None:
            raise Unsupported("COUNT() needs an argument", hint="COUNT(*) counts rows.")
        if isinstance(arg, exp.Star):
            sql = "COUNT(*)"
        elif isinstance(arg, exp.Distinct):
            raise Unsupported("COUNT(DISTINCT …) per unit is not supported")
        else:
            sql = f"COUNT({compiler.value(arg, 'COUNT').sql})"
        return sql, CatalogColumn(
            name, LogicalType.INTEGER, ColumnClass.MEASURE, (0, k), source=alias
        )
    if not isinstance(expr, exp.Sum | exp.Avg | exp.Min | exp.Max):
        raise Unsupported(
            f"{type(expr).__name__.upper()} per unit is not supported",
            hint="Per unit use COUNT, SUM, AVG, MIN or MAX.",
        )
    col = res.get(id(expr.this)) if isinstance(expr.this, exp.Column) else None
    if col is not None and col.cls is ColumnClass.IDENTIFIER:
        raise IdentifierReference(f"identifier column {col.name} cannot be aggregated")
    value = compiler.value(expr.this, type(expr).__name__.upper())
    if value.type not in (LogicalType.INTEGER, LogicalType.FLOAT) or not value.bounded:
        raise MeasureMisuse(
            f"{shown(expr, 60)} needs bounds",
            hint="Declare bounds for the measure, or clamp it with LEAST/GREATEST.",
        )
    low, high = value.low, value.high
    if isinstance(expr, exp.Sum):
        # At most K rows, each in [low, high]; an empty sum is NULL, not 0.
        bounds = (k * min(low, 0.0), k * max(high, 0.0))
        sql = f"SUM({value.sql})"
        kind = value.type
    else:
        bounds = (low, high)
        fn = {exp.Avg: "AVG", exp.Min: "MIN", exp.Max: "MAX"}[type(expr)]
        sql = f"{fn}(CAST({value.sql} AS {double(dialect)}))"
        kind = LogicalType.FLOAT if fn == "AVG" else value.type
    return sql, CatalogColumn(name, kind, ColumnClass.MEASURE, bounds, source=alias)


def _redact_literals(predicate: exp.Expression | None) -> exp.Expression | None:
    if predicate is None:
        return None
    return predicate.copy().transform(lambda n: exp.var("?") if isinstance(n, exp.Literal) else n)


def _same_family(a: LogicalType, b: LogicalType) -> bool:
    numeric = (LogicalType.INTEGER, LogicalType.FLOAT)
    return a == b or (a in numeric and b in numeric)


def _column_of(node: exp.Column, sources: list[Source]) -> tuple[Source, CatalogColumn]:
    qualifier = node.table.lower() if node.table else None
    found: list[tuple[Source, CatalogColumn]] = []
    for s in sources:
        if qualifier is not None and s.qualifier != qualifier:
            continue
        col = s.columns.get(node.name.lower())
        if col is not None:
            found.append((s, col))
    if not found:
        raise UnknownColumn(f'column "{node.sql(dialect="postgres")}" does not exist')
    if len(found) > 1:
        raise Unsupported(
            f'column "{node.name}" is ambiguous',
            hint=f"Qualify it: {sources[0].qualifier}.{node.name}",
        )
    return found[0]


def _resolve_columns(tree: exp.Select, sources: list[Source]) -> Resolution:
    """Columns of ``tree`` (not of its subqueries) to the sources' catalog columns."""
    out: dict[int, CatalogColumn] = {}
    aliases = {e.alias.lower() for e in tree.expressions if isinstance(e, exp.Alias) and e.alias}
    for node in tree.find_all(exp.Column):
        if _in_subquery(node, tree):
            continue
        try:
            _, col = _column_of(node, sources)
        except UnknownColumn:
            if (
                not node.table
                and node.name.lower() in aliases
                and _in_group_order_having(node, tree)
            ):
                continue
            raise
        out[id(node)] = col
    return out


def _in_subquery(node: exp.Expression, tree: exp.Select) -> bool:
    parent = node.parent
    while parent is not None and parent is not tree:
        if isinstance(parent, exp.Select | exp.With):
            return True
        parent = parent.parent
    return False


def _in_group_order_having(node: exp.Expression, tree: exp.Select) -> bool:
    targets = [tree.args.get(k) for k in ("group", "order", "having")]
    parent = node.parent
    while parent is not None:
        if any(parent is t for t in targets if t is not None):
            return True
        parent = parent.parent
    return False


#: Join arguments the re-built join has no place for (sqlglot 30's Join node).
_JOIN_FLAGS = ("global_", "hint", "match_condition", "nearest", "directed", "expressions", "pivots")


def emit_relation(
    relation: Relation,
    *,
    keys: tuple[RowValue, ...],
    args: list[tuple[str, str]],
    measurements_sql: list[str],
    predicate: exp.Expression | None,
    with_units: bool,
    units_column: str,
    dialect: str,
    redacted: bool = False,
) -> str:
    """The warehouse SQL: bounded CTEs, the joined rows, then one row per group
    (``redacted``: the audit copy, with subqueries' literals replaced)."""

    def q(name: str) -> str:
        return str(exp.to_identifier(name, quoted=True).sql(dialect=dialect))

    inner = [f"{k.sql} AS {q(f'g{i}')}" for i, k in enumerate(keys)]
    inner += [f"{sql} AS {q(name)}" for sql, name in args]
    inner.append(f"{relation.unit_sql} AS __pg_unit")
    where = f" WHERE {relation.unit_sql} IS NOT NULL"
    if predicate is not None:
        where += f" AND ({predicate.sql(dialect=dialect)})"
    bodies = relation.ctes_redacted if redacted else relation.ctes
    ctes = [f"{alias} AS ({body})" for alias, body in bodies]
    ctes.append(f"__pg_rows AS (SELECT {', '.join(inner)} FROM {relation.from_sql}{where})")
    outer = [f"{q(f'g{i}')} AS k{i}" for i in range(len(keys))]
    outer += [f"{sql} AS m{i}" for i, sql in enumerate(measurements_sql)]
    if with_units:
        outer.append(f"COUNT(DISTINCT __pg_unit) AS {units_column}")
    group = group_by(len(keys), dialect)
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outer)} FROM __pg_rows{group}"
