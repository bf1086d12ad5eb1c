"""principals: quarantine flag, time and reason (anomaly containment)

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-24 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("quarantined", "quarantined_at", "quarantine_reason")


def _existing() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("principals")}


def upgrade() -> None:
    # A database adopted from before migrations (gateway.control_db.migrate) was created from the
    # current models and already has these columns: add only what is missing.
    missing = [c for c in _COLUMNS if c not in _existing()]
    if not missing:
        return
    with op.batch_alter_table("principals", schema=None) as batch_op:
        if "quarantined" in missing:
            batch_op.add_column(
                sa.Column("quarantined", sa.Boolean(), server_default=sa.false(), nullable=False)
            )
        if "quarantined_at" in missing:
            batch_op.add_column(sa.Column("quarantined_at", sa.Text(), nullable=True))
        if "quarantine_reason" in missing:
            batch_op.add_column(sa.Column("quarantine_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    present = [c for c in _COLUMNS if c in _existing()]
    if not present:
        return
    with op.batch_alter_table("principals", schema=None) as batch_op:
        for name in reversed(present):
            batch_op.drop_column(name)
