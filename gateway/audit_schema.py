"""The audit log's tables: the chain of records, its sealed head and its signed checkpoints.

``audit_log.principal``, ``dataset``, ``decision`` and ``code`` are indexed copies of the record's
fields of the same name (a field that is not a short string is stored as NULL). They exist only so
that listing can filter in SQL; :func:`gateway.audit_verify.verify_chain` checks every copy against
the record, which the hash covers, so a doctored copy is caught like a doctored record.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first record, and the anchor of a log that was never purged."""

HEAD_ID = 1

#: Record fields copied into indexed columns of ``audit_log`` (see the module docstring).
INDEXED_FIELDS = ("principal", "dataset", "decision", "code")

#: Longer values are not copied (NULL): an index entry must stay small on every database.
INDEXED_MAX_LEN = 256

_SEQ = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("id", String(32), nullable=False, unique=True),
    Column("ts", Text, nullable=False),
    Column("record", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # Revision 0002: the record's seal and the indexed copies. NULL only in rows written before
    # 0002 and not yet adopted (AuditLog.create_schema seals those once they verify).
    Column("key_id", String(8), nullable=True),
    Column("mac", String(64), nullable=True),
    Column("principal", Text, nullable=True),
    Column("dataset", Text, nullable=True),
    Column("decision", Text, nullable=True),
    Column("code", Text, nullable=True),
    Index("ix_audit_log_ts", "ts"),
    Index("ix_audit_log_principal", "principal", "seq"),
    Index("ix_audit_log_dataset", "dataset", "seq"),
    Index("ix_audit_log_decision", "decision", "seq"),
    Index("ix_audit_log_code", "code", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
    # Revision 0002: which key sealed the head, and the retention anchor (the checkpoint the
    # oldest remaining record links to; seq 0 and the genesis hash until the first purge).
    Column("key_id", String(8), nullable=True),
    Column("anchor_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("anchor_hash", String(64), nullable=False, server_default=GENESIS_HASH),
    CheckConstraint(f"id = {HEAD_ID}", name="audit_head_single_row"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("ts", Text, nullable=False),
    Column("key_id", String(8), nullable=False),
    Column("mac", String(64), nullable=False),
)
