"""The immutable plan the rewriter hands to the gateway.

A :class:`QueryPlan` carries everything the later stages need and nothing they must recompute:
the warehouse SQL, one :class:`Measurement` per noisy quantity (kind, sensitivity, budget share),
how each output column is assembled from measurements, how group keys are released, and the total
privacy cost. The service charges ``plan.cost`` and never derives a cost of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from budgets.cost import PrivacyCost
from rewriter.catalog import LogicalType
from rewriter.policy import Scalar


class MeasurementKind(StrEnum):
    COUNT = "count"  # integer count of bounded rows
    SUM = "sum"  # integer (fixed-point) sum of clamped values
    COUNT_UNITS = "count_units"  # COUNT(DISTINCT unit): people
    COUNT_DISTINCT = "count_distinct"  # COUNT(DISTINCT dimension)
    QUANTILE = "quantile"  # a list of clamped values per group, released by OpenDP's quantile


@dataclass(frozen=True, slots=True)
class Measurement:
    """One noisy quantity computed per group by the warehouse SQL.

    ``column`` names the warehouse result column holding the integer true value. The noise module
    adds discrete Laplace noise calibrated to ``sensitivity / epsilon`` (the L1 sensitivity over the
    whole vector of groups) and divides by ``fixed_point`` afterwards.
    """

    column: str
    kind: MeasurementKind
    sensitivity: int
    epsilon: Fraction
    fixed_point: int = 1
    description: str = ""
    #: QUANTILE: the quantile (0 < alpha < 1) and the candidate grid over the declared bounds.
    alpha: float | None = None
    candidates: tuple[float, ...] = ()
    #: SUM released centred (an AVG's numerator): the noisy quantity is the sum of (term -
    #: ``center``) over the rows the COUNT measurement ``center_count`` counts, computed at
    #: release from the two exact integers as SUM - center * COUNT; ``sensitivity`` is that of
    #: the centred terms (docs/privacy-model.md, "Centred sums for AVG").
    center: int = 0
    center_count: str | None = None


class OutputKind(StrEnum):
    KEY = "key"
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    VAR = "var"  # from SUM(x), SUM(x²), COUNT(x)
    STDDEV = "stddev"
    QUANTILE = "quantile"
    #: Arithmetic over other released outputs (post-processing).
    EXPR = "expr"


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """How one released column is made: a group key, or post-processing of measurements."""

    name: str
    kind: OutputKind
    type: LogicalType
    #: For KEY: index into ``QueryPlan.group_keys``.
    key_index: int | None = None
    #: For COUNT/SUM: the measurement; for AVG: the numerator (sum) measurement.
    measurement: str | None = None
    #: For AVG: the denominator (count) measurement.
    denominator: str | None = None
    #: For AVG: clamp the released ratio to these bounds (post-processing).
    bounds: tuple[float, float] | None = None
    #: For VAR/STDDEV: the sum-of-squares measurement; ``population``: divide by n, not n - 1.
    second: str | None = None
    population: bool = False
    #: For EXPR: a formula tree over outputs (``("ref", i)`` indexes ``outputs + hidden``):
    #: ``("num", x)``, ``("neg", f)``, ``("+"|"-"|"*"|"/", f, g)``, ``("round", f, digits)``,
    #: ``("abs", f)``.
    formula: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class GroupKey:
    """A GROUP BY key: the warehouse result column and, if declared, its public domain."""

    column: str
    source: str
    type: LogicalType
    public_domain: tuple[Scalar, ...] | None


@dataclass(frozen=True, slots=True)
class Threshold:
    """Release of non-public group keys through a noisy count of distinct units per group.

    ``units_column`` holds COUNT(DISTINCT unit) per group. One unit changes at most ``max_groups``
    groups by at most 1 each (L0 = max_groups, Linf = 1). ``min_group_size`` floors the threshold.
    """

    units_column: str
    max_groups: int
    epsilon: Fraction
    delta: Fraction
    min_group_size: int


@dataclass(frozen=True, slots=True)
class SortKey:
    output_index: int
    descending: bool


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """Everything needed to execute, release, charge and audit one query."""

    dataset: str
    tables: tuple[str, ...]
    normalized_sql: str
    #: The statement with literals replaced: what the audit log stores by default.
    redacted_sql: str
    warehouse_sql: str
    #: ``warehouse_sql`` with the analyst's literals replaced: what the audit log stores.
    redacted_warehouse_sql: str
    #: Names of the warehouse SQL's positional parameters, in order (values supplied by the gateway;
    #: the bounding salt is one: it never appears in the SQL text or in audit records).
    parameters: tuple[str, ...]
    protected: bool
    outputs: tuple[OutputColumn, ...]
    group_keys: tuple[GroupKey, ...]
    measurements: tuple[Measurement, ...]
    threshold: Threshold | None
    max_rows_per_unit: int
    cost: PrivacyCost
    order_by: tuple[SortKey, ...] = ()
    limit: int | None = None
    offset: int = 0
    #: Outputs computed for HAVING or formulas but not returned (``("ref", i)`` with
    #: ``i >= len(outputs)`` points here).
    hidden: tuple[OutputColumn, ...] = ()
    #: HAVING, evaluated on released values: a tree of ``("and"|"or", p, q)``, ``("not", p)``,
    #: ``(op, f, g)`` with op in = <> < <= > >=, ``("is_null", f)``, over formulas.
    having: tuple[Any, ...] | None = None
    #: How many rows one unit may contribute to the aggregated relation (K; K·K' for a join on
    #: the unit; 1 after per-unit pre-aggregation): the multiplier in every sensitivity.
    rows_per_unit: int = 0
    #: Masked row-level output of a protected table (``row_access: masked``): not DP, no cost.
    row_access: bool = False

    @property
    def zero_fill(self) -> bool:
        """All keys have public domains: release the full cross product, no threshold."""
        return (
            self.protected
            and bool(self.group_keys)
            and all(k.public_domain is not None for k in self.group_keys)
        )
