"""Principals and API keys on a real SQLite control database."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.control_db import make_control_engine
from gateway.principals import (
    Principal,
    PrincipalError,
    PrincipalStore,
    UnknownPrincipal,
)
from rewriter.policy import Role

PEPPER = b"principals-test-pepper-0123456789"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "control.db"


@pytest.fixture
def store(db: Path) -> PrincipalStore:
    store = PrincipalStore(make_control_engine(f"sqlite:///{db}"), pepper=PEPPER)
    store.create_schema()
    store.upsert_principal("ann", role=Role.ANALYST, datasets=["sales", "hr"])
    store.upsert_principal("root", role=Role.ADMIN, datasets=[])
    return store


def test_key_round_trip(store: PrincipalStore) -> None:
    key_id, key = store.create_key("ann")
    assert re.fullmatch(r"pgk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    assert key.split("_")[1] == key_id

    ann = store.authenticate(key)
    assert ann == Principal(name="ann", role=Role.ANALYST, datasets=frozenset({"sales", "hr"}))
    assert not ann.is_admin
    _, root_key = store.create_key("root")
    root = store.authenticate(root_key)
    assert root is not None and root.is_admin


def test_authenticate_records_last_use(store: PrincipalStore) -> None:
    key_id, key = store.create_key("ann")
    [info] = store.list_keys("ann")
    assert (info.id, info.principal, info.last_used_at, info.revoked_at) == (
        key_id,
        "ann",
        None,
        None,
    )
    before = datetime.now(UTC)
    assert store.authenticate(key) is not None
    [info] = store.list_keys("ann")
    assert info.last_used_at is not None and info.last_used_at >= before - timedelta(seconds=1)


def test_last_use_is_refreshed_at_most_once_a_minute_so_logins_are_read_only(
    store: PrincipalStore,
) -> None:
    from gateway.principals import LAST_USED_RESOLUTION, api_keys

    _, key = store.create_key("ann")
    assert store.authenticate(key) is not None
    [first] = store.list_keys("ann")
    assert store.authenticate(key) is not None
    [again] = store.list_keys("ann")
    assert again.last_used_at == first.last_used_at  # within the minute: nothing written
    assert first.last_used_at is not None
    old = (first.last_used_at - LAST_USED_RESOLUTION - timedelta(seconds=1)).isoformat()
    with store._engine.begin() as conn:
        conn.execute(api_keys.update().values(last_used_at=old))
    assert store.authenticate(key) is not None
    [later] = store.list_keys("ann")
    assert later.last_used_at is not None and later.last_used_at > first.last_used_at
    store.revoke_key(later.id)
    assert store.authenticate(key) is None


def test_wrong_key(store: PrincipalStore) -> None:
    key_id, key = store.create_key("ann")
    other_id, other = store.create_key("root")
    secret = key.split("_", 2)[2]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.authenticate(f"pgk_{key_id}_{flipped}") is None
    # Another key's id with this key's secret, and the other way round.
    assert store.authenticate(f"pgk_{other_id}_{secret}") is None
    assert store.authenticate(f"pgk_{key_id}_{other.split('_', 2)[2]}") is None
    # A well-formed key whose id does not exist.
    missing_id = "00000000" if key_id != "00000000" else "11111111"
    assert store.authenticate(f"pgk_{missing_id}_{secret}") is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "pgk_",
        "pgk__",
        "garbage",
        "Bearer pgk_0123abcd_" + "x" * 43,
        "pgk_0123ABCD_" + "x" * 43,  # upper-case id
        "pgk_0123abc_" + "x" * 43,  # short id
        "pgk_0123abcd_" + "x" * 42,  # short secret
        "pgk_0123abcd_" + "x" * 44,  # long secret
        "pgk_0123abcd_" + "x" * 42 + "=",
        "pgk_0123abcd_" + "x" * 42 + "\n",
        "pgk_0123abcd_" + "é" * 43,
        "pgk_0123abcd_" + "x" * 10_000,
        "pgk_0123abcd_" + "x" * 43 + "\x00",
    ],
)
def test_malformed_keys(store: PrincipalStore, garbage: str) -> None:
    store.create_key("ann")
    assert store.authenticate(garbage) is None


def test_revoked_key(store: PrincipalStore) -> None:
    key_id, key = store.create_key("ann")
    _, kept = store.create_key("ann")
    assert store.revoke_key(key_id) is True
    assert store.revoke_key(key_id) is False
    assert store.revoke_key("deadbeef") is False
    assert store.authenticate(key) is None
    assert store.authenticate(kept) is not None
    revoked = {info.id: info.revoked_at for info in store.list_keys("ann")}
    assert revoked[key_id] is not None


def test_expired_key(store: PrincipalStore) -> None:
    now = datetime.now(UTC)
    _, expired = store.create_key("ann", expires_at=now - timedelta(seconds=1))
    _, valid = store.create_key("ann", expires_at=now + timedelta(hours=1))
    assert store.authenticate(expired) is None
    assert store.authenticate(valid) is not None
    with pytest.raises(ValueError, match="time-zone"):
        store.create_key("ann", expires_at=datetime(2099, 1, 1))


def test_expiry_in_another_time_zone(store: PrincipalStore) -> None:
    plus_five = datetime.now(UTC).astimezone(timezone(timedelta(hours=5)))
    _, key = store.create_key("ann", expires_at=plus_five + timedelta(minutes=5))
    assert store.authenticate(key) is not None
    [info] = store.list_keys("ann")
    assert info.expires_at == plus_five + timedelta(minutes=5)


def test_disabled_principal(store: PrincipalStore) -> None:
    _, key = store.create_key("ann")
    assert store.set_disabled("ann", disabled=True) is True
    assert store.authenticate(key) is None
    assert store.get("ann") is None
    assert store.set_disabled("ann", disabled=False) is True
    assert store.authenticate(key) is not None
    assert store.set_disabled("nobody", disabled=True) is False


def test_unknown_principal(store: PrincipalStore) -> None:
    with pytest.raises(UnknownPrincipal) as caught:
        store.create_key("mallory")
    assert isinstance(caught.value, PrincipalError)
    assert caught.value.code == "auth.unknown_principal"
    assert "mallory" in caught.value.message and caught.value.hint
    with pytest.raises(UnknownPrincipal):
        store.list_keys("mallory")
    assert store.get("mallory") is None


def test_plaintext_key_is_never_stored(store: PrincipalStore, db: Path) -> None:
    keys = [store.create_key("ann")[1] for _ in range(3)]
    for key in keys:
        assert store.authenticate(key) is not None
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    assert db in files
    for key in keys:
        secret = key.split("_", 2)[2]
        for path in files:
            content = path.read_bytes()
            assert key.encode() not in content, path
            assert secret.encode() not in content, path
    with closing(sqlite3.connect(db)) as conn:
        hashes = [row[0] for row in conn.execute("SELECT key_hash FROM api_keys")]
    assert len(hashes) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert not any(hasattr(info, "key_hash") for info in store.list_keys("ann"))


def test_upsert_keeps_the_stored_values(store: PrincipalStore) -> None:
    again = store.upsert_principal("ann", role=Role.ADMIN, datasets=["everything"])
    assert again == Principal(name="ann", role=Role.ANALYST, datasets=frozenset({"sales", "hr"}))
    assert store.get("ann") == again
    new = store.upsert_principal("bob", role=Role.ADMIN, datasets=("sales",))
    assert new == store.get("bob") == Principal("bob", Role.ADMIN, frozenset({"sales"}))
    with pytest.raises(TypeError):
        store.upsert_principal("carl", role=Role.ANALYST, datasets="sales")


def test_pepper_matters(store: PrincipalStore, db: Path) -> None:
    _, key = store.create_key("ann")
    other = PrincipalStore(make_control_engine(f"sqlite:///{db}"), pepper=b"x" * 32)
    assert other.authenticate(key) is None
    with pytest.raises(ValueError, match="16"):
        PrincipalStore(make_control_engine(f"sqlite:///{db}"), pepper=b"short")
