"""The ledger's steps inside one transaction: charge, give back, move a reservation, log an event.

Each function takes the caller's open :class:`~sqlalchemy.Connection`; the caller's transaction
makes a sequence of steps all-or-nothing (a raised error rolls every step back). Account rows are
always locked in one order — the principal scope, then the dataset scope — so that concurrent
transactions on PostgreSQL never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from budgets.cost import PrivacyCost, fraction_str
from budgets.errors import (
    BudgetExhausted,
    DuplicateQueryId,
    InvalidCost,
    LedgerInconsistent,
    ReservationNotFound,
)
from budgets.ledger_schema import (
    ACTIVE_STATES,
    MAX_UNITS,
    EventKind,
    Reservation,
    ReservationState,
    Scope,
    budget_accounts,
    budget_events,
    budget_reservations,
    reservation_of,
)
from budgets.prepared import Prepared

#: Execution option for a write transaction whose commit need not be flushed to disk at once:
#: on SQLite in WAL mode (gateway.control_db) it runs with ``synchronous = NORMAL``. Only for the
#: reservation that :class:`~budgets.ledger.SqlLedger.reserve` makes with ``durable=False``:
#: WAL frames are appended in order, so the query's final (flushed) commit makes the reservation
#: durable with it, and no answer is released before that commit. Power lost in between loses a
#: reservation whose answer nobody received. An application crash loses nothing (the frames are
#: in the operating system's cache). Ignored on PostgreSQL.
LAZY_SYNC_OPTION = "privgate_lazy_sync"


@contextmanager
def in_transaction(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    """``conn`` when the caller has a transaction open (its commit makes the steps durable, its
    rollback undoes them), else a transaction of our own on ``engine``."""
    if conn is not None:
        yield conn
        return
    with engine.begin() as own:
        yield own


def check_units(cost: PrivacyCost, what: str) -> None:
    if cost.epsilon_units > MAX_UNITS or cost.delta_units > MAX_UNITS:
        raise InvalidCost(
            f"{what} is too large for the ledger: epsilon {fraction_str(cost.epsilon)}"
        )


def cost_text(cost: PrivacyCost) -> str:
    return f"epsilon {fraction_str(cost.epsilon)}, delta {fraction_str(cost.delta)}"


def dialect_insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT`` (SQLite and PostgreSQL spell it alike)."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"the ledger supports SQLite and PostgreSQL, not {name}")


# -- statements built once ---------------------------------------------------------------------
# Building a SQLAlchemy statement costs ~0.3 ms; executing a prebuilt one with bound parameters
# ~0.03 ms, and as a Prepared one on SQLite's cursor ~0.005 ms. These run on every query, so they
# are built here, once, with bindparam()s.

#: A row as the steps read it (a dict on the Prepared path).
Row = Mapping[str, Any]

_acc = budget_accounts.c
_res = budget_reservations.c
_SCOPE = and_(
    _acc.scope_kind == bindparam("s_kind"),
    _acc.principal == bindparam("s_principal"),
    _acc.dataset == bindparam("s_dataset"),
)
_ACCOUNT_SELECT = select(budget_accounts).where(_SCOPE)
_ACCOUNT = Prepared(_ACCOUNT_SELECT)
_ACCOUNT_LOCKED = Prepared(_ACCOUNT_SELECT.with_for_update())
_TRY_CHARGE = Prepared(
    update(budget_accounts)
    .where(
        _SCOPE,
        _acc.eps_spent + bindparam("e") <= _acc.eps_limit,
        _acc.delta_spent + bindparam("d") <= _acc.delta_limit,
    )
    .values(
        eps_spent=_acc.eps_spent + bindparam("e"),
        delta_spent=_acc.delta_spent + bindparam("d"),
        updated_at=bindparam("now"),
    )
    .returning(_acc.epoch)
)


def _transition_statement(src: tuple[str, ...], finished: bool) -> Prepared:
    values: dict[str, Any] = {"state": bindparam("dst")}
    if finished:
        values["finished_at"] = bindparam("now")
    return Prepared(
        update(budget_reservations)
        .where(_res.id == bindparam("rid"), or_(*(_res.state == state for state in src)))
        .values(**values)
        .returning(*budget_reservations.c)
    )


#: (source states, whether the destination is final) -> the conditional UPDATE. Every transition
#: the ledger makes, with its source states as constants (Prepared runs no expanding IN).
_TRANSITIONS: dict[tuple[tuple[str, ...], bool], Prepared] = {
    (src, finished): _transition_statement(src, finished)
    for src in (("reserved",), ("reserved", "executing"), ("executing",))
    for finished in (False, True)
}
_STATE = Prepared(select(_res.state).where(_res.id == bindparam("rid")))
_BY_QUERY_ID = Prepared(select(budget_reservations).where(_res.query_id == bindparam("qid")))
_INSERT_EVENT = Prepared(budget_events.insert())
INSERT_RESERVATION = Prepared(budget_reservations.insert().returning(*budget_reservations.c))


def _scope(scope: Scope) -> dict[str, str]:
    return {"s_kind": scope.kind, "s_principal": scope.principal, "s_dataset": scope.dataset}


def account_row(conn: Connection, scope: Scope, *, lock: bool = False) -> Row | None:
    """A scope's account row; ``lock`` takes its row lock on PostgreSQL (``SELECT ... FOR UPDATE``).

    SQLite ignores ``FOR UPDATE``; there the control engine's ``BEGIN IMMEDIATE`` already holds the
    database's write lock for the whole transaction.
    """
    stmt = _ACCOUNT_LOCKED if lock else _ACCOUNT
    return stmt.run(conn, _scope(scope)).one_or_none()


def create_if_absent(conn: Connection, scope: Scope, limit: PrivacyCost, now: datetime) -> None:
    # ON CONFLICT DO NOTHING: safe when two first requests race; never touches an existing limit.
    conn.execute(
        dialect_insert(conn, budget_accounts)
        .values(
            scope_kind=scope.kind,
            principal=scope.principal,
            dataset=scope.dataset,
            eps_limit=limit.epsilon_units,
            delta_limit=limit.delta_units,
            eps_spent=0,
            delta_spent=0,
            updated_at=now,
            epoch=0,
            reset_at=None,
        )
        .on_conflict_do_nothing(index_elements=["scope_kind", "principal", "dataset"])
    )


def remaining_text(limit_e: int, limit_d: int, used_e: int, used_d: int) -> str:
    return cost_text(PrivacyCost.from_units(max(limit_e - used_e, 0), max(limit_d - used_d, 0)))


def _try_charge(conn: Connection, scope: Scope, cost: PrivacyCost, now: datetime) -> int | None:
    # The limit check lives in the UPDATE's WHERE clause, so it is evaluated against the row as it
    # is when the row lock is held: a concurrent charge cannot slip in between check and write.
    params = {**_scope(scope), "e": cost.epsilon_units, "d": cost.delta_units, "now": now}
    epoch = _TRY_CHARGE.run(conn, params).scalar_one_or_none()
    return None if epoch is None else int(epoch)


def charge(
    conn: Connection, scope: Scope, cost: PrivacyCost, *, seed: PrivacyCost | None, now: datetime
) -> int | None:
    """Add ``cost`` to a scope's lifetime spending if it fits its limit; return the scope's epoch.

    A missing account is created with the limit ``seed``; with ``seed=None`` it is left missing
    and not charged, and the result is None (a dataset without a total cap).

    Raises:
        BudgetExhausted: the charge does not fit; the caller's transaction must roll back.
    """
    epoch = _try_charge(conn, scope, cost, now)
    if epoch is not None:
        return epoch
    # The UPDATE above matched nothing. That does not prove exhaustion: on PostgreSQL (READ
    # COMMITTED) the account may have been created by a concurrent first request that committed
    # after the UPDATE took its snapshot, and is visible only now. So decide on the row as it is
    # under our row lock — the newest committed version, which nobody can change until we finish.
    row = account_row(conn, scope, lock=True)
    if row is None:
        if seed is None:
            return None
        create_if_absent(conn, scope, seed, now)
        row = account_row(conn, scope, lock=True)
        if row is None:
            raise LedgerInconsistent(f"account of {scope.describe()} vanished during a reservation")
    # Under the lock the UPDATE sees exactly this row, so a second miss does mean "does not fit".
    epoch = _try_charge(conn, scope, cost, now)
    if epoch is not None:
        return epoch
    raise BudgetExhausted(
        f"privacy budget of {scope.describe()} exhausted: "
        f"{remaining_text(row['eps_limit'], row['delta_limit'], row['eps_spent'], row['delta_spent'])}"
        f" remaining, this query needs {cost_text(cost)}; nothing was charged"
    )


def window_usage(
    conn: Connection, *, principal: str, dataset: str, epoch: int, since: datetime
) -> tuple[int, int]:
    """Units held or spent by (principal, dataset) in the current epoch, created after ``since``.

    There is deliberately no upper bound at "now": a reservation stamped in the future by a replica
    whose clock runs ahead still counts (fail closed under clock skew).
    """
    r = budget_reservations.c
    row = conn.execute(
        select(
            func.coalesce(func.sum(r.eps_units), 0), func.coalesce(func.sum(r.delta_units), 0)
        ).where(
            r.principal == principal,
            r.dataset == dataset,
            r.principal_epoch == epoch,
            r.state.in_(ACTIVE_STATES),
            r.created_at > since,
        )
    ).one()
    # PostgreSQL's SUM(bigint) is NUMERIC (a Decimal here); the values are whole numbers.
    return int(row[0]), int(row[1])


def charge_windowed(
    conn: Connection,
    scope: Scope,
    cost: PrivacyCost,
    *,
    seed: PrivacyCost,
    since: datetime,
    window_s: int,
    now: datetime,
) -> int:
    """Charge the principal scope against its rolling window; return the scope's epoch.

    A missing account is created with the limit ``seed`` first.

    Lock the account row first, then sum the window, then (the caller) insert the reservation: every
    reservation of the scope takes the same row lock, so the sum sees every charge committed before
    ours and none can commit between our sum and our insert. The lifetime counters still grow, for
    history, but they are not the check.
    """
    row = account_row(conn, scope, lock=True)
    if row is None:
        create_if_absent(conn, scope, seed, now)
        row = account_row(conn, scope, lock=True)
        if row is None:
            raise LedgerInconsistent(f"account of {scope.describe()} vanished during a reservation")
    e, d = cost.epsilon_units, cost.delta_units
    used_e, used_d = window_usage(
        conn, principal=scope.principal, dataset=scope.dataset, epoch=row["epoch"], since=since
    )
    if used_e + e > row["eps_limit"] or used_d + d > row["delta_limit"]:
        raise BudgetExhausted(
            f"privacy budget of {scope.describe()} exhausted for its rolling window of "
            f"{window_s} s: {remaining_text(row['eps_limit'], row['delta_limit'], used_e, used_d)}"
            f" remaining, this query needs {cost_text(cost)}; nothing was charged"
        )
    acc = budget_accounts.c
    bumped = conn.execute(
        update(budget_accounts)
        # Bounds the lifetime counters, which a window lets grow past the limit, to BIGINT.
        .where(scope.where(), acc.eps_spent <= MAX_UNITS - e, acc.delta_spent <= MAX_UNITS - d)
        .values(eps_spent=acc.eps_spent + e, delta_spent=acc.delta_spent + d, updated_at=now)
    )
    if bumped.rowcount != 1:
        raise BudgetExhausted(
            f"the lifetime counter of {scope.describe()} is full; nothing was charged",
            hint="Ask an admin to reset this budget.",
        )
    return int(row["epoch"])


def give_back(conn: Connection, res: Row, now: datetime) -> None:
    """Return a refunded reservation's units to every scope it charged, in the current epoch.

    A scope reset since the charge already forgave those units, so it gets nothing back (giving
    them back again would drive its spending below the reservations it holds).
    """
    scopes = [(Scope("principal", res["principal"], res["dataset"]), res["principal_epoch"])]
    if res["charged_dataset_scope"]:
        scopes.append((Scope("dataset", "", res["dataset"]), res["dataset_epoch"]))
    e, d = res["eps_units"], res["delta_units"]
    acc = budget_accounts.c
    for scope, epoch in scopes:  # the same order as reserve, so transactions cannot deadlock
        row = account_row(conn, scope, lock=True)
        if row is not None and row["epoch"] != epoch:
            continue
        if row is None or row["eps_spent"] < e or row["delta_spent"] < d:
            # Rolls the refund back: the budget stays spent, which is the safe side.
            raise LedgerInconsistent(
                f"refund of {res['id']} does not fit the account of {scope.describe()}"
            )
        conn.execute(
            update(budget_accounts)
            .where(scope.where())
            .values(eps_spent=acc.eps_spent - e, delta_spent=acc.delta_spent - d, updated_at=now)
        )


def transition(
    conn: Connection,
    reservation_id: str,
    *,
    src: tuple[ReservationState, ...],
    dst: ReservationState,
    now: datetime,
) -> Row | None:
    """Move a reservation from one of ``src`` to ``dst``; return its row, or None if it was not in
    ``src``. Conditional, so of two racing transitions (two replicas, a retry and a reconcile) only
    one can ever apply.
    """
    finished = dst in ("committed", "refunded")
    statement = _TRANSITIONS.get((src, finished))
    if statement is None:
        raise ValueError(f"no transition from {src} to {dst}")
    return statement.run(conn, {"rid": reservation_id, "dst": dst, "now": now}).one_or_none()


def state_of(conn: Connection, reservation_id: str) -> ReservationState | None:
    state: ReservationState | None = _STATE.run(conn, {"rid": reservation_id}).scalar_one_or_none()
    return state


def record(
    conn: Connection,
    *,
    now: datetime,
    scope: Scope,
    kind: EventKind,
    eps_units: int,
    delta_units: int,
    query_id: str | None = None,
    actor: str | None = None,
) -> None:
    """Append one history event, in the transaction of the change it describes."""
    _INSERT_EVENT.run(
        conn,
        {
            "ts": now,
            "principal": scope.principal,
            "dataset": scope.dataset,
            "kind": kind,
            "eps_units": eps_units,
            "delta_units": delta_units,
            "query_id": query_id,
            "actor": actor,
        },
    )


def record_reservation(conn: Connection, res: Row, kind: EventKind, now: datetime) -> None:
    record(
        conn,
        now=now,
        scope=Scope("principal", res["principal"], res["dataset"]),
        kind=kind,
        eps_units=res["eps_units"],
        delta_units=res["delta_units"],
        query_id=res["query_id"],
    )


def reservation_by_query_id(conn: Connection, query_id: str) -> Reservation | None:
    row = _BY_QUERY_ID.run(conn, {"qid": query_id}).one_or_none()
    return None if row is None else reservation_of(row)


def same_or_raise(
    existing: Reservation, principal: str, dataset: str, cost: PrivacyCost
) -> Reservation:
    charged = PrivacyCost.from_units(cost.epsilon_units, cost.delta_units)
    if (existing.principal, existing.dataset, existing.cost) != (principal, dataset, charged):
        raise DuplicateQueryId("query_id reused with different content")
    return existing


def known_state(conn: Connection, reservation_id: str) -> ReservationState:
    state = state_of(conn, reservation_id)
    if state is None:
        raise ReservationNotFound(f"no reservation {reservation_id}")
    return state
