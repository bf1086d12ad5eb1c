"""Anomaly rules over the audit stream, and containment (quarantine) when a rule says so.

:class:`AnomalyDetector` is a :data:`gateway.service.Listener`: it sees every query/explain audit
record once it is durable (records hold redacted SQL and costs, never values). Four rules, each
per principal, configured in :class:`gateway.settings.Settings` (docs/operations.md#anomaly-rules):

``rate``
    at least N requests within T seconds (a burst; scripted extraction).
``rejections``
    at least R rejections among the principal's last M requests (probing the policy).
``differencing``
    at least K fresh queries with the *same literal-redacted SQL* within T seconds. Literals are
    redacted before anything reaches the audit log, so "the same query with ``AND patient_id <> k``
    for many k" all share one shape: the differencing / tracker pattern. Replays of a stored
    answer release nothing new and do not count; rejected queries do (the attempt is the signal).
``burn_rate``
    more than E epsilon charged within T seconds.

When a rule fires, the principal's state for that rule starts over (one alert per episode, not one
per request), an ``{"decision": "alert", "code": "anomaly.<rule>", ...}`` record is appended to the
audit log, and if the rule is configured to contain, the principal is quarantined in the control
database (all replicas honour it; every query is refused with ``principal.quarantined`` until an
admin releases it). A containing rule also clears all of the principal's counters, so that after a
release the principal starts afresh on this replica.

State is in memory, per process: with several replicas each one counts only its own traffic, so
a client spreading its requests over n replicas meets each threshold n times later.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from budgets.cost import fraction_str
from gateway.settings import Settings

log = logging.getLogger("privgate.anomaly")

RULES = ("rate", "rejections", "differencing", "burn_rate")

#: Distinct SQL shapes remembered per principal; the oldest is forgotten beyond this.
MAX_SHAPES = 1000
#: Forget idle principals' empty state every this many records.
_SWEEP_EVERY = 1000


class AlertSink(Protocol):
    def append(self, record: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class AnomalyRules:
    """The thresholds of the four rules and which of them quarantine."""

    enabled: bool = True
    rate_max_requests: int = 600
    rate_window_s: float = 60.0
    rate_contain: bool = True
    rejections_min: int = 25
    rejections_of_last: int = 50
    rejections_contain: bool = False
    differencing_max_repeats: int = 200
    differencing_window_s: float = 600.0
    differencing_contain: bool = True
    burn_rate_max_epsilon: Fraction = Fraction(10)
    burn_rate_window_s: float = 3600.0
    burn_rate_contain: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> AnomalyRules:
        return cls(
            enabled=s.anomaly_enabled,
            rate_max_requests=s.anomaly_rate_max_requests,
            rate_window_s=s.anomaly_rate_window_s,
            rate_contain=s.anomaly_rate_contain,
            rejections_min=s.anomaly_rejections_min,
            rejections_of_last=s.anomaly_rejections_of_last,
            rejections_contain=s.anomaly_rejections_contain,
            differencing_max_repeats=s.anomaly_differencing_max_repeats,
            differencing_window_s=s.anomaly_differencing_window_s,
            differencing_contain=s.anomaly_differencing_contain,
            burn_rate_max_epsilon=Fraction(str(s.anomaly_burn_rate_max_epsilon)),
            burn_rate_window_s=s.anomaly_burn_rate_window_s,
            burn_rate_contain=s.anomaly_burn_rate_contain,
        )

    def contains(self, rule: str) -> bool:
        return bool(getattr(self, f"{rule}_contain"))


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule firing for one principal; ``detail`` holds JSON-safe observations."""

    rule: str
    principal: str
    detail: dict[str, Any]


@dataclass
class _PrincipalState:
    requests: deque[float] = field(default_factory=deque)
    outcomes: deque[bool] = field(default_factory=deque)  # True: rejected
    shapes: dict[str, deque[float]] = field(default_factory=dict)
    spends: deque[tuple[float, Fraction]] = field(default_factory=deque)
    spent: Fraction = Fraction(0)


class AnomalyDetector:
    """Evaluates the rules on each audit record; alerts and quarantines (thread-safe)."""

    def __init__(
        self,
        rules: AnomalyRules,
        *,
        audit: AlertSink,
        quarantine: Callable[[str, str], bool],
        on_alert: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = rules
        self._audit = audit
        self._quarantine = quarantine
        self._on_alert = on_alert
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _PrincipalState] = {}
        self._seen = 0
        # Alerts go straight to the audit log, not through the service's listeners; this guards
        # against a future wiring that would feed them back to us anyway.
        self._busy = threading.local()

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.rules.enabled or getattr(self._busy, "active", False):
            return
        if record.get("decision") not in ("accepted", "rejected", "explained"):
            return
        principal = record.get("principal")
        if not isinstance(principal, str) or not principal:
            return
        if record.get("code") == "principal.quarantined":
            return  # already contained: refusals must not re-trigger or extend anything
        with self._lock:
            alerts = self._observe(principal, record, self._clock())
        for alert in alerts:
            self._raise(alert, record)

    def forget(self, principal: str) -> None:
        """Drop a principal's counters (e.g. after an admin released it on this replica)."""
        with self._lock:
            self._states.pop(principal, None)

    # -- rules (called under the lock) --------------------------------------------------------

    def _observe(self, principal: str, record: dict[str, Any], now: float) -> list[Alert]:
        r = self.rules
        st = self._states.setdefault(principal, _PrincipalState())
        fired: list[Alert] = []

        _expire(st.requests, now - r.rate_window_s)
        st.requests.append(now)
        if len(st.requests) >= r.rate_max_requests:
            fired.append(
                Alert(
                    "rate",
                    principal,
                    {
                        "requests": len(st.requests),
                        "window_s": _num(r.rate_window_s),
                        "threshold": r.rate_max_requests,
                    },
                )
            )
            st.requests.clear()

        st.outcomes.append(record.get("decision") == "rejected")
        while len(st.outcomes) > r.rejections_of_last:
            st.outcomes.popleft()
        rejected = sum(st.outcomes)
        if rejected >= r.rejections_min:
            fired.append(
                Alert(
                    "rejections",
                    principal,
                    {
                        "rejections": rejected,
                        "of_last": len(st.outcomes),
                        "threshold": r.rejections_min,
                    },
                )
            )
            st.outcomes.clear()

        sql = record.get("sql")
        fresh = record.get("decision") in ("accepted", "rejected") and record.get("code") != (
            "replayed"
        )
        if fresh and isinstance(sql, str) and sql:
            shape = hashlib.sha256(sql.encode()).hexdigest()[:32]
            times = st.shapes.pop(shape, None) or deque()
            st.shapes[shape] = times  # re-inserted: the dict's order is least recently used first
            _expire(times, now - r.differencing_window_s)
            times.append(now)
            if len(times) >= r.differencing_max_repeats:
                fired.append(
                    Alert(
                        "differencing",
                        principal,
                        {
                            "repeats": len(times),
                            "window_s": _num(r.differencing_window_s),
                            "threshold": r.differencing_max_repeats,
                            "sql": sql,  # literals already redacted
                            "dataset": record.get("dataset"),
                        },
                    )
                )
                del st.shapes[shape]
            while len(st.shapes) > MAX_SHAPES:
                del st.shapes[next(iter(st.shapes))]

        while st.spends and st.spends[0][0] < now - r.burn_rate_window_s:
            st.spent -= st.spends.popleft()[1]
        epsilon = _epsilon(record)
        if epsilon:
            st.spends.append((now, epsilon))
            st.spent += epsilon
            if st.spent > r.burn_rate_max_epsilon:
                fired.append(
                    Alert(
                        "burn_rate",
                        principal,
                        {
                            "epsilon": fraction_str(st.spent),
                            "window_s": _num(r.burn_rate_window_s),
                            "threshold": fraction_str(r.burn_rate_max_epsilon),
                        },
                    )
                )
                st.spends.clear()
                st.spent = Fraction(0)

        if any(r.contains(a.rule) for a in fired):
            self._states.pop(principal, None)  # a fresh start once an admin releases it
        self._seen += 1
        if self._seen % _SWEEP_EVERY == 0:
            self._sweep(now)
        return fired

    def _sweep(self, now: float) -> None:
        r = self.rules
        for name in list(self._states):
            st = self._states[name]
            _expire(st.requests, now - r.rate_window_s)
            for shape in list(st.shapes):
                _expire(st.shapes[shape], now - r.differencing_window_s)
                if not st.shapes[shape]:
                    del st.shapes[shape]
            if not st.requests and not st.shapes and not st.spends and not any(st.outcomes):
                del self._states[name]

    # -- effects (outside the lock: they write to the control database) ------------------------

    def _raise(self, alert: Alert, record: dict[str, Any]) -> None:
        contain = self.rules.contains(alert.rule)
        code = f"anomaly.{alert.rule}"
        quarantined = False
        if contain:
            try:
                quarantined = self._quarantine(alert.principal, code)
            except Exception:
                log.exception("could not quarantine principal %s", alert.principal)
        log.warning(
            "anomaly rule %s fired for principal %s%s",
            alert.rule,
            alert.principal,
            "; quarantined" if quarantined else "",
            extra={"principal": alert.principal, "code": code},
        )
        self._busy.active = True
        try:
            self._audit.append(
                {
                    "decision": "alert",
                    "code": code,
                    "rule": alert.rule,
                    "principal": alert.principal,
                    "door": record.get("door"),
                    "request_id": record.get("request_id"),
                    "query_id": record.get("query_id"),
                    "contain": contain,
                    "quarantined": quarantined,
                    "detail": alert.detail,
                }
            )
        finally:
            self._busy.active = False
        if self._on_alert is not None:
            self._on_alert(alert.rule, quarantined)


def _expire(times: deque[float], cutoff: float) -> None:
    while times and times[0] < cutoff:
        times.popleft()


def _epsilon(record: Mapping[str, Any]) -> Fraction | None:
    if record.get("decision") != "accepted" or record.get("code") != "ok":
        return None
    try:
        value = Fraction(str(record.get("epsilon")))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _num(seconds: float) -> str:
    """Audit records refuse floats (no canonical text): seconds as a string."""
    return f"{seconds:g}"
