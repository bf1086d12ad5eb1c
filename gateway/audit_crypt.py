"""Full SQL text in audit records, encrypted at rest (``PRIVGATE_AUDIT_SQL_TEXT=full``).

By default an audit record keeps only the literal-redacted SQL (``sql``): an analyst's
``WHERE ssn = '…'`` never reaches the control database. Deployments that must keep what was asked
verbatim turn on full text; the text is then sealed with AES-256-GCM (``cryptography``) under a
key derived from ``PRIVGATE_AUDIT_ENCRYPTION_KEY``, with the record's ``query_id`` as associated
data, and stored as ``sql_sealed``. The redacted ``sql`` stays beside it for the anomaly rules
and for readers without the key. ``privgate audit reveal`` decrypts for an admin who has the key.

>>> c = SqlCipher(b"an example key of enough length")
>>> sealed = c.seal("SELECT 1 WHERE x = 'secret'", query_id="q1")
>>> "secret" in str(sealed)
False
>>> c.open(sealed, query_id="q1")
"SELECT 1 WHERE x = 'secret'"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALGORITHM = "AES-256-GCM"
_INFO = b"privgate-audit-sql-v1"


class SealError(ValueError):
    """A sealed text cannot be opened: unknown key id, wrong key, or tampered content."""


def key_id(key: bytes) -> str:
    """A public name for an encryption key (8 hex digits), stored next to what it sealed."""
    return hmac.new(key, b"privgate-audit-sql-key-id", hashlib.sha256).hexdigest()[:8]


def _derive(key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key)


class SqlCipher:
    """Seals and opens SQL text; ``old_keys`` open what earlier keys sealed (rotation)."""

    def __init__(self, key: bytes, old_keys: Iterable[bytes] = ()) -> None:
        keys = [key, *old_keys]
        for k in keys:
            if len(k) < 16:
                raise ValueError("an audit encryption key must be at least 16 random bytes")
        self._current = key_id(key)
        self._keys = {key_id(k): AESGCM(_derive(k)) for k in keys}

    @property
    def key_id(self) -> str:
        return self._current

    def seal(self, text: str, *, query_id: str) -> dict[str, str]:
        nonce = os.urandom(12)  # 96-bit random nonce: one per record, never reused
        ct = self._keys[self._current].encrypt(nonce, text.encode("utf-8"), query_id.encode())
        return {
            "alg": ALGORITHM,
            "kid": self._current,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def open(self, sealed: Mapping[str, Any], *, query_id: str) -> str:
        """The text ``sealed`` holds. Raises :class:`SealError` if it cannot be opened."""
        if sealed.get("alg") != ALGORITHM:
            raise SealError(f"unknown algorithm {sealed.get('alg')!r}")
        kid = str(sealed.get("kid"))
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(
                f"sealed with key {kid}, which is neither PRIVGATE_AUDIT_ENCRYPTION_KEY nor in "
                "PRIVGATE_AUDIT_ENCRYPTION_OLD_KEYS"
            )
        try:
            nonce = base64.b64decode(str(sealed["nonce"]), validate=True)
            ct = base64.b64decode(str(sealed["ct"]), validate=True)
            return aead.decrypt(nonce, ct, query_id.encode()).decode("utf-8")
        except (KeyError, ValueError, InvalidTag) as exc:
            raise SealError("the sealed text does not open: tampered, or another record's") from exc
