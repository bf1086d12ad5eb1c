"""The catalog an analyst sees: the warehouse schema intersected with the policy.

Built by the gateway from the warehouse's ``information_schema`` and the policy; the rewriter only
reads it. Columns the policy blocks (or does not declare on a protected table) are kept here for the
contribution-bounding hash but are never *visible*: name resolution treats them as absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from rewriter.policy import ColumnClass, ColumnPolicy, DatasetPolicy, Policy, Scalar


class LogicalType(StrEnum):
    """Warehouse column types, reduced to what the rewriter needs to type-check literals."""

    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"
    DATE = "date"
    TIMESTAMP = "timestamp"
    BOOLEAN = "boolean"
    OTHER = "other"


_TYPE_PREFIXES: tuple[tuple[tuple[str, ...], LogicalType], ...] = (
    (
        (
            "TINYINT",
            "SMALLINT",
            "INTEGER",
            "INT",
            "BIGINT",
            "INT2",
            "INT4",
            "INT8",
            "HUGEINT",
            "UTINYINT",
            "USMALLINT",
            "UINTEGER",
            "UBIGINT",
            "UHUGEINT",
        ),
        LogicalType.INTEGER,
    ),
    (
        ("DOUBLE", "DOUBLE PRECISION", "FLOAT", "FLOAT4", "FLOAT8", "REAL", "DECIMAL", "NUMERIC"),
        LogicalType.FLOAT,
    ),
    (
        ("VARCHAR", "TEXT", "CHAR", "STRING", "CHARACTER VARYING", "CHARACTER", "BPCHAR"),
        LogicalType.STRING,
    ),
    (("DATE",), LogicalType.DATE),
    (("TIMESTAMP",), LogicalType.TIMESTAMP),
    (("BOOLEAN", "BOOL"), LogicalType.BOOLEAN),
)


def logical_type(sql_type: str) -> LogicalType:
    """Map a warehouse type name to a :class:`LogicalType`.

    >>> logical_type("DECIMAL(18,3)"), logical_type("VARCHAR"), logical_type("INTEGER[]")
    (<LogicalType.FLOAT: 'float'>, <LogicalType.STRING: 'string'>, <LogicalType.OTHER: 'other'>)
    """
    name = sql_type.strip().upper()
    if name.endswith("]") or name.startswith(("STRUCT", "MAP", "UNION")):
        return LogicalType.OTHER
    base = name.split("(")[0].strip()
    for names, kind in _TYPE_PREFIXES:
        if base in names or (kind is LogicalType.TIMESTAMP and base.startswith("TIMESTAMP")):
            return kind
    return LogicalType.OTHER


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    name: str
    type: LogicalType
    cls: ColumnClass
    bounds: tuple[float, float] | None = None
    values: tuple[Scalar, ...] | None = None
    #: The alias the emitted SQL reads this column through (one per FROM source).
    source: str = "__pg_t"

    @property
    def visible(self) -> bool:
        return self.cls is not ColumnClass.BLOCKED


@dataclass(frozen=True, slots=True)
class CatalogTable:
    name: str
    dataset: str
    public: bool
    #: Every warehouse column in warehouse order, visible or not (keys are lower-case names).
    columns: Mapping[str, CatalogColumn]

    def visible_columns(self) -> list[CatalogColumn]:
        return [c for c in self.columns.values() if c.visible]

    def column(self, name: str) -> CatalogColumn | None:
        col = self.columns.get(name.lower())
        return col if col is not None and col.visible else None


@dataclass(frozen=True, slots=True)
class Catalog:
    tables: Mapping[str, CatalogTable]
    policy: Policy
    datasets: Mapping[str, DatasetPolicy] = field(default_factory=dict)

    def table(self, name: str) -> CatalogTable | None:
        return self.tables.get(name.lower())


class CatalogMismatch(ValueError):
    """The policy names a table or column the warehouse does not have."""


def build_catalog(
    policy: Policy, warehouse_columns: Mapping[str, list[tuple[str, str]]]
) -> Catalog:
    """Intersect the warehouse schema (table -> [(column, sql type)]) with the policy.

    Tables the policy does not mention are not in the catalog at all. On protected tables, columns
    the policy does not declare are blocked (fail closed); on public tables every column is public.

    Raises:
        CatalogMismatch: if the policy declares a table or column the warehouse lacks.
    """
    lower_wh = {t.lower(): cols for t, cols in warehouse_columns.items()}
    tables: dict[str, CatalogTable] = {}
    for ds_name, ds in policy.datasets.items():
        for t_name, t_policy in ds.tables.items():
            wh_cols = lower_wh.get(t_name.lower())
            if wh_cols is None:
                raise CatalogMismatch(f"policy table {ds_name}.{t_name} is not in the warehouse")
            declared = {k.lower(): v for k, v in t_policy.columns.items()}
            wh_names = {c.lower() for c, _ in wh_cols}
            missing = sorted(set(declared) - wh_names)
            if missing:
                raise CatalogMismatch(
                    f"policy columns {missing} of table {t_name!r} are not in the warehouse"
                )
            cols: dict[str, CatalogColumn] = {}
            for c_name, c_type in wh_cols:
                pol: ColumnPolicy | None = declared.get(c_name.lower())
                if t_policy.public:
                    cls = ColumnClass.PUBLIC
                elif pol is None:
                    cls = ColumnClass.BLOCKED
                else:
                    cls = pol.cls
                cols[c_name.lower()] = CatalogColumn(
                    name=c_name.lower(),
                    type=logical_type(c_type),
                    cls=cls,
                    bounds=pol.bounds if pol is not None else None,
                    values=pol.values if pol is not None else None,
                )
            tables[t_name.lower()] = CatalogTable(
                name=t_name.lower(),
                dataset=ds_name,
                public=t_policy.public,
                columns=MappingProxyType(cols),
            )
    return Catalog(
        tables=MappingProxyType(tables),
        policy=policy,
        datasets=MappingProxyType(dict(policy.datasets)),
    )
