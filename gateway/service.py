"""The transport-agnostic core: ``QueryService.run`` is called by REST (and later the wire) alike.

One request: plan (rewriter, cached per statement) → claim the query id / replay a stored answer →
reserve (ledger; once the warehouse is reachable) → execute (warehouse) → release (noise) → one
transaction for commit + audit + the stored answer → envelope. Every request, accepted or
rejected, leaves exactly one audit record. An unreachable warehouse charges nothing (the
reservation is made only once it is reachable); any failure after the reservation keeps the
budget spent.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection

from budgets.cost import PrivacyCost, fraction_str, to_fraction
from budgets.errors import BudgetError
from budgets.ledger import DuplicateQueryId, SqlLedger
from gateway.audit import AuditEntry, AuditLog, Checkpoint
from gateway.audit_crypt import SqlCipher
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    PrincipalQuarantined,
    PublicQueryInvalid,
    WarehouseError,
    WarehouseUnavailable,
    describe,
)
from gateway.explain import AccuracyTarget, solve_epsilon
from gateway.explain import explain as explain_plan
from gateway.noise import calibrate, calibrate_threshold
from gateway.principals import Principal
from gateway.release import Released, release
from gateway.results import ResultStore, replay_key, request_hash
from gateway.warehouse import Warehouse
from rewriter.catalog import Catalog
from rewriter.errors import RewriteError
from rewriter.parse import parse_select
from rewriter.plan import QueryPlan
from rewriter.plan_cache import PlanCache
from rewriter.planner import PlanRequest, redact_literals
from rewriter.policy import DatasetPolicy
from rewriter.rules.bound_and_emit import SALT_PARAMETER
from rewriter.rules.masked_rows import MASK_KEY_PARAMETER

log = logging.getLogger("privgate.service")

#: Called with every audit record the service writes (after it is durable).
Listener = Callable[[dict[str, Any]], None]


def _never_quarantined(_: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class QueryRequest:
    sql: str
    epsilon: float | str | None = None
    accuracy: AccuracyTarget | None = None
    #: Client-chosen id: a retry with the same id and SQL gets the stored answer, never a re-run.
    query_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is asking, through which door, from where."""

    principal: Principal
    door: str  # "rest" | "wire" | "cli"
    client: str = ""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class QueryFailed(Exception):
    """Wraps a public error with the audit id of the rejection record."""

    def __init__(self, error: BaseException, audit_id: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.audit_id = audit_id


@dataclass(frozen=True, slots=True)
class BudgetView:
    dataset: str
    limit: PrivacyCost
    spent: PrivacyCost
    remaining: PrivacyCost

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "epsilon_limit": fraction_str(self.limit.epsilon),
            "epsilon_spent": fraction_str(self.spent.epsilon),
            "epsilon_remaining": fraction_str(self.remaining.epsilon),
            "delta_limit": fraction_str(self.limit.delta),
            "delta_spent": fraction_str(self.spent.delta),
            "delta_remaining": fraction_str(self.remaining.delta),
        }


class QueryService:
    def __init__(
        self,
        *,
        catalog: Catalog,
        warehouse: Warehouse,
        ledger: SqlLedger,
        audit: AuditLog,
        results: ResultStore,
        salt: bytes,
        listeners: Sequence[Listener] = (),
        policy_version: str,
        clock: Callable[[], float] = time.perf_counter,
        quarantined: Callable[[str], bool] = _never_quarantined,
        sql_cipher: SqlCipher | None = None,
    ) -> None:
        # (catalog, policy_version) swapped as one reference: a request sees one policy throughout.
        self._policy_state = (catalog, policy_version)
        self._warehouse = warehouse
        self._ledger = ledger
        self._audit = audit
        self._results = results
        self._listeners = tuple(listeners)
        self._salt = salt.decode()
        # The key of the `hash` mask: derived, so that a pseudonym never reveals the bounding key.
        self._mask_key = hmac.new(salt, b"privgate mask key v1", hashlib.sha256).hexdigest()
        # Keys the stored digests of query text (replay keys, request hashes): one secret less
        # to manage, and a different purpose string keeps it apart from the bounding hash.
        self._digest_key = hmac.new(salt, b"privgate-query-digest-v1", hashlib.sha256).digest()
        self._clock = clock
        self._quarantined = quarantined
        #: Set in full-text audit mode: records also keep the SQL verbatim, sealed (AES-GCM).
        self._sql_cipher = sql_cipher
        if not (ledger.engine is audit.engine is results.engine):
            # run() commits the charge, the audit record and the stored answer together.
            raise ValueError("the ledger, audit log and result store must share one database")
        #: Plans by statement (re-priced per epsilon); emptied when the catalog changes.
        self._plans = PlanCache()

    @property
    def catalog(self) -> Catalog:
        return self._policy_state[0]

    @property
    def policy_version(self) -> str:
        return self._policy_state[1]

    def swap_policy(self, catalog: Catalog, policy_version: str) -> None:
        """Atomically replace the catalog and policy version (admin reload)."""
        self._policy_state = (catalog, policy_version)

    def plan(
        self,
        request: QueryRequest,
        principal: Principal,
        prebounded: Mapping[str, int] | None = None,
        precomputed: frozenset[str] | None = None,
    ) -> QueryPlan:
        """Plan without executing or charging (used by run, and later by explain/Describe)."""
        return self._plans.plan(
            PlanRequest(
                sql=request.sql,
                granted=principal.datasets,
                epsilon=request.epsilon,
                dialect=self._warehouse.dialect,
                prebounded=self._warehouse.prebounded() if prebounded is None else prebounded,
                precomputed=(self._warehouse.precomputed() if precomputed is None else precomputed),
            ),
            self.catalog,
        )

    def budget(self, principal: Principal) -> list[BudgetView]:
        return [
            self._budget_view(principal, name)
            for name in sorted(principal.datasets)
            if name in self.catalog.datasets
        ]

    def resolve(
        self,
        request: QueryRequest,
        principal: Principal,
        prebounded: Mapping[str, int] | None = None,
        precomputed: frozenset[str] | None = None,
    ) -> QueryPlan:
        """Plan ``request``, solving for ε first when it asks for an accuracy instead.

        ``prebounded``: the snapshot-served tables to plan for, ``precomputed`` the terms that
        snapshot stores (default: the warehouse's now).
        """
        if prebounded is None:
            prebounded = self._warehouse.prebounded()
        if precomputed is None:
            precomputed = self._warehouse.precomputed()
        if request.accuracy is None:
            return self.plan(request, principal, prebounded, precomputed)
        if request.epsilon is not None:
            raise InvalidRequest("give either epsilon or accuracy, not both")
        target = request.accuracy
        query_max: Fraction | None = None

        def plan_at(epsilon: Fraction) -> QueryPlan:
            nonlocal query_max
            plan = self._plans.plan(
                PlanRequest(
                    sql=request.sql,
                    granted=principal.datasets,
                    epsilon=str(Decimal(epsilon.numerator) / Decimal(epsilon.denominator)),
                    dialect=self._warehouse.dialect,
                    check_query_max=False,
                    prebounded=prebounded,
                    precomputed=precomputed,
                ),
                self.catalog,
            )
            if plan.protected:
                q = self.catalog.datasets[plan.dataset].budget.per_query_max
                query_max = to_fraction(q.epsilon) if q is not None else None
            return plan

        plan_at(Fraction(1))  # learns the dataset's per-query maximum
        return solve_epsilon(plan_at, target, query_max)[1]

    def explain(self, request: QueryRequest, ctx: CallContext) -> dict[str, Any]:
        """What running ``request`` would release and cost; nothing is run or charged."""
        started = self._clock()
        base = self._base(ctx, uuid.uuid4().hex, request.sql)
        self._gate(request, ctx, base, started)
        try:
            plan = self.resolve(request, ctx.principal)
            base.update(_plan_fields(plan))
        except (RewriteError, BudgetError, GatewayError) as exc:
            _add_shape(base, request.sql)
            raise QueryFailed(exc, self._audit_rejection(base, exc, started)) from exc
        body = explain_plan(plan)
        if plan.protected:
            budget = self._budget_view(ctx.principal, plan.dataset)
            body["budget"] = budget.as_json()
            body["affordable"] = plan.cost <= budget.remaining
        entry = self._record({**base, "decision": "explained", "code": "ok"})
        body["audit_id"] = entry.id
        return body

    def describe(self, request: QueryRequest, ctx: CallContext) -> QueryPlan:
        """Plan ``request`` for a wire Describe: nothing runs, nothing is charged or recorded.

        A refusal is audited (a Describe that fails is never followed by an Execute, so this is
        the only record the attempt gets); a success leaves no record, the Execute will.
        """
        started = self._clock()
        base = self._base(ctx, uuid.uuid4().hex, request.sql)
        self._gate(request, ctx, base, started)
        try:
            return self.resolve(request, ctx.principal)
        except (RewriteError, BudgetError, GatewayError) as exc:
            _add_shape(base, request.sql)
            raise QueryFailed(exc, self._audit_rejection(base, exc, started)) from exc

    def reject(self, request: QueryRequest, ctx: CallContext, exc: BaseException) -> QueryFailed:
        """Audit a refusal the door made itself (a parameter that does not bind, say)."""
        base = self._base(ctx, uuid.uuid4().hex, request.sql)
        _add_shape(base, request.sql)
        return QueryFailed(exc, self._audit_rejection(base, exc, self._clock()))

    def run(self, request: QueryRequest, ctx: CallContext) -> dict[str, Any]:
        """Answer one query or raise :class:`QueryFailed` (after auditing the rejection)."""
        started = self._clock()
        query_id = request.query_id or uuid.uuid4().hex
        base = self._base(ctx, query_id, request.sql)
        self._gate(request, ctx, base, started)
        plan: QueryPlan | None = None
        claimed = False
        try:
            # The tables a snapshot serves, their K and the terms it stores, as planned: checked
            # again just before the statement runs (another snapshot may have replaced it).
            served = (self._warehouse.prebounded(), self._warehouse.precomputed())
            plan = self.resolve(request, ctx.principal, *served)
            base.update(_plan_fields(plan))
            req_hash = request_hash(
                request.sql, fraction_str(plan.cost.epsilon), secret=self._digest_key
            )
            # A client's query id is claimed first (a retry finds it and gets the stored answer).
            # An id made here is new by construction: its row is written once, with the answer.
            unclaimed = None if request.query_id is not None else req_hash
            claim = (
                self._results.claim(
                    query_id=query_id, principal=ctx.principal.name, req_hash=req_hash
                )
                if unclaimed is None
                else None
            )
            if claim is not None and not claim.fresh:
                if claim.state == "done" and claim.same_request and claim.envelope is not None:
                    return self._replayed(claim.envelope, base, ctx, started, query_id)
                raise DuplicateQueryId(
                    f"query id {query_id!r} is already in use"
                    + ("" if claim.state != "done" else " by a different query"),
                    hint="Retry with the same SQL to get the stored answer, or use a new query_id.",
                )
            claimed = claim is not None
            key = self._replay_key(plan, ctx) if plan.protected else None
            if key is not None:
                stored = self._results.replay(principal=ctx.principal.name, key=key)
                if stored is not None:
                    self._results.finish(
                        query_id=query_id,
                        principal=ctx.principal.name,
                        key=None,
                        envelope=stored,
                        unclaimed=unclaimed,
                    )
                    return self._replayed(stored, base, ctx, started, query_id)
            released, reservation_id = self._execute(plan, ctx, query_id, served)
            latency_ms = round((self._clock() - started) * 1000, 3)
            record = {
                **base,
                "decision": "accepted",
                "code": "ok",
                "epsilon": fraction_str(plan.cost.epsilon),
                "delta": fraction_str(plan.cost.delta),
                "rows_released": len(released.rows),
                "groups_released": released.groups.released,
                "latency_ms": str(latency_ms),
            }

            # One durable commit for the charge made final, the audit record and the stored
            # answer: all of them or none (then the reservation stays executing, which
            # reconcile commits, and the answer is not released). On SQLite the commit may be
            # shared with concurrent queries' (group commit), each in a savepoint of its own.
            prepared = self._audit.prepare(record)  # outside the shared write turn

            def finish(conn: Connection) -> tuple[dict[str, Any], Checkpoint | None]:
                if reservation_id is not None:
                    self._ledger.commit(reservation_id, conn=conn)
                entry, checkpoint = self._audit.append_in(conn, prepared)
                envelope = self._envelope(
                    plan, released, ctx, query_id, entry.id, latency_ms, conn=conn
                )
                self._results.finish(
                    query_id=query_id,
                    principal=ctx.principal.name,
                    key=key,
                    envelope=envelope,
                    unclaimed=unclaimed,
                    conn=conn,
                )
                return envelope, checkpoint

            envelope, checkpoint = self._ledger.transact(finish)
        except (RewriteError, BudgetError, GatewayError) as exc:
            if claimed:
                self._results.fail(query_id=query_id)
            _add_shape(base, request.sql)
            raise QueryFailed(exc, self._audit_rejection(base, exc, started)) from exc
        except Exception as exc:  # a bug: generic message out, detail to the log
            log.exception("internal error in query %s", query_id)
            if claimed:
                self._results.fail(query_id=query_id)
            internal = InternalError("internal error")
            raise QueryFailed(internal, self._audit_rejection(base, exc, started)) from exc
        self._audit.written(checkpoint)
        self._notify(record)
        return envelope

    def _gate(
        self, request: QueryRequest, ctx: CallContext, base: dict[str, Any], started: float
    ) -> None:
        """Refuse a quarantined principal before anything is planned (and audit the refusal)."""
        if not self._quarantined(ctx.principal.name):
            return
        exc = PrincipalQuarantined(f"principal {ctx.principal.name!r} is quarantined")
        _add_shape(base, request.sql)
        raise QueryFailed(exc, self._audit_rejection(base, exc, started))

    def _execute(
        self,
        plan: QueryPlan,
        ctx: CallContext,
        query_id: str,
        served: tuple[Mapping[str, int], frozenset[str]],
    ) -> tuple[Released, str | None]:
        """Reserve → execute → release; the reservation's id is returned for the final commit.

        The budget is reserved, already marked executing, once the warehouse is reachable and
        before the statement is sent (``before_execute``): an unreachable warehouse charges
        nothing, and from the reservation on the budget can only stay spent.
        """
        reserved: list[str] = []

        def reserve() -> None:
            # Called once the warehouse has chosen what the statement reads. A statement planned
            # as pre-bounded (no salt parameter) relies on the snapshot's K being the one its
            # sensitivity was computed for: if the serving snapshot changed since planning,
            # refuse before anything is charged or read (fail closed; a retry plans anew).
            now = (dict(self._warehouse.prebounded()), self._warehouse.precomputed())
            replaced = now != (dict(served[0]), served[1])
            if plan.protected and not plan.parameters and replaced:
                raise WarehouseUnavailable(
                    "the bounded snapshot was replaced while this query was planned"
                )
            ds = self.catalog.datasets[plan.dataset]
            reservation = self._ledger.reserve(
                query_id=query_id,
                principal=ctx.principal.name,
                dataset=plan.dataset,
                cost=plan.cost,
                principal_limit=_principal_limit(ds),
                dataset_limit=_dataset_limit(ds),
                principal_window_s=ds.budget.per_principal.window_seconds,
                executing=True,
                # Flushed by the final commit, before which nothing is released (run()).
                durable=False,
            )
            reserved.append(reservation.id)

        try:
            result = self._warehouse.execute(
                plan.warehouse_sql,
                [self._parameter(name) for name in plan.parameters],
                before_execute=reserve if plan.cost.epsilon > 0 else None,
            )
        except WarehouseUnavailable:
            raise
        except WarehouseError as exc:
            if not plan.protected:
                # Only public tables were read: their binder errors are the analyst's to fix,
                # and there is no budget to keep spent. (The warehouse's own message stays in
                # the log: it may quote the analyst's literals.)
                raise PublicQueryInvalid(
                    "the warehouse refused this query on public tables (a type, grouping or "
                    "name error)"
                ) from exc
            raise
        return release(plan, result), (reserved[0] if reserved else None)

    def _replay_key(self, plan: QueryPlan, ctx: CallContext) -> str:
        return replay_key(
            secret=self._digest_key,
            principal=ctx.principal.name,
            normalized_sql=plan.normalized_sql,
            dataset=plan.dataset,
            policy_version=self.policy_version,
            data_version=self._warehouse.data_version(),
            epsilon=f"{fraction_str(plan.cost.epsilon)}/{fraction_str(plan.cost.delta)}",
        )

    def _replayed(
        self,
        stored: dict[str, Any],
        base: dict[str, Any],
        ctx: CallContext,
        started: float,
        query_id: str,
    ) -> dict[str, Any]:
        """A stored answer, given again at no cost (and audited as such)."""
        latency_ms = round((self._clock() - started) * 1000, 3)
        entry = self._record(
            {
                **base,
                "decision": "accepted",
                "code": "replayed",
                "replayed_query_id": stored.get("query_id"),
                "epsilon": "0",
                "delta": "0",
                "rows_released": len(stored.get("rows", [])),
                "latency_ms": str(latency_ms),
            }
        )
        envelope = dict(stored)
        envelope.update(
            query_id=query_id,
            audit_id=entry.id,
            cached=True,
            replayed_query_id=stored.get("query_id"),
            epsilon_charged="0",
            delta_charged="0",
            latency_ms=latency_ms,
        )
        dataset = stored.get("dataset")
        if stored.get("budget") is not None and isinstance(dataset, str):
            envelope["budget"] = self._budget_view(ctx.principal, dataset).as_json()
        return envelope

    def _record(self, record: dict[str, Any]) -> AuditEntry:
        """Append ``record`` to the audit log, then tell the listeners (metrics, anomaly rules).

        Listeners see exactly what the audit log keeps — never true values — and cannot break a
        request: their failures are logged.
        """
        # Through the ledger's transactions: on SQLite shared with concurrent queries' (group
        # commit), flushed before this returns, as audit.append would be.
        prepared = self._audit.prepare(record)
        entry, checkpoint = self._ledger.transact(
            lambda conn: self._audit.append_in(conn, prepared)
        )
        self._audit.written(checkpoint)
        self._notify(record)
        return entry

    def _notify(self, record: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                log.exception("audit listener failed")

    def _parameter(self, name: str) -> str:
        """A warehouse SQL parameter's value: the bounding salt or the mask key (never in text)."""
        if name == MASK_KEY_PARAMETER:
            return self._mask_key
        if name == SALT_PARAMETER:
            return self._salt
        raise ValueError(f"unknown plan parameter {name!r}")  # pragma: no cover - planner-made

    def _base(self, ctx: CallContext, query_id: str, sql: str) -> dict[str, Any]:
        base: dict[str, Any] = {
            "query_id": query_id,
            "request_id": ctx.request_id,
            "principal": ctx.principal.name,
            "door": ctx.door,
            "client": ctx.client,
            "policy_version": self.policy_version,
            "data_version": self._warehouse.data_version(),
        }
        if self._sql_cipher is not None:
            # Full-text mode: the analyst's SQL verbatim, sealed under the record's query id.
            base["sql_sealed"] = self._sql_cipher.seal(sql, query_id=query_id)
        return base

    def _budget_view(
        self, principal: Principal, dataset: str, conn: Connection | None = None
    ) -> BudgetView:
        ds = self.catalog.datasets[dataset]
        bal = self._ledger.balance(
            principal=principal.name,
            dataset=dataset,
            principal_limit=_principal_limit(ds),
            principal_window_s=ds.budget.per_principal.window_seconds,
            conn=conn,
        )
        return BudgetView(dataset, bal.limit, bal.spent, bal.remaining)

    def _envelope(
        self,
        plan: QueryPlan,
        released: Released,
        ctx: CallContext,
        query_id: str,
        audit_id: str,
        latency_ms: float,
        conn: Connection | None = None,
    ) -> dict[str, Any]:
        budget: dict[str, Any] | None = None
        if plan.protected:
            budget = self._budget_view(ctx.principal, plan.dataset, conn).as_json()
        groups: dict[str, Any] = {"handling": released.groups.handling}
        if released.groups.threshold is not None:
            groups["threshold"] = released.groups.threshold
            groups["threshold_scale"] = released.groups.threshold_scale
            groups["note"] = (
                "Groups whose noisy count of distinct people is below the threshold are not "
                "shown; how many were withheld is not disclosed."
            )
        return {
            "query_id": query_id,
            "audit_id": audit_id,
            "dataset": plan.dataset,
            "columns": [c.as_json() for c in released.columns],
            "rows": released.rows,
            "intervals": released.intervals,
            "groups": groups,
            "cached": False,
            "epsilon_charged": fraction_str(plan.cost.epsilon),
            "delta_charged": fraction_str(plan.cost.delta),
            "budget": budget,
            "latency_ms": latency_ms,
        }

    def _audit_rejection(
        self, base: dict[str, Any], exc: BaseException, started: float
    ) -> str | None:
        public = describe(exc)
        record = {
            **base,
            "decision": "rejected",
            "code": public.code,
            # The public message only: internal details (which may describe data) stay in the log.
            # Syntax errors quote the offending token, which may be a literal: not kept.
            "message": public.message if public.code != "sql.syntax" else "",
            "latency_ms": str(round((self._clock() - started) * 1000, 3)),
        }
        try:
            return self._record(record).id
        except Exception:
            log.exception("could not audit a rejection")
            return None


def _add_shape(base: dict[str, Any], sql: str) -> None:
    """Give a rejection record the literal-redacted SQL, when it parses and planning did not.

    The anomaly rules need the shape of refused queries too (a differencing probe that the
    rewriter rejects is still a probe). Literals are redacted exactly as in accepted records.
    """
    if "sql" in base:
        return
    try:
        base["sql"] = redact_literals(parse_select(sql))
    except Exception:  # a syntax error or worse: no shape, and nothing more to say
        return


def _principal_limit(ds: DatasetPolicy) -> PrivacyCost:
    lim = ds.budget.per_principal
    return PrivacyCost(to_fraction(lim.epsilon), to_fraction(lim.delta))


def _dataset_limit(ds: DatasetPolicy) -> PrivacyCost | None:
    lim = ds.budget.total
    return None if lim is None else PrivacyCost(to_fraction(lim.epsilon), to_fraction(lim.delta))


def _plan_fields(plan: QueryPlan) -> dict[str, Any]:
    """What the audit keeps of a plan: redacted SQL, mechanisms and scales — never values."""
    mechanisms = []
    for m in plan.measurements:
        cal = calibrate(m.sensitivity, m.epsilon)
        mechanisms.append(
            {
                "column": m.column,
                "what": m.description,
                "mechanism": "discrete_laplace",
                "sensitivity": m.sensitivity,
                "epsilon": fraction_str(m.epsilon),
                "scale": repr(cal.scale),
                "fixed_point": m.fixed_point,
            }
        )
    fields: dict[str, Any] = {
        "dataset": plan.dataset,
        "sql": plan.redacted_sql,
        "rewritten_sql": plan.redacted_warehouse_sql,
        "mechanisms": mechanisms,
        "max_rows_per_unit": plan.max_rows_per_unit,
    }
    if plan.threshold is not None:
        spec = calibrate_threshold(
            plan.threshold.max_groups,
            plan.threshold.epsilon,
            plan.threshold.delta,
            plan.threshold.min_group_size,
        )
        fields["threshold"] = {
            "mechanism": "laplace_threshold",
            "threshold": spec.threshold,
            "scale": repr(spec.scale),
            "epsilon": fraction_str(plan.threshold.epsilon),
            "delta": fraction_str(plan.threshold.delta),
        }
    return fields
