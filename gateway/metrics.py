"""Prometheus metrics, fed by the audit records the service writes (never by true values).

:class:`Metrics` is a :data:`gateway.service.Listener`: it sees every audit record of a query or an
explain once it is durable, so its counters agree with the audit log by construction. Gauges that
describe state (budget left, quarantined principals) are read from the control database at scrape
time. Each :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry`, so several
gateways in one process (tests) do not collide.

What is deliberately *not* exported: the number of groups a threshold suppressed, or any count
derived from the data. Those are functions of the true (pre-noise) data; a metric would be a side
channel around the privacy budget. ``privgate_thresholded_releases_total`` counts queries that went
through the threshold mechanism, which depends on the query alone. See docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from budgets.ledger_schema import AccountView

log = logging.getLogger("privgate.metrics")

#: Seconds. The gateway's own latency: planning, budget, warehouse, noise and audit.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: The audit decisions a query or explain produces (alerts and admin records are counted apart).
QUERY_DECISIONS = frozenset({"accepted", "rejected", "explained"})


class _StateCollector(Collector):
    """Gauges read at scrape time: budget remaining per account, quarantined principals."""

    def __init__(
        self,
        accounts: Callable[[], Sequence[AccountView]],
        quarantined: Callable[[], int],
    ) -> None:
        self._accounts = accounts
        self._quarantined = quarantined

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["scope", "principal", "dataset"]
        eps = GaugeMetricFamily(
            "privgate_budget_epsilon_remaining",
            "Epsilon left per stored budget account (principal x dataset, and dataset totals; "
            "lifetime since the last reset, windows not applied). Exact values: the ledger.",
            labels=labels,
        )
        delta = GaugeMetricFamily(
            "privgate_budget_delta_remaining",
            "Delta left per stored budget account (as privgate_budget_epsilon_remaining).",
            labels=labels,
        )
        try:
            for a in self._accounts():
                values = [a.scope_kind, a.principal, a.dataset]
                eps.add_metric(values, float(a.remaining.epsilon))
                delta.add_metric(values, float(a.remaining.delta))
        except Exception:
            log.exception("could not read budget accounts for /metrics")
        else:
            yield eps
            yield delta
        try:
            count = self._quarantined()
        except Exception:
            log.exception("could not read quarantined principals for /metrics")
        else:
            yield GaugeMetricFamily(
                "privgate_quarantined_principals",
                "Principals quarantined now (all replicas: read from the control database).",
                value=count,
            )


class Metrics:
    """The gateway's Prometheus registry; call it with each audit record (a service listener)."""

    def __init__(
        self,
        *,
        accounts: Callable[[], Sequence[AccountView]],
        quarantined: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queries = Counter(
            "privgate_queries",
            "Queries and explains by door, audit decision and code (as in the audit log).",
            ["door", "decision", "code"],
            registry=r,
        )
        self.epsilon = Counter(
            "privgate_epsilon_spent",
            "Epsilon charged by answered queries (a float sum: exact values are in the ledger).",
            ["dataset", "principal"],
            registry=r,
        )
        self.latency = Histogram(
            "privgate_query_latency_seconds",
            "Time the gateway took per query or explain, by door and decision.",
            ["door", "decision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "privgate_cache_hits",
            "Queries answered by replaying a stored answer (no budget charged).",
            ["door", "dataset"],
            registry=r,
        )
        self.thresholded = Counter(
            "privgate_thresholded_releases",
            "Fresh answers whose groups passed the noisy threshold mechanism (a count of queries; "
            "how many groups were suppressed is never exported).",
            ["dataset"],
            registry=r,
        )
        self.alerts = Counter(
            "privgate_anomaly_alerts",
            "Anomaly rule triggers (this replica), by rule and whether they quarantined.",
            ["rule", "contained"],
            registry=r,
        )
        self.auth_failures = Counter(
            "privgate_auth_failures",
            "REST requests refused for missing or bad credentials, by code.",
            ["code"],
            registry=r,
        )
        r.register(_StateCollector(accounts, quarantined))
        # Counters are incremented from request threads; prometheus_client is thread-safe, this
        # lock only keeps one record's several increments together for a concurrent scrape.
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        decision = str(record.get("decision", ""))
        if decision not in QUERY_DECISIONS:
            return
        door = str(record.get("door", ""))
        code = str(record.get("code", ""))
        dataset = str(record.get("dataset", ""))
        with self._lock:
            self.queries.labels(door, decision, code).inc()
            latency = _float(record.get("latency_ms"))
            if latency is not None:
                self.latency.labels(door, decision).observe(latency / 1000)
            if decision != "accepted":
                return
            if code == "replayed":
                self.cache_hits.labels(door, dataset).inc()
                return
            epsilon = _fraction(record.get("epsilon"))
            if epsilon:
                self.epsilon.labels(dataset, str(record.get("principal", ""))).inc(float(epsilon))
            if record.get("threshold") is not None:
                self.thresholded.labels(dataset).inc()

    def alert(self, rule: str, contained: bool) -> None:
        self.alerts.labels(rule, "true" if contained else "false").inc()

    def auth_failure(self, code: str) -> None:
        self.auth_failures.labels(code).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _float(value: object) -> float | None:
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None


def _fraction(value: object) -> Fraction | None:
    try:
        return Fraction(str(value)) if value is not None else None
    except (ValueError, ZeroDivisionError):
        return None
