"""wire_verifiers.salt: the SCRAM salt is stored, so that an API-key pepper rotation keeps wire logins

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 19:30:00

Before this revision a principal's SCRAM salt was derived from the pepper at each login, so
rotating the pepper broke every wire verifier. Rows made before it have no salt: the gateway fills
it in on its next start, from the current pepper, unless a rotation is already in progress
(``PRIVGATE_KEY_OLD_PEPPERS`` set) — see docs/operations.md#rotating-the-key-pepper.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("wire_verifiers")}
    if "salt" in columns:
        return  # adopted from the stores' create_all: already in the current shape
    with op.batch_alter_table("wire_verifiers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("wire_verifiers", schema=None) as batch_op:
        batch_op.drop_column("salt")
