"""Plans reused across requests: parse, check and rewrite a statement once, not on every run.

Planning reads the SQL text, the principal's granted datasets, the dialect, which tables are served
pre-bounded, whether the per-query maximum applies — and epsilon. Epsilon enters a protected plan
in exactly three places: the total cost, and the equal share of it that every measurement and the
threshold get (``_protected_plan``: ``share = epsilon / n_parts``). Everything else (the warehouse
SQL, sensitivities, outputs, group keys, the delta) is the same at every epsilon. So the cache keys
a plan by everything except epsilon, and a hit is re-priced: epsilon is validated exactly as on a
miss (``_epsilon``: the minimum, the dataset's per-query maximum, the absolute cap), then the shares
are recomputed. Public and masked-row plans release no noise and do not read epsilon.

Only plans that succeeded are cached; a refusal is re-planned each time (and so gives the same
error). The cache holds one catalog's plans: a new catalog (a policy swap) empties it. Tests
(``tests/test_plan_cache.py``) check that a re-priced hit equals a fresh plan for every query of
the accepted corpus.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Hashable

from budgets.cost import PrivacyCost
from rewriter.catalog import Catalog
from rewriter.plan import QueryPlan
from rewriter.planner import PlanRequest, epsilon_for, plan_query

#: Distinct statements kept (least recently used dropped first). A plan is a few kilobytes.
DEFAULT_SIZE = 1024


class PlanCache:
    """A bounded, thread-safe LRU of plans for one catalog."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._lock = threading.Lock()
        self._plans: OrderedDict[Hashable, QueryPlan] = OrderedDict()
        self._catalog: Catalog | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def plan(self, request: PlanRequest, catalog: Catalog) -> QueryPlan:
        """``plan_query(request, catalog)``, from the cache when the statement was planned before."""
        key = (
            request.sql,
            request.granted,
            request.dialect,
            request.check_query_max,
            tuple(sorted(request.prebounded.items())),
            request.precomputed,
        )
        with self._lock:
            if catalog is not self._catalog:
                self._plans.clear()
                self._catalog = catalog
            cached = self._plans.get(key)
            if cached is not None:
                self._plans.move_to_end(key)
                self.hits += 1
        if cached is not None:
            return reprice(cached, request, catalog)
        plan = plan_query(request, catalog)
        with self._lock:
            self.misses += 1
            if self._size and catalog is self._catalog:
                self._plans[key] = plan
                while len(self._plans) > self._size:
                    self._plans.popitem(last=False)
        return plan


def reprice(plan: QueryPlan, request: PlanRequest, catalog: Catalog) -> QueryPlan:
    """``plan`` at ``request.epsilon``: validated as planning does, shares split as it does."""
    if not plan.protected:
        return plan
    dataset = catalog.datasets[plan.dataset]
    epsilon = epsilon_for(request, dataset)
    if epsilon == plan.cost.epsilon:
        return plan
    n_parts = len(plan.measurements) + (1 if plan.threshold is not None else 0)
    share = epsilon / n_parts
    return dataclasses.replace(
        plan,
        measurements=tuple(dataclasses.replace(m, epsilon=share) for m in plan.measurements),
        threshold=(
            None if plan.threshold is None else dataclasses.replace(plan.threshold, epsilon=share)
        ),
        cost=PrivacyCost(epsilon, plan.cost.delta),
    )
