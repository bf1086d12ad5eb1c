"""Filters over the audit log: by principal, dataset, decision, code and time, in SQL.

The first four match the record's fields of the same name exactly, through their indexed copies
(see ``gateway.audit_schema``); ``since`` (inclusive) and ``until`` (exclusive) compare the record's
UTC timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement

from gateway.audit_schema import audit_log


def parse_time(text: str, name: str = "time") -> datetime:
    """Read an ISO 8601 time *with* a zone (``Z`` or an offset); a bare date is midnight UTC.

    >>> parse_time("2025-01-31T10:00:00+01:00").isoformat()
    '2025-01-31T09:00:00+00:00'
    >>> parse_time("2025-01-31").isoformat()
    '2025-01-31T00:00:00+00:00'

    Raises:
        ValueError: not an ISO 8601 time, or a time without a zone.
    """
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        if len(text) == len("2025-01-31"):
            return value.replace(tzinfo=UTC)
        raise ValueError(f"{name} {text!r} has no time zone; write it like 2025-01-31T00:00:00Z")
    return value.astimezone(UTC)


def stored_time(value: datetime) -> str:
    """``value`` in the form the audit log stores timestamps (UTC, microseconds)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AuditFilter:
    """Which records to list or export; ``None`` fields do not filter."""

    principal: str | None = None
    dataset: str | None = None
    decision: str | None = None
    code: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must carry a time zone")

    def conditions(self) -> list[ColumnElement[bool]]:
        """The SQL conditions on ``audit_log`` this filter stands for."""
        out: list[ColumnElement[bool]] = []
        for name in ("principal", "dataset", "decision", "code"):
            value = getattr(self, name)
            if value is not None:
                out.append(audit_log.c[name] == value)
        if self.since is not None:
            out.append(audit_log.c.ts >= stored_time(self.since))
        if self.until is not None:
            out.append(audit_log.c.ts < stored_time(self.until))
        return out
