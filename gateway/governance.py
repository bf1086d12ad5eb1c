"""The governance report: who accessed what, what was refused, budgets, retention, policy history.

Built from the audit log (one pass over every record, in sequence order), the ledger (through
:meth:`gateway.admin_ops.AdminOps.budgets`) and the principals table. Shared by
``GET /v1/admin/governance`` and ``privgate governance``. Like the audit log it summarises, it holds
costs, codes and counts of requests, never a data value.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from budgets.cost import fraction_str
from gateway.admin_ops import AdminOps

QUERY_DECISIONS = ("accepted", "rejected", "explained")


@dataclass
class _Access:
    accepted: int = 0
    replayed: int = 0
    rejected: int = 0
    explained: int = 0
    epsilon: Fraction = Fraction(0)
    delta: Fraction = Fraction(0)
    last_ts: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "replayed": self.replayed,
            "rejected": self.rejected,
            "explained": self.explained,
            "epsilon_charged": fraction_str(self.epsilon),
            "delta_charged": fraction_str(self.delta),
            "last_ts": self.last_ts,
        }


@dataclass
class _Seen:
    first_ts: str
    last_ts: str
    records: int = 0


@dataclass
class _Tally:
    """Everything the report derives from the audit log, accumulated in one pass."""

    access: dict[tuple[str, str], _Access] = field(default_factory=lambda: defaultdict(_Access))
    violations: Counter[str] = field(default_factory=Counter)
    violations_by_principal: dict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    admin_actions: Counter[str] = field(default_factory=Counter)
    policy: dict[str, _Seen] = field(default_factory=dict)
    count: int = 0
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None

    def add(self, entry: Mapping[str, Any]) -> None:
        seq, ts, rec = int(entry["seq"]), str(entry["ts"]), entry["record"]
        self.count += 1
        if self.first is None:
            self.first = (seq, ts)
        self.last = (seq, ts)
        if not isinstance(rec, Mapping):
            return
        decision, code = str(rec.get("decision", "")), str(rec.get("code", ""))
        principal = str(rec.get("principal") or "")
        version = rec.get("policy_version")
        if isinstance(version, str) and version:
            seen = self.policy.setdefault(version, _Seen(ts, ts))
            seen.last_ts, seen.records = ts, seen.records + 1
        if decision == "alert":
            self.alerts[(str(rec.get("rule", code)), principal)] += 1
        elif decision == "admin":
            self.admin_actions[str(rec.get("action", ""))] += 1
        if decision == "rejected":
            # Every refusal, including failed authentication (which names no principal).
            self.violations[code] += 1
            self.violations_by_principal[code][principal or "(unauthenticated)"] += 1
        if decision not in QUERY_DECISIONS or not principal:
            return
        acc = self.access[(principal, str(rec.get("dataset") or ""))]
        acc.last_ts = ts
        if decision == "explained":
            acc.explained += 1
        elif decision == "rejected":
            acc.rejected += 1
        elif code == "replayed":
            acc.replayed += 1
        else:
            acc.accepted += 1
            acc.epsilon += _fraction(rec.get("epsilon"))
            acc.delta += _fraction(rec.get("delta"))


def governance_report(
    ops: AdminOps,
    *,
    policy_version: str,
    retention: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (docs/api.md#get-v1admingovernance)."""
    tally = _Tally()
    for entry in ops.audit.export():
        tally.add(entry)
    return {
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "policy_version": policy_version,
        "access": [
            {"principal": p, "dataset": d or None, **a.as_json()}
            for (p, d), a in sorted(tally.access.items())
        ],
        "violations": [
            {
                "code": code,
                "count": n,
                "principals": dict(sorted(tally.violations_by_principal[code].items())),
            }
            for code, n in sorted(tally.violations.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "alerts": [
            {"rule": rule, "principal": p, "count": n}
            for (rule, p), n in sorted(tally.alerts.items())
        ],
        "admin_actions": dict(sorted(tally.admin_actions.items())),
        "budgets": ops.budgets(principal=None, dataset=None),
        "retention": {
            "records": tally.count,
            "oldest_seq": tally.first[0] if tally.first else None,
            "oldest_ts": tally.first[1] if tally.first else None,
            "newest_seq": tally.last[0] if tally.last else None,
            "newest_ts": tally.last[1] if tally.last else None,
            "settings": dict(retention or {}),
        },
        "policy_versions": [
            {"version": v, "first_seen": s.first_ts, "last_seen": s.last_ts, "records": s.records}
            for v, s in sorted(tally.policy.items(), key=lambda kv: (kv[1].first_ts, kv[0]))
        ],
        "quarantined": [
            {
                "principal": p.name,
                "since": None if p.quarantined_at is None else p.quarantined_at.isoformat(),
                "reason": p.quarantine_reason,
            }
            for p in ops.principals.list_quarantined()
        ],
    }


def retention_settings(settings: object, names: Iterable[str]) -> dict[str, Any]:
    """The audit-retention settings that exist (owned by the audit log), as JSON-safe values."""
    out: dict[str, Any] = {}
    for name in names:
        if "retention" in name or name.startswith("audit_purge"):
            value = getattr(settings, name, None)
            out[name] = (
                value if isinstance(value, int | str | bool) or value is None else str(value)
            )
    return out


def _fraction(value: object) -> Fraction:
    try:
        return Fraction(str(value)) if value is not None else Fraction(0)
    except (ValueError, ZeroDivisionError):
        return Fraction(0)
