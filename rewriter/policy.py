"""The policy file's schema (governance as code), validated with pydantic.

Loading the YAML is I/O and lives in ``gateway.policy_loader``; this module only describes and
validates the content, so the rewriter can depend on it without touching the file system.
See ``docs/policy.md`` for the reference.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_TABLE_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


class ColumnClass(StrEnum):
    """How a column may be used; see DESIGN.md "Column classes"."""

    IDENTIFIER = "identifier"
    BLOCKED = "blocked"
    DIMENSION = "dimension"
    MEASURE = "measure"
    MASKED = "masked"
    PUBLIC = "public"


class ColumnPolicy(_Strict):
    """One column's class and, where the class needs them, its bounds or public domain."""

    class_: ColumnClass = Field(
        alias="class", description="How the column may be used (see the column classes)."
    )
    values: tuple[Scalar, ...] | None = Field(
        default=None,
        description="Dimensions only. The public domain, which is released in full and "
        "zero-filled.",
    )
    bounds: tuple[float, float] | None = Field(
        default=None,
        description="Measures only, and required for them. Clamping bounds [low, high]; they set "
        "the noise scale.",
    )
    values_from: str | None = Field(
        default=None,
        description="Dimensions only, instead of `values`: `table.column` of a public table of "
        "the same dataset whose distinct values are the public domain (read by the gateway when "
        "it loads the policy; at most 10,000).",
    )
    mask: Literal["hash", "redact", "truncate", "generalize"] | None = Field(
        default=None,
        description="Masked columns only, and required for them: how the column is shown in "
        "row-level output of a table with `row_access: masked` (docs/sql.md#masked-rows).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_class_fields(self) -> ColumnPolicy:
        if self.class_ is ColumnClass.MEASURE:
            if self.bounds is None:
                raise ValueError("a measure needs bounds: [low, high]")
            low, high = self.bounds
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("measure bounds must be finite numbers")
            if low > high:
                raise ValueError(f"measure bounds are reversed: low {low} > high {high}")
        elif self.bounds is not None:
            raise ValueError(f"bounds only apply to measures, not to class {self.class_.value!r}")
        if self.values is not None:
            if self.class_ is not ColumnClass.DIMENSION:
                raise ValueError(f"values only apply to dimensions, not to {self.class_.value!r}")
            if len(self.values) == 0:
                raise ValueError("values must list at least one value (or be left out)")
            if len(set(self.values)) != len(self.values):
                raise ValueError("values must not repeat")
        if self.values_from is not None:
            if not _TABLE_COLUMN.fullmatch(self.values_from):
                raise ValueError("values_from must look like table.column")
            if self.class_ is not ColumnClass.DIMENSION:
                raise ValueError("values_from only applies to dimensions")
            if self.values is not None:
                raise ValueError("give values or values_from, not both")
        if self.class_ is ColumnClass.MASKED and self.mask is None:
            raise ValueError("a masked column needs mask: hash, redact, truncate or generalize")
        if self.mask is not None and self.class_ is not ColumnClass.MASKED:
            raise ValueError("mask only applies to class 'masked'")
        return self

    @property
    def cls(self) -> ColumnClass:
        return self.class_


def _column_from_shorthand(value: Any) -> Any:
    # `cost: measure` is not valid (measures need bounds), but `ssn: blocked` is the usual form.
    if isinstance(value, str):
        return {"class": value}
    return value


class TablePolicy(_Strict):
    """A table of a dataset: public (no protection) or protected with declared columns."""

    public: bool = Field(
        default=False,
        description="Reference data about no one. Every column is treated as class `public`, "
        "queries run as written, nothing is charged.",
    )
    row_access: Literal["none", "masked"] = Field(
        default="none",
        description="`masked`: queries without aggregates may return rows of this protected "
        "table, showing only its masked columns (through their masks) and public-class columns. "
        "Not differentially private: a pseudonymised extract, opted into per table.",
    )
    columns: dict[str, Annotated[ColumnPolicy, Field()]] = Field(
        default_factory=dict,
        description="Column classes. The string shorthand `ssn: blocked` means "
        "`{class: blocked}`. Undeclared columns of a protected table are blocked.",
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _column_from_shorthand(v) for k, v in value.items()}
        return value


class Defaults(_Strict):
    """Per-query defaults of a dataset."""

    epsilon: float = Field(
        default=0.5, gt=0, le=100, description="ε of a query that does not ask for its own."
    )
    delta: float = Field(
        default=1e-7,
        ge=0,
        lt=1e-2,
        description="δ charged by queries that release non-public group keys (threshold). "
        "Queries without a threshold charge δ = 0.",
    )
    min_group_size: int = Field(
        default=10,
        ge=1,
        description="Floor on the release threshold τ. It is compared with noisy counts, never "
        "exact ones.",
    )
    max_rows_per_unit: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="K: rows one unit may contribute to a query (per protected table), after "
        "WHERE.",
    )


class BudgetLimit(_Strict):
    """A budget limit: the ε and δ a scope may spend (optionally per rolling window)."""

    # The ledger stores epsilon in units of 1e-12 in a BIGINT: 1e6 leaves ample headroom.
    epsilon: float = Field(
        gt=0,
        le=1_000_000,
        description="ε limit. The cap keeps ledger units (10⁻¹²) inside a BIGINT.",
    )
    delta: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="δ limit. With 0, every query that charges δ (a threshold) is refused.",
    )
    window: str | None = Field(
        default=None,
        description="Rolling window such as '30d' or '12h' (per_principal only): charges older "
        "than the window stop counting. See the averaging caveat in docs/privacy-model.md.",
    )

    @field_validator("window")
    @classmethod
    def _window_form(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW.fullmatch(value):
            raise ValueError("window must look like '30d' or '12h' (a positive whole number)")
        if value is not None and window_seconds(value) <= 0:
            raise ValueError("window must be positive")
        return value

    @property
    def window_seconds(self) -> int | None:
        return None if self.window is None else window_seconds(self.window)


_WINDOW = re.compile(r"[0-9]{1,6}[dh]")


def window_seconds(text: str) -> int:
    """Seconds in a window such as '30d' or '12h'.

    >>> window_seconds("30d"), window_seconds("12h")
    (2592000, 43200)
    """
    return int(text[:-1]) * (86_400 if text.endswith("d") else 3_600)


class QueryMax(_Strict):
    """The most one query may ask for."""

    epsilon: float = Field(gt=0, description="The largest ε of one query.")


class DatasetBudget(_Strict):
    """A dataset's budget scopes. The limits seed the ledger; the stored limit wins after."""

    per_principal: BudgetLimit = Field(
        default_factory=lambda: BudgetLimit(epsilon=10, delta=1e-5),
        description="What one principal may spend on the dataset in total (or per window).",
    )
    total: BudgetLimit | None = Field(
        default=None,
        description="A cap across all principals (against collusion). It cannot have a window.",
    )
    per_query_max: QueryMax | None = Field(
        default=None,
        description="The largest ε one query may ask for. Larger requests are rejected with "
        "`budget.query_max`.",
    )

    @model_validator(mode="after")
    def _total_has_no_window(self) -> DatasetBudget:
        if self.total is not None and self.total.window is not None:
            # A renewing collusion cap would let a group of analysts drain the data over time.
            raise ValueError("total: a dataset-wide cap cannot have a window")
        return self


class DatasetPolicy(_Strict):
    """A dataset: the unit we protect, its defaults, its budget and its tables."""

    privacy_unit: str = Field(
        min_length=1,
        description="The column that identifies the person protected (user-level DP).",
    )
    defaults: Defaults = Field(default_factory=Defaults, description="Per-query parameters.")
    budget: DatasetBudget = Field(default_factory=DatasetBudget, description="Budget scopes.")
    tables: dict[str, TablePolicy] = Field(description="The dataset's tables.")

    @model_validator(mode="after")
    def _unit_is_identifier(self) -> DatasetPolicy:
        if not self.tables:
            raise ValueError("a dataset needs at least one table")
        for name, table in self.tables.items():
            if table.public:
                continue
            unit = table.columns.get(self.privacy_unit)
            if unit is None or unit.cls is not ColumnClass.IDENTIFIER:
                raise ValueError(
                    f"protected table {name!r} must declare the privacy unit column "
                    f"{self.privacy_unit!r} as 'identifier' (or set public: true)"
                )
        q = self.budget.per_query_max
        if q is not None and self.defaults.epsilon > q.epsilon:
            raise ValueError("defaults.epsilon is larger than budget.per_query_max.epsilon")
        return self


class Role(StrEnum):
    ANALYST = "analyst"
    ADMIN = "admin"


class PrincipalPolicy(_Strict):
    """A bootstrap principal: inserted if missing from the control database, never updated."""

    role: Role = Field(
        description="`admin` may call `/v1/admin/*`. Querying still needs dataset grants."
    )
    datasets: tuple[str, ...] = Field(
        default=(),
        description="Datasets the principal may query. Tables of other datasets look like "
        "missing tables (`catalog.unknown_table`).",
    )


class Policy(_Strict):
    """The whole policy file."""

    datasets: dict[str, DatasetPolicy] = Field(description="The protected datasets.")
    principals: dict[str, PrincipalPolicy] = Field(
        default_factory=dict, description="Bootstrap principals."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        seen: dict[str, str] = {}
        for ds_name, ds in self.datasets.items():
            for table in ds.tables:
                key = table.lower()
                if key in seen:
                    raise ValueError(
                        f"table {table!r} is declared in datasets {seen[key]!r} and {ds_name!r}; "
                        "a table belongs to one dataset"
                    )
                seen[key] = ds_name
        for p_name, p in self.principals.items():
            for ds_name in p.datasets:
                if ds_name not in self.datasets:
                    raise ValueError(f"principal {p_name!r} is granted unknown dataset {ds_name!r}")
        return self

    def dataset_of_table(self, table: str) -> str | None:
        for ds_name, ds in self.datasets.items():
            if table.lower() in {t.lower() for t in ds.tables}:
                return ds_name
        return None
