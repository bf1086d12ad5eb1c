"""Sealing the records written before seals existed (revision 0001), once, if they verify.

Revision 0002 added a seal (HMAC) to every record, and indexed copies of some of its fields. A
migration cannot compute either: the key lives with the gateway, not in the database. So the first
gateway to start after the upgrade verifies the whole chain with unsealed rows allowed, and only if
it verifies (links, content and head, as revision 0001 checked them) seals them and fills their
copies. A log that does not verify is left as it is, and the reason logged; verify then reports
the first unsealed record, as it would a forged one.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, func, select, update

from gateway.audit_read import AuditReader
from gateway.audit_schema import INDEXED_FIELDS, audit_log
from gateway.audit_seal import KeyRing, decode, indexed_copies, record_message
from gateway.audit_verify import verify_chain

log = logging.getLogger("privgate.audit")


def adopt_unsealed(reader: AuditReader, keys: KeyRing, *, batch_size: int = 1000) -> int:
    """Seal every unsealed record if the chain verifies; return how many were sealed.

    Idempotent, and safe with several replicas starting at once (a seal is deterministic).
    """
    engine = reader.engine
    with engine.connect() as conn:
        unsealed = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.mac.is_(None))
        ).scalar_one()
    if not unsealed:
        return 0
    result = verify_chain(
        reader.stored_records,
        keys=keys,
        head=reader.read_head(),
        checkpoints=reader.read_checkpoints(),
        reread_head=reader.read_head,
        require_seals=False,
    )
    if not result.ok:
        log.error(
            "%d audit records from before seals are left unsealed: the log does not verify (%s)",
            unsealed,
            result.reason,
        )
        return 0
    # A row changed between the walk and its seal would still break the link to its successor.
    statement = (
        update(audit_log)
        .where(audit_log.c.seq == bindparam("b_seq"), audit_log.c.mac.is_(None))
        .values(
            key_id=bindparam("b_key_id"),
            mac=bindparam("b_mac"),
            **{name: bindparam(f"b_{name}") for name in INDEXED_FIELDS},
        )
    )
    sealed, after = 0, None
    while True:
        query = (
            select(audit_log.c.seq, audit_log.c.hash, audit_log.c.record)
            .where(audit_log.c.mac.is_(None))
            .order_by(audit_log.c.seq)
            .limit(batch_size)
        )
        if after is not None:
            query = query.where(audit_log.c.seq > after)
        with engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return sealed
            params: list[dict[str, Any]] = []
            for row in rows:
                try:
                    copies = indexed_copies(decode(str(row.record)))
                except ValueError:
                    log.error("audit record seq %s is not valid JSON; left unsealed", row.seq)
                    continue
                key_id, mac = keys.seal(record_message(int(row.seq), str(row.hash)))
                params.append(
                    {
                        "b_seq": int(row.seq),
                        "b_key_id": key_id,
                        "b_mac": mac,
                        **{f"b_{name}": value for name, value in copies.items()},
                    }
                )
            if params:
                conn.execute(statement, params)
        sealed += len(params)
        after = int(rows[-1].seq)
