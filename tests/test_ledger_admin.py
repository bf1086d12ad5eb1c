"""Admin operations on the ledger (set limit, top up, reset, list) and its history."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect

from budgets.cost import PrivacyCost
from budgets.errors import BudgetExhausted, InvalidCost
from budgets.ledger import AccountView, Balance, Reservation, SqlLedger
from tests.test_ledger import BACKENDS, FakeClock, open_engine

ONE = PrivacyCost.of(1)


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


def _reserve(
    ledger: SqlLedger,
    epsilon: str = "0.25",
    *,
    principal: str = "alice",
    dataset: str = "sales",
    dataset_limit: PrivacyCost | None = None,
) -> Reservation:
    return ledger.reserve(
        query_id=uuid.uuid4().hex,
        principal=principal,
        dataset=dataset,
        cost=PrivacyCost.of(epsilon),
        principal_limit=ONE,
        dataset_limit=dataset_limit,
    )


def test_set_limit_creates_a_missing_account_and_is_logged(ledger: SqlLedger) -> None:
    limit = PrivacyCost.of("2.5", "1e-6")
    balance = ledger.set_limit(principal="alice", dataset="sales", limit=limit, actor="root")
    assert balance == Balance(limit=limit, spent=PrivacyCost.zero(), remaining=limit)
    (event,) = ledger.history(principal="alice", dataset="sales")
    assert (event.kind, event.cost, event.actor, event.query_id) == (
        "set_limit",
        limit,
        "root",
        None,
    )
    assert event.ts.utcoffset() == timedelta(0)


def test_top_up_adds_exactly(ledger: SqlLedger) -> None:
    _reserve(ledger, "0.5")
    for _ in range(3):
        balance = ledger.top_up(
            principal="alice",
            dataset="sales",
            amount=PrivacyCost.of("0.1"),
            actor="root",
            default_limit=PrivacyCost.of(99),
        )
    assert balance.limit == PrivacyCost.of("1.3")
    assert balance.remaining == PrivacyCost.of("0.8")
    kinds = [(e.kind, e.cost, e.actor) for e in ledger.history(principal="alice", dataset="sales")]
    assert kinds[:3] == [("top_up", PrivacyCost.of("0.1"), "root")] * 3


def test_top_up_of_a_missing_account_starts_from_the_default(ledger: SqlLedger) -> None:
    balance = ledger.top_up(
        principal="bob",
        dataset="sales",
        amount=PrivacyCost.of("0.5", "1e-7"),
        actor="root",
        default_limit=PrivacyCost.of(2, "1e-6"),
    )
    assert balance.limit == PrivacyCost.of("2.5", "1.1e-6")
    _reserve(ledger, "2.5", principal="bob")  # the stored limit wins over the caller's 1.0


def test_a_top_up_beyond_the_ledger_range_changes_nothing(ledger: SqlLedger) -> None:
    huge = PrivacyCost.from_units(2**62, 0)
    ledger.set_limit(principal="alice", dataset="sales", limit=huge, actor="root")
    with pytest.raises(InvalidCost):
        ledger.top_up(
            principal="alice", dataset="sales", amount=ONE, actor="root", default_limit=ONE
        )
    assert ledger.balance(principal="alice", dataset="sales", principal_limit=ONE).limit == huge
    assert [e.kind for e in ledger.history(principal="alice", dataset="sales")] == ["set_limit"]


def test_reset_forgives_spending_and_keeps_the_limit(ledger: SqlLedger, clock: FakeClock) -> None:
    _reserve(ledger, "0.5")
    _reserve(ledger, "0.5")
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.1")
    clock.advance(60)
    balance = ledger.reset(principal="alice", dataset="sales", actor="root")
    assert balance == Balance(limit=ONE, spent=PrivacyCost.zero(), remaining=ONE)
    latest = ledger.history(principal="alice", dataset="sales", limit=1)[0]
    assert (latest.kind, latest.cost, latest.actor, latest.ts) == ("reset", ONE, "root", clock.now)
    (account,) = ledger.list_accounts(principal="alice")
    assert account.reset_at == clock.now
    _reserve(ledger, "1")


def test_reset_of_a_missing_account_stores_nothing(ledger: SqlLedger) -> None:
    balance = ledger.reset(principal="ghost", dataset="sales", actor="root", default_limit=ONE)
    assert balance == Balance(limit=ONE, spent=PrivacyCost.zero(), remaining=ONE)
    assert ledger.list_accounts() == []
    assert ledger.history(principal="ghost", dataset="sales") == []


def test_the_dataset_total_is_administered_with_an_empty_principal(ledger: SqlLedger) -> None:
    _reserve(ledger, "0.5", dataset_limit=PrivacyCost.of("0.75"))
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.5", principal="bob", dataset_limit=PrivacyCost.of("0.75"))
    ledger.top_up(
        principal="",
        dataset="sales",
        amount=PrivacyCost.of("0.25"),
        actor="root",
        default_limit=ONE,
    )
    _reserve(ledger, "0.5", principal="bob")
    ledger.reset(principal="", dataset="sales", actor="root")
    assert ledger.spent_total(principal="", dataset="sales") == PrivacyCost.zero()
    assert ledger.spent_total(principal="alice", dataset="sales") == PrivacyCost.of("0.5")
    assert [e.kind for e in ledger.history(principal="", dataset="sales")] == ["reset", "top_up"]


def test_list_accounts_filters_and_orders(ledger: SqlLedger) -> None:
    _reserve(ledger, "0.25", principal="bob", dataset_limit=PrivacyCost.of(5))
    _reserve(ledger, "0.5", principal="alice")
    _reserve(ledger, "0.75", principal="alice", dataset="hr")
    ledger.set_limit(principal="carol", dataset="hr", limit=PrivacyCost.of("0.5"), actor="root")
    everything = ledger.list_accounts()
    assert [(a.dataset, a.scope_kind, a.principal) for a in everything] == [
        ("hr", "principal", "alice"),
        ("hr", "principal", "carol"),
        ("sales", "dataset", ""),
        ("sales", "principal", "alice"),
        ("sales", "principal", "bob"),
    ]
    assert ledger.list_accounts(principal="alice", dataset="hr") == [
        AccountView(
            scope_kind="principal",
            principal="alice",
            dataset="hr",
            limit=ONE,
            spent=PrivacyCost.of("0.75"),
            remaining=PrivacyCost.of("0.25"),
            reset_at=None,
        )
    ]
    assert [a.scope_kind for a in ledger.list_accounts(principal="")] == ["dataset"]
    assert len(ledger.list_accounts(dataset="sales")) == 3
    assert ledger.list_accounts(dataset="nosuch") == []


def test_list_accounts_remaining_is_window_free_and_never_negative(ledger: SqlLedger) -> None:
    _reserve(ledger, "0.75")
    ledger.set_limit(principal="alice", dataset="sales", limit=PrivacyCost.of("0.5"), actor="root")
    (account,) = ledger.list_accounts()
    assert (account.spent, account.remaining) == (PrivacyCost.of("0.75"), PrivacyCost.zero())


def test_history_is_newest_first_and_paginates(ledger: SqlLedger) -> None:
    ledger.set_limit(principal="alice", dataset="sales", limit=PrivacyCost.of(5), actor="ann")
    kept, given_back = _reserve(ledger, "0.5"), _reserve(ledger, "0.25")
    ledger.mark_executing(kept.id)
    ledger.commit(kept.id)
    ledger.refund(given_back.id)
    ledger.reset(principal="alice", dataset="sales", actor="ben")
    _reserve(ledger, "1", principal="bob")  # another scope's history
    events = ledger.history(principal="alice", dataset="sales")
    assert [(e.kind, e.query_id, e.actor) for e in events] == [
        ("reset", None, "ben"),
        ("refund", given_back.query_id, None),
        ("commit", kept.query_id, None),
        ("execute", kept.query_id, None),
        ("reserve", given_back.query_id, None),
        ("reserve", kept.query_id, None),
        ("set_limit", None, "ann"),
    ]
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert events[1].cost == PrivacyCost.of("0.25")
    assert events[0].cost == PrivacyCost.of("0.5")  # a reset logs what it forgave
    pages, before = [], None
    while True:
        page = ledger.history(principal="alice", dataset="sales", limit=3, before_id=before)
        if not page:
            break
        pages.append(page)
        before = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e for p in pages for e in p] == events
    with pytest.raises(ValueError, match="limit"):
        ledger.history(principal="alice", dataset="sales", limit=0)


def test_refusals_and_retries_are_not_state_changes(ledger: SqlLedger) -> None:
    first = ledger.reserve(
        query_id="q-1", principal="alice", dataset="sales", cost=ONE, principal_limit=ONE
    )
    again = ledger.reserve(
        query_id="q-1", principal="alice", dataset="sales", cost=ONE, principal_limit=ONE
    )
    assert again == first
    with pytest.raises(BudgetExhausted):
        _reserve(ledger, "0.1")
    ledger.commit(first.id)
    ledger.commit(first.id)
    kinds = [e.kind for e in ledger.history(principal="alice", dataset="sales")]
    assert kinds == ["commit", "reserve"]


# The ledger's tables as the previous release created them (no windows, resets or history).
_OLD_TABLES = [
    """CREATE TABLE budget_accounts (
        scope_kind TEXT NOT NULL, principal TEXT NOT NULL, dataset TEXT NOT NULL,
        eps_limit BIGINT NOT NULL, delta_limit BIGINT NOT NULL,
        eps_spent BIGINT NOT NULL, delta_spent BIGINT NOT NULL,
        updated_at TIMESTAMP NOT NULL, PRIMARY KEY (scope_kind, principal, dataset))""",
    """CREATE TABLE budget_reservations (
        id TEXT PRIMARY KEY, query_id TEXT NOT NULL UNIQUE, principal TEXT NOT NULL,
        dataset TEXT NOT NULL, eps_units BIGINT NOT NULL, delta_units BIGINT NOT NULL,
        charged_dataset_scope BOOLEAN NOT NULL, state TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL, finished_at TIMESTAMP)""",
]


def test_create_schema_upgrades_a_database_of_the_previous_release(engine: Engine) -> None:
    with engine.begin() as conn:
        for ddl in _OLD_TABLES:
            conn.exec_driver_sql(ddl)
    old = SqlLedger(engine)
    # An open reservation of the old release: one account row charged, nothing in epoch columns.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO budget_accounts VALUES ('principal', 'alice', 'sales', "
            f"{ONE.epsilon_units}, 0, {PrivacyCost.of('0.5').epsilon_units}, 0, "
            "'2029-12-31 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO budget_reservations VALUES ('r-old', 'q-old', 'alice', 'sales', "
            f"{PrivacyCost.of('0.5').epsilon_units}, 0, FALSE, 'reserved', "
            "'2029-12-31 00:00:00', NULL)"
        )
    old.create_schema()
    old.create_schema()  # idempotent
    columns = {c["name"] for c in inspect(engine).get_columns("budget_accounts")}
    assert {"epoch", "reset_at"} <= columns
    indexes = {i["name"] for i in inspect(engine).get_indexes("budget_reservations")}
    assert {"ix_budget_reservations_window", "ix_budget_reservations_state"} <= indexes
    old.refund("r-old")
    assert old.spent_total(principal="alice", dataset="sales") == PrivacyCost.zero()
    _reserve(old, "1")
