"""Secrets: from files with strict permissions, never echoed in errors, and key-pepper rotation.

Pepper rotation is tested on a real SQLite control database, with SCRAM exchanges run by the
server's own code and a client that takes its salt from the server's first message, as libpq does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.control_db import make_control_engine, migrate
from gateway.principals import PrincipalStore, wire_verifiers
from gateway.settings import SecretFileError, Settings, load_secrets
from gateway.wire import scram
from rewriter.policy import Role

PEPPER_A = b"pepper-a-0123456789abcdef-0123456789"
PEPPER_B = b"pepper-b-0123456789abcdef-0123456789"


def _secret_file(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_secrets_come_from_owner_only_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pepper = _secret_file(tmp_path, "pepper", "file-pepper-0123456789abcdef")
    audit = _secret_file(tmp_path, "audit", "file-audit-key-0123456789abcdef", 0o400)
    dsn = _secret_file(tmp_path, "dsn", "postgresql://u:pw-from-file@127.0.0.1/db")
    monkeypatch.setenv("PRIVGATE_KEY_PEPPER_FILE", str(pepper))
    monkeypatch.setenv("PRIVGATE_AUDIT_KEY_FILE", str(audit))
    monkeypatch.setenv("PRIVGATE_CONTROL_DB_URL_FILE", str(dsn))
    settings = Settings(data_dir=tmp_path / "data")
    found = load_secrets(settings)
    assert found["key_pepper"] == b"file-pepper-0123456789abcdef"  # trailing newline dropped
    assert found["audit_key"] == b"file-audit-key-0123456789abcdef"
    assert settings.resolved_control_db_url == "postgresql://u:pw-from-file@127.0.0.1/db"
    # Only the missing one (the bounding salt) was generated into secrets.json.
    stored = (tmp_path / "data" / "secrets.json").read_text()
    assert "bounding_salt" in stored and "file-pepper" not in stored


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_secret_file_others_may_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    path = _secret_file(tmp_path, "salt", "salt-value-that-must-not-show", mode)
    monkeypatch.setenv("PRIVGATE_BOUNDING_SALT_FILE", str(path))
    with pytest.raises(ValueError, match="chmod 600") as info:
        Settings(data_dir=tmp_path)
    assert "salt-value-that-must-not-show" not in str(info.value)


def test_secret_file_mistakes_are_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIVGATE_METRICS_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot be read"):
        Settings()
    monkeypatch.setenv("PRIVGATE_METRICS_TOKEN_FILE", str(tmp_path))
    with pytest.raises(ValueError, match="not a regular file"):
        Settings()
    monkeypatch.setenv("PRIVGATE_METRICS_TOKEN_FILE", str(_secret_file(tmp_path, "e", "")))
    with pytest.raises(ValueError, match="empty"):
        Settings()
    token = _secret_file(tmp_path, "t", "token-in-file")
    monkeypatch.setenv("PRIVGATE_METRICS_TOKEN_FILE", str(token))
    monkeypatch.setenv("PRIVGATE_METRICS_TOKEN", "token-in-env")
    with pytest.raises(ValueError, match="not both"):
        Settings()
    assert issubclass(SecretFileError, ValueError)


def test_settings_errors_never_print_secrets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVGATE_")}
    env.update(
        PRIVGATE_DATA_DIR=str(tmp_path),
        PRIVGATE_AUDIT_KEY="canary-7f3a-audit-key-value",
        PRIVGATE_WIRE_SHADOW_DSN="postgresql://x:canary-7f3a-password@h/db",
        PRIVGATE_PORT="not-a-port",  # the error
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "key", "list", "--principal", "analyst"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "PRIVGATE_PORT" in result.stderr and "integer" in result.stderr
    assert "canary-7f3a" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# -- key-pepper rotation -------------------------------------------------------------------------


def _store(db: Path, pepper: bytes, old: tuple[bytes, ...] = ()) -> PrincipalStore:
    engine = make_control_engine(f"sqlite:///{db}")
    migrate(engine)
    return PrincipalStore(engine, pepper=pepper, old_peppers=old)


def _scram_login(store: PrincipalStore, user: str, password: str) -> str | None:
    """A full SCRAM-SHA-256 exchange against the store; the matched verifier's label, or None."""
    exchange = scram.ScramExchange(salt=store.wire_salt(user), verifiers=store.wire_verifiers(user))
    bare = f"n={user},r=clientnonce0123"
    server_first = exchange.client_first(f"n,,{bare}".encode()).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salt = base64.b64decode(attrs["s"])  # the client uses the salt the server sent
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without = f"c=biws,r={attrs['r']}"
    auth = f"{bare},{server_first},{without}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without},p={base64.b64encode(proof).decode()}".encode()
    if exchange.client_final(final) is None:
        return None
    assert exchange.matched is not None
    return exchange.matched.label


def test_pepper_rotation_keeps_keys_working_and_rehashes_them(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    before = _store(db, PEPPER_A)
    before.upsert_principal("ann", role=Role.ANALYST, datasets=["clinic"])
    old_id, old_key = before.create_key("ann")
    before.set_wire_password("ann", "a-long-wire-password")
    assert _scram_login(before, "ann", old_key) == old_id

    # Rotate: the new pepper is current, the old one is listed as old.
    during = _store(db, PEPPER_B, old=(PEPPER_A,))
    assert during.authenticate(old_key) is not None  # hashed under A: still valid ...
    # ... and re-hashed under B on that use: a store without A now accepts it too.
    after = _store(db, PEPPER_B)
    assert after.authenticate(old_key) is not None
    # Wire logins are untouched by the rotation: the salt is stored, not derived again.
    assert _scram_login(after, "ann", old_key) == old_id
    assert _scram_login(after, "ann", "a-long-wire-password") == "pw:ann"
    new_id, new_key = after.create_key("ann")
    assert after.authenticate(new_key) is not None
    assert _scram_login(after, "ann", new_key) == new_id
    assert _scram_login(after, "ann", "wrong-password-123") is None


def test_a_key_not_used_during_the_rotation_stops_working_when_the_old_pepper_goes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "control.db"
    before = _store(db, PEPPER_A)
    before.upsert_principal("ann", role=Role.ANALYST, datasets=["clinic"])
    _, unused = before.create_key("ann")
    assert _store(db, PEPPER_B, old=(PEPPER_A,)).authenticate("pgk_00000000_" + "x" * 43) is None
    assert _store(db, PEPPER_B).authenticate(unused) is None  # never re-hashed: reissue it
    assert _store(db, PEPPER_A).authenticate(unused) is not None


def test_verifiers_from_before_stored_salts_are_filled_in(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    store = _store(db, PEPPER_A)
    store.upsert_principal("ann", role=Role.ANALYST, datasets=["clinic"])
    key_id, key = store.create_key("ann")
    engine = make_control_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # what a database upgraded from revision 0004 holds
        conn.execute(update(wire_verifiers).values(salt=None))

    # Mid-rotation the salt's pepper is unknown: left alone and counted ...
    during = _store(db, PEPPER_B, old=(PEPPER_A,))
    assert during.fill_wire_salts() == 1
    # ... until the key is used over REST, which remakes its verifier from the key itself.
    assert during.authenticate(key) is not None
    assert _scram_login(_store(db, PEPPER_B), "ann", key) == key_id

    # Without a rotation, the pepper that made them is the current one: filled in at start.
    other = tmp_path / "other.db"
    plain = _store(other, PEPPER_A)
    plain.upsert_principal("bob", role=Role.ANALYST, datasets=["clinic"])
    bob_id, bob_key = plain.create_key("bob")
    with make_control_engine(f"sqlite:///{other}").begin() as conn:
        conn.execute(update(wire_verifiers).values(salt=None))
    assert plain.fill_wire_salts() == 0
    assert _scram_login(_store(other, PEPPER_B), "bob", bob_key) == bob_id


def test_old_peppers_must_be_long_enough(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        _store(tmp_path / "c.db", PEPPER_A, old=(b"short",))
