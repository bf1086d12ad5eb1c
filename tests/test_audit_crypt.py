"""Full SQL text sealed in audit records (AES-256-GCM), and keyed digests of query text."""

from __future__ import annotations

import base64

import pytest

from gateway.audit_crypt import SealError, SqlCipher, key_id
from gateway.results import replay_key, request_hash
from gateway.settings import Settings

KEY = b"audit-encryption-key-0123456789"
SQL = "SELECT COUNT(*) FROM visits WHERE ssn = '123-45-6789'"


def test_sealed_text_opens_only_with_its_key_and_record() -> None:
    cipher = SqlCipher(KEY)
    sealed = cipher.seal(SQL, query_id="q1")
    assert "123-45-6789" not in repr(sealed) and sealed["kid"] == key_id(KEY)
    assert cipher.open(sealed, query_id="q1") == SQL
    assert cipher.seal(SQL, query_id="q1")["ct"] != sealed["ct"]  # a fresh nonce each time
    with pytest.raises(SealError, match="another record"):
        cipher.open(sealed, query_id="q2")  # moved to another record
    flipped = bytearray(base64.b64decode(sealed["ct"]))
    flipped[0] ^= 1
    with pytest.raises(SealError, match="tampered"):
        cipher.open({**sealed, "ct": base64.b64encode(bytes(flipped)).decode()}, query_id="q1")
    with pytest.raises(SealError, match="PRIVGATE_AUDIT_ENCRYPTION_KEY"):
        SqlCipher(b"some-other-key-0123456789").open(sealed, query_id="q1")


def test_rotation_keeps_old_records_readable() -> None:
    old = SqlCipher(KEY).seal(SQL, query_id="q1")
    rotated = SqlCipher(b"the-new-encryption-key-0123456789", old_keys=[KEY])
    assert rotated.open(old, query_id="q1") == SQL
    assert rotated.seal(SQL, query_id="q2")["kid"] != old["kid"]
    with pytest.raises(ValueError, match="16 random bytes"):
        SqlCipher(b"short")


def test_full_text_needs_a_key(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="PRIVGATE_AUDIT_ENCRYPTION_KEY"):
        Settings(audit_sql_text="full")
    assert Settings().sql_cipher() is None
    cipher = Settings(audit_sql_text="full", audit_encryption_key=KEY.decode()).sql_cipher()
    assert cipher is not None and cipher.key_id == key_id(KEY)


def test_stored_digests_of_query_text_are_keyed() -> None:
    parts = {
        "principal": "ann",
        "normalized_sql": SQL,
        "dataset": "clinic",
        "policy_version": "p",
        "data_version": "d",
        "epsilon": "1/2",
    }
    a = replay_key(secret=b"k1" * 16, **parts)
    assert a == replay_key(secret=b"k1" * 16, **parts)
    assert a != replay_key(secret=b"k2" * 16, **parts)  # no offline guessing without the key
    assert request_hash(SQL, "1/2", secret=b"k1" * 16) != request_hash(
        SQL, "1/2", secret=b"k2" * 16
    )
