"""Rolling budget windows on the principal scope, on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted
from budgets.ledger import Reservation, SqlLedger
from tests.test_ledger import BACKENDS, FakeClock, open_engine

HOUR = 3600
ONE = PrivacyCost.of(1)
T0 = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
MICRO = timedelta(microseconds=1)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from open_engine(request.param, tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def ledger(engine: Engine, clock: FakeClock) -> SqlLedger:
    ledger = SqlLedger(engine, clock=clock)
    ledger.create_schema()
    return ledger


def _reserve(
    ledger: SqlLedger,
    epsilon: str,
    *,
    at: datetime | None = None,
    delta: str = "0",
    window: int | None = HOUR,
    limit: PrivacyCost = ONE,
    dataset_limit: PrivacyCost | None = None,
    principal: str = "alice",
) -> Reservation:
    return ledger.reserve(
        query_id=uuid.uuid4().hex,
        principal=principal,
        dataset="sales",
        cost=PrivacyCost.of(epsilon, delta),
        principal_limit=limit,
        dataset_limit=dataset_limit,
        principal_window_s=window,
        now=at,
    )


def _used(ledger: SqlLedger, at: datetime, principal: str = "alice") -> PrivacyCost:
    return ledger.balance(
        principal=principal, dataset="sales", principal_limit=ONE, principal_window_s=HOUR, now=at
    ).spent


def test_charges_older_than_the_window_stop_counting(ledger: SqlLedger) -> None:
    _reserve(ledger, "0.6", at=T0)
    _reserve(ledger, "0.4", at=T0 + timedelta(minutes=30))
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, "0.1", at=T0 + timedelta(minutes=59))
    assert "rolling window of 3600 s: epsilon 0, delta 0 remaining" in info.value.message
    later = T0 + timedelta(minutes=61)
    assert _used(ledger, later) == PrivacyCost.of("0.4")
    _reserve(ledger, "0.6", at=later)
    # The lifetime counter keeps every charge, for history; it is not the check.
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("1.6")
    balance = ledger.balance(principal="alice", dataset="sales", principal_limit=ONE)
    assert (balance.spent, balance.remaining) == (PrivacyCost.of("1.6"), PrivacyCost.zero())


def test_the_window_boundary_is_exact(ledger: SqlLedger) -> None:
    _reserve(ledger, "1", at=T0)
    edge = T0 + timedelta(seconds=HOUR)
    # The window is (now - 3600 s, now]: one microsecond before the edge the charge still counts...
    assert _used(ledger, edge - MICRO) == ONE
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.000000000001", at=edge - MICRO)
    # ...and at the edge it no longer does.
    assert _used(ledger, edge) == PrivacyCost.zero()
    _reserve(ledger, "1", at=edge)
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.000000000001", at=edge + timedelta(seconds=HOUR) - MICRO)


def test_the_clock_rolls_the_window_when_now_is_not_given(
    ledger: SqlLedger, clock: FakeClock
) -> None:
    _reserve(ledger, "1")
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.5")
    clock.advance(HOUR)
    _reserve(ledger, "0.5")
    assert _used(ledger, clock.now) == PrivacyCost.of("0.5")


def test_delta_is_windowed_too(ledger: SqlLedger) -> None:
    limit = PrivacyCost.of(100, "1e-6")
    _reserve(ledger, "0.1", delta="1e-6", at=T0, limit=limit)
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, "0.1", delta="1e-9", at=T0 + timedelta(seconds=10), limit=limit)
    assert "delta 0 remaining" in info.value.message
    _reserve(ledger, "0.1", delta="1e-6", at=T0 + timedelta(seconds=HOUR), limit=limit)


def test_refunded_reservations_leave_the_window(ledger: SqlLedger) -> None:
    first = _reserve(ledger, "0.7", at=T0)
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.7", at=T0)
    ledger.refund(first.id)
    _reserve(ledger, "0.7", at=T0)
    assert _used(ledger, T0) == PrivacyCost.of("0.7")


def test_executing_and_committed_reservations_count(ledger: SqlLedger) -> None:
    running = _reserve(ledger, "0.3", at=T0)
    done = _reserve(ledger, "0.3", at=T0)
    ledger.mark_executing(running.id)
    ledger.commit(done.id)
    _reserve(ledger, "0.4", at=T0)
    assert _used(ledger, T0) == ONE
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.1", at=T0)


def test_the_dataset_total_never_has_a_window(ledger: SqlLedger) -> None:
    cap = PrivacyCost.of("1.5")
    _reserve(ledger, "1", at=T0, dataset_limit=cap)
    later = T0 + timedelta(days=30)
    with pytest.raises(BudgetExhausted) as info:
        _reserve(ledger, "1", at=later, dataset_limit=cap)
    assert "total over all principals" in info.value.message
    _reserve(ledger, "0.5", at=later, dataset_limit=cap)
    total = ledger.balance(
        principal="", dataset="sales", principal_limit=cap, principal_window_s=HOUR, now=later
    )
    assert (total.spent, total.remaining) == (cap, PrivacyCost.zero())


def test_other_principals_have_their_own_window(ledger: SqlLedger) -> None:
    _reserve(ledger, "1", at=T0)
    _reserve(ledger, "1", at=T0, principal="bob")
    assert _used(ledger, T0, "bob") == ONE


def test_a_reset_restarts_the_window_and_in_flight_reservations_stay_valid(
    ledger: SqlLedger, clock: FakeClock
) -> None:
    in_flight = _reserve(ledger, "0.6")
    refunded_later = _reserve(ledger, "0.4")
    clock.advance(1)
    ledger.reset(principal="alice", dataset="sales", actor="root")
    assert _used(ledger, clock.now) == PrivacyCost.zero()
    _reserve(ledger, "1")
    ledger.mark_executing(in_flight.id)
    ledger.commit(in_flight.id)
    # Forgiven by the reset: refunding it gives nothing back and does not go below zero.
    ledger.refund(refunded_later.id)
    assert ledger.spent_total(principal="alice", dataset="sales") == ONE
    assert _used(ledger, clock.now) == ONE


def test_a_reset_at_the_same_instant_as_a_charge_is_ordered_by_the_database(
    ledger: SqlLedger,
) -> None:
    # The fake clock does not move: ordering must come from the epoch, not from timestamps.
    _reserve(ledger, "1")
    ledger.reset(principal="alice", dataset="sales", actor="root")
    after = _reserve(ledger, "1")
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.1")
    ledger.refund(after.id)
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.zero()
    _reserve(ledger, "1")


def test_a_charge_stamped_in_the_future_counts(ledger: SqlLedger) -> None:
    # A replica whose clock runs ahead: its charge still counts for a replica that lags (fail closed).
    _reserve(ledger, "1", at=T0 + timedelta(minutes=5))
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.1", at=T0)
    assert _used(ledger, T0) == ONE


def test_the_window_must_be_positive(ledger: SqlLedger) -> None:
    for window in (0, -5):
        with pytest.raises(ValueError, match="principal_window_s"):
            _reserve(ledger, "0.1", window=window)


def test_concurrent_windowed_reserves_never_overspend(ledger: SqlLedger) -> None:
    """Expired charges make room; 100 racing reservations of 0.1 still fill exactly 1.0."""
    threads, reps = 100, 3
    for rep in range(reps):
        principal = f"p{rep}"
        for minutes in (
            600,
            90,
            61,
        ):  # in time order; all outside the window by the time of the race
            _reserve(ledger, "0.5", at=T0 - timedelta(minutes=minutes), principal=principal)
        _reserve(ledger, "0.3", at=T0 - timedelta(minutes=10), principal=principal)
        start = threading.Barrier(threads)

        def attempt(_: int, principal: str = principal) -> bool:
            start.wait()
            try:
                _reserve(
                    ledger, "0.1", at=T0, principal=principal, dataset_limit=PrivacyCost.of(10**6)
                )
            except BudgetExhausted:
                return False
            return True

        with ThreadPoolExecutor(max_workers=threads) as pool:
            outcomes = list(pool.map(attempt, range(threads)))
        assert outcomes.count(True) == 7
        assert _used(ledger, T0, principal) == ONE
        assert ledger.spent_total(principal=principal, dataset="sales") == PrivacyCost.of("2.5")
