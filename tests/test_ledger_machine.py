"""A hypothesis state machine drives the real SQLite ledger against a small reference model.

Every step's outcome must match the model exactly (a reservation succeeds iff the model says it
fits), and after every step the invariants are checked on the database itself: windowed usage
within the limit, no negative amounts, lifetime spending equal to the non-refunded reservations of
the current epoch, every reservation in exactly one state, and a history that tells the same story.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import RowMapping, select

from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted
from budgets.ledger import (
    ReconcileReport,
    ReservationAlreadyCommitted,
    ReservationAlreadyExecuting,
    ReservationAlreadyRefunded,
    ReservationExpired,
    SqlLedger,
)
from budgets.ledger_schema import budget_accounts, budget_events, budget_reservations
from gateway.control_db import make_control_engine
from tests.test_ledger import FakeClock

WINDOW = 100  # alice's principal scope is windowed; bob's is not
DATASET = "sales"
SEED = PrivacyCost.of(1, "3e-7")  # the policy's per-principal limit
CAP = PrivacyCost.of(2, "1e-6")  # the policy's dataset-total cap
ACTIVE = ("reserved", "executing", "committed")
FINAL_KIND = {
    "reserve": "reserved",
    "execute": "executing",
    "commit": "committed",
    "reconcile_commit": "committed",
    "refund": "refunded",
    "reconcile_refund": "refunded",
}

costs = st.builds(
    PrivacyCost.of,
    st.sampled_from(["0.1", "0.25", "0.3", "0.5", "1/3", "0.7"]),
    st.sampled_from(["0", "1e-7"]),
)
limits = st.builds(
    PrivacyCost.of,
    st.sampled_from(["0", "0.2", "0.5", "1", "2.5"]),
    st.sampled_from(["0", "2e-7", "1e-6"]),
)
principals = st.sampled_from(["alice", "bob"])
scopes = st.sampled_from(["alice", "bob", ""])  # '' is the dataset total
picks = st.integers(min_value=0, max_value=10**6)
# A RAM-backed tmp dir where there is one: a real SQLite file, without waiting on fsync each commit.
_RAM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass
class Account:
    limit: tuple[int, int]
    spent: tuple[int, int] = (0, 0)
    epoch: int = 0
    cap: tuple[int, int] = (0, 0)  # usage when an admin last cut the limit below it
    admin_events: list[str] = field(default_factory=list)


@dataclass
class Res:
    id: str
    query_id: str
    principal: str
    units: tuple[int, int]
    created_at: datetime
    principal_epoch: int
    dataset_epoch: int | None  # None: the dataset total was not charged
    state: str = "reserved"
    events: list[str] = field(default_factory=lambda: ["reserve"])


def _units(cost: PrivacyCost) -> tuple[int, int]:
    return cost.epsilon_units, cost.delta_units


def _add(a: tuple[int, int], b: tuple[int, int], sign: int = 1) -> tuple[int, int]:
    return a[0] + sign * b[0], a[1] + sign * b[1]


def _fits(used: tuple[int, int], cost: tuple[int, int], limit: tuple[int, int]) -> bool:
    return used[0] + cost[0] <= limit[0] and used[1] + cost[1] <= limit[1]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-machine-", dir=_RAM_DIR))
        self.engine = make_control_engine(f"sqlite:///{self.tmp / 'control.db'}")
        self.clock = FakeClock()
        self.ledger = SqlLedger(self.engine, clock=self.clock)
        self.ledger.create_schema()
        self.accounts: dict[str, Account] = {}  # '' is the dataset total
        self.reservations: list[Res] = []

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model ------------------------------------------------------------------------------

    def used(self, scope: str) -> tuple[int, int]:
        """What the ledger checks a new charge against: alice's window, else lifetime spending."""
        account = self.accounts[scope]
        if scope != "alice":
            return account.spent
        since = self.clock.now - timedelta(seconds=WINDOW)
        total = (0, 0)
        for r in self.reservations:
            if (
                r.principal == "alice"
                and r.principal_epoch == account.epoch
                and r.state in ACTIVE
                and r.created_at > since
            ):
                total = _add(total, r.units)
        return total

    def give_back(self, r: Res) -> None:
        owner = self.accounts[r.principal]
        if owner.epoch == r.principal_epoch:
            owner.spent = _add(owner.spent, r.units, -1)
        else:
            event("units forgiven by a reset are not given back")
        if r.dataset_epoch is not None and self.accounts[""].epoch == r.dataset_epoch:
            self.accounts[""].spent = _add(self.accounts[""].spent, r.units, -1)

    def pick(self, index: int) -> Res:
        return self.reservations[index % len(self.reservations)]

    # -- rules ----------------------------------------------------------------------------------

    @initialize(principal=principals, cost=costs, capped=st.booleans())
    def first_reservation(self, principal: str, cost: PrivacyCost, capped: bool) -> None:
        # Every budget starts fresh, so this one fits; the rules below can always pick one.
        self.reserve(principal, cost, capped)
        assert self.reservations

    @rule(principal=principals, cost=costs, capped=st.booleans())
    def reserve(self, principal: str, cost: PrivacyCost, capped: bool) -> None:
        units = _units(cost)
        owner = self.accounts.get(principal) or Account(limit=_units(SEED))
        total = self.accounts.get("") or (Account(limit=_units(CAP)) if capped else None)
        trial = dict(self.accounts, **{principal: owner})
        fits = _fits(LedgerMachine.used_in(self, trial, principal), units, owner.limit)
        fits = fits and (total is None or _fits(total.spent, units, total.limit))
        try:
            reservation = self.ledger.reserve(
                query_id=uuid.uuid4().hex,
                principal=principal,
                dataset=DATASET,
                cost=cost,
                principal_limit=SEED,
                dataset_limit=CAP if capped else None,
                principal_window_s=WINDOW if principal == "alice" else None,
            )
        except BudgetExhausted:
            assert not fits, "refused a charge that fits"
            event(f"reserve refused ({principal})")
            return
        assert fits, "accepted a charge that does not fit"
        event(f"reserve accepted ({principal})")
        self.accounts[principal] = owner
        owner.spent = _add(owner.spent, units)
        if total is not None:
            self.accounts[""] = total
            total.spent = _add(total.spent, units)
        self.reservations.append(
            Res(
                id=reservation.id,
                query_id=reservation.query_id,
                principal=principal,
                units=units,
                created_at=self.clock.now,
                principal_epoch=owner.epoch,
                dataset_epoch=None if total is None else total.epoch,
            )
        )

    def used_in(self, accounts: dict[str, Account], scope: str) -> tuple[int, int]:
        saved, self.accounts = self.accounts, accounts
        try:
            return self.used(scope)
        finally:
            self.accounts = saved

    @rule(index=picks)
    def mark_executing(self, index: int) -> None:
        r = self.pick(index)
        if r.state != "reserved":
            event(f"mark_executing refused ({r.state})")
            with pytest.raises(ReservationExpired):
                self.ledger.mark_executing(r.id)
            return
        self.ledger.mark_executing(r.id)
        r.state = "executing"
        r.events.append("execute")

    @rule(index=picks)
    def commit(self, index: int) -> None:
        r = self.pick(index)
        if r.state == "refunded":
            with pytest.raises(ReservationAlreadyRefunded):
                self.ledger.commit(r.id)
            return
        self.ledger.commit(r.id)
        if r.state != "committed":
            r.state = "committed"
            r.events.append("commit")

    @rule(index=picks)
    def refund(self, index: int) -> None:
        r = self.pick(index)
        refused = {
            "executing": ReservationAlreadyExecuting,
            "committed": ReservationAlreadyCommitted,
        }
        event(f"refund from {r.state}")
        if r.state in refused:
            with pytest.raises(refused[r.state]):
                self.ledger.refund(r.id)
            return
        self.ledger.refund(r.id)
        if r.state == "reserved":
            r.state = "refunded"
            r.events.append("refund")
            self.give_back(r)

    @rule(scope=scopes, amount=costs)
    def top_up(self, scope: str, amount: PrivacyCost) -> None:
        default = CAP if scope == "" else SEED
        self.ledger.top_up(
            principal=scope, dataset=DATASET, amount=amount, actor="admin", default_limit=default
        )
        account = self.accounts.setdefault(scope, Account(limit=_units(default)))
        account.limit = _add(account.limit, _units(amount))
        account.admin_events.append("top_up")

    @rule(scope=scopes)
    def reset(self, scope: str) -> None:
        self.ledger.reset(principal=scope, dataset=DATASET, actor="admin")
        account = self.accounts.get(scope)
        if account is None:
            return
        account.spent, account.cap, account.epoch = (0, 0), (0, 0), account.epoch + 1
        account.admin_events.append("reset")

    @rule(scope=scopes, limit=limits)
    def set_limit(self, scope: str, limit: PrivacyCost) -> None:
        self.ledger.set_limit(principal=scope, dataset=DATASET, limit=limit, actor="admin")
        account = self.accounts.setdefault(scope, Account(limit=_units(limit)))
        account.limit = _units(limit)
        account.cap = self.used(scope)
        account.admin_events.append("set_limit")

    @rule(seconds=st.sampled_from([1, 10, 30, 60, 99, 100, 101]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(grace=st.sampled_from([0, 30, 100]))
    def reconcile(self, grace: int) -> None:
        report = self.ledger.reconcile(older_than_s=grace)
        cutoff = self.clock.now - timedelta(seconds=grace)
        refunded = committed = 0
        for r in sorted(self.reservations, key=lambda r: r.created_at):
            if r.created_at < cutoff and r.state == "reserved":
                r.state = "refunded"
                r.events.append("reconcile_refund")
                self.give_back(r)
                refunded += 1
        for r in self.reservations:
            if r.created_at < cutoff and r.state == "executing":
                r.state = "committed"
                r.events.append("reconcile_commit")
                committed += 1
        assert report == ReconcileReport(refunded=refunded, committed=committed)
        event(f"reconcile refunded {min(refunded, 2)}+, committed {min(committed, 2)}+")

    # -- invariants, on the database itself -----------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        # One snapshot per step keeps the machine fast; each check below reads it.
        with self.engine.connect() as conn:
            accounts = conn.execute(select(budget_accounts)).mappings().all()
            reservations = conn.execute(select(budget_reservations)).mappings().all()
            events = (
                conn.execute(select(budget_events).order_by(budget_events.c.id)).mappings().all()
            )
        self.accounts_match_and_are_never_negative(accounts)
        self.usage_stays_within_the_limit()
        self.lifetime_spent_is_the_unrefunded_charges_since_the_last_reset(accounts, reservations)
        self.every_reservation_is_in_exactly_one_state(reservations)
        self.history_tells_the_same_story(events)

    def accounts_match_and_are_never_negative(self, rows: Sequence[RowMapping]) -> None:
        stored = {row["principal"]: row for row in rows}
        assert len(stored) == len(rows)
        assert set(stored) == set(self.accounts)
        for scope, account in self.accounts.items():
            row = stored[scope]
            assert row["scope_kind"] == ("dataset" if scope == "" else "principal")
            assert (row["eps_limit"], row["delta_limit"]) == account.limit
            assert (row["eps_spent"], row["delta_spent"]) == account.spent
            assert row["epoch"] == account.epoch
            amounts = (row["eps_limit"], row["delta_limit"], row["eps_spent"], row["delta_spent"])
            assert min(amounts) >= 0

    def usage_stays_within_the_limit(self) -> None:
        for scope, account in self.accounts.items():
            used = account.spent  # checked against the database above
            if scope == "alice":
                # Alice's window is summed by the ledger itself; the model sums it independently.
                balance = self.ledger.balance(
                    principal=scope,
                    dataset=DATASET,
                    principal_limit=SEED,
                    principal_window_s=WINDOW,
                )
                used = _units(balance.spent)
                assert min(_units(balance.remaining)) >= 0
            assert used == self.used(scope)
            # Only an admin's cut can leave usage above the limit, and then never above the usage
            # at the time of the cut.
            allowed = (max(account.limit[0], account.cap[0]), max(account.limit[1], account.cap[1]))
            assert used[0] <= allowed[0] and used[1] <= allowed[1]

    def lifetime_spent_is_the_unrefunded_charges_since_the_last_reset(
        self, accounts: Sequence[RowMapping], reservations: Sequence[RowMapping]
    ) -> None:
        for account in accounts:
            scope, epoch = account["principal"], account["epoch"]
            charged = [
                r
                for r in reservations
                if r["state"] != "refunded"
                and (
                    (r["principal"] == scope and r["principal_epoch"] == epoch)
                    or (scope == "" and r["charged_dataset_scope"] and r["dataset_epoch"] == epoch)
                )
            ]
            total = (sum(r["eps_units"] for r in charged), sum(r["delta_units"] for r in charged))
            assert total == (account["eps_spent"], account["delta_spent"])

    def every_reservation_is_in_exactly_one_state(self, rows: Sequence[RowMapping]) -> None:
        states = {row["id"]: row["state"] for row in rows}
        assert len(states) == len(rows) == len(self.reservations)
        for r in self.reservations:
            assert states[r.id] == r.state
            assert states[r.id] in ("reserved", "executing", "committed", "refunded")

    def history_tells_the_same_story(self, events: Sequence[RowMapping]) -> None:
        by_query: dict[str, list[str]] = {}
        admin: dict[str, list[str]] = {}
        for e in events:
            assert e["eps_units"] >= 0 and e["delta_units"] >= 0
            if e["query_id"] is None:
                assert e["actor"] == "admin"
                admin.setdefault(e["principal"], []).append(e["kind"])
            else:
                assert e["actor"] is None
                by_query.setdefault(e["query_id"], []).append(e["kind"])
        for r in self.reservations:
            assert by_query.pop(r.query_id) == r.events
            assert FINAL_KIND[r.events[-1]] == r.state
        assert by_query == {}
        assert admin == {s: a.admin_events for s, a in self.accounts.items() if a.admin_events}


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
