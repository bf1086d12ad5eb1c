"""The SQL budget ledger on real SQLite and PostgreSQL databases (no mocks).

PostgreSQL tests run in a fresh schema per test, so they neither see nor disturb other tables in the
shared ``test`` database. Without a server they skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from budgets.cost import PrivacyCost
from budgets.errors import BudgetError, BudgetExhausted, InvalidCost, ReservationNotFound
from budgets.ledger import (
    DuplicateQueryId,
    Reservation,
    ReservationAlreadyCommitted,
    ReservationAlreadyRefunded,
    SqlLedger,
)
from budgets.ledger_schema import Scope
from budgets.ledger_steps import charge
from gateway.control_db import make_control_engine

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

ONE = PrivacyCost.of("1.0")
TENTH = PrivacyCost.of("0.1")


def pg_engine(url: str = PG_URL) -> Iterator[Engine]:
    """An engine on a fresh schema of the test PostgreSQL database, dropped afterwards.

    Skips the test when the server is unreachable, except under ``CI=true`` where it fails.
    """
    admin = make_control_engine(url)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        admin.dispose()
        where = admin.url.render_as_string(hide_password=True)
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {where} is not reachable and CI=true: {exc}")
        pytest.skip(f"PostgreSQL at {where} is not reachable (under CI=true this fails): {exc}")
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = make_control_engine(f"{url}?options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


#: Parameters for fixtures that run a test on both control databases.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def open_engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    """A real control-database engine: a SQLite file under ``tmp_path``, or PostgreSQL."""
    if backend == "sqlite":
        sqlite_engine = make_control_engine(f"sqlite:///{tmp_path / 'control.db'}")
        yield sqlite_engine
        sqlite_engine.dispose()
    else:
        yield from pg_engine()


class FakeClock:
    """A settable UTC clock for :class:`SqlLedger` (windows and grace periods without sleeping)."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from open_engine(request.param, tmp_path)


@pytest.fixture
def ledger(engine: Engine) -> SqlLedger:
    ledger = SqlLedger(engine)
    ledger.create_schema()
    return ledger


def _reserve(
    ledger: SqlLedger,
    cost: PrivacyCost = TENTH,
    *,
    principal: str = "alice",
    dataset: str = "sales",
    limit: PrivacyCost = ONE,
    dataset_limit: PrivacyCost | None = None,
    query_id: str | None = None,
) -> Reservation:
    return ledger.reserve(
        query_id=query_id or uuid.uuid4().hex,
        principal=principal,
        dataset=dataset,
        cost=cost,
        principal_limit=limit,
        dataset_limit=dataset_limit,
    )


def test_ten_tenths_fill_a_budget_of_one_exactly(ledger: SqlLedger) -> None:
    for _ in range(10):
        _reserve(ledger)
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger)
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("1.0")
    assert "principal 'alice' on dataset 'sales'" in info.value.message
    assert "epsilon 0, delta 0 remaining" in info.value.message


def test_exhausted_message_names_the_exact_remainder(ledger: SqlLedger) -> None:
    _reserve(ledger, PrivacyCost.of("0.7"))
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, PrivacyCost.of("0.4"))
    assert "epsilon 0.3, delta 0 remaining" in info.value.message
    assert info.value.code == "budget.exhausted"


def test_balance_before_any_spend_does_not_create_the_account(ledger: SqlLedger) -> None:
    limit = PrivacyCost.of("2.5", "1e-6")
    balance = ledger.balance(principal="bob", dataset="sales", principal_limit=limit)
    assert balance.limit == limit
    assert balance.spent == PrivacyCost.zero()
    assert balance.remaining == limit
    # Had the read created the account with 2.5, this larger limit would be ignored.
    _reserve(ledger, PrivacyCost.of(3), principal="bob", limit=PrivacyCost.of(5))
    assert ledger.balance(principal="bob", dataset="sales", principal_limit=limit).remaining == (
        PrivacyCost.of(2)
    )


def test_balance_after_spending(ledger: SqlLedger) -> None:
    for _ in range(3):
        _reserve(ledger)
    balance = ledger.balance(principal="alice", dataset="sales", principal_limit=ONE)
    assert balance.spent == PrivacyCost.of("0.3")
    assert balance.remaining == PrivacyCost.of("0.7")
    assert balance.limit == ONE


def test_stored_limit_wins_over_later_requests(ledger: SqlLedger) -> None:
    _reserve(ledger, limit=ONE)
    # A caller passing a bigger limit does not grow the account; only set_limit does.
    _reserve(ledger, PrivacyCost.of("0.9"), limit=PrivacyCost.of(100))
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, PrivacyCost.of("0.1"), limit=PrivacyCost.of(100))
    ledger.set_limit(principal="alice", dataset="sales", limit=PrivacyCost.of(2), actor="root")
    _reserve(ledger, PrivacyCost.of("1.0"))
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of(2)


def test_set_limit_below_spent_leaves_nothing_remaining(ledger: SqlLedger) -> None:
    _reserve(ledger, PrivacyCost.of("0.5"))
    ledger.set_limit(principal="alice", dataset="sales", limit=PrivacyCost.of("0.2"), actor="root")
    balance = ledger.balance(principal="alice", dataset="sales", principal_limit=ONE)
    assert balance.spent == PrivacyCost.of("0.5")
    assert balance.remaining == PrivacyCost.zero()
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, PrivacyCost.of("0.000001"))


def test_dataset_cap_is_shared_by_all_principals(ledger: SqlLedger) -> None:
    cap = PrivacyCost.of("1.5")
    _reserve(ledger, ONE, principal="alice", limit=PrivacyCost.of(10), dataset_limit=cap)
    _reserve(
        ledger, PrivacyCost.of("0.5"), principal="bob", limit=PrivacyCost.of(10), dataset_limit=cap
    )
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, TENTH, principal="bob", limit=PrivacyCost.of(10), dataset_limit=cap)
    assert "dataset 'sales' (total over all principals)" in info.value.message
    assert ledger.spent_total(principal="", dataset="sales") == cap
    # Other datasets have their own total.
    _reserve(
        ledger, ONE, principal="bob", dataset="hr", limit=PrivacyCost.of(10), dataset_limit=cap
    )


def test_admin_dataset_cap_applies_even_when_the_caller_passes_none(ledger: SqlLedger) -> None:
    ledger.set_limit(principal="", dataset="sales", limit=PrivacyCost.of("0.2"), actor="root")
    _reserve(ledger, TENTH, principal="alice")
    _reserve(ledger, TENTH, principal="bob")
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, TENTH, principal="carol")
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of("0.2")


def test_an_exhausted_dataset_scope_leaves_the_principal_scope_untouched(ledger: SqlLedger) -> None:
    _reserve(ledger, PrivacyCost.of("0.5"), principal="bob", dataset_limit=PrivacyCost.of("0.6"))
    with pytest.raises(BudgetExhausted):
        # Alice's own scope has room; the dataset total has not.
        _reserve(
            ledger, PrivacyCost.of("0.5"), principal="alice", dataset_limit=PrivacyCost.of("0.6")
        )
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.zero()
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of("0.5")


def test_an_exhausted_principal_scope_leaves_the_dataset_scope_untouched(ledger: SqlLedger) -> None:
    cap = PrivacyCost.of(10)
    _reserve(ledger, PrivacyCost.of("0.9"), dataset_limit=cap)
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, PrivacyCost.of("0.2"), dataset_limit=cap)
    assert "principal 'alice'" in info.value.message
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of("0.9")
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.9")


def test_refund_restores_every_charged_scope(ledger: SqlLedger) -> None:
    cap = PrivacyCost.of(5, "1e-6")
    limit = PrivacyCost.of(1, "1e-6")
    kept = _reserve(ledger, PrivacyCost.of("0.25"), limit=limit, dataset_limit=cap)
    refunded = _reserve(ledger, PrivacyCost.of("0.5", "1e-7"), limit=limit, dataset_limit=cap)
    ledger.refund(refunded.id)
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.25")
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of("0.25")
    assert ledger.reservation(refunded.id).state == "refunded"
    ledger.refund(refunded.id)  # a second refund gives nothing back again
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.25")
    assert ledger.reservation(kept.id).state == "reserved"


def test_refund_does_not_touch_a_dataset_scope_created_later(ledger: SqlLedger) -> None:
    uncapped = _reserve(ledger, PrivacyCost.of("0.4"))
    ledger.set_limit(principal="", dataset="sales", limit=PrivacyCost.of(5), actor="root")
    _reserve(ledger, PrivacyCost.of("0.3"))
    ledger.refund(uncapped.id)
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.of("0.3")
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.3")


def test_commit_then_refund_is_refused_and_keeps_the_spend(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.commit(reservation.id)
    with pytest.raises(ReservationAlreadyCommitted) as info:
        ledger.refund(reservation.id)
    assert isinstance(info.value, ReservationNotFound)
    assert info.value.code == "internal"
    assert ledger.spent_total(principal="alice", dataset="sales") == TENTH
    assert ledger.reservation(reservation.id).state == "committed"


def test_commit_is_idempotent(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.commit(reservation.id)
    ledger.commit(reservation.id)
    assert ledger.reservation(reservation.id).state == "committed"
    assert ledger.spent_total(principal="alice", dataset="sales") == TENTH


def test_commit_after_refund_is_refused(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.refund(reservation.id)
    with pytest.raises(ReservationAlreadyRefunded):
        ledger.commit(reservation.id)


def test_unknown_reservation(ledger: SqlLedger) -> None:
    for action in (ledger.commit, ledger.refund, ledger.reservation):
        with pytest.raises(ReservationNotFound):
            action("no-such-id")


def test_duplicate_query_id_returns_the_original_without_charging_again(ledger: SqlLedger) -> None:
    first = _reserve(ledger, query_id="q-1")
    again = _reserve(ledger, query_id="q-1")
    assert again == first
    assert ledger.spent_total(principal="alice", dataset="sales") == TENTH
    ledger.commit(first.id)
    assert _reserve(ledger, query_id="q-1").state == "committed"


@pytest.mark.parametrize(
    ("principal", "dataset", "cost"),
    [("bob", "sales", TENTH), ("alice", "hr", TENTH), ("alice", "sales", PrivacyCost.of("0.2"))],
)
def test_duplicate_query_id_with_other_content_is_rejected(
    ledger: SqlLedger, principal: str, dataset: str, cost: PrivacyCost
) -> None:
    _reserve(ledger, query_id="q-1")
    with pytest.raises(DuplicateQueryId) as info:
        _reserve(ledger, cost, principal=principal, dataset=dataset, query_id="q-1")
    assert isinstance(info.value, BudgetError)
    assert info.value.code == "request.duplicate_query_id"
    assert ledger.spent_total(principal="alice", dataset="sales") == TENTH
    assert ledger.spent_total(principal=principal, dataset=dataset) == (
        TENTH if (principal, dataset) == ("alice", "sales") else PrivacyCost.zero()
    )


def test_delta_is_accounted_and_limited(ledger: SqlLedger) -> None:
    limit = PrivacyCost.of(100, "1e-5")
    cost = PrivacyCost.of("0.01", "3e-6")
    for _ in range(3):
        _reserve(ledger, cost, limit=limit)
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.03", "9e-6")
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, cost, limit=limit)  # epsilon has room, delta has not
    assert "delta 0.000001 remaining" in info.value.message
    _reserve(ledger, PrivacyCost.of("0.01", "1e-6"), limit=limit)
    assert ledger.balance(principal="alice", dataset="sales", principal_limit=limit).remaining == (
        PrivacyCost.of("99.96", 0)
    )


def test_charges_round_up_to_ledger_units(ledger: SqlLedger) -> None:
    third = PrivacyCost.of("1/3")
    reservation = _reserve(ledger, third)
    assert reservation.cost >= third
    assert reservation.cost.epsilon - third.epsilon < PrivacyCost.from_units(1, 0).epsilon
    assert ledger.spent_total(principal="alice", dataset="sales") == reservation.cost


def test_empty_principal_is_rejected(ledger: SqlLedger) -> None:
    with pytest.raises(ValueError, match="principal"):
        _reserve(ledger, principal="")


def test_concurrent_reservations_never_overspend(ledger: SqlLedger) -> None:
    cost = PrivacyCost.of("0.07", "1e-9")
    limit = PrivacyCost.of("0.7", "1e-8")  # room for exactly ten
    threads = 50
    start = threading.Barrier(threads)

    def attempt(i: int) -> str:
        start.wait()
        try:
            ledger.reserve(
                query_id=f"q-{i}",
                principal="alice",
                dataset="sales",
                cost=cost,
                principal_limit=limit,
                dataset_limit=PrivacyCost.of(1000, "0.5"),
            )
        except BudgetExhausted:
            return "exhausted"
        return "ok"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(attempt, range(threads)))

    assert outcomes.count("ok") == 10
    assert outcomes.count("exhausted") == 40
    assert ledger.spent_total(principal="alice", dataset="sales") == limit
    assert ledger.spent_total(principal="", dataset="sales") == limit


def test_concurrent_retries_of_one_query_id_charge_once(ledger: SqlLedger) -> None:
    threads = 20
    start = threading.Barrier(threads)

    def attempt(_: int) -> Reservation:
        start.wait()
        return _reserve(ledger, query_id="retried")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        reservations = set(pool.map(attempt, range(threads)))

    assert len(reservations) == 1
    assert ledger.spent_total(principal="alice", dataset="sales") == TENTH


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_an_account_created_concurrently_after_our_update_is_charged_not_exhausted(
    ledger: SqlLedger, engine: Engine
) -> None:
    """The interleaving behind the flaky retry test, forced step by step on real PostgreSQL.

    A first request creates and charges the account but has not committed when a second request's
    UPDATE runs, so that UPDATE sees no row. A commits right after it. B must then charge the
    account it can now see, not report it exhausted with 0.9 of 1.0 remaining.
    """
    scope = Scope("principal", "alice", "sales")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with engine.connect() as conn_a, engine.connect() as conn_b:
        conn_a.begin()
        assert charge(conn_a, scope, TENTH, seed=ONE, now=now) is not None
        conn_b.begin()
        committed: list[str] = []

        @event.listens_for(conn_b, "after_cursor_execute")
        def commit_a_after_bs_first_update(*args: object) -> None:
            statement = str(args[2])
            if not committed and statement.lstrip().upper().startswith("UPDATE"):
                conn_a.commit()
                committed.append(statement)

        assert charge(conn_b, scope, TENTH, seed=ONE, now=now) is not None
        conn_b.commit()
        assert committed, "the interleaving was not forced"
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.2")


def test_amounts_beyond_the_ledger_range_are_rejected(ledger: SqlLedger) -> None:
    with pytest.raises(InvalidCost):
        _reserve(ledger, PrivacyCost.of(10**7))
    with pytest.raises(InvalidCost):
        ledger.set_limit(
            principal="alice", dataset="sales", limit=PrivacyCost.of(10**7), actor="root"
        )
