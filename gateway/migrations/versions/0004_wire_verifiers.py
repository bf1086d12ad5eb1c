"""wire_verifiers: SCRAM-SHA-256 verifiers for the PostgreSQL wire door

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-06 01:00:00

API keys created before this revision have no verifier: they keep working over REST, and a new
key (or an admin-set wire password) is needed to log in over the wire.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "wire_verifiers" in sa.inspect(op.get_bind()).get_table_names():
        return  # adopted from the stores' create_all: already in the current shape
    op.create_table(
        "wire_verifiers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("principal", sa.Text(), sa.ForeignKey("principals.name"), nullable=False),
        sa.Column("key_id", sa.String(length=8), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("stored_key", sa.String(length=64), nullable=False),
        sa.Column("server_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
    )
    op.create_index("ix_wire_verifiers_principal", "wire_verifiers", ["principal"])


def downgrade() -> None:
    op.drop_index("ix_wire_verifiers_principal", table_name="wire_verifiers")
    op.drop_table("wire_verifiers")
