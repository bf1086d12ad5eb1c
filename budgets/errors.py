"""Errors raised by the budget ledger.

Every error has a stable ``code``; the HTTP status and SQLSTATE for each code live in one table,
``gateway.errors.ERROR_TABLE``.
"""

from __future__ import annotations

from typing import ClassVar


class CodedError(Exception):
    """A user-facing error: a stable ``code``, a message and a hint saying what to change.

    The shared base of every package's error root (``budgets`` is the layer all others may import).
    """

    code: ClassVar[str] = "internal"
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint


class BudgetError(CodedError):
    """Root of every error the ``budgets`` package raises."""

    code: ClassVar[str] = "budget.error"


class InvalidCost(BudgetError):
    """A privacy cost that is negative, not finite, or otherwise meaningless."""

    code = "budget.invalid_cost"
    default_hint = "Use a finite epsilon > 0 and a delta in [0, 1)."


class BudgetExhausted(BudgetError):
    """The charge would take a scope past its limit; nothing was spent."""

    code = "budget.exhausted"
    default_hint = (
        "Ask for a smaller epsilon, reuse an earlier answer, or ask an admin for more budget."
    )


class QueryCostTooHigh(BudgetError):
    """The query asks for more than the dataset's per-query maximum."""

    code = "budget.query_max"
    default_hint = "Lower the query's epsilon to the dataset's per-query maximum or below."


class ReservationNotFound(BudgetError):
    """Commit or refund of a reservation the ledger does not hold (an internal bug)."""

    code = "internal"


class DuplicateQueryId(BudgetError):
    """A query id was reserved before for a different principal, dataset or cost."""

    code = "request.duplicate_query_id"
    default_hint = "Use a fresh query id for every new query."


class ReservationAlreadyCommitted(ReservationNotFound):
    """Refund of a committed reservation: spent budget is never given back (an internal bug)."""


class ReservationAlreadyRefunded(ReservationNotFound):
    """Commit of a refunded reservation: its answer would carry no charge (an internal bug)."""


class ReservationAlreadyExecuting(ReservationNotFound):
    """Refund of a reservation marked executing: it may have touched data, so it stays spent."""


class ReservationExpired(BudgetError):
    """``mark_executing`` on a reservation that is no longer 'reserved' (e.g. reconciled away).

    The caller must not touch the warehouse: the budget behind the query may have been given back.
    """

    code = "internal"


class LedgerInconsistent(BudgetError):
    """The ledger's rows contradict each other, e.g. a refund would drive spending below zero."""

    code = "internal"
