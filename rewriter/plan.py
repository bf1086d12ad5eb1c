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

from budgets.cost import PrivacyCost
from rewriter.catalog import LogicalType
from rewriter.policy import Scalar


class MeasurementKind(StrEnum):
    COUNT = "count"  # integer count of bounded rows
    SUM = "sum"  # integer (fixed-point) sum of clamped values


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


class OutputKind(StrEnum):
    KEY = "key"
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"


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

    @property
    def zero_fill(self) -> bool:
        """All keys have public domains: release the full cross product, no threshold."""
        return (
            self.protected
            and bool(self.group_keys)
            and all(k.public_domain is not None for k in self.group_keys)
        )
