"""Hashes and seals of the audit log: the pure half, shared by appending and verifying.

The chain hash of a record is::

    hash = sha256(prev_hash + "\\n" + canonical_json({"seq", "id", "ts", "record"}))

and every record, the head and every checkpoint is *sealed*: an HMAC-SHA256 under the audit key,
which lives with the gateway (settings or ``secrets.json``), never in the database. The messages
are domain-separated, so that no seal can be replayed as another kind::

    record      "record:{seq}:{hash}"
    head        "{last_seq}:{last_hash}"                       (never purged)
                "{last_seq}:{last_hash}:anchor:{seq}:{hash}"   (after a purge)
    checkpoint  "checkpoint:{seq}:{hash}:{ts}"

Each seal is stored with the id of its key (:func:`key_id`: the first 8 hex digits of the key's
SHA-256), so that after a key rotation what the previous keys sealed still verifies as long as
they are kept in the :class:`KeyRing`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.audit_schema import GENESIS_HASH, INDEXED_FIELDS, INDEXED_MAX_LEN

MIN_KEY_BYTES = 16

# Strings JSON writes as they are, between quotes: the fast path of canonical_str().
_PLAIN_STRING = re.compile(r"[ !#-\[\]-~]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical_json(obj: Any) -> str:
    """Serialize ``obj`` the one way the chain hashes it.

    >>> canonical_json({"b": 1, "a": [True, None, "é"]})
    '{"a":[true,null,"é"],"b":1}'
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_str(value: str) -> str:
    """``canonical_json(value)`` for a str, without the encoder's overhead in the common case.

    >>> canonical_str("2025-01-31T10:00:00.000000+00:00"), canonical_str('a"é')
    ('"2025-01-31T10:00:00.000000+00:00"', '"a\\\\"é"')
    """
    if _PLAIN_STRING.fullmatch(value):
        return f'"{value}"'
    return canonical_json(value)


def hash_body(prev_hash: str, *, seq: int, audit_id: str, ts: str, record_json: str) -> str:
    """The chain hash of one record, given its record as canonical JSON text.

    Equal to :func:`entry_hash` exactly when ``record_json`` is canonical: the keys of the hashed
    object sort as id, record, seq, ts. Verification hashes the stored text as it is, so any other
    spelling of the same record (not canonical) fails like any other change.
    """
    body = (
        f'{{"id":{canonical_str(audit_id)},"record":{record_json},'
        f'"seq":{seq},"ts":{canonical_str(ts)}}}'
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def entry_hash(prev_hash: str, *, seq: int, audit_id: str, ts: str, record: Any) -> str:
    """The chain hash of one record (``record`` already decoded into plain JSON values)."""
    return hash_body(
        prev_hash, seq=seq, audit_id=audit_id, ts=ts, record_json=canonical_json(record)
    )


def record_message(seq: int, digest: str) -> str:
    return f"record:{seq}:{digest}"


def head_message(last_seq: int, last_hash: str, anchor_seq: int, anchor_hash: str) -> str:
    if anchor_seq == 0 and anchor_hash == GENESIS_HASH:
        return f"{last_seq}:{last_hash}"  # the revision-0001 form: old heads still verify
    return f"{last_seq}:{last_hash}:anchor:{anchor_seq}:{anchor_hash}"


def checkpoint_message(seq: int, digest: str, ts: str) -> str:
    return f"checkpoint:{seq}:{digest}:{ts}"


def key_id(key: bytes) -> str:
    """The public id of an audit key: the first 8 hex digits of its SHA-256.

    >>> key_id(b"0123456789abcdef")
    '9f9f5111'
    """
    return hashlib.sha256(key).hexdigest()[:8]


class KeyRing:
    """The audit key that seals from now on, and the previous keys that still verify."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        self._keys: dict[str, bytes] = {}
        for key in (current, *old):
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"the audit MAC key must be at least {MIN_KEY_BYTES} random bytes")
            self._keys.setdefault(key_id(key), key)
        self.current_id = key_id(current)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id this ring verifies, the current one first."""
        return tuple(self._keys)

    def seal(self, message: str) -> tuple[str, str]:
        """``(key_id, mac)`` of ``message`` under the current key."""
        return self.current_id, _mac(self._keys[self.current_id], message)

    def problem(self, message: str, mac: object, key_id: object) -> str | None:
        """Why ``mac`` is not a seal of ``message`` under key ``key_id``; ``None`` when it is.

        Both values come from the database and are untrusted. A seal without a key id (a head
        written before revision 0002) is tried against every key.
        """
        if not isinstance(mac, str):
            return "MAC is missing"
        if key_id is None:
            candidates = list(self._keys.values())
        elif isinstance(key_id, str) and key_id in self._keys:
            candidates = [self._keys[key_id]]
        else:
            shown = str(key_id)[:16]
            return (
                f"MAC does not verify: it is sealed with key id {shown!r}, which is not "
                "configured (after a key rotation keep the old key in PRIVGATE_AUDIT_OLD_KEYS)"
            )
        given = mac.encode()  # bytes: compare_digest refuses non-ASCII str
        if any(hmac.compare_digest(_mac(k, message).encode(), given) for k in candidates):
            return None
        return "MAC does not verify"


def _mac(key: bytes, message: str) -> str:
    return hmac.digest(key, message.encode(), "sha256").hex()


@dataclass(frozen=True)
class Head:
    """The one row of ``audit_head``: the last record and the retention anchor, sealed."""

    last_seq: int
    last_hash: str
    mac: str
    key_id: str | None
    anchor_seq: int = 0
    anchor_hash: str = GENESIS_HASH

    def message(self) -> str:
        return head_message(self.last_seq, self.last_hash, self.anchor_seq, self.anchor_hash)


@dataclass(frozen=True)
class Checkpoint:
    """A sealed statement "record ``seq`` of this log has hash ``hash``", made at ``ts``."""

    seq: int
    hash: str
    ts: str
    key_id: str
    mac: str

    def message(self) -> str:
        return checkpoint_message(self.seq, self.hash, self.ts)

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "ts": self.ts,
            "key_id": self.key_id,
            "mac": self.mac,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint as written to the checkpoint file or returned by the API.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a checkpoint must be a JSON object")
        missing = [f for f in ("seq", "hash", "ts", "key_id", "mac") if f not in data]
        if missing:
            raise ValueError(f"the checkpoint lacks {', '.join(missing)}")
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("the checkpoint's seq must be a non-negative integer")
        if not isinstance(data["hash"], str) or not _HEX64.fullmatch(data["hash"]):
            raise ValueError("the checkpoint's hash must be 64 lowercase hex digits")
        for name in ("ts", "key_id", "mac"):
            if not isinstance(data[name], str):
                raise ValueError(f"the checkpoint's {name} must be a string")
        return cls(
            seq=seq, hash=data["hash"], ts=data["ts"], key_id=data["key_id"], mac=data["mac"]
        )


def indexed_copies(record: Any) -> dict[str, str | None]:
    """The values of the indexed columns for ``record`` (see ``gateway.audit_schema``).

    >>> indexed_copies({"principal": "ann", "code": 7, "decision": "x" * 300})
    {'principal': 'ann', 'dataset': None, 'decision': None, 'code': None}
    """
    fields = record if isinstance(record, dict) else {}
    out: dict[str, str | None] = {}
    for name in INDEXED_FIELDS:
        value = fields.get(name)
        out[name] = value if isinstance(value, str) and len(value) <= INDEXED_MAX_LEN else None
    return out


def plain(value: Any, path: str = "record") -> Any:
    """Copy ``value`` into plain JSON types, refusing anything without one canonical form.

    >>> plain({"a": (1, "x"), "b": None})
    {'a': [1, 'x'], 'b': None}
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        raise TypeError(f"{path} is a float; pass it as a str (floats have no canonical form)")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a non-string key {key!r}")
            out[str(key)] = plain(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{path} has unsupported type {type(value).__name__}")


def decode(text: str) -> Any:
    """Parse a stored record, refusing ``NaN`` and ``Infinity`` (not JSON).

    Raises:
        ValueError: ``text`` is not valid JSON.
    """
    return _DECODER.decode(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
