"""The ledger's admin operations: set a limit, top up, reset, list accounts, read history.

:class:`LedgerAdmin` is the admin half of :class:`budgets.ledger.SqlLedger` (which inherits it), kept
apart so that the query protocol stays short. Every change takes the admin's name as ``actor`` and
appends a history event in the transaction of the change. Balances returned here are lifetime
balances (no window); ask :meth:`budgets.ledger.SqlLedger.balance` for a windowed one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, RowMapping, select, update

from budgets.cost import PrivacyCost
from budgets.errors import InvalidCost
from budgets.ledger_schema import (
    MAX_UNITS,
    AccountView,
    Balance,
    LedgerEvent,
    Scope,
    account_of,
    budget_accounts,
    budget_events,
    event_of,
)
from budgets.ledger_steps import (
    account_row,
    check_units,
    create_if_absent,
    dialect_insert,
    record,
)


def _balance(row: RowMapping) -> Balance:
    view = account_of(row)
    return Balance(limit=view.limit, spent=view.spent, remaining=view.remaining)


class LedgerAdmin:
    """Admin operations on the ledger's accounts; ``principal=''`` names the dataset total."""

    _engine: Engine
    _clock: Callable[[], datetime]

    def set_limit(self, *, principal: str, dataset: str, limit: PrivacyCost, actor: str) -> Balance:
        """Set a scope's limit (an admin grant or cut), creating the account if it is missing.

        What was spent stays spent. A limit below the amount spent leaves nothing remaining.
        """
        check_units(limit, "limit")
        scope = Scope.of(principal=principal, dataset=dataset)
        with self._engine.begin() as conn:
            now = self._clock()
            stmt = dialect_insert(conn, budget_accounts).values(
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
            row = (
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["scope_kind", "principal", "dataset"],
                        set_={
                            "eps_limit": stmt.excluded.eps_limit,
                            "delta_limit": stmt.excluded.delta_limit,
                            "updated_at": stmt.excluded.updated_at,
                        },
                    ).returning(*budget_accounts.c)
                )
                .mappings()
                .one()
            )
            record(
                conn,
                now=now,
                scope=scope,
                kind="set_limit",
                eps_units=limit.epsilon_units,
                delta_units=limit.delta_units,
                actor=actor,
            )
        return _balance(row)

    def top_up(
        self,
        *,
        principal: str,
        dataset: str,
        amount: PrivacyCost,
        actor: str,
        default_limit: PrivacyCost,
    ) -> Balance:
        """Raise a scope's limit by ``amount``; a missing account starts from ``default_limit``.

        Raises:
            InvalidCost: the new limit would be beyond the ledger's range; nothing changed.
        """
        check_units(amount, "top-up")
        check_units(default_limit, "default limit")
        scope = Scope.of(principal=principal, dataset=dataset)
        e, d = amount.epsilon_units, amount.delta_units
        acc = budget_accounts.c
        with self._engine.begin() as conn:
            now = self._clock()
            create_if_absent(conn, scope, default_limit, now)
            row = (
                conn.execute(
                    update(budget_accounts)
                    .where(
                        scope.where(),
                        acc.eps_limit <= MAX_UNITS - e,
                        acc.delta_limit <= MAX_UNITS - d,
                    )
                    .values(
                        eps_limit=acc.eps_limit + e, delta_limit=acc.delta_limit + d, updated_at=now
                    )
                    .returning(*budget_accounts.c)
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise InvalidCost(
                    f"the limit of {scope.describe()} would be too large for the ledger"
                )
            record(
                conn, now=now, scope=scope, kind="top_up", eps_units=e, delta_units=d, actor=actor
            )
        return _balance(row)

    def reset(
        self,
        *,
        principal: str,
        dataset: str,
        actor: str,
        default_limit: PrivacyCost | None = None,
    ) -> Balance:
        """Forgive a scope's spending: lifetime spent := 0 and a new epoch, so a window restarts.

        Reservations in flight stay valid and can still be committed; their units are forgiven
        with the rest, so a later refund of one gives nothing back. An account that does not exist
        has nothing to forgive: nothing is stored and the result shows ``default_limit`` (zero when
        not given) with nothing spent.
        """
        scope = Scope.of(principal=principal, dataset=dataset)
        with self._engine.begin() as conn:
            now = self._clock()
            before = account_row(conn, scope, lock=True)
            if before is None:
                limit = default_limit or PrivacyCost.zero()
                return Balance(limit=limit, spent=PrivacyCost.zero(), remaining=limit)
            acc = budget_accounts.c
            row = (
                conn.execute(
                    update(budget_accounts)
                    .where(scope.where())
                    .values(
                        eps_spent=0,
                        delta_spent=0,
                        epoch=acc.epoch + 1,
                        reset_at=now,
                        updated_at=now,
                    )
                    .returning(*budget_accounts.c)
                )
                .mappings()
                .one()
            )
            record(
                conn,
                now=now,
                scope=scope,
                kind="reset",
                eps_units=before["eps_spent"],
                delta_units=before["delta_spent"],
                actor=actor,
            )
        return _balance(row)

    def list_accounts(
        self, *, principal: str | None = None, dataset: str | None = None
    ) -> list[AccountView]:
        """Stored accounts, optionally of one principal (``''``: dataset totals) or one dataset."""
        acc = budget_accounts.c
        stmt = select(budget_accounts).order_by(acc.dataset, acc.scope_kind, acc.principal)
        if principal is not None:
            stmt = stmt.where(acc.principal == principal)
        if dataset is not None:
            stmt = stmt.where(acc.dataset == dataset)
        with self._engine.connect() as conn:
            return [account_of(row) for row in conn.execute(stmt).mappings()]

    def history(
        self, *, principal: str, dataset: str, limit: int = 100, before_id: int | None = None
    ) -> list[LedgerEvent]:
        """A scope's events, newest first; pass the last id seen as ``before_id`` for older ones.

        ``principal=''`` gives the dataset-total scope's admin events; charges are logged under the
        principal who made them.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        ev = budget_events.c
        stmt = (
            select(budget_events)
            .where(ev.principal == principal, ev.dataset == dataset)
            .order_by(ev.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            stmt = stmt.where(ev.id < before_id)
        with self._engine.connect() as conn:
            return [event_of(row) for row in conn.execute(stmt).mappings()]
