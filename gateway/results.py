"""Stored answers: free replay of identical queries and idempotent client query ids.

An answer, once released, can be given again at no privacy cost: it is post-processing of what was
already paid for. Replaying it also defeats averaging attacks — asking the same question again
returns the same noise, not a fresh draw. The replay key is the principal, the normalised statement,
the dataset, the policy version, the data version and the ε asked for; a changed literal is a new
statement and costs again.

Answers are kept per principal. Sharing them across principals would be sound for the dataset-wide
cap (it was charged), but would let one analyst learn more than their own budget allows.

A client-supplied ``query_id`` is claimed here *before* any budget is reserved: the first request
with that id runs; a retry after it finished gets the stored answer; a retry while it runs (or after
it failed) gets ``request.duplicate_query_id`` — it never runs twice.

What is stored is the released envelope only (noisy values, intervals, metadata): never true values.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from budgets.ledger_steps import in_transaction
from budgets.prepared import Prepared
from gateway.control_db import reader

metadata = MetaData()

results = Table(
    "query_results",
    metadata,
    Column("query_id", Text, primary_key=True),
    Column("principal", Text, nullable=False),
    Column("replay_key", Text, nullable=True),
    Column("state", Text, nullable=False),  # running | done | failed
    Column("request_hash", Text, nullable=False),
    Column("envelope", Text, nullable=True),
    Column("created_at", Text, nullable=False),
    Column("finished_at", Text, nullable=True),
    UniqueConstraint("principal", "replay_key", name="uq_query_results_replay"),
)


def replay_key(
    *,
    secret: bytes,
    principal: str,
    normalized_sql: str,
    dataset: str,
    policy_version: str,
    data_version: str,
    epsilon: str,
) -> str:
    """The identity of a released answer: keyed, because the SQL it covers holds literals.

    An unkeyed hash of ``normalized_sql`` at rest would let whoever copies the control database
    test guesses of a literal offline (an SSN has only 10⁹ values); with ``secret`` they cannot.
    """
    parts = [principal, dataset, policy_version, data_version, epsilon, normalized_sql]
    return hmac.new(secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


def request_hash(sql: str, epsilon: str | None, *, secret: bytes) -> str:
    """Whether a retried query id carries the same request (keyed, like :func:`replay_key`)."""
    return hmac.new(secret, f"{epsilon}\x1f{sql}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming a client query id."""

    fresh: bool
    state: str
    envelope: dict[str, Any] | None
    same_request: bool


def _now() -> str:
    return datetime.now(UTC).isoformat()


_CLAIM = Prepared(insert(results))
_REPLAY = Prepared(
    select(results.c.envelope).where(
        results.c.principal == bindparam("p"),
        results.c.replay_key == bindparam("k"),
        results.c.state == "done",
    )
)

_KEY_TAKEN = Prepared(
    select(results.c.query_id).where(
        results.c.principal == bindparam("p"), results.c.replay_key == bindparam("k")
    )
)


def _finish(*, with_key: bool) -> Any:
    values: dict[str, Any] = {
        "state": bindparam("new_state"),
        "envelope": bindparam("new_envelope"),
        "finished_at": bindparam("new_finished_at"),
    }
    if with_key:
        values["replay_key"] = bindparam("new_replay_key")
    return Prepared(update(results).where(results.c.query_id == bindparam("qid")).values(**values))


_FINISH = _finish(with_key=True)
_FINISH_NO_KEY = _finish(with_key=False)


class ResultStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = reader(engine)  # reads take no write lock

    def create_schema(self) -> None:
        metadata.create_all(self._engine)

    def replay(self, *, principal: str, key: str) -> dict[str, Any] | None:
        """The stored envelope for this principal and replay key, if any."""
        with self._reader.connect() as conn:
            row = _REPLAY.run(conn, {"p": principal, "k": key}).first()
        return None if row is None or row["envelope"] is None else dict(json.loads(row["envelope"]))

    def claim(self, *, query_id: str, principal: str, req_hash: str) -> Claim:
        """Claim ``query_id`` for this principal; a second claim reports the first one's state."""
        try:
            with self._engine.begin() as conn:
                _CLAIM.run(
                    conn,
                    {
                        "query_id": query_id,
                        "principal": principal,
                        "state": "running",
                        "request_hash": req_hash,
                        "created_at": _now(),
                    },
                )
            return Claim(fresh=True, state="running", envelope=None, same_request=True)
        except IntegrityError:
            pass
        with self._reader.connect() as conn:
            row = conn.execute(select(results).where(results.c.query_id == query_id)).first()
        if row is None or row.principal != principal:
            # Another principal's id: say only that it is taken.
            return Claim(fresh=False, state="taken", envelope=None, same_request=False)
        envelope = json.loads(row.envelope) if row.envelope else None
        return Claim(
            fresh=False,
            state=str(row.state),
            envelope=envelope,
            same_request=row.request_hash == req_hash,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    def finish(
        self,
        *,
        query_id: str,
        principal: str,
        key: str | None,
        envelope: dict[str, Any],
        unclaimed: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Store a released answer under its query id (and replay key, unless one exists).

        ``unclaimed`` is the request hash of a query id that was never claimed (one the
        gateway made, new by construction): its row is inserted now, complete. With ``conn`` it
        is a step of the caller's transaction (durable when that commits).
        """
        text = json.dumps(envelope, separators=(",", ":"), allow_nan=False)
        now = _now()
        if unclaimed is not None:
            row = {
                "query_id": query_id,
                "principal": principal,
                "state": "done",
                "request_hash": unclaimed,
                "created_at": now,
                "finished_at": now,
                "envelope": text,
            }
            stmt = _CLAIM
            params, fallback = {**row, "replay_key": key}, row
        else:
            done = {
                "new_state": "done",
                "new_envelope": text,
                "new_finished_at": now,
                "qid": query_id,
            }
            stmt = _FINISH
            params, fallback = {**done, "new_replay_key": key}, done
        with in_transaction(self._engine, conn) as tx:
            if key is not None and tx.dialect.name == "sqlite":
                # Every write transaction on SQLite holds the database's write lock from its
                # BEGIN IMMEDIATE (gateway.control_db): no twin can store the key between this
                # look and the write, so no savepoint is needed to survive a refusal.
                if _KEY_TAKEN.run(tx, {"p": principal, "k": key}).first() is None:
                    stmt.run(tx, params)
                    return
            elif key is not None:
                try:
                    # The first stored answer for a key is the one replayed; a concurrent twin
                    # keeps none. The savepoint keeps the caller's transaction usable when the
                    # unique index refuses the key.
                    with tx.begin_nested():
                        stmt.run(tx, params)
                    return
                except IntegrityError:
                    pass
            (_CLAIM if unclaimed is not None else _FINISH_NO_KEY).run(tx, fallback)

    def fail(self, *, query_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                update(results)
                .where(results.c.query_id == query_id, results.c.state == "running")
                .values(state="failed", finished_at=_now())
            )
