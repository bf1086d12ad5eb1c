"""Crash-safe reservation states: reserved → executing → committed | refunded, and reconcile."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine

from budgets.cost import PrivacyCost
from budgets.errors import BudgetError, ReservationNotFound
from budgets.ledger import (
    ReconcileReport,
    Reservation,
    ReservationAlreadyCommitted,
    ReservationAlreadyExecuting,
    ReservationAlreadyRefunded,
    ReservationExpired,
    SqlLedger,
)
from tests.test_ledger import BACKENDS, FakeClock, open_engine

ONE = PrivacyCost.of(1)
CAP = PrivacyCost.of(10)
GRACE = 300.0


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from open_engine(request.param, tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(engine: Engine, clock: FakeClock) -> SqlLedger:
    ledger = SqlLedger(engine, clock=clock)
    ledger.create_schema()
    return ledger


def _reserve(ledger: SqlLedger, epsilon: str = "0.25", principal: str = "alice") -> Reservation:
    return ledger.reserve(
        query_id=uuid.uuid4().hex,
        principal=principal,
        dataset="sales",
        cost=PrivacyCost.of(epsilon),
        principal_limit=ONE,
        dataset_limit=CAP,
    )


def _spent(ledger: SqlLedger, principal: str = "alice") -> tuple[PrivacyCost, PrivacyCost]:
    return (
        ledger.spent_total(principal=principal, dataset="sales"),
        ledger.spent_total(principal="", dataset="sales"),
    )


def _kinds(ledger: SqlLedger, query_id: str, principal: str = "alice") -> list[str]:
    events = ledger.history(principal=principal, dataset="sales")
    return [e.kind for e in reversed(events) if e.query_id == query_id]


def test_the_happy_path(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    assert reservation.state == "reserved"
    ledger.mark_executing(reservation.id)
    assert ledger.reservation(reservation.id).state == "executing"
    ledger.commit(reservation.id)
    ledger.commit(reservation.id)  # idempotent
    assert ledger.reservation(reservation.id).state == "committed"
    assert _kinds(ledger, reservation.query_id) == ["reserve", "execute", "commit"]
    assert _spent(ledger) == (PrivacyCost.of("0.25"), PrivacyCost.of("0.25"))


def test_a_crash_before_execution_is_refunded_and_the_late_query_cannot_run(
    ledger: SqlLedger, clock: FakeClock
) -> None:
    crashed = _reserve(ledger, "0.75")
    clock.advance(GRACE - 1)
    assert ledger.reconcile(older_than_s=GRACE) == ReconcileReport(refunded=0, committed=0)
    assert ledger.reservation(crashed.id).state == "reserved"
    clock.advance(2)
    assert ledger.reconcile(older_than_s=GRACE) == ReconcileReport(refunded=1, committed=0)
    assert ledger.reservation(crashed.id).state == "refunded"
    # Every charged scope got its units back.
    assert _spent(ledger) == (PrivacyCost.zero(), PrivacyCost.zero())
    # The gateway that "crashed" was only slow: it may no longer execute, nor commit.
    with pytest.raises(ReservationExpired) as info:
        ledger.mark_executing(crashed.id)
    assert isinstance(info.value, BudgetError) and info.value.code == "internal"
    assert "must not run" in info.value.message
    with pytest.raises(ReservationAlreadyRefunded):
        ledger.commit(crashed.id)
    assert _kinds(ledger, crashed.query_id) == ["reserve", "reconcile_refund"]
    assert ledger.reconcile(older_than_s=GRACE) == ReconcileReport(refunded=0, committed=0)


def test_a_crash_during_execution_is_committed(ledger: SqlLedger, clock: FakeClock) -> None:
    crashed = _reserve(ledger, "0.75")
    ledger.mark_executing(crashed.id)
    clock.advance(GRACE + 1)
    assert ledger.reconcile(older_than_s=GRACE) == ReconcileReport(refunded=0, committed=1)
    assert ledger.reservation(crashed.id).state == "committed"
    assert _spent(ledger) == (PrivacyCost.of("0.75"), PrivacyCost.of("0.75"))
    ledger.commit(crashed.id)  # the slow gateway's own commit is a harmless no-op
    assert _kinds(ledger, crashed.query_id) == ["reserve", "execute", "reconcile_commit"]


def test_reconcile_ignores_fresh_reservations(ledger: SqlLedger, clock: FakeClock) -> None:
    old_reserved, old_executing = _reserve(ledger, "0.1"), _reserve(ledger, "0.2")
    ledger.mark_executing(old_executing.id)
    clock.advance(GRACE + 1)
    fresh_reserved, fresh_executing = _reserve(ledger, "0.3"), _reserve(ledger, "0.4")
    ledger.mark_executing(fresh_executing.id)
    assert ledger.reconcile(older_than_s=GRACE) == ReconcileReport(refunded=1, committed=1)
    states = {r: ledger.reservation(r.id).state for r in (fresh_reserved, fresh_executing)}
    assert states == {fresh_reserved: "reserved", fresh_executing: "executing"}
    assert ledger.reservation(old_reserved.id).state == "refunded"
    assert ledger.reservation(old_executing.id).state == "committed"
    assert _spent(ledger)[0] == PrivacyCost.of("0.9")
    ledger.mark_executing(fresh_reserved.id)  # still allowed: nothing settled it


def test_reconcile_with_an_explicit_now(ledger: SqlLedger, clock: FakeClock) -> None:
    reservation = _reserve(ledger)
    report = ledger.reconcile(older_than_s=GRACE, now=clock.now.replace(year=2031))
    assert report == ReconcileReport(refunded=1, committed=0)
    assert ledger.reservation(reservation.id).state == "refunded"


def test_refund_after_executing_is_refused_and_keeps_the_spend(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.mark_executing(reservation.id)
    with pytest.raises(ReservationAlreadyExecuting) as info:
        ledger.refund(reservation.id)
    assert info.value.code == "internal"
    assert ledger.reservation(reservation.id).state == "executing"
    assert _spent(ledger) == (PrivacyCost.of("0.25"), PrivacyCost.of("0.25"))
    ledger.commit(reservation.id)
    with pytest.raises(ReservationAlreadyCommitted):
        ledger.refund(reservation.id)


def test_refund_straight_from_reserved_still_works(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.refund(reservation.id)
    ledger.refund(reservation.id)  # idempotent
    assert _spent(ledger) == (PrivacyCost.zero(), PrivacyCost.zero())
    assert _kinds(ledger, reservation.query_id) == ["reserve", "refund"]
    with pytest.raises(ReservationExpired):
        ledger.mark_executing(reservation.id)


def test_commit_straight_from_reserved_still_works(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.commit(reservation.id)
    assert ledger.reservation(reservation.id).state == "committed"
    with pytest.raises(ReservationExpired):
        ledger.mark_executing(reservation.id)


def test_mark_executing_only_once(ledger: SqlLedger) -> None:
    reservation = _reserve(ledger)
    ledger.mark_executing(reservation.id)
    with pytest.raises(ReservationExpired, match="is executing"):
        ledger.mark_executing(reservation.id)
    with pytest.raises(ReservationNotFound):
        ledger.mark_executing("no-such-id")
    assert _kinds(ledger, reservation.query_id) == ["reserve", "execute"]


def test_racing_reconciles_and_a_late_gateway_settle_each_reservation_once(
    ledger: SqlLedger, clock: FakeClock
) -> None:
    stale = [_reserve(ledger, "0.01") for _ in range(30)]
    for r in stale[:10]:
        ledger.mark_executing(r.id)
    clock.advance(GRACE + 1)
    racers = 6
    start = threading.Barrier(racers + 1)

    def reconcile(_: int) -> ReconcileReport:
        start.wait()
        return ledger.reconcile(older_than_s=GRACE)

    def late_gateway() -> int:
        start.wait()
        ran = 0
        for r in stale[10:]:
            try:
                ledger.mark_executing(r.id)
            except ReservationExpired:
                continue
            ran += 1
        return ran

    with ThreadPoolExecutor(max_workers=racers + 1) as pool:
        late = pool.submit(late_gateway)
        reports = list(pool.map(reconcile, range(racers)))
    ran = late.result()
    refunded = sum(r.refunded for r in reports)
    committed = sum(r.committed for r in reports)
    states = [ledger.reservation(r.id).state for r in stale]
    # Each stale reservation went one way only: refunded (and the late query did not run), or
    # cleared to run by the late gateway (then executing, or committed by a later reconcile pass).
    assert refunded == states.count("refunded") == 20 - ran
    assert committed == states.count("committed") >= 10
    assert states.count("committed") + states.count("executing") == 10 + ran
    hundredth = PrivacyCost.of("0.01").epsilon_units
    assert _spent(ledger)[0] == PrivacyCost.from_units((10 + ran) * hundredth, 0)
    events = ledger.history(principal="alice", dataset="sales", limit=1000)
    assert sum(e.kind == "reconcile_refund" for e in events) == refunded
    assert sum(e.kind == "reconcile_commit" for e in events) == committed


def test_reconcile_refund_after_a_reset_gives_nothing_back(
    ledger: SqlLedger, clock: FakeClock
) -> None:
    crashed = _reserve(ledger, "0.5")
    ledger.reset(principal="alice", dataset="sales", actor="root")
    after = _reserve(ledger, "0.25")
    clock.advance(GRACE + 1)
    assert ledger.reconcile(older_than_s=GRACE).refunded == 2
    assert ledger.reservation(crashed.id).state == "refunded"
    assert ledger.reservation(after.id).state == "refunded"
    # Alice's scope was reset (forgiving 0.5); the dataset total was not, so it gets both back.
    assert _spent(ledger) == (PrivacyCost.zero(), PrivacyCost.zero())


def test_the_grace_must_not_be_negative(ledger: SqlLedger) -> None:
    with pytest.raises(ValueError, match="older_than_s"):
        ledger.reconcile(older_than_s=-1)
