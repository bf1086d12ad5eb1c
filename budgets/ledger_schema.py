"""The ledger's tables and the immutable values it hands out.

Three tables in the control database:

* ``budget_accounts`` — one row per scope: the principal on a dataset, or the dataset total
  (``scope_kind='dataset'``, ``principal=''``). ``eps_spent``/``delta_spent`` are lifetime counters
  since the last reset; ``epoch`` counts resets (see :class:`budgets.ledger.SqlLedger.reset`).
* ``budget_reservations`` — one row per charged query, in one of the states of
  :data:`ReservationState`, remembering the epoch of every scope it charged.
* ``budget_events`` — the append-only history: one row per state change, written in the same
  transaction as the change.

All amounts are integers of the quanta in :mod:`budgets.cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    DefaultClause,
    Index,
    Integer,
    MetaData,
    RowMapping,
    Table,
    Text,
    TextClause,
    and_,
    inspect,
    text,
)

from budgets.cost import PrivacyCost

ReservationState = Literal["reserved", "executing", "committed", "refunded"]
ScopeKind = Literal["principal", "dataset"]
EventKind = Literal[
    "reserve",
    "execute",
    "commit",
    "refund",
    "reconcile_refund",
    "reconcile_commit",
    "set_limit",
    "top_up",
    "reset",
]

#: States whose units count as used: the budget is held or spent.
ACTIVE_STATES: tuple[ReservationState, ...] = ("reserved", "executing", "committed")

#: Largest amount (in ledger units) accepted for a cost, a limit or a lifetime counter. Half of
#: BIGINT's range, so that ``spent + cost`` can never overflow inside a conditional UPDATE (SQLite
#: would silently turn an overflowing integer into a float; PostgreSQL would raise).
MAX_UNITS = 2**62

metadata = MetaData()

budget_accounts = Table(
    "budget_accounts",
    metadata,
    Column("scope_kind", Text, primary_key=True),  # 'principal' or 'dataset'
    Column("principal", Text, primary_key=True),  # '' for the dataset scope
    Column("dataset", Text, primary_key=True),
    Column("eps_limit", BigInteger, nullable=False),
    Column("delta_limit", BigInteger, nullable=False),
    Column("eps_spent", BigInteger, nullable=False),
    Column("delta_spent", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Resets so far. A reservation remembers the epoch it charged; units of an older epoch were
    # forgiven by a reset and are neither counted in a window nor given back by a refund. A counter,
    # not a timestamp, so that clock skew between replicas cannot misorder a reset and a charge.
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("reset_at", DateTime(timezone=True), nullable=True),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("query_id", Text, nullable=False, unique=True),
    Column("principal", Text, nullable=False),
    Column("dataset", Text, nullable=False),
    Column("eps_units", BigInteger, nullable=False),
    Column("delta_units", BigInteger, nullable=False),
    # Refund must give the units back to exactly the scopes that were charged.
    Column("charged_dataset_scope", Boolean, nullable=False),
    Column("state", Text, nullable=False),  # see ReservationState
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("principal_epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("dataset_epoch", BigInteger, nullable=False, server_default=text("0")),
    # The rolling-window sum reads (principal, dataset, created_at); reconcile scans by state.
    Index("ix_budget_reservations_window", "principal", "dataset", "created_at"),
    Index("ix_budget_reservations_state", "state", "created_at"),
)

budget_events = Table(
    "budget_events",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's auto-increment rowid; BIGINT would not auto-increment there.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("principal", Text, nullable=False),  # '' for the dataset-total scope
    Column("dataset", Text, nullable=False),
    Column("kind", Text, nullable=False),  # see EventKind
    Column("eps_units", BigInteger, nullable=False),
    Column("delta_units", BigInteger, nullable=False),
    Column("query_id", Text, nullable=True),
    Column("actor", Text, nullable=True),
    Index("ix_budget_events_scope", "principal", "dataset", "id"),
)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A charge held in the ledger; ``cost`` is what was charged, rounded up to ledger units."""

    id: str
    query_id: str
    principal: str
    dataset: str
    cost: PrivacyCost
    state: ReservationState


@dataclass(frozen=True, slots=True)
class Balance:
    """One scope's budget. ``remaining`` is zero, never negative, when an admin cut the limit."""

    limit: PrivacyCost
    spent: PrivacyCost
    remaining: PrivacyCost


@dataclass(frozen=True, slots=True)
class AccountView:
    """A stored account as admins see it: lifetime ``spent`` since the last reset, no window."""

    scope_kind: ScopeKind
    principal: str  # '' for the dataset-total scope
    dataset: str
    limit: PrivacyCost
    spent: PrivacyCost
    remaining: PrivacyCost
    reset_at: datetime | None


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One entry of an account's history. Units are ledger units (see :mod:`budgets.cost`).

    For ``set_limit`` the units are the new limit, for ``top_up`` the amount added, for ``reset``
    what had been spent until then, and for reservation events the reservation's cost.
    """

    id: int
    ts: datetime
    principal: str
    dataset: str
    kind: EventKind
    eps_units: int
    delta_units: int
    query_id: str | None
    actor: str | None

    @property
    def cost(self) -> PrivacyCost:
        return PrivacyCost.from_units(self.eps_units, self.delta_units)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one :meth:`budgets.ledger.SqlLedger.reconcile` pass changed."""

    refunded: int
    committed: int


@dataclass(frozen=True, slots=True)
class Scope:
    """One budget account's key."""

    kind: ScopeKind
    principal: str
    dataset: str

    @classmethod
    def of(cls, *, principal: str, dataset: str) -> Scope:
        # The admin-facing convention: principal '' names the dataset-total scope.
        if principal == "":
            return cls("dataset", "", dataset)
        return cls("principal", principal, dataset)

    def where(self) -> Any:
        return and_(
            budget_accounts.c.scope_kind == self.kind,
            budget_accounts.c.principal == self.principal,
            budget_accounts.c.dataset == self.dataset,
        )

    def describe(self) -> str:
        if self.kind == "dataset":
            return f"dataset {self.dataset!r} (total over all principals)"
        return f"principal {self.principal!r} on dataset {self.dataset!r}"


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; SQLite hands timestamps back naive, and they were stored as UTC.

    >>> utc(datetime(2024, 1, 1)).isoformat()
    '2024-01-01T00:00:00+00:00'
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def reservation_of(row: Mapping[str, Any] | RowMapping) -> Reservation:
    return Reservation(
        id=row["id"],
        query_id=row["query_id"],
        principal=row["principal"],
        dataset=row["dataset"],
        cost=PrivacyCost.from_units(row["eps_units"], row["delta_units"]),
        state=cast(ReservationState, row["state"]),
    )


def account_of(row: RowMapping) -> AccountView:
    return AccountView(
        scope_kind=cast(ScopeKind, row["scope_kind"]),
        principal=row["principal"],
        dataset=row["dataset"],
        limit=PrivacyCost.from_units(row["eps_limit"], row["delta_limit"]),
        spent=PrivacyCost.from_units(row["eps_spent"], row["delta_spent"]),
        remaining=PrivacyCost.from_units(
            max(row["eps_limit"] - row["eps_spent"], 0),
            max(row["delta_limit"] - row["delta_spent"], 0),
        ),
        reset_at=None if row["reset_at"] is None else utc(row["reset_at"]),
    )


def event_of(row: RowMapping) -> LedgerEvent:
    return LedgerEvent(
        id=int(row["id"]),
        ts=utc(row["ts"]),
        principal=row["principal"],
        dataset=row["dataset"],
        kind=cast(EventKind, row["kind"]),
        eps_units=row["eps_units"],
        delta_units=row["delta_units"],
        query_id=row["query_id"],
        actor=row["actor"],
    )


def install(conn: Connection) -> None:
    """Create the ledger's tables and indexes where missing, and add columns a table lacks."""
    metadata.create_all(conn)
    _add_missing_columns(conn)
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _add_missing_columns(conn: Connection) -> None:
    """Add columns introduced after a table was first created (a one-step, additive migration)."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl = f"{column.type.compile(dialect=conn.dialect)}"
            default = column.server_default
            if isinstance(default, DefaultClause) and isinstance(default.arg, TextClause):
                ddl += f" NOT NULL DEFAULT {default.arg.text}"
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {ddl}")
