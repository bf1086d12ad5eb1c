"""Principals and their API keys, kept in the control database.

The policy file bootstraps principals (:meth:`PrincipalStore.upsert_principal` inserts the missing
ones); from then on the control database is the source of truth for role and datasets.

An API key reads ``pgk_<id>_<secret>``: ``id`` is 8 hex characters naming the key's row, ``secret``
is 32 random bytes in URL-safe base64. Only ``HMAC-SHA256(pepper, key)`` is stored, so a copy of the
database alone neither reveals keys nor allows testing guesses offline without the pepper. The
plaintext key is shown once, by :meth:`PrincipalStore.create_key`.

:meth:`PrincipalStore.authenticate` answers ``None`` for every failure (malformed, unknown, wrong
secret, revoked, expired, principal disabled) so that a caller cannot learn which check failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    MetaData,
    Row,
    String,
    Table,
    Text,
    bindparam,
    delete,
    false,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from budgets.errors import CodedError
from budgets.prepared import Prepared
from gateway.control_db import reader
from gateway.wire.scram import Verifier, make_verifier, principal_salt
from rewriter.policy import Role

KEY_PREFIX = "pgk_"

# token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet.
_KEY_RE = re.compile(r"pgk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
_KEY_ID_ATTEMPTS = 5
#: What a principal may be called: also a PostgreSQL wire user name, so no spaces or quotes.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

metadata = MetaData()

principals = Table(
    "principals",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("datasets", Text, nullable=False),  # JSON list, sorted
    Column("created_at", Text, nullable=False),  # ISO 8601, UTC
    Column("disabled", Boolean, nullable=False, default=False),
    # Containment (gateway.anomaly): a quarantined principal authenticates but every query and
    # explain is refused with `principal.quarantined` until an admin releases it. Kept here, not
    # in memory, so that every replica honours it.
    Column("quarantined", Boolean, nullable=False, default=False, server_default=false()),
    Column("quarantined_at", Text, nullable=True),  # ISO 8601, UTC
    Column("quarantine_reason", Text, nullable=True),  # the anomaly rule (or admin) that fired
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(8), primary_key=True),
    Column("principal", Text, ForeignKey("principals.name"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Text, nullable=False),
    Column("expires_at", Text, nullable=True),
    Column("revoked_at", Text, nullable=True),
    Column("last_used_at", Text, nullable=True),
)

#: SCRAM-SHA-256 verifiers for the PostgreSQL wire door (see ``gateway.wire.scram``): one per API
#: key (written when the key is created; a key is its principal's wire password) and at most one
#: admin-set password per principal (``id`` = ``"pw:" + principal``). Never a plaintext password.
wire_verifiers = Table(
    "wire_verifiers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("principal", Text, ForeignKey("principals.name"), nullable=False, index=True),
    Column("key_id", String(8), ForeignKey("api_keys.id"), nullable=True),
    Column("stored_key", String(64), nullable=False),
    Column("server_key", String(64), nullable=False),
    Column("created_at", Text, nullable=False),
    # The SCRAM salt (hex), the same on every row of one principal (SCRAM sends one salt before
    # the client proves anything). Stored so that a pepper rotation leaves wire logins intact.
    # NULL only on rows made before revision 0005 and not yet filled in (fill_wire_salts).
    Column("salt", String(32), nullable=True),
)


class PrincipalError(CodedError):
    """Root of every error the principal store raises."""

    code: ClassVar[str] = "auth.error"


class UnknownPrincipal(PrincipalError):
    """An admin operation named a principal that does not exist."""

    code = "auth.unknown_principal"
    default_hint = "Add the principal to the policy file and restart, or check the spelling."


class PrincipalExists(PrincipalError):
    """An admin tried to create a principal whose name is taken."""

    code = "admin.conflict"
    default_hint = "Pick another name, or change the existing principal instead."


class InvalidPrincipalName(PrincipalError):
    """A principal name outside :data:`NAME_RE`."""

    code = "admin.invalid"
    default_hint = (
        "Use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit."
    )


@dataclass(frozen=True)
class Principal:
    """Who is asking: a name, a role and the datasets they may query."""

    name: str
    role: Role
    datasets: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class PrincipalInfo:
    """A principal as admins see it, including whether it is disabled or quarantined."""

    name: str
    role: Role
    datasets: frozenset[str]
    disabled: bool
    created_at: datetime
    quarantined: bool = False
    quarantined_at: datetime | None = None
    quarantine_reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "datasets": sorted(self.datasets),
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "quarantined": self.quarantined,
            "quarantined_at": (
                None if self.quarantined_at is None else self.quarantined_at.isoformat()
            ),
            "quarantine_reason": self.quarantine_reason,
        }


@dataclass(frozen=True)
class KeyInfo:
    """An API key as admins may see it: never the key or its hash."""

    id: str
    principal: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_json(self, *, now: datetime) -> dict[str, Any]:
        """Everything but the key, which is never stored (and its hash, which never leaves)."""
        return {
            "key_id": self.id,
            "principal": self.principal,
            "status": self.status(now),
            "created_at": self.created_at.isoformat(),
            **{
                name: None if moment is None else moment.isoformat()
                for name, moment in (
                    ("expires_at", self.expires_at),
                    ("revoked_at", self.revoked_at),
                    ("last_used_at", self.last_used_at),
                )
            },
        }


_QUARANTINED = Prepared(select(principals.c.quarantined).where(principals.c.name == bindparam("n")))


#: ``last_used_at`` is refreshed at most this often per key (a read-only login otherwise).
LAST_USED_RESOLUTION = timedelta(seconds=60)

_KEY_LOOKUP = (
    select(
        api_keys.c.id,
        api_keys.c.key_hash,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        api_keys.c.last_used_at,
        principals.c.name,
        principals.c.role,
        principals.c.datasets,
        principals.c.disabled,
    )
    .join(principals, principals.c.name == api_keys.c.principal)
    .where(api_keys.c.id == bindparam("kid"))
)


class PrincipalStore:
    """Principals and API keys in the control database."""

    def __init__(self, engine: Engine, *, pepper: bytes, old_peppers: Iterable[bytes] = ()) -> None:
        """``old_peppers``: earlier peppers during a rotation. A key hashed under one of them
        still authenticates, and its stored hash is rewritten under ``pepper`` on that use."""
        self._old_peppers = tuple(old_peppers)
        for p in (pepper, *self._old_peppers):
            if not isinstance(p, bytes) or len(p) < 16:
                raise ValueError("an API key pepper must be at least 16 random bytes")
        self._engine = engine
        self._reader = reader(engine)  # reads take no write lock
        self._pepper = pepper

    def create_schema(self) -> None:
        """Create the tables. Idempotent."""
        metadata.create_all(self._engine)

    def upsert_principal(self, name: str, *, role: Role, datasets: Iterable[str]) -> Principal:
        """Insert the principal if missing; return the stored one (stored values win).

        Used to bootstrap from the policy file: once a principal exists, the control database is
        the source of truth and the arguments are ignored.
        """
        if not name:
            raise ValueError("a principal needs a name")
        if isinstance(datasets, str):
            raise TypeError("datasets must be an iterable of names, not one string")
        wanted = Principal(name=name, role=Role(role), datasets=frozenset(datasets))
        try:
            with self._engine.begin() as conn:
                row = conn.execute(
                    select(principals).where(principals.c.name == name)
                ).one_or_none()
                if row is not None:
                    return _principal(row)
                conn.execute(
                    insert(principals).values(
                        name=name,
                        role=wanted.role.value,
                        datasets=json.dumps(sorted(wanted.datasets)),
                        created_at=_iso(_now()),
                        disabled=False,
                    )
                )
                return wanted
        except IntegrityError:
            # Another replica inserted it between our read and write (PostgreSQL only).
            stored = self._get(name, include_disabled=True)
            if stored is None:
                raise
            return stored

    def create_principal(self, name: str, *, role: Role, datasets: Iterable[str]) -> PrincipalInfo:
        """Create a new principal (an admin action, unlike the bootstrap's upsert).

        Raises:
            InvalidPrincipalName: ``name`` does not match :data:`NAME_RE`.
            PrincipalExists: the name is taken.
        """
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidPrincipalName(f"invalid principal name {name!r}")
        if isinstance(datasets, str):
            raise TypeError("datasets must be an iterable of names, not one string")
        try:
            with self._engine.begin() as conn:
                if self._get_row(conn, name) is not None:
                    raise PrincipalExists(f"principal {name!r} already exists")
                conn.execute(
                    insert(principals).values(
                        name=name,
                        role=Role(role).value,
                        datasets=json.dumps(sorted(set(datasets))),
                        created_at=_iso(_now()),
                        disabled=False,
                    )
                )
        except IntegrityError:
            # Another replica inserted it between our read and write (PostgreSQL only).
            raise PrincipalExists(f"principal {name!r} already exists") from None
        return self._info_or_raise(name)

    def info(self, name: str) -> PrincipalInfo | None:
        """The principal called ``name`` whether enabled or not, or ``None`` if unknown."""
        with self._reader.connect() as conn:
            row = self._get_row(conn, name)
        return None if row is None else _info(row)

    def list_principals(self) -> list[PrincipalInfo]:
        """Every principal, disabled ones included, by name."""
        with self._reader.connect() as conn:
            rows = conn.execute(select(principals).order_by(principals.c.name)).all()
        return [_info(r) for r in rows]

    def update_principal(
        self,
        name: str,
        *,
        role: Role | None = None,
        datasets: Iterable[str] | None = None,
        grant: Iterable[str] = (),
        disabled: bool | None = None,
    ) -> PrincipalInfo:
        """Change a principal in one transaction; ``None`` leaves a field as it is.

        ``datasets`` replaces the grants; ``grant`` adds to them (after any replacement), so that
        adding a grant never races with another admin's change.

        Raises:
            UnknownPrincipal: no such principal.
        """
        if isinstance(datasets, str) or isinstance(grant, str):
            raise TypeError("datasets must be an iterable of names, not one string")
        with self._engine.begin() as conn:
            row = conn.execute(
                select(principals).where(principals.c.name == name).with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownPrincipal(f"unknown principal {name!r}")
            current = _info(row)
            new_datasets = set(current.datasets if datasets is None else datasets) | set(grant)
            conn.execute(
                update(principals)
                .where(principals.c.name == name)
                .values(
                    role=(current.role if role is None else Role(role)).value,
                    datasets=json.dumps(sorted(new_datasets)),
                    disabled=current.disabled if disabled is None else disabled,
                )
            )
        return self._info_or_raise(name)

    def get(self, name: str) -> Principal | None:
        """The enabled principal called ``name``, or ``None`` (unknown or disabled)."""
        return self._get(name, include_disabled=False)

    def set_disabled(self, name: str, *, disabled: bool) -> bool:
        """Disable (or re-enable) a principal and so all its keys; False if unknown."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(principals).where(principals.c.name == name).values(disabled=disabled)
            )
        return result.rowcount == 1

    def quarantine(self, name: str, *, reason: str) -> bool:
        """Quarantine ``name``; True only for the call that changed it (so one alert contains once).

        A conditional update, so concurrent triggers on several replicas quarantine exactly once.
        """
        with self._engine.begin() as conn:
            result = conn.execute(
                update(principals)
                .where(principals.c.name == name, principals.c.quarantined == false())
                .values(quarantined=True, quarantined_at=_iso(_now()), quarantine_reason=reason)
            )
        return result.rowcount == 1

    def release(self, name: str) -> bool:
        """Lift ``name``'s quarantine; True if it was quarantined.

        Raises:
            UnknownPrincipal: no such principal.
        """
        with self._engine.begin() as conn:
            row = self._get_row(conn, name)
            if row is None:
                raise UnknownPrincipal(f"unknown principal {name!r}")
            if not row.quarantined:
                return False
            conn.execute(
                update(principals)
                .where(principals.c.name == name)
                .values(quarantined=False, quarantined_at=None, quarantine_reason=None)
            )
        return True

    def is_quarantined(self, name: str) -> bool:
        """Whether ``name`` is quarantined (False for unknown names). One indexed read."""
        with self._reader.connect() as conn:
            flag = _QUARANTINED.run(conn, {"n": name}).scalar_one_or_none()
        return bool(flag)

    def list_quarantined(self) -> list[PrincipalInfo]:
        """The quarantined principals, by name."""
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(principals).where(principals.c.quarantined).order_by(principals.c.name)
            ).all()
        return [_info(r) for r in rows]

    def create_key(self, principal: str, *, expires_at: datetime | None = None) -> tuple[str, str]:
        """Create an API key for ``principal``; return ``(key_id, key)``. The key is shown only now.

        Raises:
            UnknownPrincipal: no such principal.
            ValueError: ``expires_at`` has no time zone.
        """
        if expires_at is not None and expires_at.utcoffset() is None:
            raise ValueError("expires_at must be time-zone aware")
        for _ in range(_KEY_ID_ATTEMPTS):
            key_id = secrets.token_hex(4)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            try:
                with self._engine.begin() as conn:
                    if self._get_row(conn, principal) is None:
                        raise UnknownPrincipal(f"unknown principal {principal!r}")
                    conn.execute(
                        insert(api_keys).values(
                            id=key_id,
                            principal=principal,
                            key_hash=self._hash(key),
                            created_at=_iso(_now()),
                            expires_at=None if expires_at is None else _iso(expires_at),
                        )
                    )
                    conn.execute(
                        insert(wire_verifiers).values(
                            id=key_id,
                            principal=principal,
                            key_id=key_id,
                            created_at=_iso(_now()),
                            **self._verifier_columns(conn, principal, key),
                        )
                    )
            except IntegrityError:
                continue  # 32-bit ids collide now and then: draw another.
            return key_id, key
        raise RuntimeError("could not draw an unused API key id")

    def authenticate(self, key: str) -> Principal | None:
        """The principal ``key`` belongs to, or ``None`` if the key is not currently valid."""
        match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            return None
        # Hash before the lookup so that unknown ids and wrong secrets cost the same work.
        presented = self._hash(key).encode()
        presented_old = [self._hash(key, pepper).encode() for pepper in self._old_peppers]
        now = _now()
        with self._reader.connect() as conn:
            row = conn.execute(_KEY_LOOKUP, {"kid": match.group(1)}).one_or_none()
        if row is None:
            return None
        stored = str(row.key_hash).encode()
        current = hmac.compare_digest(presented, stored)
        # Every old pepper is compared, so the work does not depend on which one matches.
        old = [hmac.compare_digest(h, stored) for h in presented_old]
        if not (current or any(old)):
            return None
        expired = row.expires_at is not None and _parse(row.expires_at) <= now
        if row.revoked_at is not None or expired or row.disabled:
            return None
        stale = row.last_used_at is None or _parse(row.last_used_at) <= now - LAST_USED_RESOLUTION
        if current and not stale:
            # Read only: a durable write per request for a timestamp would serialise every
            # request on the control database's write lock.
            return _principal(row)
        with self._engine.begin() as conn:
            values: dict[str, str] = {"last_used_at": _iso(now)}
            if not current:
                values["key_hash"] = presented.decode()  # rotation: re-hash under the new pepper
                self._refresh_unsalted_verifier(conn, str(row.name), str(row.id), key)
            # Conditional on the hash read above: a key revoked or re-hashed meanwhile is not
            # touched (and then this request is refused, as it would have been a moment later).
            changed = conn.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == row.id,
                    api_keys.c.key_hash == row.key_hash,
                    api_keys.c.revoked_at.is_(None),
                )
                .values(**values)
            ).rowcount
        return _principal(row) if changed == 1 else None

    def _refresh_unsalted_verifier(
        self, conn: Connection, principal: str, key_id: str, key: str
    ) -> None:
        """During a rotation, remake a key's pre-0005 verifier (salt unknown) from the key."""
        conn.execute(
            update(wire_verifiers)
            .where(wire_verifiers.c.key_id == key_id, wire_verifiers.c.salt.is_(None))
            .values(**self._verifier_columns(conn, principal, key))
        )

    def set_wire_password(self, principal: str, password: str | None) -> None:
        """Set (or with ``None`` remove) the principal's admin-set wire password.

        Raises:
            UnknownPrincipal: no such principal.
            ValueError: the password is shorter than 12 characters.
        """
        if password is not None and len(password) < 12:
            raise ValueError("a wire password needs at least 12 characters")
        with self._engine.begin() as conn:
            if self._get_row(conn, principal) is None:
                raise UnknownPrincipal(f"unknown principal {principal!r}")
            conn.execute(delete(wire_verifiers).where(wire_verifiers.c.id == f"pw:{principal}"))
            if password is not None:
                conn.execute(
                    insert(wire_verifiers).values(
                        id=f"pw:{principal}",
                        principal=principal,
                        key_id=None,
                        created_at=_iso(_now()),
                        **self._verifier_columns(conn, principal, password),
                    )
                )

    def wire_salt(self, principal: str) -> bytes:
        """The SCRAM salt shared by ``principal``'s wire verifiers (also for unknown names)."""
        with self._reader.connect() as conn:
            return self._salt(conn, principal)

    def fill_wire_salts(self) -> int:
        """Store the salt of verifiers made before salts were stored; return how many are left.

        Their salt was derived from the pepper current when they were made. That is this
        store's pepper unless a rotation is in progress: then they are left alone (and counted),
        and such a key logs in over the wire again once it is used over REST or replaced.
        """
        with self._engine.begin() as conn:
            names = (
                conn.execute(
                    select(wire_verifiers.c.principal)
                    .where(wire_verifiers.c.salt.is_(None))
                    .distinct()
                )
                .scalars()
                .all()
            )
            if self._old_peppers:
                return len(names)
            for name in names:
                conn.execute(
                    update(wire_verifiers)
                    .where(wire_verifiers.c.principal == name, wire_verifiers.c.salt.is_(None))
                    .values(salt=principal_salt(self._pepper, name).hex())
                )
        return 0

    def _salt(self, conn: Connection, principal: str) -> bytes:
        stored = conn.execute(
            select(wire_verifiers.c.salt)
            .where(wire_verifiers.c.principal == principal, wire_verifiers.c.salt.is_not(None))
            .limit(1)
        ).scalar_one_or_none()
        return bytes.fromhex(stored) if stored else principal_salt(self._pepper, principal)

    def wire_verifiers(self, principal: str) -> list[Verifier]:
        """The verifiers that may log ``principal`` in now: active keys and the password.

        Empty for an unknown or disabled principal. Revoked and expired keys are left out.
        """
        now = _now()
        with self._reader.connect() as conn:
            row = self._get_row(conn, principal)
            if row is None or row.disabled:
                return []
            rows = conn.execute(
                select(
                    wire_verifiers.c.id,
                    wire_verifiers.c.stored_key,
                    wire_verifiers.c.server_key,
                    api_keys.c.revoked_at,
                    api_keys.c.expires_at,
                )
                .select_from(
                    wire_verifiers.outerjoin(api_keys, api_keys.c.id == wire_verifiers.c.key_id)
                )
                .where(wire_verifiers.c.principal == principal)
            ).all()
        out = []
        for r in rows:
            if r.revoked_at is not None or (
                r.expires_at is not None and _parse(r.expires_at) <= now
            ):
                continue
            out.append(
                Verifier(bytes.fromhex(r.stored_key), bytes.fromhex(r.server_key), label=str(r.id))
            )
        return out

    def wire_login_valid(self, principal: str, label: str) -> Principal | None:
        """Re-check, after a SCRAM proof matched verifier ``label``, that it is still usable."""
        if not any(v.label == label for v in self.wire_verifiers(principal)):
            return None
        if label.startswith("pw:"):
            found = self.get(principal)
        else:
            with self._engine.begin() as conn:
                conn.execute(
                    update(api_keys).where(api_keys.c.id == label).values(last_used_at=_iso(_now()))
                )
            found = self.get(principal)
        return found

    def _verifier_columns(self, conn: Connection, principal: str, password: str) -> dict[str, str]:
        salt = self._salt(conn, principal)
        v = make_verifier(password, salt=salt)
        return {
            "stored_key": v.stored_key.hex(),
            "server_key": v.server_key.hex(),
            "salt": salt.hex(),
        }

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; True if it was active until now, False if unknown or already revoked."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_iso(_now()))
            )
        return result.rowcount == 1

    def list_keys(self, principal: str) -> list[KeyInfo]:
        """The keys of ``principal``, oldest first, without their hashes.

        Raises:
            UnknownPrincipal: no such principal.
        """
        with self._reader.connect() as conn:
            if self._get_row(conn, principal) is None:
                raise UnknownPrincipal(f"unknown principal {principal!r}")
            rows = conn.execute(
                select(
                    api_keys.c.id,
                    api_keys.c.principal,
                    api_keys.c.created_at,
                    api_keys.c.expires_at,
                    api_keys.c.revoked_at,
                    api_keys.c.last_used_at,
                )
                .where(api_keys.c.principal == principal)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            ).all()
        return [_key_info(r) for r in rows]

    def get_key(self, key_id: str) -> KeyInfo | None:
        """One key by id (without its hash), or ``None`` if unknown."""
        with self._reader.connect() as conn:
            row = conn.execute(
                select(
                    api_keys.c.id,
                    api_keys.c.principal,
                    api_keys.c.created_at,
                    api_keys.c.expires_at,
                    api_keys.c.revoked_at,
                    api_keys.c.last_used_at,
                ).where(api_keys.c.id == key_id)
            ).one_or_none()
        return None if row is None else _key_info(row)

    def _info_or_raise(self, name: str) -> PrincipalInfo:
        found = self.info(name)
        if found is None:
            raise UnknownPrincipal(f"unknown principal {name!r}")
        return found

    def _get(self, name: str, *, include_disabled: bool) -> Principal | None:
        with self._reader.connect() as conn:
            row = self._get_row(conn, name)
        if row is None or (row.disabled and not include_disabled):
            return None
        return _principal(row)

    @staticmethod
    def _get_row(conn: Connection, name: str) -> Row[Any] | None:
        return conn.execute(select(principals).where(principals.c.name == name)).one_or_none()

    def _hash(self, key: str, pepper: bytes | None = None) -> str:
        return hmac.new(pepper or self._pepper, key.encode(), hashlib.sha256).hexdigest()


def _principal(row: Any) -> Principal:
    return Principal(
        name=str(row.name),
        role=Role(row.role),
        datasets=frozenset(str(d) for d in json.loads(row.datasets)),
    )


def _info(row: Any) -> PrincipalInfo:
    return PrincipalInfo(
        name=str(row.name),
        role=Role(row.role),
        datasets=frozenset(str(d) for d in json.loads(row.datasets)),
        disabled=bool(row.disabled),
        created_at=_parse(row.created_at),
        quarantined=bool(row.quarantined),
        quarantined_at=_parse_opt(row.quarantined_at),
        quarantine_reason=None if row.quarantine_reason is None else str(row.quarantine_reason),
    )


def _key_info(row: Any) -> KeyInfo:
    return KeyInfo(
        id=str(row.id),
        principal=str(row.principal),
        created_at=_parse(row.created_at),
        expires_at=_parse_opt(row.expires_at),
        revoked_at=_parse_opt(row.revoked_at),
        last_used_at=_parse_opt(row.last_used_at),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _parse_opt(text: str | None) -> datetime | None:
    return None if text is None else _parse(text)
