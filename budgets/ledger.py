"""The privacy-budget ledger, kept in the control database.

Every query follows one protocol: **reserve → mark executing → execute → commit**.

1. :meth:`SqlLedger.reserve` charges the query's cost to every scope it falls under (the principal
   on the dataset and, where capped, the dataset total) in one transaction. Either every scope is
   charged or none is, and two concurrent reservations can never both squeeze into the last bit of
   budget: each scope's check and charge happen under that account's row lock (``BEGIN IMMEDIATE``
   on SQLite), so the database serialises them.
2. :meth:`SqlLedger.mark_executing` durably moves the reservation to ``executing``. Only after it
   returns may the gateway touch the warehouse; if it raises, the query must not run.
3. The gateway executes the query and adds noise.
4. :meth:`SqlLedger.commit` marks the reservation final. :meth:`SqlLedger.refund` is for the one
   case where nothing touched the data: it works only while the reservation is still ``reserved``.

**Crash safety: every charge is either committed or provably unused, never lost, and no answer
exists without a durable charge.** A reservation counts as spent from the moment it is made (fail
closed). If a gateway dies, :meth:`SqlLedger.reconcile` (run by any replica, any number of times)
settles what it left behind once a grace period has passed:

* still ``reserved``: the gateway died before ``mark_executing`` committed, so the warehouse was
  never asked. Reconcile refunds it. The refund and ``mark_executing`` are both UPDATEs conditional
  on ``state = 'reserved'``, so exactly one of them wins: either the query was cleared to run (and
  can then only end committed) or it was refunded and a late ``mark_executing`` fails with
  :class:`~budgets.errors.ReservationExpired`, so the query never runs. The grace period only
  spares slow but live requests that failure; safety does not depend on it.
* ``executing``: the query may have read data and an answer may have left. Reconcile commits it;
  a refund from ``executing`` is refused.

Any answer was computed after ``mark_executing`` committed, so its charge was already durable and
can only end committed. Every transition is a conditional UPDATE, so racing replicas, retries and
reconcile passes cannot apply one twice.

**Rolling windows.** With ``principal_window_s`` the principal scope's check is the sum of its
reservations (reserved, executing or committed) created in the last ``principal_window_s`` seconds
since its last reset, instead of its lifetime spending; the lifetime counters keep growing, for
history. The dataset total never has a window. *Caveat — averaging:* a window renews budget, so over
many windows an analyst can ask the same question again and average the noisy answers. A window
bounds the privacy loss per window, not forever: after ``k`` windows the loss can be ``k`` times the
limit. Use windows for rate limiting of a stream of fresh data, not as a lifetime guarantee.

**Resets.** An admin reset zeroes a scope's lifetime spending and starts a new *epoch*. Reservations
remember the epoch they charged; older epochs no longer count in a window and a later refund of one
gives nothing back (its units were forgiven already). Reservations in flight stay valid.

**History.** Every state change appends a ``budget_events`` row in its own transaction (refusals
are not state changes and are not logged here; the audit log has them).

Amounts are stored as integers of the quanta in :mod:`budgets.cost`, rounded up, so SQL arithmetic
is exact (three charges of 0.1 spend exactly 0.3) and a stored charge is never smaller than the true
one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from budgets.cost import PrivacyCost
from budgets.errors import (
    DuplicateQueryId,
    LedgerInconsistent,
    ReservationAlreadyCommitted,
    ReservationAlreadyExecuting,
    ReservationAlreadyRefunded,
    ReservationExpired,
    ReservationNotFound,
)
from budgets.group_commit import GroupCommit
from budgets.ledger_admin import LedgerAdmin
from budgets.ledger_schema import (
    AccountView,
    Balance,
    LedgerEvent,
    ReconcileReport,
    Reservation,
    ReservationState,
    Scope,
    budget_reservations,
    install,
    reservation_of,
    utc,
)
from budgets.ledger_steps import (
    INSERT_RESERVATION,
    LAZY_SYNC_OPTION,
    account_row,
    charge,
    charge_windowed,
    check_units,
    give_back,
    in_transaction,
    known_state,
    record_reservation,
    reservation_by_query_id,
    same_or_raise,
    transition,
    window_usage,
)

__all__ = [
    "AccountView",
    "Balance",
    "DuplicateQueryId",
    "LedgerEvent",
    "LedgerInconsistent",
    "ReconcileReport",
    "Reservation",
    "ReservationAlreadyCommitted",
    "ReservationAlreadyExecuting",
    "ReservationAlreadyRefunded",
    "ReservationExpired",
    "ReservationState",
    "SqlLedger",
]


T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqlLedger(LedgerAdmin):
    """The budget ledger on the control database (SQLite or PostgreSQL), via SQLAlchemy Core.

    The engine is injected (``gateway.control_db.make_control_engine`` builds it) so that this
    package never depends on the gateway. On SQLite that engine opens every transaction with
    ``BEGIN IMMEDIATE``; on PostgreSQL row locks on the account rows do the serialising. ``clock``
    (default: the real UTC clock) stamps every row; tests inject a fake one to roll windows.
    With ``group`` (SQLite only, see :mod:`budgets.group_commit`) reservations and the callers of
    :meth:`transact` share transactions with concurrent callers: one write turn and one flush for
    several queries, each still all or nothing.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] | None = None,
        group: GroupCommit | None = None,
    ) -> None:
        self._engine = engine
        self._lazy = engine.execution_options(**{LAZY_SYNC_OPTION: True})
        self._clock = clock or _utc_now
        self._group = group

    def create_schema(self) -> None:
        """Create the ledger tables and indexes if they do not exist yet.

        A control database from before windows and resets gains the ``epoch``/``reset_at`` and
        reservation epoch columns (existing rows start in epoch 0).
        """
        with self._engine.begin() as conn:
            install(conn)

    # -- the query protocol ---------------------------------------------------------------------

    def reserve(
        self,
        *,
        query_id: str,
        principal: str,
        dataset: str,
        cost: PrivacyCost,
        principal_limit: PrivacyCost,
        dataset_limit: PrivacyCost | None = None,
        principal_window_s: int | None = None,
        now: datetime | None = None,
        executing: bool = False,
        durable: bool = True,
    ) -> Reservation:
        """Charge ``cost`` to every scope of (principal, dataset) at once, or to none.

        With ``executing`` the reservation is made already marked executing (one transaction
        instead of :meth:`reserve` then :meth:`mark_executing`): for a caller that reserves only
        once the warehouse is reachable, so that there is never anything to refund. With
        ``durable=False`` the commit may stay unflushed until the caller's next flushed commit
        (``LAZY_SYNC_OPTION``): only for a caller that releases nothing before such a commit.

        ``principal_limit`` and ``dataset_limit`` only seed accounts that do not exist yet; an
        existing account keeps its stored limit (change it with :meth:`set_limit`). The
        dataset-total scope is charged when ``dataset_limit`` is given *or* its account already
        exists, so a cap an admin set in the control database cannot be bypassed by a caller that
        forgot to pass it. With ``principal_window_s`` the principal scope is checked against the
        reservations of the last ``principal_window_s`` seconds (see the module docstring).

        Retrying with the same ``query_id`` returns the original reservation untouched, so a retried
        request is never charged twice.

        Raises:
            BudgetExhausted: a scope would go past its limit; nothing was spent.
            DuplicateQueryId: ``query_id`` was used for a different principal, dataset or cost.
        """
        if not principal:
            raise ValueError("principal must be non-empty ('' names the dataset-total scope)")
        if principal_window_s is not None and principal_window_s <= 0:
            raise ValueError("principal_window_s must be a positive number of seconds")
        check_units(cost, "cost")
        check_units(principal_limit, "principal limit")
        if dataset_limit is not None:
            check_units(dataset_limit, "dataset limit")
        moment = self._moment(now)

        def reserve_in(conn: Connection) -> Reservation:
            existing = reservation_by_query_id(conn, query_id)
            if existing is not None:
                return same_or_raise(existing, principal, dataset, cost)
            principal_epoch, dataset_epoch = self._charge_all(
                conn,
                principal,
                dataset,
                cost,
                principal_limit,
                dataset_limit,
                principal_window_s,
                moment,
            )
            values = {
                "id": uuid.uuid4().hex,
                "query_id": query_id,
                "principal": principal,
                "dataset": dataset,
                "eps_units": cost.epsilon_units,
                "delta_units": cost.delta_units,
                "charged_dataset_scope": dataset_epoch is not None,
                "state": "executing" if executing else "reserved",
                "created_at": moment,
                "finished_at": None,
                "principal_epoch": principal_epoch,
                "dataset_epoch": dataset_epoch or 0,
            }
            row = INSERT_RESERVATION.run(conn, values).one()
            record_reservation(conn, row, "reserve", moment)
            if executing:
                record_reservation(conn, row, "execute", moment)
            return reservation_of(row)

        try:
            return self.transact(reserve_in, durable=durable)
        except IntegrityError:
            # On PostgreSQL two requests with one query_id can race past the lookup above; the
            # unique index stops the second, whose transaction (and charge) was rolled back.
            with self._engine.connect() as conn:
                existing = reservation_by_query_id(conn, query_id)
            if existing is None:
                raise
            return same_or_raise(existing, principal, dataset, cost)

    def mark_executing(self, reservation_id: str) -> None:
        """Record, durably, that the query is about to touch the warehouse.

        Call it after :meth:`reserve` and before executing. From then on the reservation can only
        end committed. Only a ``reserved`` reservation can be marked.

        Raises:
            ReservationNotFound: no such reservation.
            ReservationExpired: it is no longer ``reserved`` (e.g. reconcile refunded it): the
                caller must NOT execute the query.
        """
        with self._engine.begin() as conn:
            moment = self._clock()
            row = transition(conn, reservation_id, src=("reserved",), dst="executing", now=moment)
            if row is not None:
                record_reservation(conn, row, "execute", moment)
                return
            state = known_state(conn, reservation_id)
        raise ReservationExpired(
            f"reservation {reservation_id} is {state}, not reserved; the query must not run"
        )

    def transact(self, fn: Callable[[Connection], T], *, durable: bool = True) -> T:
        """``fn(conn)`` in a transaction on the control database, committed before return.

        For callers that make several stores' writes durable at once (``conn=`` of
        :meth:`commit` and :meth:`balance`). With a group commit, ``fn`` shares the transaction with concurrent
        callers in a savepoint of its own (it may run on another thread); its error rolls back only
        its own steps. ``durable=False``: the commit may stay unflushed (``LAZY_SYNC_OPTION``).
        """
        if self._group is not None:
            return self._group.run(fn, durable=durable)
        with (self._engine if durable else self._lazy).begin() as conn:
            return fn(conn)

    @property
    def engine(self) -> Engine:
        return self._engine

    def commit(self, reservation_id: str, *, conn: Connection | None = None) -> None:
        """Make a reservation final (from ``reserved`` or ``executing``). Committing twice is a
        no-op, so a retried commit is safe. With ``conn`` it is a step of the caller's
        transaction.

        Raises:
            ReservationNotFound: no such reservation.
            ReservationAlreadyRefunded: it was refunded, so its answer must not be released.
        """
        with in_transaction(self._engine, conn) as tx:
            moment = self._clock()
            row = transition(
                tx, reservation_id, src=("reserved", "executing"), dst="committed", now=moment
            )
            if row is not None:
                record_reservation(tx, row, "commit", moment)
                return
            state = known_state(tx, reservation_id)
        if state == "refunded":
            raise ReservationAlreadyRefunded(
                f"reservation {reservation_id} was refunded and cannot be committed"
            )

    def refund(self, reservation_id: str) -> None:
        """Give a ``reserved`` reservation's budget back; only for queries that never touched data.

        Refunding twice is a no-op (the units are given back once). A reservation marked executing
        or committed is never refunded: the query may have read data and its answer may be out.

        Raises:
            ReservationNotFound: no such reservation.
            ReservationAlreadyExecuting: it was marked executing.
            ReservationAlreadyCommitted: it was committed.
        """
        with self._engine.begin() as conn:
            moment = self._clock()
            row = transition(conn, reservation_id, src=("reserved",), dst="refunded", now=moment)
            if row is not None:
                give_back(conn, row, moment)
                record_reservation(conn, row, "refund", moment)
                return
            state = known_state(conn, reservation_id)
        if state == "committed":
            raise ReservationAlreadyCommitted(
                f"reservation {reservation_id} is committed; spent budget is not refunded"
            )
        if state == "executing":
            raise ReservationAlreadyExecuting(
                f"reservation {reservation_id} is executing; it may have touched data, so it is "
                "committed, never refunded"
            )

    def reconcile(self, *, older_than_s: float, now: datetime | None = None) -> ReconcileReport:
        """Settle reservations a crashed gateway left behind (see the module docstring).

        Reservations created more than ``older_than_s`` seconds ago that are still ``reserved`` are
        refunded (they never reached the warehouse); ``executing`` ones are committed (they may
        have). Each one is settled in its own short transaction with a conditional UPDATE, so
        several replicas may reconcile at once and each reservation is settled exactly once.
        """
        if older_than_s < 0:
            raise ValueError("older_than_s must be >= 0")
        cutoff = self._moment(now) - timedelta(seconds=older_than_s)
        refunded = committed = 0
        for reservation_id in self._stale("reserved", cutoff):
            with self._engine.begin() as conn:
                moment = self._clock()
                row = transition(
                    conn, reservation_id, src=("reserved",), dst="refunded", now=moment
                )
                if row is not None:
                    give_back(conn, row, moment)
                    record_reservation(conn, row, "reconcile_refund", moment)
                    refunded += 1
        for reservation_id in self._stale("executing", cutoff):
            with self._engine.begin() as conn:
                moment = self._clock()
                row = transition(
                    conn, reservation_id, src=("executing",), dst="committed", now=moment
                )
                if row is not None:
                    record_reservation(conn, row, "reconcile_commit", moment)
                    committed += 1
        return ReconcileReport(refunded=refunded, committed=committed)

    # -- reading --------------------------------------------------------------------------------

    def balance(
        self,
        *,
        principal: str,
        dataset: str,
        principal_limit: PrivacyCost,
        principal_window_s: int | None = None,
        now: datetime | None = None,
        conn: Connection | None = None,
    ) -> Balance:
        """A scope's limit, spending and remainder (``principal=''`` for the dataset total).

        With ``principal_window_s`` a principal scope reports what it used in that rolling window
        (the dataset total has no window and ignores it). An account that does not exist yet
        reports ``principal_limit`` with nothing spent; reading a balance never creates an account.
        """
        scope = Scope.of(principal=principal, dataset=dataset)
        reading: AbstractContextManager[Connection] = (
            self._engine.connect() if conn is None else nullcontext(conn)
        )
        with reading as conn:
            row = account_row(conn, scope)
            if row is None:
                return Balance(
                    limit=principal_limit, spent=PrivacyCost.zero(), remaining=principal_limit
                )
            spent_e, spent_d = row["eps_spent"], row["delta_spent"]
            if principal_window_s is not None and scope.kind == "principal":
                since = self._moment(now) - timedelta(seconds=principal_window_s)
                spent_e, spent_d = window_usage(
                    conn, principal=principal, dataset=dataset, epoch=row["epoch"], since=since
                )
        return Balance(
            limit=PrivacyCost.from_units(row["eps_limit"], row["delta_limit"]),
            spent=PrivacyCost.from_units(spent_e, spent_d),
            remaining=PrivacyCost.from_units(
                max(row["eps_limit"] - spent_e, 0), max(row["delta_limit"] - spent_d, 0)
            ),
        )

    def spent_total(self, *, principal: str, dataset: str) -> PrivacyCost:
        """A scope's lifetime spending since its last reset, open reservations included."""
        with self._engine.connect() as conn:
            row = account_row(conn, Scope.of(principal=principal, dataset=dataset))
        if row is None:
            return PrivacyCost.zero()
        return PrivacyCost.from_units(row["eps_spent"], row["delta_spent"])

    def reservation(self, reservation_id: str) -> Reservation:
        """Look a reservation up by id (for admins and tests).

        Raises:
            ReservationNotFound: no such reservation.
        """
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    select(budget_reservations).where(budget_reservations.c.id == reservation_id)
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            raise ReservationNotFound(f"no reservation {reservation_id}")
        return reservation_of(row)

    # -- helpers --------------------------------------------------------------------------------

    def _moment(self, now: datetime | None) -> datetime:
        return utc(self._clock() if now is None else now)

    def _stale(self, state: ReservationState, cutoff: datetime) -> list[str]:
        r = budget_reservations.c
        with self._engine.connect() as conn:
            return list(
                conn.execute(
                    select(r.id)
                    .where(r.state == state, r.created_at < cutoff)
                    .order_by(r.created_at)
                ).scalars()
            )

    def _charge_all(
        self,
        conn: Connection,
        principal: str,
        dataset: str,
        cost: PrivacyCost,
        principal_limit: PrivacyCost,
        dataset_limit: PrivacyCost | None,
        window_s: int | None,
        now: datetime,
    ) -> tuple[int, int | None]:
        """Charge every scope or raise (the caller's transaction then rolls all of it back).

        Scopes are charged in a fixed order (principal, then dataset), creating missing accounts on
        the way, so concurrent reservations on PostgreSQL take row locks in one order and never
        deadlock. Returns the epochs charged: the principal scope's, and the dataset scope's or
        None when it has no account (no cap).
        """
        principal_scope = Scope("principal", principal, dataset)
        dataset_scope = Scope("dataset", "", dataset)
        if window_s is None:
            principal_epoch = charge(conn, principal_scope, cost, seed=principal_limit, now=now)
            assert principal_epoch is not None  # a seeded account is always charged or refused
        else:
            since = now - timedelta(seconds=window_s)
            principal_epoch = charge_windowed(
                conn,
                principal_scope,
                cost,
                seed=principal_limit,
                since=since,
                window_s=window_s,
                now=now,
            )
        dataset_epoch = charge(conn, dataset_scope, cost, seed=dataset_limit, now=now)
        return principal_epoch, dataset_epoch
