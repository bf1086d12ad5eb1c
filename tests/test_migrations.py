"""The Alembic migrations build exactly the schema the stores declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect

from gateway.control_db import all_metadata, downgrade, make_control_engine, migrate


def _diffs(engine_url: str) -> list[object]:
    engine = create_engine(engine_url)
    merged = MetaData()
    for md in all_metadata():
        for table in md.tables.values():
            table.to_metadata(merged)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), merged)
    engine.dispose()
    return list(diffs)


def test_sqlite_upgrade_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    migrate(make_control_engine(url))
    assert _diffs(url) == []
    migrate(make_control_engine(url))  # idempotent


def test_postgres_upgrade_matches_the_models(pg_database: str) -> None:
    engine = make_control_engine(pg_database)
    migrate(engine)
    engine.dispose()
    assert _diffs(pg_database) == []


def test_downgrade_to_base_removes_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = make_control_engine(url)
    migrate(engine)
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_a_pre_migration_database_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = make_control_engine(url)
    for md in all_metadata():
        md.create_all(engine)  # what create_schema() made before migrations existed
    migrate(engine)
    assert "alembic_version" in inspect(engine).get_table_names()
    assert _diffs(url) == []


def test_a_spine_era_ledger_is_completed_and_adopted(tmp_path: Path) -> None:
    """Ledger tables from before the epoch/window columns existed are upgraded, not broken."""
    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine = make_control_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE budget_accounts (scope_kind TEXT, principal TEXT, dataset TEXT, "
            "eps_limit BIGINT NOT NULL, delta_limit BIGINT NOT NULL, eps_spent BIGINT NOT NULL, "
            "delta_spent BIGINT NOT NULL, updated_at TIMESTAMP NOT NULL, "
            "PRIMARY KEY (scope_kind, principal, dataset))"
        )
    migrate(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("budget_accounts")}
    assert {"epoch", "reset_at"} <= columns
