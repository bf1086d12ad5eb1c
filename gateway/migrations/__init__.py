"""Alembic migrations of the control database (ledger, principals and keys, audit, stored answers)."""
