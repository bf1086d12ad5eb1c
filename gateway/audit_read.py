"""Reading the audit log: records, pages, exports, the head and the checkpoints. Needs no key.

:class:`AuditReader` is the read-only half of :class:`gateway.audit.AuditLog`. Nothing here checks
a seal: :meth:`gateway.audit.AuditLog.verify` does, over :meth:`AuditReader.stored_records`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Row, select

from budgets.errors import CodedError
from budgets.prepared import Prepared
from gateway.audit_query import AuditFilter
from gateway.audit_schema import HEAD_ID, audit_checkpoints, audit_head, audit_log
from gateway.audit_seal import Checkpoint, Head, decode
from gateway.audit_verify import StoredRecord


class AuditError(CodedError):
    """Root of every error the audit log raises."""

    code: ClassVar[str] = "audit.error"


class AuditIntegrityError(AuditError):
    """The stored log is not what the gateway wrote; it refuses to extend or decode it."""

    code = "audit.integrity"
    default_hint = "Run `privgate audit verify` and investigate before serving more queries."


@dataclass(frozen=True)
class AuditPage:
    """One page of records, newest first; pass ``next_before_seq`` as ``before_seq`` for more."""

    records: list[dict[str, Any]]
    next_before_seq: int | None


class AuditReader:
    """Read-only access to the audit tables, in short transactions of ``batch_size`` rows."""

    def __init__(self, engine: Engine, *, batch_size: int = 1000) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self._engine = engine
        self._batch = batch_size

    @property
    def engine(self) -> Engine:
        """The control database engine the log lives in."""
        return self._engine

    def get(self, audit_id: str) -> dict[str, Any] | None:
        """The record with audit id ``audit_id`` (see :meth:`export` for the shape), or ``None``."""
        with self._engine.connect() as conn:
            row = conn.execute(select(audit_log).where(audit_log.c.id == audit_id)).one_or_none()
        return None if row is None else _as_dict(row)

    def export(self, filters: AuditFilter | None = None) -> Iterator[dict[str, Any]]:
        """The matching records in sequence order: seq, id, ts, prev_hash, hash, key_id, mac and
        the decoded record."""
        conditions = (filters or AuditFilter()).conditions()
        after: int | None = None
        while True:
            query = select(audit_log).where(*conditions).order_by(audit_log.c.seq)
            if after is not None:
                query = query.where(audit_log.c.seq > after)
            with self._engine.connect() as conn:
                rows = conn.execute(query.limit(self._batch)).all()
            for row in rows:
                yield _as_dict(row)
            if len(rows) < self._batch:
                return
            after = int(rows[-1].seq)

    def page(
        self,
        filters: AuditFilter | None = None,
        *,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> AuditPage:
        """The newest ``limit`` matching records with a seq below ``before_seq``."""
        if limit < 1:
            raise ValueError("limit must be positive")
        query = select(audit_log).where(*(filters or AuditFilter()).conditions())
        if before_seq is not None:
            query = query.where(audit_log.c.seq < before_seq)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit + 1)).all()
        records = [_as_dict(row) for row in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(records, records[-1]["seq"] if more else None)

    def checkpoints_page(
        self, *, limit: int = 100, before_seq: int | None = None
    ) -> tuple[list[Checkpoint], int | None]:
        """The newest ``limit`` stored checkpoints below ``before_seq``, and the next cursor."""
        query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc())
        if before_seq is not None:
            query = query.where(audit_checkpoints.c.seq < before_seq)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        found = [to_checkpoint(row) for row in rows[:limit]]
        return found, (found[-1].seq if len(rows) > limit else None)

    def read_head(self) -> Head | None:
        """The stored head, unchecked."""
        with self._engine.connect() as conn:
            return read_head_row(conn, lock=False)

    def read_checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint in seq order, unchecked."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).all()
        return [to_checkpoint(row) for row in rows]

    def stored_records(self, start: int | None = None) -> Iterator[StoredRecord]:
        """The stored rows with ``seq >= start`` (all when ``None``) in seq order, unchecked."""
        # Keyset pagination, one short transaction per batch: on SQLite every transaction takes the
        # write lock, so a long-lived read would stall the gateway's appends.
        columns = [audit_log.c[name] for name in StoredRecord._fields]
        bound = None if start is None else audit_log.c.seq >= start
        while True:
            query = select(*columns).order_by(audit_log.c.seq).limit(self._batch)
            if bound is not None:
                query = query.where(bound)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            yield from map(_stored, rows)
            if len(rows) < self._batch:
                return
            bound = audit_log.c.seq > int(rows[-1].seq)


_HEAD_SELECT = select(audit_head).where(audit_head.c.id == HEAD_ID)
_HEAD = Prepared(_HEAD_SELECT)
_HEAD_LOCKED = Prepared(_HEAD_SELECT.with_for_update())  # Rendered on PostgreSQL, not SQLite.


def read_head_row(conn: Connection, *, lock: bool) -> Head | None:
    row = (_HEAD_LOCKED if lock else _HEAD).run(conn).one_or_none()
    if row is None:
        return None
    return Head(
        last_seq=int(row["last_seq"]),
        last_hash=str(row["last_hash"]),
        mac=str(row["mac"]),
        key_id=_text(row["key_id"]),
        anchor_seq=int(row["anchor_seq"]),
        anchor_hash=str(row["anchor_hash"]),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _stored(row: Row[Any]) -> StoredRecord:
    # Positional: the query selects StoredRecord's fields in order (and this runs once per row).
    seq, audit_id, ts, record, prev_hash, digest, *optional = tuple(row)
    return StoredRecord(
        int(seq),
        str(audit_id),
        str(ts),
        str(record),
        str(prev_hash),
        str(digest),
        *[None if v is None else str(v) for v in optional],
    )


def to_checkpoint(row: Row[Any]) -> Checkpoint:
    return Checkpoint(
        seq=int(row.seq),
        hash=str(row.hash),
        ts=str(row.ts),
        key_id=str(row.key_id),
        mac=str(row.mac),
    )


def _as_dict(row: Row[Any]) -> dict[str, Any]:
    try:
        record = decode(str(row.record))
    except ValueError as exc:
        raise AuditIntegrityError(f"record seq {row.seq} (id {row.id}) is not valid JSON") from exc
    return {
        "seq": int(row.seq),
        "id": str(row.id),
        "ts": str(row.ts),
        "prev_hash": str(row.prev_hash),
        "hash": str(row.hash),
        "key_id": _text(row.key_id),
        "mac": _text(row.mac),
        "record": record,
    }
