"""audit: record seals, indexed copies for filtering, retention anchor, checkpoints

Revision ID: 0002
Revises: 0003
Create Date: 2026-11-30 10:00:00

It revises 0003 (principal quarantine), which was written first, against 0001, while this one was
being written: one line of history rather than two heads. The two touch different tables, so
their order does not matter.

Rows written before this revision carry no seal; the gateway seals them at its next start, once
the chain verifies (the key is not the migration's to know; see ``gateway.audit_adopt``).

Every step checks what exists first: ``gateway.control_db.migrate`` adopts databases made by the
stores' ``create_all`` before migrations existed, which may already have the new shape.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64

LOG_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("key_id", sa.String(length=8)),
    ("mac", sa.String(length=64)),
    ("principal", sa.Text()),
    ("dataset", sa.Text()),
    ("decision", sa.Text()),
    ("code", sa.Text()),
)
LOG_INDEXES = (
    ("ix_audit_log_ts", ["ts"]),
    ("ix_audit_log_principal", ["principal", "seq"]),
    ("ix_audit_log_dataset", ["dataset", "seq"]),
    ("ix_audit_log_decision", ["decision", "seq"]),
    ("ix_audit_log_code", ["code", "seq"]),
)
HEAD_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any], dict[str, Any]], ...] = (
    ("key_id", sa.String(length=8), {"nullable": True}),
    ("anchor_seq", sa.BigInteger(), {"nullable": False, "server_default": sa.text("0")}),
    ("anchor_hash", sa.String(length=64), {"nullable": False, "server_default": GENESIS_HASH}),
)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("audit_log")}
    for name, type_ in LOG_COLUMNS:
        if name not in have:
            op.add_column("audit_log", sa.Column(name, type_, nullable=True))
    indexes = {i["name"] for i in inspector.get_indexes("audit_log")}
    for name, columns in LOG_INDEXES:
        if name not in indexes:
            op.create_index(name, "audit_log", columns, unique=False)

    have = {c["name"] for c in inspector.get_columns("audit_head")}
    for name, type_, options in HEAD_COLUMNS:
        if name not in have:
            op.add_column("audit_head", sa.Column(name, type_, **options))

    if "audit_checkpoints" not in inspector.get_table_names():
        op.create_table(
            "audit_checkpoints",
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=False,
                nullable=False,
            ),
            sa.Column("hash", sa.String(length=64), nullable=False),
            sa.Column("ts", sa.Text(), nullable=False),
            sa.Column("key_id", sa.String(length=8), nullable=False),
            sa.Column("mac", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("seq"),
        )


def downgrade() -> None:
    # Purged records do not come back: a purged log verifies again only from its anchor, which
    # revision 0001 cannot express.
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("audit_head") as batch_op:
        for name, _, _ in reversed(HEAD_COLUMNS):
            batch_op.drop_column(name)
    for name, _ in reversed(LOG_INDEXES):
        op.drop_index(name, table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch_op:
        for name, _ in reversed(LOG_COLUMNS):
            batch_op.drop_column(name)
