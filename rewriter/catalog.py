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
    #: Masked columns: how row-level output shows them.
    mask: str | None = None

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
    #: Queries without aggregates may return masked rows of this protected table.
    row_access: bool = False

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


def values_from_refs(policy: Policy) -> list[tuple[str, str, str]]:
    """(dataset, public table, column) of every ``values_from`` in ``policy``, to be read."""
    out = []
    for ds_name, ds in policy.datasets.items():
        for t_policy in ds.tables.values():
            for pol in t_policy.columns.values():
                if pol.values_from is not None:
                    table, column = pol.values_from.lower().split(".")
                    out.append((ds_name, table, column))
    return sorted(set(out))


def build_catalog(
    policy: Policy,
    warehouse_columns: Mapping[str, list[tuple[str, str]]],
    public_values: Mapping[str, tuple[Scalar, ...]] | None = None,
) -> Catalog:
    """Intersect the warehouse schema (table -> [(column, sql type)]) with the policy.

    Tables the policy does not mention are not in the catalog at all. On protected tables, columns
    the policy does not declare are blocked (fail closed); on public tables every column is public.

    ``public_values`` maps each ``values_from`` reference (``table.column``) to the distinct values
    the gateway read from that public table: they become the column's public domain.

    Raises:
        CatalogMismatch: if the policy declares a table or column the warehouse lacks, or a
            ``values_from`` that is not a public table's column of the same dataset.
    """
    lower_wh = {t.lower(): cols for t, cols in warehouse_columns.items()}
    tables: dict[str, CatalogTable] = {}
    for ds_name, ds in policy.datasets.items():
        ds_tables = {k.lower(): v for k, v in ds.tables.items()}
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
                values = pol.values if pol is not None else None
                if pol is not None and pol.values_from is not None:
                    ref = pol.values_from.lower()
                    source = ds_tables.get(ref.split(".")[0])
                    if source is None or not source.public:
                        raise CatalogMismatch(
                            f"values_from {pol.values_from!r} of {t_name}.{c_name} must name a "
                            f"public table of dataset {ds_name}"
                        )
                    if public_values is None or ref not in public_values:
                        raise CatalogMismatch(f"values_from {pol.values_from!r} was not read")
                    values = public_values[ref] or None
                cols[c_name.lower()] = CatalogColumn(
                    name=c_name.lower(),
                    type=logical_type(c_type),
                    cls=cls,
                    bounds=pol.bounds if pol is not None else None,
                    values=values,
                    mask=pol.mask if pol is not None else None,
                )
            tables[t_name.lower()] = CatalogTable(
                name=t_name.lower(),
                dataset=ds_name,
                public=t_policy.public,
                columns=MappingProxyType(cols),
                row_access=t_policy.row_access == "masked" and not t_policy.public,
            )
    return Catalog(
        tables=MappingProxyType(tables),
        policy=policy,
        datasets=MappingProxyType(dict(policy.datasets)),
    )
