"""Verification of the audit chain: one walk over the stored rows, no I/O of its own.

:func:`verify_chain` is what :meth:`gateway.audit.AuditLog.verify` runs over the database, and
what an offline check runs over rows read once (the tamper tests do). It starts at the retention
anchor sealed in the head (the genesis hash until the first purge), or at an external checkpoint,
and checks each record in sequence order:

1. its seq is the next one (no gap, nothing before the start);
2. its ``prev_hash`` is the previous record's hash (not checked for the first record of a walk
   that starts at a checkpoint: the checkpoint pins that record's own hash instead);
3. its hash matches its content (seq, id, ts and the record text exactly as stored);
4. its seal (HMAC of seq and hash) verifies under the key it names;
5. its indexed columns are exact copies of the record's fields;
6. its hash equals every seal that names its seq: the head's, the stored checkpoints', the
   external checkpoints'.

After the walk, the head must exist and verify, and nothing it or a checkpoint seals may lie
beyond the last record. The first fault found is reported; ``first_bad_seq`` names the record
(``None`` when the fault is in the head or a checkpoint itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from gateway.audit_schema import GENESIS_HASH, INDEXED_FIELDS
from gateway.audit_seal import (
    Checkpoint,
    Head,
    KeyRing,
    canonical_json,
    decode,
    hash_body,
    indexed_copies,
    record_message,
)


class StoredRecord(NamedTuple):
    """One row of ``audit_log`` as stored (untrusted)."""

    seq: int
    id: str
    ts: str
    record: str
    prev_hash: str
    hash: str
    key_id: str | None
    mac: str | None
    principal: str | None
    dataset: str | None
    decision: str | None
    code: str | None


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of a verification.

    ``checked`` counts the records found intact before the first fault (all of them when ``ok``);
    ``first_bad_seq`` is ``None`` when the log is intact or when the fault is in the head or in a
    checkpoint itself.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str


#: Rows with ``seq >= start`` in sequence order (every row when ``start`` is ``None``).
RowReader = Callable[[int | None], Iterable[StoredRecord]]


class _Broken(Exception):
    def __init__(self, result: VerifyResult) -> None:
        super().__init__(result.reason)
        self.result = result


def _fail(seq: int | None, checked: int, reason: str) -> NoReturn:
    raise _Broken(VerifyResult(ok=False, checked=checked, first_bad_seq=seq, reason=reason))


@dataclass(frozen=True)
class _Pin:
    """A hash some seal says record ``seq`` has."""

    hash: str
    mismatch: str  # the reason given when the record's hash differs
    source: str  # what seals it, for "beyond the end" reasons
    problem: str | None = None  # why the seal itself does not verify


def verify_chain(
    read_rows: RowReader,
    *,
    keys: KeyRing,
    head: Head | None,
    checkpoints: Iterable[Checkpoint] = (),
    from_checkpoint: Checkpoint | None = None,
    external: Iterable[Checkpoint] = (),
    reread_head: Callable[[], Head | None] | None = None,
    require_seals: bool = True,
) -> VerifyResult:
    """Walk the chain and report its first fault (see the module docstring).

    Args:
        read_rows: the stored rows (see :data:`RowReader`).
        keys: the audit keys, current and previous.
        head: the head as read *after* ``checkpoints`` (so no stored checkpoint is newer).
        checkpoints: the checkpoints stored in the database.
        from_checkpoint: start here instead of at the anchor (an auditor's copy).
        external: more external checkpoints the chain must agree with.
        reread_head: reads the head again, for records appended during the walk.
        require_seals: ``False`` only to adopt rows written before seals existed (then an
            unsealed row is held to revision 0001's checks: links, content and the head).
    """
    try:
        walk = _Walk(keys, head, require_seals)
        walk.plan(checkpoints, from_checkpoint, tuple(external))
        walk.run(read_rows)
        walk.finish(reread_head)
    except _Broken as broken:
        return broken.result
    return VerifyResult(ok=True, checked=walk.checked, first_bad_seq=None, reason="ok")


class _Walk:
    def __init__(self, keys: KeyRing, head: Head | None, require_seals: bool) -> None:
        self.keys = keys
        self.head = head
        self.require_seals = require_seals
        self.head_problem = (
            None if head is None else keys.problem(head.message(), head.mac, head.key_id)
        )
        self.trusted = head if head is not None and self.head_problem is None else None
        # An untrusted head's anchor is still where the walk starts: the head fault is reported
        # at the end, after any fault in the records.
        self.anchor_seq = head.anchor_seq if head is not None else 0
        self.anchor_hash = head.anchor_hash if head is not None else GENESIS_HASH
        self.start = self.anchor_seq + 1
        self.prev: str | None = self.anchor_hash
        self.read_from: int | None = None
        self.pins: dict[int, list[_Pin]] = {}
        self.beyond: dict[int, tuple[str, str]] = {}  # seq -> (id, hash) past the first head
        self.checked = 0
        self.last: int | None = None

    # -- before the walk --------------------------------------------------------------------

    def plan(
        self,
        stored: Iterable[Checkpoint],
        given: Checkpoint | None,
        external: tuple[Checkpoint, ...],
    ) -> None:
        stored_by_seq = {cp.seq: cp for cp in stored}
        for cp in (given, *external) if given is not None else external:
            problem = self.keys.problem(cp.message(), cp.mac, cp.key_id)
            if problem is not None:
                _fail(None, 0, f"the given checkpoint of seq {cp.seq} is not genuine: {problem}")
            if cp.seq <= self.anchor_seq:
                self._check_purged(cp, stored_by_seq.get(cp.seq))
        if given is not None and given.seq > self.anchor_seq:
            if self.trusted is not None and given.seq > self.trusted.last_seq:
                _fail(
                    self.trusted.last_seq + 1,
                    0,
                    f"record seq {self.trusted.last_seq + 1} is missing: the given checkpoint "
                    f"seals seq {given.seq} but the audit head ends the log at seq "
                    f"{self.trusted.last_seq} (records were removed and the head rolled back)",
                )
            self.start, self.prev, self.read_from = given.seq, None, given.seq
        if self.trusted is not None:
            self._pin(
                self.trusted.last_seq,
                _Pin(
                    self.trusted.last_hash,
                    "hash differs from the one sealed in the audit head",
                    "the audit head",
                ),
            )
        for cp in stored_by_seq.values():
            problem = self.keys.problem(cp.message(), cp.mac, cp.key_id)
            self._pin(
                cp.seq,
                _Pin(
                    cp.hash,
                    f"does not match the checkpoint stored for it (made {cp.ts})",
                    f"the checkpoint stored for seq {cp.seq}",
                    problem,
                ),
            )
        for cp in (given, *external) if given is not None else external:
            self._pin(
                cp.seq,
                _Pin(
                    cp.hash,
                    f"does not match the given checkpoint (made {cp.ts}): the chain was "
                    "rewritten after the checkpoint was taken",
                    f"the given checkpoint of seq {cp.seq}",
                ),
            )

    def _check_purged(self, cp: Checkpoint, stored: Checkpoint | None) -> None:
        """A checkpoint at or before the anchor: its records are gone; compare what remains."""
        if cp.seq == self.anchor_seq:
            if cp.hash != self.anchor_hash:
                _fail(
                    None,
                    0,
                    f"the given checkpoint of seq {cp.seq} does not match the retention anchor "
                    "sealed in the audit head",
                )
            return
        if stored is None or stored.hash != cp.hash:
            _fail(
                None,
                0,
                f"the given checkpoint of seq {cp.seq} predates the retention anchor (seq "
                f"{self.anchor_seq}) and does not match the checkpoint kept for that seq",
            )

    def _pin(self, seq: int, pin: _Pin) -> None:
        if seq >= self.start:
            self.pins.setdefault(seq, []).append(pin)

    # -- the walk -----------------------------------------------------------------------------

    def run(self, read_rows: RowReader) -> None:
        expected = self.start
        head_seq = self.trusted.last_seq if self.trusted is not None else None
        for row in read_rows(self.read_from):
            seq = row.seq
            label = f"record seq {seq} (id {row.id})"
            if seq > expected:
                _fail(
                    expected,
                    self.checked,
                    f"record seq {expected} is missing (the next is {label})",
                )
            if seq < expected:
                if seq >= self.start:
                    _fail(seq, self.checked, f"{label}: its sequence number repeats")
                if self.anchor_seq == 0:
                    _fail(seq, self.checked, f"{label}: sequence numbers must start at 1")
                _fail(
                    seq,
                    self.checked,
                    f"{label}: lies at or before the retention anchor (seq {self.anchor_seq}), "
                    "where every record was purged",
                )
            if self.prev is not None and row.prev_hash != self.prev:
                _fail(seq, self.checked, f"{label}: prev_hash does not match {self._link(seq)}")
            self._check_row(row, label)
            for pin in self.pins.get(seq, ()):
                if pin.problem is not None:
                    _fail(None, self.checked, f"{pin.source} is not genuine: {pin.problem}")
                if row.hash != pin.hash:
                    _fail(seq, self.checked, f"{label}: {pin.mismatch}")
            if head_seq is not None and seq > head_seq:
                self.beyond[seq] = (row.id, row.hash)
            self.prev, expected, self.checked, self.last = (
                row.hash,
                expected + 1,
                self.checked + 1,
                seq,
            )

    def _link(self, seq: int) -> str:
        if seq == 1:
            return "the genesis hash"
        if seq - 1 == self.anchor_seq:
            return f"the retention anchor (the hash of seq {seq - 1})"
        return f"the hash of seq {seq - 1}"

    def _check_row(self, row: StoredRecord, label: str) -> None:
        seq, checked = row.seq, self.checked
        digest = hash_body(
            row.prev_hash, seq=seq, audit_id=row.id, ts=row.ts, record_json=row.record
        )
        if digest != row.hash:
            _fail(seq, checked, f"{label}: {_content_fault(row.record)}")
        if row.mac is None:
            if self.require_seals:
                _fail(seq, checked, f"{label}: is not sealed (no MAC)")
            return  # adopting rows from before seals: no indexed copies to compare either
        problem = self.keys.problem(record_message(seq, row.hash), row.mac, row.key_id)
        if problem is not None:
            _fail(seq, checked, f"{label}: {problem}")
        try:
            copies = indexed_copies(decode(row.record))
        except ValueError:
            _fail(seq, checked, f"{label}: record is not valid JSON")
        for name in INDEXED_FIELDS:
            stored = getattr(row, name)
            if stored != copies[name]:
                _fail(
                    seq,
                    checked,
                    f"{label}: column {name} ({stored!r}) differs from the record's "
                    f"{name} ({copies[name]!r})",
                )

    # -- after the walk -----------------------------------------------------------------------

    def finish(self, reread_head: Callable[[], Head | None] | None) -> None:
        checked = self.checked
        last = self.last if self.last is not None else self.start - 1
        if self.head is None:
            _fail(None, checked, f"the audit head row is missing ({checked} records exist)")
        if self.trusted is None:
            _fail(
                None, checked, f"the audit head's {self.head_problem}: the head was forged or moved"
            )
        head = self.trusted
        if head.anchor_seq > head.last_seq:
            _fail(None, checked, "the audit head's retention anchor lies beyond its last record")
        if head.last_seq == head.anchor_seq and head.last_hash != head.anchor_hash:
            _fail(None, checked, "the audit head's retention anchor contradicts its last hash")
        if last < head.last_seq:
            _fail(
                last + 1,
                checked,
                f"record seq {last + 1} is missing: the audit head says the log ends at seq "
                f"{head.last_seq} but the last record is seq {last}",
            )
        for seq in sorted(s for s in self.pins if s > last):
            pin = self.pins[seq][0]
            _fail(
                last + 1,
                checked,
                f"record seq {last + 1} is missing: {pin.source} seals seq {seq} but the last "
                f"record is seq {last}",
            )
        if last > head.last_seq:
            self._beyond_head(reread_head, last)

    def _beyond_head(self, reread_head: Callable[[], Head | None] | None, last: int) -> None:
        # Records beyond the head read at the start: legitimate only if appended meanwhile.
        checked = self.checked
        now = reread_head() if reread_head is not None else self.trusted
        if now is None or self.keys.problem(now.message(), now.mac, now.key_id) is not None:
            _fail(
                None, checked, "the audit head changed during verification and no longer verifies"
            )
        if last > now.last_seq:
            extra = self.beyond.get(now.last_seq + 1, ("?", ""))[0]
            _fail(
                now.last_seq + 1,
                checked - (last - now.last_seq),
                f"record seq {now.last_seq + 1} (id {extra}) is beyond the audit head (seq "
                f"{now.last_seq}): it was not appended through the log",
            )
        walked = self.beyond.get(now.last_seq)
        if walked is not None and walked[1] != now.last_hash:
            _fail(
                now.last_seq,
                checked - (last - now.last_seq) - 1,
                f"record seq {now.last_seq} (id {walked[0]}): hash differs from the one sealed "
                "in the audit head",
            )


def _content_fault(text: str) -> str:
    """Why a record's hash does not match: the most specific reason that applies."""
    try:
        record = decode(text)
    except ValueError:
        return "record is not valid JSON"
    if canonical_json(record) != text:
        return "record text was altered (not in canonical form)"
    return "hash does not match its content"
