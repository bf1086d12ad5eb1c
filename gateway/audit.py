"""The append-only, hash-chained, sealed audit log, kept in the control database.

Every record gets a sequence number (1, 2, 3, … with no gaps), a random audit id (returned to the
user so that an answer can be traced), a UTC timestamp, a chain hash over all of that and the
previous record's hash, and a seal: an HMAC of its seq and hash under the audit key, which lives
with the gateway and never in the database (``gateway.audit_seal`` has the formulas). The one row
of ``audit_head`` holds the last seq and hash and the retention anchor, sealed too. Every
``checkpoint_every`` records, and on demand, a sealed checkpoint {seq, hash, ts, key_id, mac} is
stored in ``audit_checkpoints`` and appended to a JSON-lines file an auditor can keep elsewhere.

Against someone with write access to the database but without the key, :meth:`AuditLog.verify`
names the first record that was changed, deleted, inserted, reordered or appended behind the
gateway's back, and catches a truncated tail (the head still names the old end and cannot be moved
without the key) and doctored checkpoints or indexed columns.

What the database alone cannot show, and an external checkpoint can: a rollback to an older copy
of the whole database (every seal in it is genuine), a wipe followed by a fresh log, and a
rewrite by someone who holds the key. :meth:`AuditLog.verify` with ``from_checkpoint`` reports a
checkpoint the chain no longer matches, or one beyond its end.

Retention: :meth:`AuditLog.purge` deletes the records up to the newest checkpoint made at or before
a given time, makes that checkpoint the anchor the head seals (verification starts there) and
appends a record of the purge, all in one transaction.

The log stores what callers give it. Never pass true (pre-noise) values or the noise itself: callers
build records from released values only. Floats are refused (their text form is not canonical); pass
them as ``str``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from budgets.prepared import Prepared
from gateway.audit_adopt import adopt_unsealed
from gateway.audit_query import AuditFilter, stored_time
from gateway.audit_read import (
    AuditError,
    AuditIntegrityError,
    AuditPage,
    AuditReader,
    read_head_row,
    to_checkpoint,
)
from gateway.audit_schema import (
    GENESIS_HASH,
    HEAD_ID,
    audit_checkpoints,
    audit_head,
    audit_log,
    metadata,
)
from gateway.audit_seal import (
    Checkpoint,
    Head,
    KeyRing,
    canonical_json,
    checkpoint_message,
    entry_hash,
    hash_body,
    indexed_copies,
    plain,
    record_message,
)
from gateway.audit_verify import VerifyResult, verify_chain

__all__ = [
    "CHECKPOINT_FILE",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditError",
    "AuditFilter",
    "AuditIntegrityError",
    "AuditLog",
    "AuditPage",
    "Checkpoint",
    "PreparedRecord",
    "PurgeResult",
    "VerifyResult",
    "canonical_json",
    "entry_hash",
    "metadata",
]

log = logging.getLogger("privgate.audit")

CHECKPOINT_FILE = "audit-checkpoints.jsonl"
"""The file, in ``checkpoint_dir``, that every new checkpoint is appended to as one JSON line."""


@dataclass(frozen=True)
class AuditEntry:
    """Where a record landed in the chain."""

    seq: int
    id: str
    ts: str
    hash: str


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record ready to append (:meth:`AuditLog.prepare`): plain JSON values, their canonical
    serialisation (what the chain hashes and stores) and the indexed columns' copies."""

    value: dict[str, Any]
    json: str
    indexed: dict[str, str | None]


@dataclass(frozen=True)
class PurgeResult:
    """What :meth:`AuditLog.purge` removed, the new anchor, and the audit id of its record."""

    purged: int
    up_to_seq: int | None
    anchor: Checkpoint | None
    audit_id: str


# Built once: constructing a statement per append cost more than executing it.
_HASH_OF = Prepared(select(audit_log.c.hash).where(audit_log.c.seq == bindparam("at")))
_INSERT_RECORD = Prepared(insert(audit_log))
_UPDATE_HEAD = Prepared(
    update(audit_head)
    .where(audit_head.c.id == HEAD_ID)
    .values(
        last_seq=bindparam("new_seq"),
        last_hash=bindparam("new_hash"),
        mac=bindparam("new_mac"),
        key_id=bindparam("new_key_id"),
        anchor_seq=bindparam("new_anchor_seq"),
        anchor_hash=bindparam("new_anchor_hash"),
    )
)


class AuditLog(AuditReader):
    """The audit log in the control database (see the module docstring for the guarantees)."""

    def __init__(
        self,
        engine: Engine,
        *,
        mac_key: bytes,
        old_keys: Iterable[bytes] = (),
        checkpoint_every: int = 1000,
        checkpoint_dir: Path | None = None,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(engine, batch_size=batch_size)
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be positive")
        self._keys = KeyRing(mac_key, old_keys)
        self._every = checkpoint_every
        self._dir = checkpoint_dir
        self._file_lock = threading.Lock()

    @property
    def key_id(self) -> str:
        """The id of the key that seals new records, heads and checkpoints."""
        return self._keys.current_id

    def create_schema(self) -> None:
        """Create the tables and, for a new log, the genesis head; seal rows from before seals.

        Idempotent. Rows written before revision 0002 carry no seal; they are sealed here, once,
        and only if the chain passes the checks of that revision (links, hashes, the head); a
        tampered old log stays unsealed, and :meth:`verify` reports it. See ``audit_adopt``.
        """
        metadata.create_all(self._engine)
        try:
            with self._engine.begin() as conn:
                # A head is only created for an empty log: re-creating a deleted head over existing
                # records would launder a truncation; verify() reports the missing head instead.
                if (
                    read_head_row(conn, lock=True) is None
                    and conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == 0
                ):
                    key_id, mac = self._keys.seal(Head(0, GENESIS_HASH, "", None).message())
                    conn.execute(
                        insert(audit_head).values(
                            id=HEAD_ID, last_seq=0, last_hash=GENESIS_HASH, mac=mac, key_id=key_id
                        )
                    )
        except IntegrityError:
            pass  # Another replica created the head first.
        adopt_unsealed(self, self._keys, batch_size=self._batch)

    # -- writing ------------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> AuditEntry:
        """Append ``record`` (str/int/bool/None, lists and str-keyed dicts of them) to the chain.

        Raises:
            TypeError: the record holds a float or another value without one canonical JSON form.
            AuditIntegrityError: the head is missing or forged, or does not match the last record.
        """
        with self._engine.begin() as conn:
            entry, checkpoint = self.append_in(conn, record)
        self.written(checkpoint)
        return entry

    def prepare(self, record: Mapping[str, Any]) -> PreparedRecord:
        """The part of an append that needs no lock: the record checked, copied and serialised.

        For callers that append under a shared write turn (``append_in``): done before it.
        """
        value = plain(record, "record")
        if not isinstance(value, dict):
            raise TypeError("an audit record must be a mapping")
        return PreparedRecord(value, canonical_json(value), indexed_copies(value))

    def append_in(
        self, conn: Connection, record: Mapping[str, Any] | PreparedRecord
    ) -> tuple[AuditEntry, Checkpoint | None]:
        """:meth:`append` as a step of the caller's transaction on this log's database.

        The record is durable when the caller commits. Pass the checkpoint returned (if any) to
        :meth:`written` after that commit, not before: the checkpoint file must only ever name
        records that exist.
        """
        prepared = record if isinstance(record, PreparedRecord) else self.prepare(record)
        # FOR UPDATE serializes writers on PostgreSQL; on SQLite BEGIN IMMEDIATE already has.
        head = self._locked_head(conn, "append")
        return self._append_locked(conn, head, prepared)

    def written(self, checkpoint: Checkpoint | None) -> None:
        """After the commit of :meth:`append_in`: copy a new checkpoint to the checkpoint file."""
        if checkpoint is not None:
            self._write_checkpoint_file(checkpoint)

    def checkpoint(self) -> Checkpoint:
        """Seal a checkpoint of the current last record now (or return the one it already has)."""
        with self._engine.begin() as conn:
            head = self._locked_head(conn, "checkpoint")
            found = conn.execute(
                select(audit_checkpoints).where(audit_checkpoints.c.seq == head.last_seq)
            ).one_or_none()
            if found is not None:
                return to_checkpoint(found)
            made = self._store_checkpoint(conn, head.last_seq, head.last_hash, _now())
        self._write_checkpoint_file(made)
        return made

    def purge(self, before: datetime, *, actor: str, door: str) -> PurgeResult:
        """Delete the records up to the newest checkpoint made at or before ``before``.

        That checkpoint becomes the anchor sealed in the head, so the rest still verifies, and a
        record of the purge (who, ``before``, up to which seq) is appended in the same
        transaction. Records after that checkpoint stay, even if older than ``before``.

        Raises:
            ValueError: ``before`` has no time zone or lies in the future.
            AuditIntegrityError: the log does not verify (nothing is deleted then).
        """
        if before.tzinfo is None:
            raise ValueError("before must carry a time zone")
        if before > datetime.now(UTC):
            raise ValueError("before lies in the future")
        cutoff = stored_time(before)
        # Purging destroys evidence: only of a chain that verifies.
        result = self.verify()
        if not result.ok:
            raise AuditIntegrityError(
                f"the audit log does not verify ({result.reason}); refusing to purge"
            )
        with self._engine.begin() as conn:
            head = self._locked_head(conn, "purge")
            found = conn.execute(
                select(audit_checkpoints)
                .where(
                    audit_checkpoints.c.seq > head.anchor_seq,
                    audit_checkpoints.c.seq <= head.last_seq,
                    audit_checkpoints.c.ts <= cutoff,
                )
                .order_by(audit_checkpoints.c.seq.desc())
                .limit(1)
            ).one_or_none()
            anchor = None if found is None else to_checkpoint(found)
            purged = 0
            if anchor is not None:
                self._check_anchor(conn, anchor)
                purged = conn.execute(
                    delete(audit_log).where(audit_log.c.seq <= anchor.seq)
                ).rowcount
                head = replace(head, anchor_seq=anchor.seq, anchor_hash=anchor.hash)
            entry, made = self._append_locked(
                conn,
                head,
                self.prepare(
                    {
                        "decision": "admin",
                        "action": "audit.purge",
                        "actor": actor,
                        "target": "audit_log",
                        "door": door,
                        "code": "ok",
                        "before": cutoff,
                        "up_to_seq": None if anchor is None else anchor.seq,
                        "purged": purged,
                    }
                ),
            )
        if made is not None:
            self._write_checkpoint_file(made)
        return PurgeResult(
            purged=purged,
            up_to_seq=None if anchor is None else anchor.seq,
            anchor=anchor,
            audit_id=entry.id,
        )

    # -- checking -----------------------------------------------------------------------------

    def verify(
        self,
        from_checkpoint: Checkpoint | Mapping[str, Any] | None = None,
        *,
        checkpoints: Iterable[Checkpoint | Mapping[str, Any]] = (),
    ) -> VerifyResult:
        """Walk the chain in sequence order and report the first fault.

        Starts at the retention anchor, or at ``from_checkpoint`` (a checkpoint kept outside the
        database, as read from the checkpoint file). ``checkpoints`` are more external checkpoints
        the chain must agree with. Reads in batches of short transactions, so appends continue
        meanwhile; records appended during the walk are covered by re-reading the head.

        Raises:
            ValueError: a given checkpoint is malformed.
        """
        given = _as_checkpoint(from_checkpoint)
        external = [c for c in map(_as_checkpoint, checkpoints) if c is not None]
        result, head = self._verify_once(given, external)
        if not result.ok:
            # A purge that ran during the walk moved the anchor under it: walk again, once.
            now = self.read_head()
            if head is not None and now is not None and head.anchor_seq != now.anchor_seq:
                result, _ = self._verify_once(given, external)
        return result

    def verify_checkpoints(
        self, checkpoints: Iterable[Checkpoint | Mapping[str, Any]]
    ) -> VerifyResult:
        """Verify from the earliest of ``checkpoints`` the log still holds, against all of them.

        This is how an auditor checks the log against the checkpoint file they keep: the walk
        starts at the oldest checkpoint not yet purged (or, if all were, checks the newest against
        what the purge kept), and every checkpoint must match the chain.

        Raises:
            ValueError: no checkpoint given, or a malformed one.
        """
        given = sorted(
            (c for c in map(_as_checkpoint, checkpoints) if c is not None), key=lambda c: c.seq
        )
        if not given:
            raise ValueError("no checkpoint given")
        head = self.read_head()
        anchor = 0 if head is None else head.anchor_seq
        start = next((c for c in given if c.seq >= anchor), given[-1])
        return self.verify(start, checkpoints=[c for c in given if c is not start])

    def _verify_once(
        self, given: Checkpoint | None, external: list[Checkpoint]
    ) -> tuple[VerifyResult, Head | None]:
        stored = self.read_checkpoints()  # before the head: no stored checkpoint is newer
        head = self.read_head()
        result = verify_chain(
            self.stored_records,
            keys=self._keys,
            head=head,
            checkpoints=stored,
            from_checkpoint=given,
            external=external,
            reread_head=self.read_head,
        )
        return result, head

    # -- internals ----------------------------------------------------------------------------

    def _locked_head(self, conn: Connection, doing: str) -> Head:
        head = read_head_row(conn, lock=True)
        if head is None:
            raise AuditIntegrityError(f"the audit head is missing; refusing to {doing}")
        problem = self._keys.problem(head.message(), head.mac, head.key_id)
        if problem is not None:
            raise AuditIntegrityError(f"the audit head's {problem}; refusing to {doing}")
        if head.last_seq > head.anchor_seq:
            # A separate statement, after the lock: on PostgreSQL (read committed) it sees the
            # record the previous lock holder committed, which a join in the locking statement
            # would not.
            stored = _HASH_OF.run(conn, {"at": head.last_seq}).scalar_one_or_none()
            if stored != head.last_hash:
                raise AuditIntegrityError(
                    f"record seq {head.last_seq} does not match the audit head; refusing to {doing}"
                )
        return head

    def _append_locked(
        self, conn: Connection, head: Head, record: PreparedRecord
    ) -> tuple[AuditEntry, Checkpoint | None]:
        seq, audit_id, ts = head.last_seq + 1, uuid.uuid4().hex, _now()
        digest = hash_body(
            head.last_hash, seq=seq, audit_id=audit_id, ts=ts, record_json=record.json
        )
        key_id, mac = self._keys.seal(record_message(seq, digest))
        try:
            _INSERT_RECORD.run(
                conn,
                {
                    "seq": seq,
                    "id": audit_id,
                    "ts": ts,
                    "record": record.json,
                    "prev_hash": head.last_hash,
                    "hash": digest,
                    "key_id": key_id,
                    "mac": mac,
                    **record.indexed,
                },
            )
        except IntegrityError as exc:
            raise AuditIntegrityError(
                f"seq {seq} already exists beyond the audit head; refusing to append"
            ) from exc
        new = replace(head, last_seq=seq, last_hash=digest)
        head_key, head_mac = self._keys.seal(new.message())
        _UPDATE_HEAD.run(
            conn,
            {
                "new_seq": seq,
                "new_hash": digest,
                "new_mac": head_mac,
                "new_key_id": head_key,
                "new_anchor_seq": new.anchor_seq,
                "new_anchor_hash": new.anchor_hash,
            },
        )
        made = self._store_checkpoint(conn, seq, digest, ts) if seq % self._every == 0 else None
        return AuditEntry(seq=seq, id=audit_id, ts=ts, hash=digest), made

    def _store_checkpoint(self, conn: Connection, seq: int, digest: str, ts: str) -> Checkpoint:
        key_id, mac = self._keys.seal(checkpoint_message(seq, digest, ts))
        made = Checkpoint(seq=seq, hash=digest, ts=ts, key_id=key_id, mac=mac)
        conn.execute(insert(audit_checkpoints).values(**made.as_json()))
        return made

    def _check_anchor(self, conn: Connection, anchor: Checkpoint) -> None:
        problem = self._keys.problem(anchor.message(), anchor.mac, anchor.key_id)
        stored = conn.execute(
            select(audit_log.c.hash).where(audit_log.c.seq == anchor.seq)
        ).scalar_one_or_none()
        if problem is not None or stored != anchor.hash:
            raise AuditIntegrityError(
                f"the checkpoint of seq {anchor.seq} does not verify; refusing to purge"
            )

    def _write_checkpoint_file(self, checkpoint: Checkpoint) -> None:
        if self._dir is None:
            return
        path = self._dir / CHECKPOINT_FILE
        line = canonical_json(checkpoint.as_json()) + "\n"
        try:
            with self._file_lock:
                self._dir.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
        except OSError:
            # The checkpoint is stored in the database already; the append must not fail now.
            log.exception(
                "could not append the audit checkpoint of seq %d to %s", checkpoint.seq, path
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _as_checkpoint(value: Checkpoint | Mapping[str, Any] | None) -> Checkpoint | None:
    if value is None or isinstance(value, Checkpoint):
        return value
    return Checkpoint.from_json(value)
